//! The classifier: `Gemm`, or `MatMul` (its bias an `Add` after it).

use super::{attr_f, attr_i, tensor, Importer, Value};
use crate::graph::{Linear, Op};
use crate::{Error, Result};
use tract_onnx::pb::NodeProto;

impl Importer {
    /// `MatMul` of pooled features and a constant `[F, K]` weight: a classifier whose bias is
    /// zero until an `Add` of a constant after it sets it.
    pub(super) fn matmul(&mut self, node: &NodeProto) -> Result<()> {
        let (x, flat) = self.runtime(node, 0)?;
        let w = self.constant(node, 1)?;
        if !flat || w.shape.len() != 2 {
            return Err(Error::node(&node.name, "MatMul needs pooled features and a 2-D constant weight"));
        }
        let (k, m) = (w.shape[0], w.shape[1]);
        let lin = Linear { in_features: k, out_features: m, weights: tensor::to_weights(w, 1), bias: vec![0.0; m] };
        self.push(node, Op::Linear(lin), vec![x], true)
    }

    /// `Gemm` of pooled features and a constant weight (`transB` either way, `alpha`, `beta`).
    pub(super) fn gemm(&mut self, node: &NodeProto) -> Result<()> {
        let (x, flat) = self.runtime(node, 0)?;
        let w = self.constant(node, 1)?;
        if !flat || w.shape.len() != 2 || attr_i(node, "transA", 0) != 0 {
            return Err(Error::node(&node.name, "Gemm needs pooled features, transA = 0 and a 2-D constant weight"));
        }
        let trans_b = attr_i(node, "transB", 0) != 0;
        let (k, m) = if trans_b { (w.shape[1], w.shape[0]) } else { (w.shape[0], w.shape[1]) };
        let alpha = attr_f(node, "alpha").unwrap_or(1.0);
        let weights = tensor::to_weights(w, if trans_b { 0 } else { 1 });
        let weights = if alpha == 1.0 { weights } else { weights.scaled(alpha) };
        let beta = attr_f(node, "beta").unwrap_or(1.0);
        let bias = match self.get_opt(node, 2)? {
            None => vec![0.0; m],
            Some(Value::Const(c)) if c.len() == m => c.to_f32().iter().map(|b| b * beta).collect(),
            Some(Value::Const(c)) if c.len() == 1 => vec![c.to_f32()[0] * beta; m],
            Some(_) => return Err(Error::node(&node.name, "Gemm bias must be a constant of one value per output")),
        };
        let lin = Linear { in_features: k, out_features: m, weights, bias };
        self.push(node, Op::Linear(lin), vec![x], true)
    }
}
