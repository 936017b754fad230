//! Elementwise arithmetic between a computed value and a constant (`x + c`, `x − c`, `x · c`,
//! `x / c`, `c + x`, `c · x`) with `c` a scalar or one value per channel: an affine, merged into
//! the affine that computes `x` when nothing else reads it (so a convolution whose bias an
//! exporter adds separately keeps one affine), `Reshape` of a constant, the residual `Add` and
//! `BatchNormalization`.

use super::tensor::{Const, ConstData};
use super::{attr_f, Importer, Value};
use crate::graph::{Affine, Node, NormStats, Op, ValueId};
use crate::{Error, Result};
use tract_onnx::pb::NodeProto;

impl Importer {
    /// `Add`, `Sub`, `Mul` or `Div` with exactly one constant operand (`Sub` and `Div` with the
    /// constant second). Two computed operands go to [`Importer::add`]'s residual sum.
    pub(super) fn with_constant(&mut self, node: &NodeProto) -> Result<()> {
        let op = node.op_type.as_str();
        let (a, b) = (self.get(node, 0)?.clone(), self.get(node, 1)?.clone());
        let (id, flat, c, in_name) = match (a, b) {
            (Value::Runtime { id, flat }, Value::Const(c)) => (id, flat, c, node.input[0].clone()),
            (Value::Const(c), Value::Runtime { id, flat }) if matches!(op, "Add" | "Mul") => {
                (id, flat, c, node.input[1].clone())
            }
            (Value::Runtime { .. }, Value::Runtime { .. }) if op == "Mul" => return self.mul_values(node),
            (Value::Runtime { .. }, Value::Runtime { .. }) => {
                return Err(Error::node(&node.name, format!("{op} of two computed values unsupported")))
            }
            _ => return Err(Error::node(&node.name, format!("{op} with the constant first, or of two constants"))),
        };
        // A scalar, `[…, C, 1, 1]` against NCHW, or `[C]` / `[1, C]` against pooled features
        // (ONNX broadcasting aligns the last axes).
        let (r, s) = (c.shape.len(), &c.shape);
        let ones = |d: &[usize]| d.iter().all(|&d| d == 1);
        let per_channel = ones(s)
            || r >= 3 && ones(&s[r - 2..]) && ones(&s[..r - 3])
            || flat && (1..=2).contains(&r) && ones(&s[..r - 1]);
        if !per_channel {
            return Err(Error::node(&node.name, format!("{op} of a constant of shape {:?} unsupported", c.shape)));
        }
        let v = c.to_f32();
        if v.iter().any(|x| !x.is_finite()) || op == "Div" && v.contains(&0.0) {
            return Err(Error::node(&node.name, format!("{op} by a constant that is not finite or is 0")));
        }
        // `x ↦ m·x + d` for each channel (a scalar constant repeats).
        let (m, d): (Vec<f32>, Vec<f32>) = match op {
            "Add" => (vec![1.0; v.len()], v),
            "Sub" => (vec![1.0; v.len()], v.iter().map(|x| -x).collect()),
            "Mul" => (v.clone(), vec![0.0; v.len()]),
            _ => (v.iter().map(|x| 1.0 / x).collect(), vec![0.0; v.len()]),
        };
        let out = self.then_affine(node, id, &in_name, &m, &d)?;
        self.alias(node, Value::Runtime { id: out, flat })
    }

    /// The value `m·x + d` (per channel; a single `m` or `d` repeats) of runtime value `id`
    /// (ONNX name `in_name`): the affine that computes `x` changed in place when `node` is its
    /// only reader, else a new affine node. A normalisation keeps its statistics unless rescaled.
    pub(super) fn then_affine(
        &mut self,
        node: &NodeProto,
        id: ValueId,
        in_name: &str,
        m: &[f32],
        d: &[f32],
    ) -> Result<ValueId> {
        let at = |v: &[f32], i: usize| if v.len() == 1 { v[0] } else { v[i] };
        if let Some(a) = self.sole_affine(id, in_name) {
            if m.len() == 1 || m.len() == a.scale.len() {
                for i in 0..a.scale.len() {
                    a.scale[i] *= at(m, i);
                    a.bias[i] = at(m, i) * a.bias[i] + at(d, i);
                }
                if m.iter().any(|&x| x != 1.0) {
                    a.stats = None;
                }
                return Ok(id);
            }
        }
        self.affine_node(node, id, m, d)
    }

    /// A new affine node computing `m·x + d` (per channel; a single `m` or `d` repeats) of runtime
    /// value `id`, named after `node`.
    pub(super) fn affine_node(&mut self, node: &NodeProto, id: ValueId, m: &[f32], d: &[f32]) -> Result<ValueId> {
        let at = |v: &[f32], i: usize| if v.len() == 1 { v[0] } else { v[i] };
        let c = match m.len() {
            1 => self.channels_of(id).ok_or_else(|| {
                Error::node(&node.name, format!("{} of a value whose channel count is unknown", node.op_type))
            })?,
            n => n,
        };
        let (scale, bias) = ((0..c).map(|i| at(m, i)).collect(), (0..c).map(|i| at(d, i)).collect());
        let out = self.num_values;
        self.num_values += 1;
        let op = Op::Affine(Affine { scale, bias, stats: None });
        self.nodes.push(Node { name: format!("{}.affine", node.name), op, inputs: vec![id], output: out });
        Ok(out)
    }

