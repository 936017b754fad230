//! Dense convolution (groups = 1): forward, input gradient and weight gradient. The forward and
//! the 1×1 input gradient are matrix products on [`crate::simd::gemm_block`] (other windows
//! through im2col); the other gradients use `matrixmultiply` (via ndarray's safe
//! `general_mat_mul`) and direct loops.

use std::sync::Arc;

use ndarray::{ArrayView2, ArrayViewMut2};
use rayon::prelude::*;

use super::depthwise::{convolve_transposed, correlate, Padded};
use super::{Activation, Epilogue, Then};
use crate::graph::{Affine, Conv, Weights};
use crate::tensor::Tensor;

/// Tasks per image of the 1×1 path: enough for the thread pool across the batch.
fn tasks_per_image(batch: usize) -> usize {
    (4 * rayon::current_num_threads().max(1)).div_ceil(batch).max(1)
}

/// Images per task of [`gemm_batch`]: one when the images are large enough to split, else
/// enough of them for at least 256 columns a task, the tasks a multiple of the threads.
fn images_per_task(n: usize, hw: usize, threads: usize) -> usize {
    let want = (n * hw).div_ceil(256);
    if want >= n {
        return 1;
    }
    n.div_ceil(want.max(1).next_multiple_of(threads).min(n))
}

/// The runs of virtual columns `s..s + cols` over images of `hw` columns each:
/// `(image, first column in it, offset from s, length)`.
fn runs(s: usize, cols: usize, hw: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    let mut j = s;
    std::iter::from_fn(move || {
        (j < s + cols).then(|| {
            let (i, p) = (j / hw, j % hw);
            let len = (hw - p).min(s + cols - j);
            j += len;
            (i, p, j - len - s, len)
        })
    })
}

/// Columns per finished segment of [`gemm_batch`] (a multiple of every tile width).
const SEGMENT: usize = 256;

/// The left operand of [`gemm_batch`]: `a`, an `m × k` matrix packed by
/// [`crate::simd::pack_panels`], and the rows' `scale` (none when empty).
struct Lhs<'a> {
    a: &'a [f32],
    m: usize,
    k: usize,
    scale: &'a [f32],
}

/// `c[i] = a·x[i]` for every image `i` of a batch (`a`, `m`, `k` and `scale` from `lhs`):
/// `x: [n, k, hw]`; `c: [n, m, hw]`, row `r` multiplied by `scale[r]` unless `scale` is empty. Tasks are single images (split into row blocks when the
/// batch is small) or, for small planes, groups of images whose columns run on as one matrix.
/// Where `k > 64`, a plane has at least 2048 columns and a task has all `m` rows, each segment of
/// a single image's columns is first copied into one block (its `k` rows lie a whole plane
/// apart, too many streams for the hardware prefetcher); the products are the same.
/// `finish(row, c_values, c2_values)` runs on every finished segment of a row of one image while
/// it is in cache, with the same segment of `c2` (a second output of `c`'s shape) when given.
fn gemm_batch(
    lhs: Lhs,
    (x, hw): (&[f32], usize),
    c: &mut [f32],
    mut c2: Option<&mut [f32]>,
    finish: &(impl Fn(usize, &mut [f32], Option<&mut [f32]>) + Sync),
) {
    let Lhs { a, m, k, scale } = lhs;
    let n = x.len() / (k * hw);
    let (mr, nr) = crate::simd::gemm_tile();
    let g = images_per_task(n, hw, rayon::current_num_threads().max(1));
    let block = if g == 1 { m.div_ceil(tasks_per_image(n)).next_multiple_of(mr).min(m) } else { m };
    let mut tasks = Vec::new();
    let mut rest = c;
    for img in (0..n).step_by(g) {
        let imgs = g.min(n - img);
        for r0 in (0..m).step_by(block) {
            let rows = block.min(m - r0);
            let (cc, tail) = rest.split_at_mut(imgs * rows * hw);
            rest = tail;
            let cc2 = c2.take().map(|v| {
                let (head, tail) = v.split_at_mut(imgs * rows * hw);
                c2 = Some(tail);
                head
            });
            tasks.push((img, imgs, r0, rows, cc, cc2));
        }
    }
    tasks.into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(packed, tile), (img, imgs, r0, rows, cc, mut cc2)| {
            let ap = &a[r0 * k..];
            let scale = scale.get(r0..).unwrap_or(&[]);
            let x = &x[img * k * hw..(img + imgs) * k * hw];
            let plane = rows * hw;
            let total = imgs * hw;
            for j0 in (0..total).step_by(SEGMENT) {
                let j1 = (j0 + SEGMENT).min(total);
                let mut start = j0;
                if imgs == 1 {
                    let direct = (j1 - j0) / nr * nr;
                    if direct > 0 {
                        let b = if k > 64 && hw >= 2048 && rows == m {
                            packed.resize(k * direct, 0.0);
                            for (dst, row) in packed.chunks_exact_mut(direct).zip(x.chunks_exact(hw)) {
                                dst.copy_from_slice(&row[j0..j0 + direct]);
                            }
                            (&packed[..], direct)
                        } else {
                            (&x[j0..], hw)
                        };
                        crate::simd::gemm_block(ap, k, b, (&mut cc[j0..], hw), (rows, direct), scale);
                        start = j0 + direct;
                    }
                }
                for s in (start..j1).step_by(nr) {
                    let cols = nr.min(j1 - s);
                    let reads = if cols <= nr / 2 { nr / 2 } else { nr };
                    let (i, p) = (s / hw, s % hw);
                    let base = i * k * hw + p;
                    let b = if p + cols <= hw && base + (k - 1) * hw + reads <= x.len() {
                        (&x[base..], hw)
                    } else {
                        packed.clear();
                        packed.resize(k * nr, 0.0);
                        for (q, row) in packed.chunks_exact_mut(nr).enumerate() {
                            for (i, p, jj, len) in runs(s, cols, hw) {
                                let at = (i * k + q) * hw + p;
                                row[jj..jj + len].copy_from_slice(&x[at..at + len]);
                            }
                        }
                        (&packed[..], nr)
                    };
                    if p + cols <= hw {
                        crate::simd::gemm_block(ap, k, b, (&mut cc[i * plane + p..], hw), (rows, cols), scale);
                    } else {
                        tile.resize(rows * nr, 0.0);
                        crate::simd::gemm_block(ap, k, b, (&mut tile[..], nr), (rows, cols), scale);
                        for (r, t) in tile.chunks_exact(nr).take(rows).enumerate() {
                            for (i, p, jj, len) in runs(s, cols, hw) {
                                let at = i * plane + r * hw + p;
                                cc[at..at + len].copy_from_slice(&t[jj..jj + len]);
                            }
                        }
                    }
                }
                for (i, p, _, len) in runs(j0, j1 - j0, hw) {
                    for r in 0..rows {
                        let at = i * plane + r * hw + p;
                        let second = cc2.as_mut().map(|v| &mut v[at..at + len]);
                        finish(r0 + r, &mut cc[at..at + len], second);
                    }
                }
            }
        },
    );
}

