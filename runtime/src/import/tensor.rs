//! Decoding ONNX initializers into plain vectors, validated before anything is allocated.

use tract_onnx::data_resolver::MmapDataResolver;
use tract_onnx::pb::TensorProto;
use tract_onnx::prelude::{Datum, Tensor};

use crate::{Error, Result};

/// Largest initializer the importer accepts, in elements (far above any edge model).
const MAX_ELEMENTS: usize = 1 << 28;

/// A constant of the ONNX graph: an initializer, a `Constant` node, or a dequantized weight.
#[derive(Debug, Clone)]
pub(crate) struct Const {
    pub shape: Vec<usize>,
    pub data: ConstData,
}

#[derive(Debug, Clone)]
pub(crate) enum ConstData {
    F32(Vec<f32>),
    I64(Vec<i64>),
    /// Integers `q − zero_point` with scales along `axis` (`None`: one scale for all).
    Quant {
        values: Vec<i32>,
        scales: Vec<f32>,
        axis: Option<usize>,
    },
}

impl Const {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values as f32 (dequantized where quantized).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            ConstData::F32(v) => v.clone(),
            ConstData::I64(v) => v.iter().map(|&x| x as f32).collect(),
            ConstData::Quant { values, scales, axis } => {
                let (_, inner) = split_at_axis(&self.shape, *axis);
                values
                    .iter()
                    .enumerate()
                    .map(|(i, &q)| {
                        let s = match axis {
                            None => scales[0],
                            Some(_) => scales[(i / inner) % scales.len()],
                        };
                        q as f32 * s
                    })
                    .collect()
            }
        }
    }

    /// The values as i64 (for shapes and integer attributes given as inputs).
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        match &self.data {
            ConstData::I64(v) => Some(v.clone()),
            _ => None,
        }
    }

    /// A scalar f32 (Clip bounds), if this is one.
    pub fn scalar_f32(&self) -> Option<f32> {
        match (&self.data, self.len()) {
            (ConstData::F32(v), 1) => Some(v[0]),
            _ => None,
        }
    }
}

/// For a scale along `axis`: (number of scale groups, elements per group step).
fn split_at_axis(shape: &[usize], axis: Option<usize>) -> (usize, usize) {
    match axis {
        None => (1, shape.iter().product()),
        Some(a) => (shape[a], shape[a + 1..].iter().product()),
    }
}

fn element_size(data_type: i32) -> Option<usize> {
    match data_type {
        1 => Some(4),     // FLOAT
        2 | 3 => Some(1), // UINT8, INT8
        6 => Some(4),     // INT32
        7 => Some(8),     // INT64
        _ => None,
    }
}

/// Decodes one initializer (or `Constant` value) after checking its type, element count and
/// data length, so that a malformed file gives an error and never a panic or a huge allocation.
pub(crate) fn decode(t: &TensorProto, what: &str) -> Result<Const> {
    let bad = |why: String| Error::InvalidModel(format!("tensor '{what}': {why}"));
    let size = element_size(t.data_type).ok_or_else(|| bad(format!("unsupported ONNX data type {}", t.data_type)))?;
    if t.data_location == Some(1) {
        return Err(bad("external data files are not supported; embed the weights".into()));
    }
    let mut shape = Vec::with_capacity(t.dims.len());
    let mut count: usize = 1;
    for &d in &t.dims {
        let d = usize::try_from(d).map_err(|_| bad(format!("negative dimension {d}")))?;
        count = count.checked_mul(d).filter(|&c| c <= MAX_ELEMENTS).ok_or_else(|| bad("too many elements".into()))?;
        shape.push(d);
    }
    let stored = if !t.raw_data.is_empty() {
        t.raw_data.len() / size
    } else {
        match t.data_type {
            1 => t.float_data.len(),
            2 | 3 | 6 => t.int32_data.len(),
            _ => t.int64_data.len(),
        }
    };
    if (!t.raw_data.is_empty() && t.raw_data.len() != count * size) || stored != count {
        return Err(bad(format!("holds {stored} values for a shape of {count}")));
    }
    let tensor = tract_onnx::tensor::load_tensor(&MmapDataResolver, t, None).map_err(|e| bad(format!("{e:#}")))?;
    let data = match t.data_type {
        1 => ConstData::F32(values::<f32>(&tensor, what)?),
        7 => ConstData::I64(values::<i64>(&tensor, what)?),
        _ => ConstData::Quant { values: values::<i32>(&tensor, what)?, scales: vec![1.0], axis: None },
    };
    Ok(Const { shape, data })
}