    /// `Reshape` of a constant (a bias an exporter shapes `[1, C, 1, 1]`): the same values with
    /// the new shape (`0` keeps a dimension, one `-1` takes the rest).
    pub(super) fn reshape_constant(&mut self, node: &NodeProto, c: Const) -> Result<()> {
        let want =
            self.constant(node, 1)?.to_i64().ok_or_else(|| Error::node(&node.name, "Reshape's shape must be int64"))?;
        let mut shape = Vec::with_capacity(want.len());
        let mut infer = None;
        for (i, &d) in want.iter().enumerate() {
            match d {
                0 => shape.push(*c.shape.get(i).ok_or_else(|| Error::node(&node.name, "Reshape 0 past the rank"))?),
                -1 if infer.is_none() => {
                    infer = Some(i);
                    shape.push(1);
                }
                d if d > 0 => shape.push(d as usize),
                _ => return Err(Error::node(&node.name, format!("Reshape to {want:?}"))),
            }
        }
        let bad = || Error::node(&node.name, format!("Reshape of {} values to {want:?}", c.len()));
        let known = shape.iter().try_fold(1usize, |p, &d| p.checked_mul(d)).ok_or_else(bad)?;
        if let Some(i) = infer {
            if known == 0 || !c.len().is_multiple_of(known) {
                return Err(bad());
            }
            shape[i] = c.len() / known;
        }
        if shape.iter().try_fold(1usize, |p, &d| p.checked_mul(d)) != Some(c.len()) {
            return Err(Error::node(&node.name, format!("Reshape of {} values to {want:?}", c.len())));
        }
        let data = match c.data {
            ConstData::Quant { .. } => ConstData::F32(c.to_f32()),
            d => d,
        };
        self.alias(node, Value::Const(Const { shape, data }))
    }

    pub(super) fn add(&mut self, node: &NodeProto) -> Result<()> {
        let (a, b) = (self.get(node, 0)?.clone(), self.get(node, 1)?.clone());
        let (id, flat, c, in_name) = match (a, b) {
            (Value::Runtime { id: x, flat: fx }, Value::Runtime { id: y, flat: fy }) => {
                return self.push(node, Op::Add, vec![x, y], fx && fy);
            }
            (Value::Runtime { id, flat }, Value::Const(c)) => (id, flat, c, node.input[0].clone()),
            (Value::Const(c), Value::Runtime { id, flat }) => (id, flat, c, node.input[1].clone()),
            _ => return Err(Error::node(&node.name, "Add of two constants")),
        };
        let bias = c.to_f32();
        let sole_linear = self.uses.get(&in_name).copied() == Some(1);
        if let (true, Some(Node { op: Op::Linear(l), output, .. })) = (sole_linear, self.nodes.last_mut()) {
            if *output == id && bias.len() == l.out_features {
                for (b, v) in l.bias.iter_mut().zip(&bias) {
                    *b += v;
                }
                return self.alias(node, Value::Runtime { id, flat });
            }
        }
        self.with_constant(node)
    }

    pub(super) fn batch_norm(&mut self, node: &NodeProto) -> Result<()> {
        let (x, flat) = self.runtime(node, 0)?;
        let eps = attr_f(node, "epsilon").unwrap_or(1e-5);
        let p: Vec<Vec<f32>> = (1..5).map(|i| self.constant(node, i).map(Const::to_f32)).collect::<Result<_>>()?;
        let c = p[0].len();
        if p.iter().any(|v| v.len() != c) {
            return Err(Error::node(&node.name, "BatchNormalization parameters differ in length"));
        }
        let scale: Vec<f32> = (0..c).map(|i| p[0][i] / (p[3][i] + eps).sqrt()).collect();
        let bias: Vec<f32> = (0..c).map(|i| p[1][i] - p[2][i] * scale[i]).collect();
        let in_name = node.input[0].clone();
        if let Some(a) = self.sole_affine(x, &in_name) {
            if a.scale.len() == c {
                // The BatchNorm's input is the affine's output `s1·x + b1`: its statistics in
                // terms of `x` (none after another BatchNorm, or through a zero scale).
                let plain = a.stats.is_none() && a.scale.iter().all(|&s1| s1 != 0.0);
                a.stats = plain.then(|| NormStats {
                    mean: (0..c).map(|i| (p[2][i] - a.bias[i]) / a.scale[i]).collect(),
                    var: (0..c).map(|i| p[3][i] / (a.scale[i] * a.scale[i])).collect(),
                    eps: (0..c).map(|i| eps / (a.scale[i] * a.scale[i])).collect(),
                });
                for i in 0..c {
                    a.bias[i] = scale[i] * a.bias[i] + bias[i];
                    a.scale[i] *= scale[i];
                }
                return self.alias(node, Value::Runtime { id: x, flat });
            }
        }
        if x == 0 {
            // A normalisation of the input itself (a model that takes other input statistics).
            match self.input_channels {
                Some(ci) if ci != c => return Err(Error::node(&node.name, "input used with different channel counts")),
                _ => self.input_channels = Some(c),
            }
        }
        let stats = Some(NormStats { mean: p[2].clone(), var: p[3].clone(), eps: vec![eps; c] });
        self.push(node, Op::Affine(Affine { scale, bias, stats }), vec![x], flat)
    }
}
