//! The WGSL kernels: one file per operation under `shaders/`, each paired by name with its CPU
//! twin in [`crate::ops`] or [`crate::train`], its parameter struct ([`params`]) and one typed
//! launch ([`Launch`]).
//!
//! The loader assembles each kernel's source from generated declarations (its `struct U` from
//! the parameter struct, the workgroup size `WG` and the activation codes from the Rust
//! constants), the shared snippets it uses (`shaders/lib/`: the pointwise tile product, the
//! workgroup reduction, the activations), the weight reader for its weight format, and its file.

mod device;
/// One-call wrappers for the parity tests (compiled with `gpu`: a separate feature made every
/// build that leaves the tests out, such as the Python extension's, compile the runtime anew).
#[doc(hidden)]
pub mod host;
mod launch;
pub(crate) mod params;

pub(crate) use device::{align, bytes_of, f32s, Call, Range, ALIGN_WORDS};
pub(crate) use launch::{DeviceWeights, Groups, Launch, Update};

use crate::graph::Weights;
use crate::ops::Activation;
use params::Params;

/// Invocations per workgroup of the one-dimensional kernels (and of the tiled ones, 16 × 16);
/// the shaders' `WG`.
pub const WORKGROUP: u32 = 256;

/// A shared WGSL snippet of `shaders/lib/`.
#[derive(Debug, Clone, Copy)]
enum Snippet {
    Tile,
    Reduce,
    Activation,
    MaxPool,
}

impl Snippet {
    fn source(self) -> &'static str {
        match self {
            Snippet::Tile => include_str!("../shaders/lib/tile.wgsl"),
            Snippet::Reduce => include_str!("../shaders/lib/reduce.wgsl"),
            Snippet::Activation => include_str!("../shaders/lib/activation.wgsl"),
            Snippet::MaxPool => include_str!("../shaders/lib/max_pool.wgsl"),
        }
    }
}

macro_rules! kernels {
    ($($variant:ident => $file:literal, $params:ident, weights: $w:literal, uses: [$($snippet:ident),*];)*) => {
        /// Every WGSL kernel; `shaders/NAME.wgsl` pairs with the CPU twin it names.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Kernel { $($variant),* }

        impl Kernel {
            /// The shader's file name without extension.
            pub fn name(self) -> &'static str {
                match self { $(Kernel::$variant => $file),* }
            }
            fn body(self) -> &'static str {
                match self { $(Kernel::$variant => include_str!(concat!("../shaders/", $file, ".wgsl"))),* }
            }
            /// True when the kernel reads frozen or trained weights through `weight(i)`.
            pub fn reads_weights(self) -> bool {
                match self { $(Kernel::$variant => $w),* }
            }
            /// The WGSL declaration of the kernel's parameters.
            pub(crate) fn params_wgsl(self) -> &'static str {
                match self { $(Kernel::$variant => <params::$params as Params>::WGSL),* }
            }
            fn snippets(self) -> &'static [Snippet] {
                match self { $(Kernel::$variant => &[$(Snippet::$snippet),*]),* }
            }
        }
    };
}

kernels! {
    PointwiseForward => "pointwise_forward", Pointwise, weights: true, uses: [Tile];
    PointwiseBackwardInput => "pointwise_backward_input", PointwiseGrad, weights: true, uses: [Tile];
    PointwiseBackwardWeight => "pointwise_backward_weight", Pointwise, weights: false, uses: [Tile];
    ConvBackwardWeight => "conv_backward_weight", ConvWindow, weights: false, uses: [Reduce];
    LinearBackwardWeight => "linear_backward_weight", LinearGrad, weights: false, uses: [];
    ConvForward => "conv_forward", ConvWindow, weights: true, uses: [];
    DepthwiseForward => "depthwise_forward", DepthwiseWindow, weights: true, uses: [];
    DepthwiseBackwardInput => "depthwise_backward_input", DepthwiseWindow, weights: true, uses: [];
    DepthwiseBackwardWeight => "depthwise_backward_weight", DepthwiseWindow, weights: false, uses: [Reduce];
    AffineForward => "affine_forward", Channelwise, weights: false, uses: [Activation];
    AffineBackwardParams => "affine_backward_params", AffineGrads, weights: false, uses: [Reduce, Activation];
    AffineBackwardInput => "affine_backward_input", Channelwise, weights: false, uses: [Activation];
    AddForward => "add_forward", Elementwise, weights: false, uses: [];
    AddBackward => "add_backward", Elementwise, weights: false, uses: [];
    PoolForward => "pool_forward", Pool, weights: false, uses: [];
    PoolBackward => "pool_backward", Pool, weights: false, uses: [];
    MulForward => "mul_forward", Product, weights: false, uses: [];
    MulBackwardOther => "mul_backward_other", Product, weights: false, uses: [];
    MaxPoolForward => "max_pool_forward", MaxPoolWindow, weights: false, uses: [MaxPool];
    MaxPoolBackward => "max_pool_backward", MaxPoolWindow, weights: false, uses: [MaxPool];
    SoftmaxCrossEntropy => "softmax_cross_entropy", Loss, weights: false, uses: [];
    GradNorm => "grad_norm", GradNorm, weights: false, uses: [Reduce];
    Clip => "clip", Clip, weights: false, uses: [Reduce];
    SgdUpdate => "sgd_update", Sgd, weights: false, uses: [];
    AdamUpdate => "adam_update", Adam, weights: false, uses: [];
    RmspropUpdate => "rmsprop_update", RmsProp, weights: false, uses: [];
}

/// How a kernel's `w` binding holds weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// Four int8 values per u32, little-endian; the per-row scale comes from `wscale`.
    Int8,
    /// One f32 per u32 (trained weights, or a model imported without quantization).
    F32,
}

impl Kernel {
    /// The full WGSL source: the generated declarations, the shared snippets, the weight reader
    /// for `format`, the kernel.
    pub fn source(self, format: WeightFormat) -> String {
        let mut src = format!(
            "const WG: u32 = {WORKGROUP}u;\n{}\
             fn flat_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {{\n    return (wid.y * nwg.x + wid.x) * WG + lid;\n}}\n",
            self.params_wgsl()
        );
        for snippet in self.snippets() {
            if let Snippet::Activation = snippet {
                for act in Activation::ALL {
                    src += &format!("const ACT_{}: u32 = {}u;\n", act.wgsl_name(), act.code());
                }
            }
            src += snippet.source();
        }
        src += match (self.reads_weights(), format) {
            (false, _) => "",
            (true, WeightFormat::Int8) => {
                "fn weight(i: u32) -> f32 {\n    return f32(extractBits(bitcast<i32>(w[i >> 2u]), (i & 3u) * 8u, 8u));\n}\n"
            }
            (true, WeightFormat::F32) => "fn weight(i: u32) -> f32 {\n    return bitcast<f32>(w[i]);\n}\n",
        };
        src + self.body()
    }
}

/// `Weights` as the words a `w` binding holds, the per-row scales and the format.
pub(crate) fn pack(weights: &Weights, rows: usize) -> (Vec<u32>, Vec<f32>, WeightFormat) {
    match weights {
        Weights::Int8 { values, scales } => {
            let words = values
                .chunks(4)
                .map(|c| c.iter().enumerate().fold(0u32, |acc, (i, &v)| acc | ((v as u8 as u32) << (8 * i))))
                .collect();
            (words, scales.clone(), WeightFormat::Int8)
        }
        Weights::F32(v) => (v.iter().map(|x| x.to_bits()).collect(), vec![1.0; rows], WeightFormat::F32),
    }
}
