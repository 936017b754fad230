//! The runtime's own graph IR: a topologically ordered list of nodes over a short list of layer
//! kinds. Every tensor is NCHW f32 (a flattened feature vector is `[N, F, 1, 1]`).

use crate::ops::Activation;
use sha2::{Digest, Sha256};

mod weights;
mod window;
use weights::hash_f32s;
pub use weights::Weights;
pub use window::{AutoPad, Window};

/// Index of a value (an edge) in [`Graph`]; value 0 is the graph input.
pub type ValueId = usize;

/// A dense (groups = 1) convolution without bias; its weights are `[out, in·kh·kw]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Conv {
    pub in_channels: usize,
    pub out_channels: usize,
    pub window: Window,
    pub weights: Weights,
}

/// A depthwise convolution (groups = channels, multiplier 1); its weights are `[channels, kh·kw]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Depthwise {
    pub channels: usize,
    pub window: Window,
    pub weights: Weights,
}

/// A per-channel affine `y[c] = scale[c]·x[c] + bias[c]`: a folded BatchNorm and/or conv bias.
/// This is what the S/B patch replaces.
#[derive(Debug, Clone, PartialEq)]
pub struct Affine {
    pub scale: Vec<f32>,
    pub bias: Vec<f32>,
    /// For a folded BatchNorm: the statistics of this affine's input `x` it normalised with, so
    /// that `scale = γ/√(var + eps)` and `bias = β − mean·scale` (label-free adaptation,
    /// [`crate::train::adapt`], re-estimates them). `None` for a plain bias.
    pub stats: Option<NormStats>,
}

/// Per-channel statistics of an affine's input `x` that a BatchNorm normalised with: `x` is
/// normalised as `(x − mean)/√(var + eps)`.
#[derive(Debug, Clone, PartialEq)]
pub struct NormStats {
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub eps: Vec<f32>,
}

/// A fully connected layer `y = W·x + b` with `W: [out, in]`; the classifier.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    pub in_features: usize,
    pub out_features: usize,
    pub weights: Weights,
    pub bias: Vec<f32>,
}

/// The layer kinds the runtime implements.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Conv(Conv),
    Depthwise(Depthwise),
    Affine(Affine),
    /// An elementwise activation (ReLU, ReLU6).
    Act(Activation),
    /// Elementwise sum of two values of equal shape (the residual connection).
    Add,
    /// Mean over H and W: `[N, C, H, W] → [N, C, 1, 1]`.
    GlobalPool,
    /// The product of two values: `a: [N, C, H, W]` and `b` of the same shape or a per-channel
    /// gate `[N, C, 1, 1]` (squeeze-excitation; HardSwish as `x · relu6(x + 3) / 6`).
    Mul,
    /// The largest value in each window (padded pixels never win).
    MaxPool(Window),
    Linear(Linear),
}

impl Op {
    /// Short lower-case name of the layer kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Conv(c) if c.window.is_pointwise() => "conv1x1",
            Op::Conv(_) => "conv",
            Op::Depthwise(_) => "depthwise",
            Op::Affine(_) => "affine",
            Op::Act(a) => a.name(),
            Op::Add => "add",
            Op::GlobalPool => "global_pool",
            Op::Mul => "mul",
            Op::MaxPool(_) => "max_pool",
            Op::Linear(_) => "linear",
        }
    }

    /// Trainable parameters in the sense of the source model (weights, BN scale and bias).
    pub fn params(&self) -> usize {
        match self {
            Op::Conv(c) => c.weights.len(),
            Op::Depthwise(d) => d.weights.len(),
            Op::Affine(a) => a.scale.len() + a.bias.len(),
            Op::Linear(l) => l.weights.len() + l.bias.len(),
            _ => 0,
        }
    }

    fn resident_bytes(&self) -> usize {
        match self {
            Op::Conv(c) => c.weights.resident_bytes(),
            Op::Depthwise(d) => d.weights.resident_bytes(),
            Op::Affine(a) => 4 * (a.scale.len() + a.bias.len()),
            Op::Linear(l) => l.weights.resident_bytes() + 4 * l.bias.len(),
            _ => 0,
        }
    }
}

/// One layer applied to its input values, producing one output value.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The ONNX node name it came from (for messages).
    pub name: String,
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub output: ValueId,
}

