//! Per-channel affine `y[n, c] = scale[c]·x[n, c] + bias[c]` (a folded BatchNorm; the S/B patch).

use rayon::prelude::*;

use super::Activation;
use crate::graph::Affine;
use crate::tensor::Tensor;

/// Forward on `[N, C, H, W]`, in place, followed by `act`.
pub fn forward(a: &Affine, x: &mut Tensor, act: Activation) {
    let c = x.shape[1];
    let plane = x.plane();
    x.data
        .par_chunks_mut(plane)
        .enumerate()
        .with_min_len(super::planes_per_task(plane))
        .for_each(|(p, v)| crate::simd::epilogue(v, a.scale[p % c], a.bias[p % c], act));
}

/// Input gradient in place: `dy: [N, C, H, W]` becomes `dx = scale[c]·dy`.
pub fn backward_input(a: &Affine, dy: &mut Tensor) {
    let c = dy.shape[1];
    let plane = dy.plane();
    dy.data.par_chunks_mut(plane).enumerate().with_min_len(super::planes_per_task(plane)).for_each(|(p, v)| {
        let s = a.scale[p % c];
        v.iter_mut().for_each(|g| *g *= s);
    });
}

/// Parameter gradients, added into `dscale[c] += Σ dy·x` (when given; needs the layer input `x`)
/// and `dbias[c] += Σ dy`, summed over the batch and the plane.
pub fn backward_params(dy: &Tensor, x: Option<&Tensor>, dscale: Option<&mut [f32]>, dbias: Option<&mut [f32]>) {
    let [n, c, ..] = dy.shape;
    let plane = dy.plane();
    let sums: Vec<(f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut s, mut b) = (0f64, 0f64);
            for img in 0..n {
                let p = (img * c + ch) * plane;
                let g = &dy.data[p..p + plane];
                b += g.iter().sum::<f32>() as f64;
                if let Some(x) = x {
                    s += super::linear::dot(g, &x.data[p..p + plane]) as f64;
                }
            }
            (s as f32, b as f32)
        })
        .collect();
    if let Some(ds) = dscale {
        ds.iter_mut().zip(&sums).for_each(|(d, s)| *d += s.0);
    }
    if let Some(db) = dbias {
        db.iter_mut().zip(&sums).for_each(|(d, s)| *d += s.1);
    }
}

/// Forward of the affine followed by `act` into a new tensor, `y = act(scale[c]·x + bias[c])`,
/// leaving `x: [N, C, H, W]` for the backward pass ([`backward_act`]).
pub fn forward_act(a: &Affine, x: &Tensor, act: Activation) -> Tensor {
    let c = x.shape[1];
    let plane = x.plane();
    let mut y = Tensor::scratch(x.shape);
    let planes = y.data.par_chunks_mut(plane).zip(x.data.par_chunks(plane)).enumerate();
    planes.with_min_len(super::planes_per_task(plane)).for_each(|(p, (y, x))| {
        crate::simd::affine_act(y, x, a.scale[p % c], a.bias[p % c], act);
    });
    y
}

/// Backward of [`forward_act`] from its input `x`: `dy` (the gradient of `y`) is masked where
/// `act` passed nothing, the parameter gradients are added into `dscale[c] += Σ g·x` and
/// `dbias[c] += Σ g` (when given), and `dy` becomes the input gradient `scale[c]·g` when
/// `need_dx` (otherwise its contents are unspecified).
pub fn backward_act(
    a: &Affine,
    x: &Tensor,
    act: Activation,
    dy: &mut Tensor,
    dscale: Option<&mut [f32]>,
    dbias: Option<&mut [f32]>,
    need_dx: bool,
) {
    let [n, c, ..] = dy.shape;
    let plane = dy.plane();
    let sums: Vec<(f32, f32)> = dy
        .data
        .par_chunks_mut(plane)
        .zip(x.data.par_chunks(plane))
        .enumerate()
        .with_min_len(super::planes_per_task(plane))
        .map(|(p, (d, x))| crate::simd::affine_act_backward(d, x, a.scale[p % c], a.bias[p % c], act, need_dx))
        .collect();
    add_sums(&sums, (n, c), dscale, dbias);
}

/// Adds per-plane sums `(Σ g·x, Σ g)` (index `n·C + c`, as [`crate::simd::affine_act_backward`]
/// returns them) over the batch into `dscale[c]` and `dbias[c]` (when given), in f64.
pub(crate) fn add_sums(
    sums: &[(f32, f32)],
    (n, c): (usize, usize),
    dscale: Option<&mut [f32]>,
    dbias: Option<&mut [f32]>,
) {
    let channel =
        |ch: usize, f: fn(&(f32, f32)) -> f32| (0..n).map(|i| f(&sums[i * c + ch]) as f64).sum::<f64>() as f32;
    if let Some(ds) = dscale {
        ds.iter_mut().enumerate().for_each(|(ch, d)| *d += channel(ch, |s| s.0));
    }
    if let Some(db) = dbias {
        db.iter_mut().enumerate().for_each(|(ch, d)| *d += channel(ch, |s| s.1));
    }
}

/// Backward of an affine followed by an activation whose mask was kept (the affine's scale does
/// not train): `g = dy` where the mask is set, else 0; adds `dbias[c] += Σ g` (when given) and
/// turns `dy` into the input gradient `scale[c]·g` when `need_dx` (otherwise its contents are
/// unspecified).
pub fn backward_masked(
    a: &Affine,
    mask: &super::activation::Mask,
    dy: &mut Tensor,
    dbias: Option<&mut [f32]>,
    need_dx: bool,
) {
    let [n, c, ..] = dy.shape;
    let plane = dy.plane().max(1);
    let sums: Vec<f32> = dy
        .data
        .par_chunks_mut(plane)
        .zip(mask.planes().collect::<Vec<_>>())
        .enumerate()
        .with_min_len(super::planes_per_task(plane))
        .map(|(p, (v, b))| crate::simd::masked_scale(v, b, a.scale[p % c], need_dx))
        .collect();
    if let Some(db) = dbias {
        db.iter_mut().enumerate().for_each(|(ch, d)| *d += (0..n).map(|i| sums[i * c + ch] as f64).sum::<f64>() as f32);
    }
}
