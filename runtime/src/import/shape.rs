//! Shape arithmetic that exporters write to flatten pooled features (Paddle:
//! `Shape → Cast → Slice → Cast → Concat([N], [F]) → Reshape`), and `MaxPool`. The shape of a
//! computed value is known only symbolically here ([`Dim`]); the flatten it feeds is checked
//! against the classifier's features when the graph's shapes are inferred.

use super::tensor::{Const, ConstData};
use super::{attr, attr_i, attr_ints, positive, Importer, Value};
use crate::graph::{Op, Window};
use crate::{Error, Result};
use tract_onnx::pb::NodeProto;

/// One entry of a shape computed from a runtime value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dim {
    /// The batch size.
    Batch,
    /// A size known while importing.
    Known(i64),
    /// A size that depends on the input image.
    Spatial,
}

/// ONNX `TensorProto.DataType` codes `Cast` converts between here.
const FLOAT: i64 = 1;
const INT32: i64 = 6;
const INT64: i64 = 7;

impl Importer {
    /// `Shape` of a computed value: `[N, C, H, W]`, with H and W known for pooled features.
    pub(super) fn shape_of(&mut self, node: &NodeProto) -> Result<()> {
        let (x, flat) = self.runtime(node, 0)?;
        let c = self.channels_of(x).map_or(Dim::Spatial, |c| Dim::Known(c as i64));
        let hw = if flat { Dim::Known(1) } else { Dim::Spatial };
        self.alias(node, Value::Dims(vec![Dim::Batch, c, hw, hw]))
    }

    /// `Cast`: of a shape or an integer constant to int32/int64 (a no-op), or of a computed value
    /// to float (a no-op).
    pub(super) fn cast(&mut self, node: &NodeProto) -> Result<()> {
        let to = attr_i(node, "to", 0);
        let v = match (self.get(node, 0)?.clone(), to) {
            (v @ Value::Dims(_), INT32 | INT64) => v,
            (v @ Value::Runtime { .. }, FLOAT) => v,
            (Value::Const(c), INT32 | INT64) => match c.data {
                ConstData::I64(_) => Value::Const(c),
                ConstData::Quant { values, axis: None, .. } => Value::Const(Const {
                    shape: c.shape,
                    data: ConstData::I64(values.iter().map(|&v| v as i64).collect()),
                }),
                _ => return Err(Error::node(&node.name, "Cast of a float or quantized constant to an integer")),
            },
            (Value::Const(c), FLOAT) => Value::Const(Const { data: ConstData::F32(c.to_f32()), ..c }),
            _ => return Err(Error::node(&node.name, format!("Cast to data type {to} unsupported here"))),
        };
        self.alias(node, v)
    }

    /// `Slice` of a shape along its only axis, step 1 (bounds as inputs from opset 10, as
    /// attributes before).
    pub(super) fn slice(&mut self, node: &NodeProto) -> Result<()> {
        let Value::Dims(dims) = self.get(node, 0)?.clone() else {
            return Err(Error::node(&node.name, "Slice is supported only of a shape"));
        };
        let ints = |i: usize, name: &str| -> Result<Option<Vec<i64>>> {
            if self.opset < 10 {
                return Ok(attr_ints(node, name));
            }
            match self.get_opt(node, i)? {
                None => Ok(None),
                Some(Value::Const(c)) => {
                    c.to_i64().map(Some).ok_or_else(|| Error::node(&node.name, "Slice bounds must be int64"))
                }
                Some(_) => Err(Error::node(&node.name, "Slice bounds must be constants")),
            }
        };
        let (starts, ends) = (ints(1, "starts")?, ints(2, "ends")?);
        let (axes, steps) = (ints(3, "axes")?, ints(4, "steps")?);
        let one = |v: Option<Vec<i64>>, default: i64| match v.as_deref() {
            None => Some(default),
            Some([x]) => Some(*x),
            Some(_) => None,
        };
        let n = dims.len() as i64;
        let (Some(start), Some(end), Some(axis), Some(1)) = (one(starts, 0), one(ends, n), one(axes, 0), one(steps, 1))
        else {
            return Err(Error::node(&node.name, "Slice of a shape only along one axis with step 1"));
        };
        if axis != 0 && axis != -1 {
            return Err(Error::node(&node.name, format!("Slice of a shape along axis {axis}")));
        }
        let at = |i: i64| (if i < 0 { i + n } else { i }).clamp(0, n) as usize;
        let (s, e) = (at(start), at(end));
        self.alias(node, Value::Dims(dims[s..e.max(s)].to_vec()))
    }

