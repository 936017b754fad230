//! One typed launch per kernel: its buffers by role, its parameter struct, and the workgroups it
//! needs, built by one function that both the training planner (over planned buffers) and the
//! parity tests (over device ranges) call.

use super::params::*;
use super::{Kernel, WeightFormat, WORKGROUP};

/// A dispatch size: a count of workgroups indexed flat (folded when large), or an explicit grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Groups {
    Flat(u32),
    Grid([u32; 3]),
}

/// Workgroups for one invocation per element of `n`.
pub(crate) fn per_element(n: u32) -> Groups {
    Groups::Flat(n.div_ceil(WORKGROUP))
}

/// Weights on the device as a kernel binds them: the values (`w`), the per-row scales, and how
/// `w` holds the values.
#[derive(Debug, Clone)]
pub(crate) struct DeviceWeights<B> {
    pub w: B,
    pub scale: B,
    pub format: WeightFormat,
}

/// One kernel call before it is recorded: its bindings in binding order (of type `B`: a planned
/// buffer or a device range), its parameters' bytes and its workgroups.
#[derive(Debug, Clone)]
pub(crate) struct Launch<B> {
    pub kernel: Kernel,
    pub format: WeightFormat,
    pub bindings: Vec<B>,
    pub params: Vec<u8>,
    pub groups: Groups,
}

impl<B> Launch<B> {
    fn new<P: Params>(kernel: Kernel, bindings: Vec<B>, params: P, groups: Groups) -> Self {
        debug_assert_eq!(kernel.params_wgsl(), P::WGSL, "{} takes other parameters", kernel.name());
        Launch { kernel, format: WeightFormat::F32, bindings, params: bytemuck::bytes_of(&params).to_vec(), groups }
    }

    /// A kernel that binds `input`, the weights' values and scales, then `output`.
    fn weighted<P: Params>(kernel: Kernel, input: B, w: DeviceWeights<B>, output: B, p: P, g: Groups) -> Self {
        Launch { format: w.format, ..Launch::new(kernel, vec![input, w.w, w.scale, output], p, g) }
    }

    /// The same launch over other buffers (`f` maps each binding).
    pub fn map<C>(self, f: impl FnMut(B) -> C) -> Launch<C> {
        Launch {
            kernel: self.kernel,
            format: self.format,
            bindings: self.bindings.into_iter().map(f).collect(),
            params: self.params,
            groups: self.groups,
        }
    }

    /// `y = conv1x1(x)` (or the classifier's product with `p = 1`): `x [n, ci, p]` → `y [n, co, p]`.
    pub fn pointwise_forward(x: B, w: DeviceWeights<B>, y: B, p: Pointwise) -> Self {
        let grid = [p.p.div_ceil(64), p.co.div_ceil(64), p.n];
        Launch::weighted(Kernel::PointwiseForward, x, w, y, p, Groups::Grid(grid))
    }

    /// The input gradient of a 1×1 convolution: `dy [n, co, p]` → `dx [n, ci, p]`.
    pub fn pointwise_backward_input(dy: B, w: DeviceWeights<B>, dx: B, p: PointwiseGrad) -> Self {
        let grid = [p.p.div_ceil(64), p.ci.div_ceil(64), p.n];
        Launch::weighted(Kernel::PointwiseBackwardInput, dy, w, dx, p, Groups::Grid(grid))
    }

    /// The kernel gradient of a 1×1 convolution `[co, ci]` from `x` and `dy`.
    pub fn pointwise_backward_weight(x: B, dy: B, dw: B, p: Pointwise) -> Self {
        let grid = [p.ci.div_ceil(64), p.co.div_ceil(64), 1];
        Launch::new(Kernel::PointwiseBackwardWeight, vec![x, dy, dw], p, Groups::Grid(grid))
    }

