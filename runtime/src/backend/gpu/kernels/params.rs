//! The uniform parameters of every kernel: one `#[repr(C)]` Pod struct each, declared once
//! here. The kernel loader writes the WGSL `struct U` of a kernel from its Rust struct, so the
//! two can never disagree on the order or the type of a word.

use bytemuck::{Pod, Zeroable};

use crate::graph::{Conv, Depthwise, Window};

/// A kernel's uniform parameters and their WGSL declaration.
pub(crate) trait Params: Pod {
    /// `struct U { field: type, … }` in the Rust field order.
    const WGSL: &'static str;
}

macro_rules! params {
    ($($(#[$doc:meta])* $name:ident { $($field:ident: $ty:ident),* $(,)? })*) => {
        $(
            $(#[$doc])*
            #[repr(C)]
            #[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
            pub(crate) struct $name { $(pub $field: $ty),* }

            impl Params for $name {
                const WGSL: &'static str =
                    concat!("struct U {", $(" ", stringify!($field), ": ", stringify!($ty), ",",)* " }\n");
            }
        )*
    };
}

params! {
    /// A 1×1 convolution or the classifier's product over `[N, C, P]` planes (`p` positions).
    Pointwise { n: u32, ci: u32, co: u32, p: u32 }
    /// The input gradient of a 1×1 convolution; `accumulate` adds to the output.
    PointwiseGrad { n: u32, ci: u32, co: u32, p: u32, accumulate: u32 }
    /// A dense windowed convolution: input `[n, ci, h, w]`, output `[n, co, oh, ow]`, kernel
    /// `kh × kw`, stride `sh × sw`, top and left padding `pt`, `pl`.
    ConvWindow {
        n: u32, ci: u32, co: u32, h: u32, w: u32, oh: u32, ow: u32,
        kh: u32, kw: u32, sh: u32, sw: u32, pt: u32, pl: u32,
    }
    /// A depthwise convolution (as [`ConvWindow`] with `c` channels); `accumulate` adds to the
    /// input gradient (read by the input-gradient kernel only).
    DepthwiseWindow {
        n: u32, c: u32, h: u32, w: u32, oh: u32, ow: u32,
        kh: u32, kw: u32, sh: u32, sw: u32, pt: u32, pl: u32, accumulate: u32,
    }
    /// A per-channel map over `total` values of `[N, c, hw]`, with activation code `act`
    /// ([`crate::ops::Activation::code`]); `accumulate` adds to the output (backward only).
    Channelwise { total: u32, c: u32, hw: u32, act: u32, accumulate: u32 }
    /// The affine's parameter gradients: per channel of `[n, c, hw]`, the scale's (when
    /// `has_scale`, at word `scale_at` of the output) and the bias's (at `bias_at`).
    AffineGrads { n: u32, c: u32, hw: u32, act: u32, has_scale: u32, has_bias: u32, scale_at: u32, bias_at: u32 }
    /// The classifier's weight gradient `[o, f]` over `n` samples.
    LinearGrad { n: u32, o: u32, f: u32 }
    /// An elementwise kernel over `total` values; `accumulate` adds to the output.
    Elementwise { total: u32, accumulate: u32 }
    /// The global mean pool: `nc` planes of `hw` values; `accumulate` adds to the input gradient.
    Pool { nc: u32, hw: u32, accumulate: u32 }
    /// A product over `total` values, the second operand's value `i / per` with each (`per` 1,
    /// or H·W for a per-channel gate); for the second operand's gradient `total` counts its
    /// values. `accumulate` adds to the output.
    Product { total: u32, per: u32, accumulate: u32 }
    /// Max pooling of `nc` planes `[h, w]` into `[oh, ow]`: kernel `kh × kw`, stride `sh × sw`,
    /// top and left padding `pt`, `pl`; `accumulate` adds to the input gradient.
    MaxPoolWindow {
        nc: u32, h: u32, w: u32, oh: u32, ow: u32,
        kh: u32, kw: u32, sh: u32, sw: u32, pt: u32, pl: u32, accumulate: u32,
    }
    /// Softmax cross-entropy over `n` rows of `k` logits with label smoothing: samples
    /// `first..first + n` of a batch of `batch` (the gradient is of the batch's mean loss).
    Loss { n: u32, k: u32, smoothing: f32, first: u32, batch: u32 }
    /// Sums of squares of `len` gradient values, one per chunk of `chunk`.
    GradNorm { len: u32, chunk: u32 }
    /// The clip factor from `count` partial sums, and the mean loss of `n` samples.
    Clip { count: u32, n: u32, max_norm: f32 }
    /// SGD with momentum over `len` values, weight decay on the first `decay_end`.
    Sgd { len: u32, decay_end: u32, lr: f32, wd: f32, momentum: f32 }
    /// Adam; `c1`, `c2` are the bias corrections of step t: `1 − β₁ᵗ`, `1 − β₂ᵗ`.
    Adam { len: u32, decay_end: u32, lr: f32, wd: f32, beta1: f32, beta2: f32, eps: f32, c1: f32, c2: f32 }
    /// RMSProp.
    RmsProp { len: u32, decay_end: u32, lr: f32, wd: f32, alpha: f32, eps: f32 }
}

impl ConvWindow {
    /// The parameters of `conv` on `n` inputs of `hw`, giving outputs of `ohw`.
    pub fn new(conv: &Conv, n: usize, hw: (usize, usize), ohw: (usize, usize)) -> Self {
        let [kh, kw, sh, sw, pt, pl] = window(&conv.window, hw);
        let [n, ci, co, h, w, oh, ow] = [n, conv.in_channels, conv.out_channels, hw.0, hw.1, ohw.0, ohw.1].map(word);
        ConvWindow { n, ci, co, h, w, oh, ow, kh, kw, sh, sw, pt, pl }
    }
}

impl DepthwiseWindow {
    /// The parameters of `dw` on `n` inputs of `hw`, giving outputs of `ohw`; `accumulate`
    /// adds to the input gradient.
    pub fn new(dw: &Depthwise, n: usize, hw: (usize, usize), ohw: (usize, usize), accumulate: bool) -> Self {
        let [kh, kw, sh, sw, pt, pl] = window(&dw.window, hw);
        let [n, c, h, w, oh, ow] = [n, dw.channels, hw.0, hw.1, ohw.0, ohw.1].map(word);
        DepthwiseWindow { n, c, h, w, oh, ow, kh, kw, sh, sw, pt, pl, accumulate: accumulate as u32 }
    }
}

/// Kernel height and width, strides, top and left padding (for an input of `(h, w)`).
fn window(win: &Window, (h, w): (usize, usize)) -> [u32; 6] {
    let [pt, pl, ..] = win.pads_at(h, w);
    [win.kernel[0], win.kernel[1], win.stride[0], win.stride[1], pt, pl].map(word)
}

/// A size as a kernel parameter word. Sizes come from shapes whose buffers fit the device's
/// binding limit (checked when the buffers are made), so they fit in 32 bits.
pub(crate) fn word(v: usize) -> u32 {
    v as u32
}

impl MaxPoolWindow {
    /// The parameters of `window` over `nc` planes of `(h, w)` (its padding for that size).
    pub fn new(window: &Window, nc: usize, (h, w): (usize, usize), accumulate: bool) -> Self {
        let (oh, ow) = window.output_size(h, w).unwrap_or((0, 0));
        let [pt, pl, ..] = window.pads_at(h, w);
        MaxPoolWindow {
            nc: word(nc),
            h: word(h),
            w: word(w),
            oh: word(oh),
            ow: word(ow),
            kh: word(window.kernel[0]),
            kw: word(window.kernel[1]),
            sh: word(window.stride[0]),
            sw: word(window.stride[1]),
            pt: word(pt),
            pl: word(pl),
            accumulate: accumulate as u32,
        }
    }
}