/// Shape of a value for one sample (the batch dimension is left out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

/// Parameter counts of each patch kind (see the crate docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PatchableCounts {
    /// Every affine's scale and bias.
    pub sb: usize,
    /// Every affine's bias.
    pub bias: usize,
    /// Every depthwise kernel.
    pub dw: usize,
    /// The final linear layer's weights and bias.
    pub logits: usize,
    /// The squeeze-excitation convolutions' kernels and biases ([`Graph::excitation`]).
    pub se: usize,
}

/// A validated, topologically ordered graph with one input (NCHW, `input_channels`) and one
/// output (the logits of the last node).
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub input_channels: usize,
    pub num_values: usize,
    pub output: ValueId,
}

/// Smallest input height and width the runtime accepts.
pub const MIN_INPUT_SIZE: usize = 32;

impl Graph {
    /// Per-value shapes for an input of `h × w`, or an error naming the first node that cannot
    /// run at that size.
    pub fn shapes(&self, h: usize, w: usize) -> crate::Result<Vec<Shape>> {
        if h < MIN_INPUT_SIZE || w < MIN_INPUT_SIZE {
            return Err(crate::Error::Input(format!(
                "input {h}×{w} is smaller than the minimum {MIN_INPUT_SIZE}×{MIN_INPUT_SIZE}"
            )));
        }
        self.infer_shapes(h, w)
    }

    /// [`Graph::shapes`] without the minimum input size (for sub-graphs such as the classifier
    /// alone, whose input is `[F, 1, 1]`).
    pub fn infer_shapes(&self, h: usize, w: usize) -> crate::Result<Vec<Shape>> {
        let mut shapes = vec![None; self.num_values];
        shapes[0] = Some(Shape { c: self.input_channels, h, w });
        for node in &self.nodes {
            let ins: Vec<Shape> = node
                .inputs
                .iter()
                .map(|&i| shapes.get(i).copied().flatten())
                .collect::<Option<_>>()
                .filter(|v: &Vec<Shape>| !v.is_empty())
                .ok_or_else(|| crate::Error::node(&node.name, "reads a value that is not computed before it"))?;
            let x = ins[0];
            let bad = |why: String| crate::Error::node(&node.name, why);
            let out = match &node.op {
                Op::Conv(Conv { in_channels: ci, out_channels: co, window, .. })
                | Op::Depthwise(Depthwise { channels: ci @ co, window, .. }) => {
                    if x.c != *ci {
                        return Err(bad(format!("expects {ci} input channels, got {}", x.c)));
                    }
                    let (oh, ow) = window
                        .output_size(x.h, x.w)
                        .ok_or_else(|| bad(format!("window does not fit a {}×{} input", x.h, x.w)))?;
                    Shape { c: *co, h: oh, w: ow }
                }
                Op::Affine(a) => {
                    if x.c != a.scale.len() {
                        return Err(bad(format!("expects {} channels, got {}", a.scale.len(), x.c)));
                    }
                    x
                }
                Op::Act(_) => x,
                Op::Add => {
                    if ins[1] != x {
                        return Err(bad(format!("adds shapes {x:?} and {:?}", ins[1])));
                    }
                    x
                }
                Op::GlobalPool => Shape { c: x.c, h: 1, w: 1 },
                Op::Mul => {
                    let b = ins[1];
                    if b != x && !(b.c == x.c && b.h == 1 && b.w == 1) {
                        return Err(bad(format!("multiplies shapes {x:?} and {b:?}")));
                    }
                    x
                }
                Op::MaxPool(window) => {
                    let (h, w) = window
                        .output_size(x.h, x.w)
                        .ok_or_else(|| bad(format!("window does not fit a {}×{} input", x.h, x.w)))?;
                    Shape { c: x.c, h, w }
                }
                Op::Linear(l) => {
                    if x.c * x.h * x.w != l.in_features {
                        return Err(bad(format!("expects {} features, got {}×{}×{}", l.in_features, x.c, x.h, x.w)));
                    }
                    Shape { c: l.out_features, h: 1, w: 1 }
                }
            };
            *shapes
                .get_mut(node.output)
                .ok_or_else(|| crate::Error::node(&node.name, "writes a value outside the graph"))? = Some(out);
        }
        Ok(shapes.into_iter().map(|s| s.unwrap_or(Shape { c: 0, h: 0, w: 0 })).collect())
    }

