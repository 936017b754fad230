//! Depthwise convolution (one kernel per channel): forward, input gradient and kernel gradient.
//! Each channel plane is first laid out by [`Padded`] (zero padding materialised, columns split
//! by stride) so that every kernel tap reads one contiguous run per output row; the loops over a
//! row are the vectorised [`crate::simd`] kernels. The plane helpers also serve the dense stem
//! convolution.

use rayon::prelude::*;

use super::{Activation, Epilogue, Then};
use crate::graph::{Affine, Depthwise, Window};
use crate::simd;
use crate::tensor::Tensor;

/// One channel plane laid out for a window: `rows` padded rows, each split into `phases` (the
/// column stride) runs of `width` values; padded column `p` is at phase `p % phases`, index
/// `p / phases`. Reused across planes as scratch.
#[derive(Debug, Default)]
pub(crate) struct Padded {
    data: Vec<f32>,
    rows: usize,
    width: usize,
    phases: usize,
    /// What the last layout wrote: the same key writes the same positions, so the zeros around
    /// them are still in place.
    key: Option<Key>,
}

/// A layout's kind (input or dilated), its plane and window geometry.
type Key = (bool, [usize; 4], Window);

impl Padded {
    /// Sizes the buffer; zeroes it unless the previous layout had the same `key`.
    fn reset(&mut self, rows: usize, width: usize, phases: usize, key: Key) {
        (self.rows, self.width, self.phases) = (rows, width, phases);
        if self.key != Some(key) {
            self.data.clear();
            self.data.resize(rows * width * phases, 0.0);
            self.key = Some(key);
        }
    }

    fn layout(&self, sh: usize, sw: usize) -> simd::Layout {
        debug_assert_eq!(sw, self.phases);
        simd::Layout { rows: self.rows, width: self.width, sh, sw }
    }

    /// Row `r` of phase `ph`, from index `i` on.
    pub(crate) fn run(&self, ph: usize, r: usize, i: usize) -> &[f32] {
        let at = (ph * self.rows + r) * self.width;
        &self.data[at + i..at + self.width]
    }

    /// Lays out the input plane `x: [ih, iw]` of a window producing `ow` columns and `oh` rows:
    /// padded row `r` is input row `r − pt`, padded column `p` input column `p − pl`, zero outside.
    pub(crate) fn input(&mut self, x: &[f32], (ih, iw): (usize, usize), win: &Window, (oh, ow): (usize, usize)) {
        self.input_mapped(x, (ih, iw), win, (oh, ow), None);
    }

    /// [`Padded::input`] of `act(s·x + b)` for `map = Some((s, b, act))` (the padding stays zero).
    pub(crate) fn input_mapped(
        &mut self,
        x: &[f32],
        (ih, iw): (usize, usize),
        win: &Window,
        (oh, ow): (usize, usize),
        map: Option<(f32, f32, Activation)>,
    ) {
        let [kh, kw] = win.kernel;
        let [sh, sw] = win.stride;
        let [pt, pl, ..] = win.pads_at(ih, iw);
        self.reset(
            (oh - 1) * sh + kh,
            ow.next_multiple_of(simd::LANES) + (kw - 1) / sw,
            sw,
            (true, [ih, iw, oh, ow], *win),
        );
        simd::layout_input(
            &x[..ih * iw],
            iw,
            &mut self.data,
            simd::Phases { rows: self.rows, width: self.width, sw, pt, pl },
            map,
        );
    }

