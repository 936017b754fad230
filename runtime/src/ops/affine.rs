//! Per-channel affine `y[n, c] = scale[c]·x[n, c] + bias[c]` (a folded BatchNorm; the S/B patch).

use rayon::prelude::*;

use super::{Activation, Epilogue};
use crate::graph::Affine;
use crate::tensor::Tensor;

/// Forward on `[N, C, H, W]`, in place, followed by `act`.
pub fn forward(a: &Affine, x: &mut Tensor, act: Activation) {
    let c = x.shape[1];
    let epi = Epilogue { scale: Some(&a.scale), bias: Some(&a.bias), act };
    let plane = x.plane();
    x.data.par_chunks_mut(plane).enumerate().for_each(|(p, v)| epi.finish(p % c, 1.0, v));
}