/// A convolution's weights packed for the matrix product ([`crate::simd::pack_panels`]) once,
/// for [`forward_packed`] to reuse while the layer still holds the very int8 values they were
/// packed from: the same shared allocation, which cannot change while this keeps a reference to
/// it. Only int8 weights are packed ahead: f32 weights can change in place (training), so they
/// are packed on every call.
#[derive(Debug, Clone)]
pub struct Packed {
    source: Arc<[i8]>,
    mr: usize,
    panels: Arc<[f32]>,
}

impl Packed {
    /// `conv`'s weights packed, when they are int8.
    pub fn new(conv: &Conv) -> Option<Packed> {
        match &conv.weights {
            Weights::Int8 { values, .. } => {
                Some(Packed { source: values.clone(), mr: crate::simd::gemm_tile().0, panels: pack(conv).into() })
            }
            Weights::F32(_) => None,
        }
    }

    /// Whether these are `conv`'s weights, packed for the dispatched level.
    pub fn fits(&self, conv: &Conv) -> bool {
        let k = conv.in_channels * conv.window.kernel[0] * conv.window.kernel[1];
        let same = matches!(&conv.weights, Weights::Int8 { values, .. } if Arc::ptr_eq(values, &self.source));
        same && self.mr == crate::simd::gemm_tile().0
            && self.panels.len() == conv.out_channels.div_ceil(self.mr) * self.mr * k
    }

    /// Bytes of the packed panels.
    pub fn bytes(&self) -> usize {
        4 * self.panels.len()
    }
}

/// `conv`'s weights `[Cout, Cin·kh·kw]` packed by [`crate::simd::pack_panels`], without their
/// int8 scales.
fn pack(conv: &Conv) -> Vec<f32> {
    let (co, k) = (conv.out_channels, conv.in_channels * conv.window.kernel[0] * conv.window.kernel[1]);
    match &conv.weights {
        Weights::F32(v) => crate::simd::pack_panels(co, k, |r, p| v[r * k + p]),
        Weights::Int8 { values, .. } => crate::simd::pack_panels(co, k, |r, p| values[r * k + p] as f32),
    }
}

/// Forward: `x: [N, Cin, H, W]` → `[N, Cout, OH, OW]`, then `epi` per output channel.
pub fn forward(conv: &Conv, x: &Tensor, epi: &Epilogue) -> Tensor {
    run(conv, None, x, epi, Then::Nothing).0
}

