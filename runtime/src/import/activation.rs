//! Activations that import as an affine and a clamp: `HardSigmoid(α, β) = clip01(α·x + β)`.

use super::{attr_f, Importer, Value};
use crate::graph::{Op, ValueId};
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
            Op::Act(_) | Op::Add | Op::GlobalPool => self.channels_of(*node.inputs.first()?),
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
        let only_output = self.outputs.contains(&out) && self.uses.get(&out).copied() == Some(1);
        if !flat || !matches!(axis, 1 | -1) || !only_output {
            return Err(Error::node(&node.name, "Softmax only over the classes, as the model's output"));
        }
        log::info!("{}: the model ends in Softmax; its input, the logits, is the graph's output", node.name);
        self.alias(node, Value::Runtime { id: x, flat })
    }
}