    /// `Concat` along axis 0 of shapes and 1-D integer constants.
    pub(super) fn concat(&mut self, node: &NodeProto) -> Result<()> {
        if !matches!(attr_i(node, "axis", 0), 0 | -1) {
            return Err(Error::node(&node.name, "Concat is supported only of shapes (axis 0)"));
        }
        let mut dims = Vec::new();
        for i in 0..node.input.len() {
            match self.get(node, i)? {
                Value::Dims(d) => dims.extend_from_slice(d),
                Value::Const(c) if c.shape.len() <= 1 => match c.to_i64() {
                    Some(v) => dims.extend(v.into_iter().map(Dim::Known)),
                    None => return Err(Error::node(&node.name, "Concat of shapes with a non-integer constant")),
                },
                _ => return Err(Error::node(&node.name, "Concat is supported only of shapes")),
            }
        }
        self.alias(node, Value::Dims(dims))
    }

    /// `Flatten`, `Reshape` or `Squeeze` of pooled features `[N, F, 1, 1]` to `[N, F]` (a
    /// reshape to a shape computed here must keep the batch and give one more axis).
    pub(super) fn flatten(&mut self, node: &NodeProto) -> Result<()> {
        let (x, flat) = self.runtime(node, 0)?;
        if !flat {
            return Err(Error::node(&node.name, format!("{} is supported only after pooling", node.op_type)));
        }
        if node.op_type == "Flatten" && attr_i(node, "axis", 1) != 1 {
            return Err(Error::node(&node.name, "Flatten only with axis 1"));
        }
        if node.op_type == "Reshape" {
            if let Value::Dims(d) = self.get(node, 1)? {
                let ok = matches!(d.as_slice(), [Dim::Batch | Dim::Known(0), Dim::Known(f)] if *f == -1 || *f > 0);
                if !ok {
                    return Err(Error::node(&node.name, format!("Reshape of pooled features to {d:?}")));
                }
            }
        }
        self.alias(node, Value::Runtime { id: x, flat })
    }

    /// `MaxPool` (2-D, no dilation, `ceil_mode` 0, one output), padding as for `Conv`.
    pub(super) fn max_pool(&mut self, node: &NodeProto) -> Result<()> {
        let (x, flat) = self.runtime(node, 0)?;
        let kernel = positive(&node.name, "kernel_shape", &attr_ints(node, "kernel_shape").unwrap_or_default(), 2)?;
        let stride = positive(&node.name, "strides", &attr_ints(node, "strides").unwrap_or(vec![1, 1]), 2)?;
        let auto_pad = attr(node, "auto_pad").map(|a| a.s.clone()).unwrap_or_default();
        let pads = match &auto_pad[..] {
            b"" | b"NOTSET" => positive(&node.name, "pads", &attr_ints(node, "pads").unwrap_or(vec![0; 4]), 4)?,
            b"VALID" => vec![0; 4],
            _ => return Err(Error::node(&node.name, "MaxPool with auto_pad SAME unsupported")),
        };
        let dilated = attr_ints(node, "dilations").is_some_and(|d| d.iter().any(|&d| d != 1));
        if dilated || attr_i(node, "ceil_mode", 0) != 0 || attr_i(node, "storage_order", 0) != 0 {
            return Err(Error::node(&node.name, "MaxPool with dilations, ceil_mode or storage_order unsupported"));
        }
        if kernel.contains(&0) || stride.contains(&0) {
            return Err(Error::node(&node.name, "MaxPool with a zero kernel side or stride"));
        }
        // Every window must cover an input pixel.
        if pads[0] >= kernel[0] || pads[2] >= kernel[0] || pads[1] >= kernel[1] || pads[3] >= kernel[1] {
            return Err(Error::node(&node.name, format!("MaxPool pads {pads:?} as large as its kernel {kernel:?}")));
        }
        let window = Window::new([kernel[0], kernel[1]], [stride[0], stride[1]], [pads[0], pads[1], pads[2], pads[3]]);
        self.push(node, Op::MaxPool(window), vec![x], flat)
    }
}
