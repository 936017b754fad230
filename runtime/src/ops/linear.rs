//! Fully connected layer (the classifier).

use rayon::prelude::*;

use crate::graph::Linear;
use crate::tensor::Tensor;

/// Dot product with eight independent accumulators (vectorises without reassociation flags).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `x: [N, F, 1, 1]` (or any `[N, …]` with `F` values per sample) → `[N, out, 1, 1]`.
pub fn forward(l: &Linear, x: &Tensor) -> Tensor {
    let n = x.shape[0];
    debug_assert_eq!(x.sample_len(), l.in_features);
    let m = l.out_features;
    let cols: Vec<Vec<f32>> = (0..m)
        .into_par_iter()
        .map(|o| {
            let mut row = vec![0f32; l.in_features];
            let q = l.weights.raw_row(o, &mut row);
            (0..n).map(|i| dot(x.sample(i), &row) * q + l.bias[o]).collect()
        })
        .collect();
    let mut out = Tensor::zeros([n, m, 1, 1]);
    for (o, col) in cols.iter().enumerate() {
        for (i, v) in col.iter().enumerate() {
            out.data[i * m + o] = *v;
        }
    }
    out
}
