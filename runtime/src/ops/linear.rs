//! Fully connected layer (the classifier).

use rayon::prelude::*;

use crate::graph::{Linear, Weights};
use crate::tensor::Tensor;

/// Dot product with eight lane accumulators ([`crate::simd::dot`]).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    crate::simd::dot(a, b)
}

/// `x: [N, F, 1, 1]` (or any `[N, …]` with `F` values per sample) → `[N, out, 1, 1]`.
pub fn forward(l: &Linear, x: &Tensor) -> Tensor {
    let n = x.shape[0];
    debug_assert_eq!(x.sample_len(), l.in_features);
    let m = l.out_features;
    const ROWS: usize = 64;
    let mut cols = vec![0f32; m * n];
    let f = l.in_features;
    cols.par_chunks_mut(ROWS * n).enumerate().for_each(|(b, block)| {
        for (j, col) in block.chunks_exact_mut(n).enumerate() {
            let o = b * ROWS + j;
            for (i, v) in col.iter_mut().enumerate() {
                // int8 rows are converted inside the dot (the bits of converting them first).
                let raw = match &l.weights {
                    Weights::Int8 { values, scales } => {
                        crate::simd::dot_i8(x.sample(i), &values[o * f..(o + 1) * f]) * scales[o]
                    }
                    Weights::F32(w) => dot(x.sample(i), &w[o * f..(o + 1) * f]) * 1.0,
                };
                *v = raw + l.bias[o];
            }
        }
    });
    let mut out = Tensor::scratch([n, m, 1, 1]);
    for (o, col) in cols.chunks_exact(n).enumerate() {
        for (i, v) in col.iter().enumerate() {
            out.data[i * m + o] = *v;
        }
    }
    out
}

/// Input gradient: `dy: [N, out, 1, 1]` → `[N, in, 1, 1]` (`dx = dy·W`).
pub fn backward_input(l: &Linear, dy: &Tensor) -> Tensor {
    let n = dy.shape[0];
    let (fi, fo) = (l.in_features, l.out_features);
    let w = l.weights.to_f32();
    let mut dx = Tensor::zeros([n, fi, 1, 1]);
    dx.data.par_chunks_mut(fi).enumerate().for_each(|(i, row)| {
        for (o, &g) in dy.sample(i).iter().enumerate().take(fo) {
            row.iter_mut().zip(&w[o * fi..(o + 1) * fi]).for_each(|(d, w)| *d += g * w);
        }
    });
    dx
}

/// Parameter gradients added into `dw: [out, in]` (`Σₙ dyᵀ·x`) and `db: [out]` (`Σₙ dy`);
/// `x` is the layer's input `[N, in, …]`.
pub fn backward_params(x: &Tensor, dy: &Tensor, dw: Option<&mut [f32]>, db: Option<&mut [f32]>) {
    let n = dy.shape[0];
    let (fo, fi) = (dy.sample_len(), x.sample_len());
    if let Some(dw) = dw {
        dw.par_chunks_mut(fi).enumerate().for_each(|(o, row)| {
            for i in 0..n {
                let g = dy.data[i * fo + o];
                row.iter_mut().zip(x.sample(i)).for_each(|(d, x)| *d += g * x);
            }
        });
    }
    if let Some(db) = db {
        for i in 0..n {
            db.iter_mut().zip(dy.sample(i)).for_each(|(d, g)| *d += g);
        }
    }
}