    /// Lays out `dy: [oh, ow]` for the transposed window as a stride-1 correlation: `dy[oy, ox]`
    /// goes to row `oy·sh + kh − 1 − pt`, column `ox·sw + kw − 1 − pl` of an `(ih + kh − 1) ×
    /// (iw + kw − 1)` plane, zero elsewhere (positions outside it feed no input pixel).
    pub(crate) fn dilated(&mut self, dy: &[f32], (oh, ow): (usize, usize), win: &Window, (ih, iw): (usize, usize)) {
        let [kh, kw] = win.kernel;
        let [sh, sw] = win.stride;
        let [pt, pl, ..] = win.pads_at(ih, iw).map(|p| p as isize);
        self.reset(ih + kh - 1, iw.next_multiple_of(simd::LANES) + kw - 1, 1, (false, [ih, iw, oh, ow], *win));
        for oy in 0..oh {
            let r = (oy * sh) as isize + kh as isize - 1 - pt;
            if r < 0 || r >= self.rows as isize {
                continue;
            }
            let at = r as usize * self.width;
            let first = kw as isize - 1 - pl;
            let g = &dy[oy * ow..(oy + 1) * ow];
            if sw == 1 && first >= 0 && first as usize + ow < iw + kw {
                self.data[at + first as usize..at + first as usize + ow].copy_from_slice(g);
                continue;
            }
            for (ox, &v) in g.iter().enumerate() {
                let c = (ox * sw) as isize + first;
                if c >= 0 && (c as usize) < iw + kw - 1 {
                    self.data[at + c as usize] = v;
                }
            }
        }
    }
}

/// `out[oy, ox] (+)= Σ k[ky, kx] · x[oy·sh + ky − pt, ox·sw + kx − pl]` (zero outside `x`) over
/// one plane laid out by [`Padded::input`]; `k: [kh, kw]`, `out: [oh, ow]`, overwritten unless
/// `accumulate`.
pub(crate) fn convolve(p: &Padded, k: &[f32], win: &Window, out: &mut [f32], ow: usize, accumulate: bool) {
    let [kh, kw] = win.kernel;
    let [sh, sw] = win.stride;
    if let Ok(k9) = <&[f32; 9]>::try_from(k) {
        if win.kernel == [3, 3] {
            simd::conv3x3(out, ow, &p.data, p.layout(sh, sw), k9, accumulate);
            return;
        }
    }
    let mut src: Vec<&[f32]> = Vec::with_capacity(kh * kw);
    for (oy, orow) in out.chunks_exact_mut(ow).enumerate() {
        src.clear();
        for ky in 0..kh {
            for kx in 0..kw {
                src.push(p.run(kx % sw, oy * sh + ky, kx / sw));
            }
        }
        simd::taps(orow, &src, k, accumulate);
    }
}

/// The transpose of [`convolve`]: `dx[oy·sh + ky − pt, ox·sw + kx − pl] (+)= k[ky, kx] ·
/// dy[oy, ox]` over `dy` laid out by [`Padded::dilated`]; `dx: [ih, iw]`, overwritten unless
/// `accumulate`. Taps that read an all-zero row of the dilated plane are skipped.
pub(crate) fn convolve_transposed(p: &Padded, k: &[f32], win: &Window, dx: &mut [f32], iw: usize, accumulate: bool) {
    let [kh, kw] = win.kernel;
    let sh = win.stride[0];
    if win.kernel == [3, 3] && sh == 1 {
        let flipped: [f32; 9] = std::array::from_fn(|t| k[8 - t]);
        simd::conv3x3(dx, iw, &p.data, p.layout(1, 1), &flipped, accumulate);
        return;
    }
    let first = kh as isize - 1 - win.pads_at(dx.len() / iw.max(1), iw)[0] as isize;
    let mut src: Vec<&[f32]> = Vec::with_capacity(kh * kw);
    let mut w: Vec<f32> = Vec::with_capacity(kh * kw);
    for (iy, row) in dx.chunks_exact_mut(iw).enumerate() {
        src.clear();
        w.clear();
        for a in 0..kh {
            let r = (iy + a) as isize - first;
            if r < 0 || r % sh as isize != 0 {
                continue;
            }
            for b in 0..kw {
                src.push(p.run(0, iy + a, b));
                w.push(k[(kh - 1 - a) * kw + kw - 1 - b]);
            }
        }
        if src.is_empty() {
            if !accumulate {
                row.fill(0.0);
            }
        } else {
            simd::taps(row, &src, &w, accumulate);
        }
    }
}

