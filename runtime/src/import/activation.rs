//! Activations that import as an affine and a clamp, `HardSigmoid(α, β) = clip01(α·x + β)`, and
//! products of two computed values: `HardSwish(x) = x · clip01(x/6 + 1/2)` and the
//! squeeze-excitation gate `x · g` (`g: [N, C, 1, 1]`).

use super::{attr_f, Importer, Value};
use crate::graph::{Node, Op, ValueId};
use crate::ops::Activation;
use crate::{Error, Result};
use tract_onnx::pb::NodeProto;

impl Importer {
    /// `HardSigmoid(α = 0.2, β = 0.5)`: `α·x + β` merged into the affine that computes `x` when
    /// nothing else reads it (the convolution's, as in squeeze-excitation), or a new affine; then
    /// [`Activation::Clip01`].
    pub(super) fn hard_sigmoid(&mut self, node: &NodeProto) -> Result<()> {
        let (x, flat) = self.runtime(node, 0)?;
        let (alpha, beta) = (attr_f(node, "alpha").unwrap_or(0.2), attr_f(node, "beta").unwrap_or(0.5));
        if !(alpha.is_finite() && beta.is_finite()) {
            return Err(Error::node(&node.name, format!("HardSigmoid alpha {alpha}, beta {beta}")));
        }
        let in_name = node.input[0].clone();
        let input = self.then_affine(node, x, &in_name, &[alpha], &[beta])?;
        self.push(node, Op::Act(Activation::Clip01), vec![input], flat)
    }

    /// `HardSwish(x) = x · clip01(x/6 + 1/2)`: a new affine (never merged: `x` is read twice),
    /// [`Activation::Clip01`] and [`Op::Mul`].
    pub(super) fn hard_swish(&mut self, node: &NodeProto) -> Result<()> {
        let (x, flat) = self.runtime(node, 0)?;
        let affine = self.affine_node(node, x, &[1.0 / 6.0], &[0.5])?;
        let gate = self.num_values;
        self.num_values += 1;
        let name = format!("{}.clip", node.name);
        self.nodes.push(Node { name, op: Op::Act(Activation::Clip01), inputs: vec![affine], output: gate });
        self.push(node, Op::Mul, vec![x, gate], flat)
    }

    /// `Mul` of two computed values: [`Op::Mul`] with the per-channel gate (a value of one pixel
    /// per channel, after global pooling) second, whichever order the model wrote.
    pub(super) fn mul_values(&mut self, node: &NodeProto) -> Result<()> {
        let ((a, flat_a), (b, flat_b)) = (self.runtime(node, 0)?, self.runtime(node, 1)?);
        let (first, second, flat) = match (self.one_pixel(a), self.one_pixel(b)) {
            (true, false) => (b, a, flat_b),
            _ => (a, b, flat_a),
        };
        self.push(node, Op::Mul, vec![first, second], flat)
    }

    /// True when runtime value `id` is one pixel per channel for any input size: pooled, or
    /// computed from such a value by 1×1 convolutions (stride 1, no padding) and per-channel
    /// layers.
    fn one_pixel(&self, id: ValueId) -> bool {
        if id == 0 {
            return false;
        }
        let Some(node) = self.nodes.iter().rev().find(|n| n.output == id) else { return false };
        match &node.op {
            Op::GlobalPool | Op::Linear(_) => true,
            Op::Conv(c) => c.window.is_pointwise() && c.window.stride == [1, 1] && self.one_pixel(node.inputs[0]),
            Op::Affine(_) | Op::Act(_) => self.one_pixel(node.inputs[0]),
            Op::Add | Op::Mul => node.inputs.iter().all(|&i| self.one_pixel(i)),
            Op::Depthwise(_) | Op::MaxPool(_) => false,
        }
    }

    /// The channels of runtime value `id`, from the node that computes it (through the nodes that
    /// keep the channel count), or the input's when known.
    pub(super) fn channels_of(&self, id: ValueId) -> Option<usize> {
        if id == 0 {
            return self.input_channels;
        }
        let node = self.nodes.iter().rev().find(|n| n.output == id)?;
        match &node.op {
            Op::Conv(c) => Some(c.out_channels),
            Op::Depthwise(d) => Some(d.channels),
            Op::Affine(a) => Some(a.scale.len()),
            Op::Linear(l) => Some(l.out_features),
            Op::Act(_) | Op::Add | Op::Mul | Op::GlobalPool | Op::MaxPool(_) => self.channels_of(*node.inputs.first()?),
        }
    }

    pub(super) fn clip(&mut self, node: &NodeProto) -> Result<()> {
        let (x, flat) = self.runtime(node, 0)?;
        let bound = |i: usize, name: &str| -> Result<Option<f32>> {
            if self.opset < 11 {
                return Ok(attr_f(node, name));
            }
            match self.get_opt(node, i)? {
                None => Ok(None),
                Some(Value::Const(c)) => {
                    c.scalar_f32().map(Some).ok_or_else(|| Error::node(&node.name, "Clip bound must be a scalar f32"))
                }
                Some(_) => Err(Error::node(&node.name, "Clip bounds must be constants")),
            }
        };
        let (lo, hi) = (bound(1, "min")?, bound(2, "max")?);
        let op = match (lo, hi) {
            (Some(0.0), Some(6.0)) => Op::Act(Activation::Relu6),
            (Some(0.0), Some(1.0)) => Op::Act(Activation::Clip01),
            (Some(0.0), None) => Op::Act(Activation::Relu),
            _ => {
                return Err(Error::node(
                    &node.name,
                    format!("Clip({lo:?}, {hi:?}) unsupported: only ReLU, ReLU6 and Clip(0, 1)"),
                ))
            }
        };
        self.push(node, op, vec![x], flat)
    }

    /// A `Softmax` over the classes that is the model's output: the graph outputs its input, the
    /// logits, which every use of the graph turns into probabilities itself. Anywhere else it is
    /// refused.
    pub(super) fn final_softmax(&mut self, node: &NodeProto) -> Result<()> {
        let (x, flat) = self.runtime(node, 0)?;
        let axis = super::attr_i(node, "axis", if self.opset >= 13 { -1 } else { 1 });
        let out = self.output(node)?;
        // Read by nothing but the graph output, directly or through `Identity` nodes.
        let mut at = out;
        let mut only_output = false;
        for _ in 0..=self.identities.len() {
            if self.uses.get(&at).copied() != Some(1) {
                break;
            }
            if self.outputs.contains(&at) {
                only_output = true;
                break;
            }
            match self.identities.get(&at) {
                Some(next) => at = next.clone(),
                None => break,
            }
        }
        if !flat || !matches!(axis, 1 | -1) || !only_output {
            return Err(Error::node(&node.name, "Softmax only over the classes, as the model's output"));
        }
        log::info!("{}: the model ends in Softmax; its input, the logits, is the graph's output", node.name);
        self.alias(node, Value::Runtime { id: x, flat })
    }
}
