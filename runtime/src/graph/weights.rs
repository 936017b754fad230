//! Frozen layer weights: int8 with a scale per row, or f32.

use sha2::{Digest, Sha256};

/// Frozen weights of one layer, row-major `[rows, row_len]` with one row per output channel.
#[derive(Debug, Clone, PartialEq)]
pub enum Weights {
    /// Symmetric int8 values with one dequantization scale per row: `w[r][i] = values[r][i] · scales[r]`.
    /// The values are shared and immutable: a copy of the weights is a reference to them, and an
    /// engine that keeps a reference can tell, by address, that they are still the same
    /// ([`crate::ops::conv::Packed`]).
    Int8 { values: std::sync::Arc<[i8]>, scales: Vec<f32> },
    /// Plain f32 values (a model imported without quantization).
    F32(Vec<f32>),
}

impl Weights {
    /// Number of weight values (not counting scales).
    pub fn len(&self) -> usize {
        match self {
            Weights::Int8 { values, .. } => values.len(),
            Weights::F32(v) => v.len(),
        }
    }

    /// True when there are no weights.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held in memory: one byte per int8 value plus four per scale, or four per f32.
    pub fn resident_bytes(&self) -> usize {
        match self {
            Weights::Int8 { values, scales } => values.len() + 4 * scales.len(),
            Weights::F32(v) => 4 * v.len(),
        }
    }

    /// Row `row` (of length `out.len()`) as f32 *without* its scale, written into `out`, and
    /// that scale: int8 values convert exactly, f32 rows come with scale 1. Kernels apply the
    /// scale once per output value.
    pub fn raw_row(&self, row: usize, out: &mut [f32]) -> f32 {
        let n = out.len();
        match self {
            Weights::Int8 { values, scales } => {
                for (o, &q) in out.iter_mut().zip(&values[row * n..(row + 1) * n]) {
                    *o = q as f32;
                }
                scales[row]
            }
            Weights::F32(v) => {
                out.copy_from_slice(&v[row * n..(row + 1) * n]);
                1.0
            }
        }
    }

    /// Every value as f32 with its row scale applied (`[rows, len / rows]`).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Weights::Int8 { values, scales } => {
                let row = values.len() / scales.len().max(1);
                values.iter().enumerate().map(|(i, &q)| q as f32 * scales[i / row]).collect()
            }
            Weights::F32(v) => v.clone(),
        }
    }

    /// The same weights multiplied by `factor` (folded into the scales when int8).
    pub fn scaled(self, factor: f32) -> Self {
        match self {
            Weights::Int8 { values, scales } => {
                Weights::Int8 { values, scales: scales.iter().map(|s| s * factor).collect() }
            }
            Weights::F32(v) => Weights::F32(v.iter().map(|x| x * factor).collect()),
        }
    }

    pub(super) fn hash_into(&self, h: &mut Sha256) {
        match self {
            Weights::Int8 { values, scales } => {
                h.update(b"i8");
                h.update((values.len() as u64).to_le_bytes());
                h.update(values.iter().map(|&v| v as u8).collect::<Vec<u8>>());
                hash_f32s(h, scales);
            }
            Weights::F32(v) => {
                h.update(b"f32");
                hash_f32s(h, v);
            }
        }
    }
}

pub(super) fn hash_f32s(h: &mut Sha256, v: &[f32]) {
    h.update((v.len() as u64).to_le_bytes());
    for x in v {
        h.update(x.to_le_bytes());
    }
}