    /// A dense windowed convolution, one invocation per output value.
    pub fn conv_forward(x: B, w: DeviceWeights<B>, y: B, p: ConvWindow) -> Self {
        let groups = per_element(p.n * p.co * p.oh * p.ow);
        Launch::weighted(Kernel::ConvForward, x, w, y, p, groups)
    }

    /// The kernel gradient of a dense windowed convolution, one workgroup per weight.
    pub fn conv_backward_weight(x: B, dy: B, dw: B, p: ConvWindow) -> Self {
        Launch::new(Kernel::ConvBackwardWeight, vec![x, dy, dw], p, Groups::Flat(p.co * p.ci * p.kh * p.kw))
    }

    /// A depthwise convolution, one invocation per output value.
    pub fn depthwise_forward(x: B, w: DeviceWeights<B>, y: B, p: DepthwiseWindow) -> Self {
        let groups = per_element(p.n * p.c * p.oh * p.ow);
        Launch::weighted(Kernel::DepthwiseForward, x, w, y, p, groups)
    }

    /// The input gradient of a depthwise convolution, one invocation per input value.
    pub fn depthwise_backward_input(dy: B, w: DeviceWeights<B>, dx: B, p: DepthwiseWindow) -> Self {
        let groups = per_element(p.n * p.c * p.h * p.w);
        Launch::weighted(Kernel::DepthwiseBackwardInput, dy, w, dx, p, groups)
    }

    /// The kernel gradient of a depthwise convolution, one workgroup per weight.
    pub fn depthwise_backward_weight(x: B, dy: B, dw: B, p: DepthwiseWindow) -> Self {
        Launch::new(Kernel::DepthwiseBackwardWeight, vec![x, dy, dw], p, Groups::Flat(p.c * p.kh * p.kw))
    }

    /// `y = act(scale·x + bias)` per channel.
    pub fn affine_forward(x: B, scale: B, bias: B, y: B, p: Channelwise) -> Self {
        Launch::new(Kernel::AffineForward, vec![x, scale, bias, y], p, per_element(p.total))
    }

    /// `dx (+)= dy · act'(y) · scale` per channel (`y` the activation's output).
    pub fn affine_backward_input(dy: B, y: B, scale: B, dx: B, p: Channelwise) -> Self {
        Launch::new(Kernel::AffineBackwardInput, vec![dy, y, scale, dx], p, per_element(p.total))
    }

    /// Per channel `Σ dz·x` and `Σ dz` with `dz = dy · act'(y)`, into `grads` at the
    /// parameters' offsets; one workgroup per channel.
    pub fn affine_backward_params(dy: B, y: B, x: B, grads: B, p: AffineGrads) -> Self {
        Launch::new(Kernel::AffineBackwardParams, vec![dy, y, x, grads], p, Groups::Flat(p.c))
    }

    /// The classifier's weight gradient `dw [o, f] = Σ_n dy[n, o]·x[n, f]`.
    pub fn linear_backward_weight(dy: B, x: B, dw: B, p: LinearGrad) -> Self {
        Launch::new(Kernel::LinearBackwardWeight, vec![dy, x, dw], p, per_element(p.o * p.f))
    }

    /// `y = a + b`.
    pub fn add_forward(a: B, b: B, y: B, total: u32) -> Self {
        let p = Elementwise { total, accumulate: 0 };
        Launch::new(Kernel::AddForward, vec![a, b, y], p, per_element(total))
    }

    /// `dx (+)= dy` (one input of the sum).
    pub fn add_backward(dy: B, dx: B, p: Elementwise) -> Self {
        Launch::new(Kernel::AddBackward, vec![dy, dx], p, per_element(p.total))
    }

    /// The mean of each of `nc` planes.
    pub fn pool_forward(x: B, y: B, p: Pool) -> Self {
        Launch::new(Kernel::PoolForward, vec![x, y], p, per_element(p.nc))
    }