/// [`convolve_transposed`] of one plane for a 3×3 window of stride 2 with top and left pads
/// `(pt, pl)`, computed by output phase instead of over a dilated plane: input row `iy` takes
/// kernel rows `ky ≡ iy + pt (mod 2)` only, and along a row the even and odd columns `t = ix + pl`
/// are `E[t / 2] = Σ k[ky, 0]·dy[oy, t/2] + k[ky, 2]·dy[oy, t/2 − 1]` and
/// `O[(t − 1) / 2] = Σ k[ky, 1]·dy[oy, (t − 1)/2]`, interleaved (2.25 products per value instead
/// of 9 over mostly zeros). `dy: [oh, ow]`, `dx: [ih, iw]` (overwritten), `rows` scratch.
fn transposed_3x3_stride_2(
    dy: &[f32],
    (oh, ow): (usize, usize),
    k: &[f32; 9],
    (pt, pl): (usize, usize),
    dx: &mut [f32],
    (_, iw): (usize, usize),
    rows: &mut Vec<f32>,
) {
    let m = (iw + pl) / 2 + 1;
    let len = (m + 1).max(ow + 2);
    rows.clear();
    rows.resize(oh * len + 2 * m, 0.0);
    let (padded, eo) = rows.split_at_mut(oh * len);
    for (row, g) in padded.chunks_exact_mut(len).zip(dy.chunks_exact(ow)) {
        row[1..=ow].copy_from_slice(g);
    }
    simd::transpose_stride_2(padded, k, simd::GradRows { len, m, iw, pt, pl }, dx, eo);
}

/// The kernel gradient of [`convolve`]: `dk[ky, kx] += Σ dy[oy, ox] · x[oy·sh + ky − pt,
/// ox·sw + kx − pl]` over `x` laid out by [`Padded::input`]; `dy: [oh, ow]`, `dk: [kh, kw]`.
/// `acc` is scratch.
pub(crate) fn correlate(p: &Padded, dy: &[f32], ow: usize, win: &Window, dk: &mut [f32], acc: &mut Vec<Vec<f32>>) {
    let [kh, kw] = win.kernel;
    let [sh, sw] = win.stride;
    if let (Ok(dk), true) = (<&mut [f32; 9]>::try_from(&mut *dk), win.kernel == [3, 3] && ow <= simd::LANES) {
        simd::kernel_gradient_3x3(dk, dy, ow, &p.data, p.layout(sh, sw));
        return;
    }
    acc.resize_with(kh * kw, Vec::new);
    for a in acc.iter_mut() {
        a.clear();
        a.resize(ow.next_multiple_of(simd::LANES), 0.0);
    }
    let mut src: Vec<&[f32]> = Vec::with_capacity(kh * kw);
    for (oy, g) in dy.chunks_exact(ow).enumerate() {
        src.clear();
        for ky in 0..kh {
            for kx in 0..kw {
                src.push(p.run(kx % sw, oy * sh + ky, kx / sw));
            }
        }
        simd::tap_products(&mut acc[..kh * kw], &src, g);
    }
    for (d, a) in dk.iter_mut().zip(acc.iter()) {
        *d += a[..ow].iter().sum::<f32>();
    }
}

/// Forward: `x: [N, C, H, W]` → `[N, C, OH, OW]`, each channel convolved with its own kernel,
/// then `epi` applied per channel.
pub fn forward(layer: &Depthwise, x: &Tensor, epi: &Epilogue) -> Tensor {
    run(layer, x, None, false, |ch, q, plane, _| epi.finish(ch, q, plane)).0
}

/// Forward of the raw convolution `r` (as [`forward`] with [`Epilogue::NONE`]) and, from each
/// output plane while it is in cache, the per-channel affine and activation after it:
/// `y = act(scale[c]·r + bias[c])`. Returns `(r, y)`.
pub fn forward_then(layer: &Depthwise, x: &Tensor, then: &Affine, act: Activation) -> (Tensor, Tensor) {
    let (r, y) = forward_fused(layer, x, None, Then::Keep(then, act));
    (r, y.expect("a second output was asked for"))
}

