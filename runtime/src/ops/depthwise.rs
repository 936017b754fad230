//! Depthwise convolution (one kernel per channel), direct loops: forward, input gradient and
//! kernel gradient. The plane helpers also serve the dense stem convolution.

use rayon::prelude::*;

use super::Epilogue;
use crate::graph::{Depthwise, Window};
use crate::tensor::Tensor;

/// `out[oy, ox] += Σ k[ky, kx] · x[oy·sh + ky − pt, ox·sw + kx − pl]` over one channel plane,
/// zero padding outside `x`. Shapes: `x: [ih, iw]`, `k: [kh, kw]`, `out: [oh, ow]`.
pub(crate) fn accumulate_plane(
    x: &[f32],
    (ih, iw): (usize, usize),
    k: &[f32],
    win: &Window,
    out: &mut [f32],
    ow: usize,
) {
    let [kh, kw] = win.kernel;
    let [sh, sw] = win.stride;
    let (pt, pl) = (win.pads[0], win.pads[1]);
    for (oy, orow) in out.chunks_exact_mut(ow).enumerate() {
        for ky in 0..kh {
            let iy = oy * sh + ky;
            if iy < pt || iy - pt >= ih {
                continue;
            }
            let xrow = &x[(iy - pt) * iw..(iy - pt + 1) * iw];
            for kx in 0..kw {
                let wv = k[ky * kw + kx];
                let (lo, hi) = column_range(iw, ow, kx, pl, sw);
                if lo >= hi {
                    continue;
                }
                let start = lo * sw + kx - pl;
                if sw == 1 {
                    for (o, xv) in orow[lo..hi].iter_mut().zip(&xrow[start..start + hi - lo]) {
                        *o += wv * xv;
                    }
                } else {
                    for (o, xv) in orow[lo..hi].iter_mut().zip(xrow[start..].iter().step_by(sw)) {
                        *o += wv * xv;
                    }
                }
            }
        }
    }
}

/// Forward: `x: [N, C, H, W]` → `[N, C, OH, OW]`, each channel convolved with its own kernel,
/// then `epi` applied per channel.
pub fn forward(layer: &Depthwise, x: &Tensor, epi: &Epilogue) -> Tensor {
    let [n, c, ih, iw] = x.shape;
    debug_assert_eq!(c, layer.channels);
    let (oh, ow) = layer.window.output_size(ih, iw).expect("shape checked by Graph::shapes");
    let mut out = Tensor::zeros([n, c, oh, ow]);
    let kl = layer.window.kernel[0] * layer.window.kernel[1];
    out.data.par_chunks_mut(oh * ow).enumerate().for_each(|(p, plane)| {
        let ch = p % c;
        let mut k = [0f32; 64];
        let k = if kl <= 64 { &mut k[..kl] } else { &mut vec![0f32; kl][..] };
        let q = layer.weights.raw_row(ch, k);
        accumulate_plane(&x.data[p * ih * iw..(p + 1) * ih * iw], (ih, iw), k, &layer.window, plane, ow);
        epi.finish(ch, q, plane);
    });
    out
}

/// The transpose of [`accumulate_plane`]: `dx[oy·sh + ky − pt, ox·sw + kx − pl] += k[ky, kx] ·
/// dy[oy, ox]`, skipping positions in the padding. Shapes: `dy: [oh, ow]`, `dx: [ih, iw]`.
pub(crate) fn scatter_plane(dy: &[f32], ow: usize, k: &[f32], win: &Window, dx: &mut [f32], (ih, iw): (usize, usize)) {
    let [kh, kw] = win.kernel;
    let [sh, sw] = win.stride;
    let (pt, pl) = (win.pads[0], win.pads[1]);
    for (oy, grow) in dy.chunks_exact(ow).enumerate() {
        for ky in 0..kh {
            let iy = oy * sh + ky;
            if iy < pt || iy - pt >= ih {
                continue;
            }
            let xrow = &mut dx[(iy - pt) * iw..(iy - pt + 1) * iw];
            for kx in 0..kw {
                let wv = k[ky * kw + kx];
                let (lo, hi) = column_range(iw, ow, kx, pl, sw);
                if lo >= hi {
                    continue;
                }
                let start = lo * sw + kx - pl;
                if sw == 1 {
                    for (d, g) in xrow[start..start + hi - lo].iter_mut().zip(&grow[lo..hi]) {
                        *d += wv * g;
                    }
                } else {
                    for (d, g) in xrow[start..].iter_mut().step_by(sw).zip(&grow[lo..hi]) {
                        *d += wv * g;
                    }
                }
            }
        }
    }
}