/// [`forward`] with the weights packed ahead in `packed` when it [`Packed::fits`] `conv`
/// (packed for this call otherwise): the same values either way.
pub fn forward_packed(conv: &Conv, packed: Option<&Packed>, x: &Tensor, epi: &Epilogue) -> Tensor {
    run(conv, packed, x, epi, Then::Nothing).0
}

/// Forward of the raw convolution `r` (as [`forward`] with [`Epilogue::NONE`]) and, from each
/// output plane while it is in cache, the per-channel affine and activation after it:
/// `y = act(scale[c]·r + bias[c])`. Returns `(r, y)`.
pub fn forward_then(conv: &Conv, x: &Tensor, then: &Affine, act: Activation) -> (Tensor, Tensor) {
    let (r, y) = run(conv, None, x, &Epilogue::NONE, Then::Keep(then, act));
    (r, y.expect("a second output was asked for"))
}

/// Forward of the raw convolution (as [`forward`] with [`Epilogue::NONE`]) followed, on each
/// output plane while it is in cache, by the per-channel affine and activation after it, in
/// place: the same values as [`forward_then`]'s `y`, without keeping the raw output.
pub fn forward_then_in_place(conv: &Conv, x: &Tensor, then: &Affine, act: Activation) -> Tensor {
    run(conv, None, x, &Epilogue::NONE, Then::InPlace(then, act)).0
}

/// The raw convolution (as [`forward`] with [`Epilogue::NONE`]) with `then` computed from each
/// output plane while it is in cache: `(raw, None)`, `(raw, Some(y))` or `(y, None)` for
/// [`Then::Nothing`], [`Then::Keep`] and [`Then::InPlace`].
pub fn forward_with(conv: &Conv, x: &Tensor, then: Then) -> (Tensor, Option<Tensor>) {
    run(conv, None, x, &Epilogue::NONE, then)
}

fn run(conv: &Conv, packed: Option<&Packed>, x: &Tensor, epi: &Epilogue, then: Then) -> (Tensor, Option<Tensor>) {
    let [n, ci, ih, iw] = x.shape;
    debug_assert_eq!(ci, conv.in_channels);
    let (oh, ow) = conv.window.output_size(ih, iw).expect("shape checked by Graph::shapes");
    let co = conv.out_channels;
    let mut out = Tensor::scratch([n, co, oh, ow]);
    let mut second = matches!(then, Then::Keep(..)).then(|| Tensor::scratch([n, co, oh, ow]));
    let hw = oh * ow;
    let raw = epi.scale.is_none() && epi.bias.is_none() && epi.act == Activation::Identity;
    let finish = |c: usize, q: f32, v: &mut [f32], y: Option<&mut [f32]>| {
        if !raw {
            epi.finish(c, q, v);
        }
        match (then, y) {
            (Then::Keep(a, act), Some(y)) => crate::simd::affine_act(y, v, a.scale[c], a.bias[c], act),
            (Then::InPlace(a, act), _) => crate::simd::epilogue(v, a.scale[c], a.bias[c], act),
            _ => {}
        }
    };
    let k = ci * conv.window.kernel[0] * conv.window.kernel[1];
    let cols = (!conv.window.is_pointwise()).then(|| im2col(x, &conv.window, (oh, ow)));
    let fresh;
    let a: &[f32] = match packed.filter(|p| p.fits(conv)) {
        Some(p) => &p.panels,
        None => {
            fresh = pack(conv);
            &fresh
        }
    };
    let q: &[f32] = match &conv.weights {
        Weights::Int8 { scales, .. } => scales,
        Weights::F32(_) => &[],
    };
    let scale: &[f32] = if raw { q } else { &[] };
    gemm_batch(
        Lhs { a, m: co, k, scale },
        (&cols.as_ref().unwrap_or(x).data, hw),
        &mut out.data,
        second.as_mut().map(|t| &mut t.data[..]),
        &|r, v, y| finish(r, q.get(r).copied().unwrap_or(1.0), v, y),
    );
    (out, second)
}

/// The columns of a dense convolution as a matrix product: `x: [N, C, H, W]` →
/// `[N, C·kh·kw, OH, OW]`, row `(c, ky, kx)` of image `n` holding `x[n, c, oy·sh + ky − pt,
/// ox·sw + kx − pl]` (zero outside `x`).
pub(crate) fn im2col(x: &Tensor, win: &crate::graph::Window, (oh, ow): (usize, usize)) -> Tensor {
    let [n, ci, ih, iw] = x.shape;
    let ([kh, kw], [sh, sw]) = (win.kernel, win.stride);
    let hw = oh * ow;
    let mut cols = Tensor::scratch([n, ci * kh * kw, oh, ow]);
    cols.data.par_chunks_mut(kh * kw * hw).zip(x.data.par_chunks(ih * iw)).for_each_init(
        Padded::default,
        |pad, (dst, plane)| {
            pad.input(plane, (ih, iw), win, (oh, ow));
            for (t, rows) in dst.chunks_exact_mut(hw).enumerate() {
                let (ky, kx) = (t / kw, t % kw);
                for (oy, out) in rows.chunks_exact_mut(ow).enumerate() {
                    out.copy_from_slice(&pad.run(kx % sw, oy * sh + ky, kx / sw)[..ow]);
                }
            }
        },
    );
    cols
}