/// Forward of the raw convolution (as [`forward`] with [`Epilogue::NONE`]) followed, on each
/// output plane while it is in cache, by the per-channel affine and activation after it, in
/// place: the same values as [`forward_then`]'s `y`, without keeping the raw output.
pub fn forward_then_in_place(layer: &Depthwise, x: &Tensor, then: &Affine, act: Activation) -> Tensor {
    forward_fused(layer, x, None, Then::InPlace(then, act)).0
}

/// The raw convolution (as [`forward`] with [`Epilogue::NONE`]) of `before`'s output
/// `act(scale[c]·x + bias[c])` when `before = Some((affine, act))` (computed while each plane is
/// laid out, never stored) or of `x` itself, with `then` after it as in
/// [`super::conv::forward_with`]: `(raw, None)`, `(raw, Some(y))` or `(y, None)`.
pub fn forward_fused(
    layer: &Depthwise,
    x: &Tensor,
    before: Option<(&Affine, Activation)>,
    then: Then,
) -> (Tensor, Option<Tensor>) {
    run(layer, x, before, matches!(then, Then::Keep(..)), |ch, q, plane, y| {
        simd::finish_plane(plane, y, q, then.at(ch))
    })
}

/// The convolution of `x` (mapped by `before`, see [`forward_fused`]), with `finish(c, q, plane,
/// second)` on each output plane of channel `c` whose values carry the factor `q` (the weights'
/// dequantization scale), with its plane of a second output when `second`.
fn run(
    layer: &Depthwise,
    x: &Tensor,
    before: Option<(&Affine, Activation)>,
    second: bool,
    finish: impl Fn(usize, f32, &mut [f32], Option<&mut [f32]>) + Sync,
) -> (Tensor, Option<Tensor>) {
    let [n, c, ih, iw] = x.shape;
    debug_assert_eq!(c, layer.channels);
    let (oh, ow) = layer.window.output_size(ih, iw).expect("shape checked by Graph::shapes");
    let mut out = Tensor::scratch([n, c, oh, ow]);
    let mut second = second.then(|| Tensor::scratch([n, c, oh, ow]));
    let ys = super::second_planes(&mut second, oh * ow, n * c);
    let kl = layer.window.kernel[0] * layer.window.kernel[1];
    out.data.par_chunks_mut(oh * ow).zip(ys).enumerate().with_min_len(super::planes_per_task(oh * ow)).for_each_init(
        || (Padded::default(), vec![0f32; kl]),
        |(pad, k), (p, (plane, y))| {
            let ch = p % c;
            let q = layer.weights.raw_row(ch, k);
            let map = before.map(|(a, act)| (a.scale[ch], a.bias[ch], act));
            pad.input_mapped(&x.data[p * ih * iw..(p + 1) * ih * iw], (ih, iw), &layer.window, (oh, ow), map);
            convolve(pad, k, &layer.window, plane, ow, false);
            finish(ch, q, plane, y);
        },
    );
    (out, second)
}

/// Input gradient: `dy: [N, C, OH, OW]` → `dx: [N, C, ih, iw]`.
pub fn backward_input(layer: &Depthwise, dy: &Tensor, (ih, iw): (usize, usize)) -> Tensor {
    input_gradient(layer, dy, (ih, iw), |_, _| ()).0
}

/// [`backward_input`] followed, on each finished plane while it is in cache, by the backward of
/// the affine + activation before the layer (`input = act(scale[c]·x + bias[c])`, `x` that
/// affine's kept input, the layer's input shape): each plane becomes the gradient `g` masked by
/// `act`, times `scale[c]` when `write_dx` (see [`crate::ops::affine::backward_act`], whose
/// values these are, bit for bit). Returns the planes and their sums `(Σ g·x, Σ g)` (index
/// `n·C + c`).
pub fn backward_input_then(
    layer: &Depthwise,
    dy: &Tensor,
    before: (&Affine, &Tensor, Activation),
    write_dx: bool,
) -> (Tensor, Vec<(f32, f32)>) {
    let (a, x, act) = before;
    let [_, c, ih, iw] = x.shape;
    input_gradient(layer, dy, (ih, iw), |p, out| {
        let xs = &x.data[p * ih * iw..(p + 1) * ih * iw];
        simd::affine_act_backward(out, xs, a.scale[p % c], a.bias[p % c], act, write_dx)
    })
}

