//! The CPU kernels (the CPU backend's layers), one file per layer kind. Each takes NCHW f32 activations; frozen
//! weights are dequantized inside the kernel (int8 values are exact in f32, so the per-channel
//! quantization scale is applied once per output value, folded into the epilogue).

use crate::graph;

pub mod activation;
pub mod add;
pub mod affine;
pub mod blocked;
pub mod conv;
pub mod depthwise;
pub mod linear;
pub mod maxpool;
pub mod mul;
pub mod pool;

/// The activation applied after a convolution's affine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Relu,
    Relu6,
    /// `clamp(x, 0, 1)`: ONNX's `Clip(0, 1)`, and `HardSigmoid(α, β)` once its `α·x + β` is an
    /// affine (the import merges it into the affine before it, or adds one).
    Clip01,
}

impl Activation {
    /// Applies the activation to one value.
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Identity => x,
            Activation::Relu => x.max(0.0),
            Activation::Relu6 => x.clamp(0.0, 6.0),
            Activation::Clip01 => x.clamp(0.0, 1.0),
        }
    }

    /// The activation's code in kernel parameters (the GPU kernels' `act`; the WGSL constants
    /// `ACT_*` are generated from it).
    pub fn code(self) -> u32 {
        match self {
            Activation::Identity => 0,
            Activation::Relu => 1,
            Activation::Relu6 => 2,
            Activation::Clip01 => 3,
        }
    }

    /// The lower-case name (the graph's node kind: `relu6`).
    pub fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
            Activation::Relu6 => "relu6",
            Activation::Clip01 => "clip01",
        }
    }

    /// The upper-case name of the activation's WGSL constant (`ACT_RELU6`).
    pub fn wgsl_name(self) -> &'static str {
        match self {
            Activation::Identity => "IDENTITY",
            Activation::Relu => "RELU",
            Activation::Relu6 => "RELU6",
            Activation::Clip01 => "CLIP01",
        }
    }

    /// Every activation.
    pub const ALL: [Activation; 4] = [Activation::Identity, Activation::Relu, Activation::Relu6, Activation::Clip01];
}

/// The per-channel affine and activation a convolution or depthwise layer computes from each
/// output plane while it is in cache (the next nodes of a [`crate::schedule::Step`], in training,
/// where the raw output may be needed too).
#[derive(Debug, Clone, Copy)]
pub enum Then<'a> {
    /// Nothing: the raw output only.
    Nothing,
    /// `act(scale·raw + bias)` into a second output; the raw output is kept.
    Keep(&'a graph::Affine, Activation),
    /// `act(scale·raw + bias)` in place of the raw output.
    InPlace(&'a graph::Affine, Activation),
}

impl Then<'_> {
    /// The affine's scale and bias of channel `c` and the activation, when there is an affine.
    pub fn at(&self, c: usize) -> Option<(f32, f32, Activation)> {
        match self {
            Then::Nothing => None,
            Then::Keep(a, act) | Then::InPlace(a, act) => Some((a.scale[c], a.bias[c], *act)),
        }
    }
}

/// What a convolution kernel applies to each output channel before storing:
/// `y = act(scale[c]·acc + bias[c])`. `None` scale and bias mean 1 and 0.
#[derive(Debug, Clone, Copy)]
pub struct Epilogue<'a> {
    pub scale: Option<&'a [f32]>,
    pub bias: Option<&'a [f32]>,
    pub act: Activation,
}

impl Epilogue<'_> {
    /// The identity epilogue (the raw convolution).
    pub const NONE: Epilogue<'static> = Epilogue { scale: None, bias: None, act: Activation::Identity };

    /// Finishes one output plane of channel `c` whose accumulators carry an extra factor `q`
    /// (the weights' dequantization scale).
    pub(crate) fn finish(&self, c: usize, q: f32, plane: &mut [f32]) {
        let s = q * self.scale.map_or(1.0, |s| s[c]);
        let b = self.bias.map_or(0.0, |b| b[c]);
        crate::simd::epilogue(plane, s, b, self.act);
    }
}

/// The fewest channel planes of `plane` values each that one parallel task takes (about 4096
/// values): small planes go in groups, so the per-task cost does not dominate.
pub(crate) fn planes_per_task(plane: usize) -> usize {
    (4096 / plane.max(1)).max(1)
}

/// The planes of a kernel's optional second output, one `len`-value slice each (`count` `None`s
/// when there is none), to zip with the first output's planes.
pub(crate) fn second_planes(
    t: &mut Option<crate::tensor::Tensor>,
    len: usize,
    count: usize,
) -> Vec<Option<&mut [f32]>> {
    match t {
        Some(t) => t.data.chunks_mut(len).map(Some).collect(),
        None => (0..count).map(|_| None).collect(),
    }
}