/// Input gradient: `dy: [N, Cout, OH, OW]` → `dx: [N, Cin, ih, iw]`. 1×1 as `Wᵀ·dy` per image,
/// other windows as the transposed direct convolution.
pub fn backward_input(conv: &Conv, dy: &Tensor, (ih, iw): (usize, usize)) -> Tensor {
    let [n, co, _, ow] = dy.shape;
    let ci = conv.in_channels;
    let mut dx = Tensor::scratch([n, ci, ih, iw]);
    let (hw, ohw) = (ih * iw, dy.plane());
    if conv.window.is_pointwise() {
        let a = match &conv.weights {
            Weights::F32(w) => crate::simd::pack_panels(ci, co, |r, p| w[p * ci + r]),
            Weights::Int8 { values, scales } => {
                crate::simd::pack_panels(ci, co, |r, p| values[p * ci + r] as f32 * scales[p])
            }
        };
        gemm_batch(Lhs { a: &a, m: ci, k: co, scale: &[] }, (&dy.data, hw), &mut dx.data, None, &|_, _, _| {});
    } else {
        let w = conv.weights.to_f32();
        let kl = conv.window.kernel[0] * conv.window.kernel[1];
        let oh = dy.shape[2];
        dx.data.par_chunks_mut(hw).enumerate().for_each_init(Padded::default, |pad, (p, plane)| {
            let (img, c) = (p / ci, p % ci);
            for o in 0..co {
                pad.dilated(&dy.sample(img)[o * ohw..(o + 1) * ohw], (oh, ow), &conv.window, (ih, iw));
                let k = &w[(o * ci + c) * kl..(o * ci + c + 1) * kl];
                convolve_transposed(pad, k, &conv.window, plane, iw, o > 0);
            }
        });
    }
    dx
}

/// Weight gradient `[Cout, Cin·kh·kw]`, added into `dw`: `x` is the layer's input, `dy` the
/// gradient of its output. 1×1 as `Σₙ dy[n]·x[n]ᵀ`.
pub fn backward_weight(conv: &Conv, x: &Tensor, dy: &Tensor, dw: &mut [f32]) {
    let [n, ci, ih, iw] = x.shape;
    let co = conv.out_channels;
    let (hw, ohw, ow) = (ih * iw, dy.plane(), dy.shape[3]);
    if conv.window.is_pointwise() {
        let blk = co.div_ceil(tasks_per_image(1)).next_multiple_of(8).clamp(8, 128);
        dw.par_chunks_mut(blk * ci).enumerate().for_each(|(b, d)| {
            let rows = d.len() / ci;
            let mut dv = ArrayViewMut2::from_shape((rows, ci), d).expect("rows × Cin");
            for img in 0..n {
                let xs = ArrayView2::from_shape((ci, hw), x.sample(img)).expect("sample is [Cin, HW]");
                let g = &dy.sample(img)[b * blk * hw..(b * blk + rows) * hw];
                let gs = ArrayView2::from_shape((rows, hw), g).expect("rows × HW");
                ndarray::linalg::general_mat_mul(1.0, &gs, &xs.t(), 1.0, &mut dv);
            }
        });
    } else {
        let kl = conv.window.kernel[0] * conv.window.kernel[1];
        let pads = padded_inputs(x, &conv.window, (dy.shape[2], ow));
        dw.par_chunks_mut(ci * kl).enumerate().for_each_init(Vec::new, |acc, (o, d)| {
            for img in 0..n {
                let g = &dy.sample(img)[o * ohw..(o + 1) * ohw];
                for (c, dk) in d.chunks_exact_mut(kl).enumerate() {
                    correlate(&pads[img * ci + c], g, ow, &conv.window, dk, acc);
                }
            }
        });
    }
}

/// Every channel plane of `x: [N, C, H, W]` laid out for `win` (index `n·C + c`).
fn padded_inputs(x: &Tensor, win: &crate::graph::Window, out: (usize, usize)) -> Vec<Padded> {
    let [_, _, ih, iw] = x.shape;
    x.data
        .par_chunks(ih * iw)
        .map(|plane| {
            let mut p = Padded::default();
            p.input(plane, (ih, iw), win, out);
            p
        })
        .collect()
}

#[cfg(test)]
mod tests;