    /// Number of output classes (channels of the output value).
    pub fn num_classes(&self) -> usize {
        self.nodes
            .iter()
            .rev()
            .find_map(|n| match &n.op {
                Op::Linear(l) => Some(l.out_features),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// Total parameters of the source model (conv and linear weights, BN/affine scale and bias).
    pub fn params(&self) -> usize {
        self.nodes.iter().map(|n| n.op.params()).sum()
    }

    /// Bytes the frozen weights occupy in memory.
    pub fn resident_bytes(&self) -> usize {
        self.nodes.iter().map(|n| n.op.resident_bytes()).sum()
    }

    /// For each node, whether it is a squeeze-excitation convolution: one that reads a value of
    /// one pixel per channel whatever the input's size (globally pooled, then through 1×1
    /// convolutions and per-channel layers), and is not the classifier.
    pub fn excitation(&self) -> Vec<bool> {
        let mut one_pixel = vec![false; self.num_values];
        let mut convs = vec![false; self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            let all = n.inputs.iter().all(|&v| one_pixel.get(v).copied().unwrap_or(false));
            let pixel = match &n.op {
                Op::GlobalPool | Op::Linear(_) => true,
                Op::Conv(c) => {
                    convs[i] = all;
                    all && c.window.is_pointwise() && c.window.stride == [1, 1]
                }
                Op::Affine(_) | Op::Act(_) | Op::Add | Op::Mul => all,
                Op::Depthwise(_) | Op::MaxPool(_) => false,
            };
            if let Some(v) = one_pixel.get_mut(n.output) {
                *v = pixel;
            }
        }
        convs
    }

    /// Parameter counts of each patch kind.
    pub fn patchable(&self) -> PatchableCounts {
        let mut p = PatchableCounts::default();
        let excitation = self.excitation();
        for (i, n) in self.nodes.iter().enumerate() {
            if excitation[i] {
                p.se += n.op.params();
                if let Some(Node { op: Op::Affine(a), .. }) = self.nodes.get(i + 1) {
                    p.se += a.bias.len();
                }
            }
            match &n.op {
                Op::Affine(a) => {
                    p.sb += a.scale.len() + a.bias.len();
                    p.bias += a.bias.len();
                }
                Op::Depthwise(d) => p.dw += d.weights.len(),
                Op::Linear(l) => p.logits = l.weights.len() + l.bias.len(),
                _ => {}
            }
        }
        p
    }

    /// A hash of the structure and every frozen value: two graphs with the same fingerprint
    /// compute the same function. Hex, 16 characters (64 bits of SHA-256).
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"edgepatch-graph-v1");
        h.update((self.input_channels as u64).to_le_bytes());
        for n in &self.nodes {
            h.update(n.op.kind().as_bytes());
            for &i in &n.inputs {
                h.update((i as u64).to_le_bytes());
            }
            h.update((n.output as u64).to_le_bytes());
            match &n.op {
                Op::Conv(c) => {
                    hash_window(&mut h, &c.window);
                    h.update((c.in_channels as u64).to_le_bytes());
                    h.update((c.out_channels as u64).to_le_bytes());
                    c.weights.hash_into(&mut h);
                }
                Op::Depthwise(d) => {
                    hash_window(&mut h, &d.window);
                    h.update((d.channels as u64).to_le_bytes());
                    d.weights.hash_into(&mut h);
                }
                Op::Affine(a) => {
                    hash_f32s(&mut h, &a.scale);
                    hash_f32s(&mut h, &a.bias);
                }
                Op::MaxPool(w) => hash_window(&mut h, w),
                Op::Linear(l) => {
                    h.update((l.in_features as u64).to_le_bytes());
                    h.update((l.out_features as u64).to_le_bytes());
                    l.weights.hash_into(&mut h);
                    hash_f32s(&mut h, &l.bias);
                }
                _ => {}
            }
        }
        h.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn hash_window(h: &mut Sha256, w: &Window) {
    for v in w.kernel.iter().chain(&w.stride).chain(&w.pads) {
        h.update((*v as u64).to_le_bytes());
    }
    // Fixed padding hashes as it always did (fingerprints of existing models stay).
    if let Some(a) = w.auto {
        h.update(a.onnx_name().as_bytes());
    }
}