/// [`backward_input`] with `finish(p, plane)` run on each finished plane `p` (index `n·C + c`);
/// returns its results in plane order.
fn input_gradient<R: Send>(
    layer: &Depthwise,
    dy: &Tensor,
    (ih, iw): (usize, usize),
    finish: impl Fn(usize, &mut [f32]) -> R + Sync,
) -> (Tensor, Vec<R>) {
    let [n, c, oh, ow] = dy.shape;
    let kl = layer.window.kernel[0] * layer.window.kernel[1];
    let w = layer.weights.to_f32();
    let mut dx = Tensor::scratch([n, c, ih, iw]);
    let plane = dy.plane();
    let results = dx
        .data
        .par_chunks_mut(ih * iw)
        .enumerate()
        .with_min_len(super::planes_per_task(ih * iw))
        .map_init(
            || (Padded::default(), Vec::new()),
            |(pad, rows), (p, out)| {
                let ch = p % c;
                let g = &dy.data[p * plane..(p + 1) * plane];
                let k = &w[ch * kl..(ch + 1) * kl];
                match <&[f32; 9]>::try_from(k) {
                    Ok(k) if layer.window.kernel == [3, 3] && layer.window.stride == [2, 2] => {
                        let [pt, pl, ..] = layer.window.pads_at(ih, iw);
                        let pads = (pt, pl);
                        transposed_3x3_stride_2(g, (oh, ow), k, pads, out, (ih, iw), rows);
                    }
                    _ => {
                        pad.dilated(g, (oh, ow), &layer.window, (ih, iw));
                        convolve_transposed(pad, k, &layer.window, out, iw, false);
                    }
                }
                finish(p, out)
            },
        )
        .collect();
    (dx, results)
}

/// Kernel gradient `[C, kh·kw]`, added into `dw`: `x` is the layer's input, `dy` the gradient of
/// its output.
pub fn backward_weight(layer: &Depthwise, x: &Tensor, dy: &Tensor, dw: &mut [f32]) {
    let [n, c, ih, iw] = x.shape;
    let kl = layer.window.kernel[0] * layer.window.kernel[1];
    let (oh, ow, plane, xplane) = (dy.shape[2], dy.shape[3], dy.plane(), ih * iw);
    dw.par_chunks_mut(kl).enumerate().for_each_init(
        || (Padded::default(), Vec::new()),
        |(pad, acc), (ch, dk)| {
            for img in 0..n {
                let p = img * c + ch;
                let (xs, gs) = (&x.data[p * xplane..(p + 1) * xplane], &dy.data[p * plane..(p + 1) * plane]);
                pad.input(xs, (ih, iw), &layer.window, (oh, ow));
                correlate(pad, gs, ow, &layer.window, dk, acc);
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stride_2_transpose_by_phase_equals_the_dilated_plane() {
        let k: [f32; 9] = std::array::from_fn(|t| 0.3 - 0.11 * t as f32);
        for (ih, iw) in [(7, 7), (8, 8), (13, 10), (112, 112), (5, 40)] {
            for pads in [[1, 1, 1, 1], [0, 0, 1, 1], [2, 2, 0, 0], [1, 0, 0, 1], [2, 1, 2, 1]] {
                let win = Window::new([3, 3], [2, 2], pads);
                let Some((oh, ow)) = win.output_size(ih, iw) else { continue };
                let dy: Vec<f32> = (0..oh * ow).map(|i| ((i * 7919) % 997) as f32 / 300.0 - 1.3).collect();
                let (mut want, mut got) = (vec![0f32; ih * iw], vec![f32::NAN; ih * iw]);
                let mut pad = Padded::default();
                pad.dilated(&dy, (oh, ow), &win, (ih, iw));
                convolve_transposed(&pad, &k, &win, &mut want, iw, false);
                transposed_3x3_stride_2(&dy, (oh, ow), &k, (pads[0], pads[1]), &mut got, (ih, iw), &mut Vec::new());
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{ih}×{iw} {pads:?} at {i}: {a} vs {b}");
                }
            }
        }
    }
}
