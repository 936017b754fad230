//! Depthwise convolution (one kernel per channel), direct loops.

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
                let lo = if pl > kx { (pl - kx).div_ceil(sw) } else { 0 };
                let hi = if iw + pl > kx { ((iw + pl - kx - 1) / sw + 1).min(ow) } else { 0 };
                if lo >= hi {
                    continue;
                }
                if sw == 1 {
                    let start = lo + kx - pl;
                    for (o, xv) in orow[lo..hi].iter_mut().zip(&xrow[start..start + hi - lo]) {
                        *o += wv * xv;
                    }
                } else {
                    for (j, o) in orow[lo..hi].iter_mut().enumerate() {
                        *o += wv * xrow[(lo + j) * sw + kx - pl];
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