fn values<T: Datum + Copy>(t: &Tensor, what: &str) -> Result<Vec<T>> {
    let cast = t.cast_to::<T>().map_err(|e| Error::InvalidModel(format!("tensor '{what}': {e:#}")))?;
    let view = cast.to_plain_array_view::<T>().map_err(|e| Error::InvalidModel(format!("tensor '{what}': {e:#}")))?;
    Ok(view.iter().copied().collect())
}

/// `DequantizeLinear(x, scale, zero_point, axis)` applied to constants.
pub(crate) fn dequantize(node: &str, x: &Const, scale: &Const, zero: Option<&Const>, axis: i64) -> Result<Const> {
    let values = match &x.data {
        ConstData::Quant { values, .. } => values,
        _ => return Err(Error::node(node, "DequantizeLinear input must be int8 or uint8")),
    };
    let scales = match &scale.data {
        ConstData::F32(s) => s.clone(),
        _ => return Err(Error::node(node, "DequantizeLinear scale must be f32")),
    };
    let zeros: Vec<i32> = match zero.map(|z| &z.data) {
        None => vec![0; scales.len()],
        Some(ConstData::Quant { values, .. }) => values.clone(),
        Some(_) => return Err(Error::node(node, "DequantizeLinear zero point must be int8 or uint8")),
    };
    if zeros.len() != scales.len() {
        return Err(Error::node(node, "scale and zero point differ in length"));
    }
    let rank = x.shape.len() as i64;
    let axis = if scales.len() == 1 && scale.shape.is_empty() {
        None
    } else {
        let a = if axis < 0 { axis + rank } else { axis };
        if a < 0 || a >= rank || x.shape[a as usize] != scales.len() {
            return Err(Error::node(
                node,
                format!("{} scales do not match axis {axis} of {:?}", scales.len(), x.shape),
            ));
        }
        Some(a as usize)
    };
    let (_, inner) = split_at_axis(&x.shape, axis);
    let n = scales.len();
    let shifted =
        values.iter().enumerate().map(|(i, &q)| q - zeros[if axis.is_some() { (i / inner) % n } else { 0 }]).collect();
    Ok(Const { shape: x.shape.clone(), data: ConstData::Quant { values: shifted, scales, axis } })
}

/// `[k, m]` row-major → `[m, k]` row-major.
fn transpose<T: Copy + Default>(v: &[T], k: usize, m: usize) -> Vec<T> {
    let mut t = vec![T::default(); v.len()];
    for i in 0..k {
        for j in 0..m {
            t[j * k + i] = v[i * m + j];
        }
    }
    t
}

/// `v` (laid out as `c.shape`) with output channels first.
fn rows_first<T: Copy + Default>(v: Vec<T>, c: &Const, out_axis: usize) -> Vec<T> {
    if out_axis == 0 {
        v
    } else {
        transpose(&v, c.shape[0], c.shape[1])
    }
}

/// The constant as layer weights with one row per output channel. `out_axis` is the axis of
/// `c.shape` that indexes output channels (0 for conv kernels and `[out, in]` matrices, 1 for
/// `[in, out]` matrices, which are transposed). Per-output-channel or per-tensor int8 stays
/// int8; anything else is dequantized to f32.
pub(crate) fn to_weights(c: &Const, out_axis: usize) -> crate::graph::Weights {
    use crate::graph::Weights;
    let rows = c.shape[out_axis];
    if let ConstData::Quant { values, scales, axis } = &c.data {
        let fits = values.iter().all(|&q| (-128..=127).contains(&q));
        let per_row = match axis {
            None => Some(vec![scales[0]; rows]),
            Some(a) if *a == out_axis => Some(scales.clone()),
            Some(_) => None,
        };
        if let (true, Some(scales)) = (fits, per_row) {
            let values = values.iter().map(|&q| q as i8).collect();
            return Weights::Int8 { values: rows_first(values, c, out_axis).into(), scales };
        }
        log::warn!("weights quantized along another axis or beyond int8: kept as f32");
    }
    Weights::F32(rows_first(c.to_f32(), c, out_axis))
}