/// The kernel gradient of [`accumulate_plane`]: `dk[ky, kx] += Σ dy[oy, ox] · x[oy·sh + ky − pt,
/// ox·sw + kx − pl]`. Shapes: `x: [ih, iw]`, `dy: [oh, ow]`, `dk: [kh, kw]`.
pub(crate) fn correlate_plane(
    x: &[f32],
    (ih, iw): (usize, usize),
    dy: &[f32],
    ow: usize,
    win: &Window,
    dk: &mut [f32],
) {
    let [kh, kw] = win.kernel;
    let [sh, sw] = win.stride;
    let (pt, pl) = (win.pads[0], win.pads[1]);
    for (oy, grow) in dy.chunks_exact(ow).enumerate() {
        for ky in 0..kh {
            let iy = oy * sh + ky;
            if iy < pt || iy - pt >= ih {
                continue;
            }
            let xrow = &x[(iy - pt) * iw..(iy - pt + 1) * iw];
            for kx in 0..kw {
                let (lo, hi) = column_range(iw, ow, kx, pl, sw);
                if lo >= hi {
                    continue;
                }
                let start = lo * sw + kx - pl;
                dk[ky * kw + kx] += if sw == 1 {
                    super::linear::dot(&grow[lo..hi], &xrow[start..start + hi - lo])
                } else {
                    grow[lo..hi].iter().zip(xrow[start..].iter().step_by(sw)).map(|(g, x)| g * x).sum::<f32>()
                };
            }
        }
    }
}

/// Output columns `lo..hi` whose tap `kx` lands inside a row of width `iw`.
fn column_range(iw: usize, ow: usize, kx: usize, pl: usize, sw: usize) -> (usize, usize) {
    let lo = if pl > kx { (pl - kx).div_ceil(sw) } else { 0 };
    let hi = if iw + pl > kx { ((iw + pl - kx - 1) / sw + 1).min(ow) } else { 0 };
    (lo, hi.max(lo))
}

/// Input gradient: `dy: [N, C, OH, OW]` → `dx: [N, C, ih, iw]`.
pub fn backward_input(layer: &Depthwise, dy: &Tensor, (ih, iw): (usize, usize)) -> Tensor {
    let [n, c, _, ow] = dy.shape;
    let kl = layer.window.kernel[0] * layer.window.kernel[1];
    let w = layer.weights.to_f32();
    let mut dx = Tensor::zeros([n, c, ih, iw]);
    let plane = dy.plane();
    dx.data.par_chunks_mut(ih * iw).enumerate().for_each(|(p, out)| {
        let ch = p % c;
        scatter_plane(
            &dy.data[p * plane..(p + 1) * plane],
            ow,
            &w[ch * kl..(ch + 1) * kl],
            &layer.window,
            out,
            (ih, iw),
        );
    });
    dx
}

/// Kernel gradient `[C, kh·kw]`, added into `dw`: `x` is the layer's input, `dy` the gradient of
/// its output.
pub fn backward_weight(layer: &Depthwise, x: &Tensor, dy: &Tensor, dw: &mut [f32]) {
    let [n, c, ih, iw] = x.shape;
    let kl = layer.window.kernel[0] * layer.window.kernel[1];
    let (ow, plane, xplane) = (dy.shape[3], dy.plane(), ih * iw);
    dw.par_chunks_mut(kl).enumerate().for_each(|(ch, dk)| {
        for img in 0..n {
            let p = img * c + ch;
            let (xs, gs) = (&x.data[p * xplane..(p + 1) * xplane], &dy.data[p * plane..(p + 1) * plane]);
            correlate_plane(xs, (ih, iw), gs, ow, &layer.window, dk);
        }
    });
}