    /// `dx (+)= dy / hw` over each plane.
    pub fn pool_backward(dy: B, dx: B, p: Pool) -> Self {
        Launch::new(Kernel::PoolBackward, vec![dy, dx], p, per_element(p.nc * p.hw))
    }

    /// `y (+)= a · b`, `b`'s value `i / per` with value `i` of `a` (the product's forward, and
    /// its first operand's gradient with `a = dy`).
    pub fn mul_forward(a: B, b: B, y: B, p: Product) -> Self {
        Launch::new(Kernel::MulForward, vec![a, b, y], p, per_element(p.total))
    }

    /// `db[j] (+)= Σ_k dy[j·per + k] · a[j·per + k]`: the product's second operand's gradient.
    pub fn mul_backward_other(dy: B, a: B, db: B, p: Product) -> Self {
        Launch::new(Kernel::MulBackwardOther, vec![dy, a, db], p, per_element(p.total))
    }

    /// The largest value of each window.
    pub fn max_pool_forward(x: B, y: B, p: MaxPoolWindow) -> Self {
        Launch::new(Kernel::MaxPoolForward, vec![x, y], p, per_element(p.nc * p.oh * p.ow))
    }

    /// `dx (+)=` the gradients of the outputs each input pixel won.
    pub fn max_pool_backward(x: B, dy: B, dx: B, p: MaxPoolWindow) -> Self {
        Launch::new(Kernel::MaxPoolBackward, vec![x, dy, dx], p, per_element(p.nc * p.h * p.w))
    }

    /// Per-sample loss and correct flag into `stats [n, 2]`, and the mean loss's gradient `dz`.
    pub fn softmax_cross_entropy(z: B, labels: B, dz: B, stats: B, p: Loss) -> Self {
        Launch::new(Kernel::SoftmaxCrossEntropy, vec![z, labels, dz, stats], p, Groups::Flat(p.n.div_ceil(64)))
    }

    /// Sums of squares of the gradients, one per chunk, one workgroup each.
    pub fn grad_norm(grads: B, partial: B, p: GradNorm) -> Self {
        Launch::new(Kernel::GradNorm, vec![grads, partial], p, Groups::Flat(p.len.div_ceil(p.chunk)))
    }

    /// The step's scalars (clip factor, norm, mean loss, correct count, finite flag) from the
    /// partial sums and the per-sample stats; one workgroup.
    pub fn clip(partial: B, stats: B, scalars: B, p: Clip) -> Self {
        Launch::new(Kernel::Clip, vec![partial, stats, scalars], p, Groups::Grid([1, 1, 1]))
    }

    /// The optimizer update of `len` parameters (`params`, `grads`, the optimizer `state`, the
    /// step's `scalars`); its parameters are rewritten every step ([`Update::params`]).
    pub fn update(update: &Update, params: B, grads: B, state: B, scalars: B) -> Self {
        let kernel = match update {
            Update::Sgd(_) => Kernel::SgdUpdate,
            Update::Adam(_) => Kernel::AdamUpdate,
            Update::RmsProp(_) => Kernel::RmspropUpdate,
        };
        let bindings = vec![params, grads, state, scalars];
        Launch {
            kernel,
            format: WeightFormat::F32,
            bindings,
            params: update.params(),
            groups: per_element(update.len()),
        }
    }
}

/// The parameters of one optimizer update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Update {
    Sgd(Sgd),
    Adam(Adam),
    RmsProp(RmsProp),
}

impl Update {
    fn len(&self) -> u32 {
        match self {
            Update::Sgd(p) => p.len,
            Update::Adam(p) => p.len,
            Update::RmsProp(p) => p.len,
        }
    }

    /// The uniform's bytes.
    pub fn params(&self) -> Vec<u8> {
        match self {
            Update::Sgd(p) => bytemuck::bytes_of(p).to_vec(),
            Update::Adam(p) => bytemuck::bytes_of(p).to_vec(),
            Update::RmsProp(p) => bytemuck::bytes_of(p).to_vec(),
        }
    }
}
