//! Inference in the channel-blocked layout: a tensor `[N, C, H, W]` held as `[N][C/B][H][W][B]`
//! (`B` = [`BLOCK`] channels of one pixel together, the channels past `C` zero). A 1×1
//! convolution is then a product whose register tile is pixels × output blocks, and a depthwise
//! window a sum of whole vectors, with no per-plane padding or layout pass: what batch-1 passes
//! on small planes need. Training keeps the planar layout of the other kernels.
//!
//! Every value equals the planar kernels' bit for bit (the same operations in the same order,
//! see [`crate::simd::blocked`]); the engine tests compare the two layouts' passes exactly.

use rayon::prelude::*;

use super::{Activation, Epilogue};
use crate::graph::{Conv, Depthwise};

pub mod fused;
mod pack;
use crate::simd::blocked::{self as kernels, BLOCK};
use crate::tensor::Tensor;
use pack::{lanes, Product};
pub use pack::{Pack, PackedConv, PackedDepthwise};

/// A value of a pass: planar, or blocked with its real channel count.
#[derive(Debug, Clone)]
pub enum Value {
    Planar(Tensor),
    /// Shape `[N, blocks·BLOCK, H, W]`, laid out `[N][blocks][H][W][BLOCK]`; the channels.
    Blocked(Tensor, usize),
}

impl Value {
    /// The value in the planar layout, borrowed when it is.
    pub fn as_planar(&self) -> std::borrow::Cow<'_, Tensor> {
        match self {
            Value::Planar(t) => std::borrow::Cow::Borrowed(t),
            Value::Blocked(t, c) => std::borrow::Cow::Owned(unblock(t, *c)),
        }
    }

    /// The value in the blocked layout, borrowed when it is, and its channels.
    pub fn as_blocked(&self) -> (std::borrow::Cow<'_, Tensor>, usize) {
        match self {
            Value::Planar(t) => (std::borrow::Cow::Owned(block(t)), t.shape[1]),
            Value::Blocked(t, c) => (std::borrow::Cow::Borrowed(t), *c),
        }
    }

    /// The value in the planar layout.
    pub fn planar(self) -> Tensor {
        match self {
            Value::Planar(t) => t,
            Value::Blocked(t, c) => unblock(&t, c),
        }
    }

    /// The value in the blocked layout, and its channels.
    pub fn blocked(self) -> (Tensor, usize) {
        match self {
            Value::Planar(t) => {
                let c = t.shape[1];
                (block(&t), c)
            }
            Value::Blocked(t, c) => (t, c),
        }
    }
}

/// `x: [N, C, H, W]` planar → blocked.
pub fn block(x: &Tensor) -> Tensor {
    let [n, c, h, w] = x.shape;
    let (cb, hw) = (c.div_ceil(BLOCK), h * w);
    let mut out = Tensor::zeros([n, cb * BLOCK, h, w]);
    out.data.par_chunks_mut(hw * BLOCK).enumerate().for_each(|(nb, dst)| {
        let (img, b) = (nb / cb, nb % cb);
        for l in 0..BLOCK.min(c - b * BLOCK) {
            let src = &x.data[(img * c + b * BLOCK + l) * hw..][..hw];
            for (p, &v) in src.iter().enumerate() {
                dst[p * BLOCK + l] = v;
            }
        }
    });
    out
}

/// `x ⊙ g` in place of blocked `x` of `c` channels, `g: [N, c, 1, 1]` a per-channel gate (planar):
/// each value multiplied once, as [`crate::ops::mul::forward`] does.
pub fn gate(x: &mut Tensor, g: &Tensor, c: usize) {
    let [_, cp, h, w] = x.shape;
    let (cb, hw) = (cp / BLOCK, h * w);
    x.data.par_chunks_mut((hw * BLOCK).max(1)).enumerate().for_each(|(nb, dst)| {
        let (img, b) = (nb / cb, nb % cb);
        let mut lanes = [0f32; BLOCK];
        for (l, lane) in lanes.iter_mut().enumerate().take(BLOCK.min(c - b * BLOCK)) {
            *lane = g.data[img * c + b * BLOCK + l];
        }
        for px in dst.chunks_exact_mut(BLOCK) {
            px.iter_mut().zip(&lanes).for_each(|(v, l)| *v *= l);
        }
    });
}

/// Blocked `x` of `c` channels → planar `[N, c, H, W]`.
pub fn unblock(x: &Tensor, c: usize) -> Tensor {
    let [n, cp, h, w] = x.shape;
    let (cb, hw) = (cp / BLOCK, h * w);
    let mut out = Tensor::scratch([n, c, h, w]);
    out.data.par_chunks_mut(hw).enumerate().for_each(|(nc, dst)| {
        let (img, ch) = (nc / c, nc % c);
        let src = &x.data[(img * cb + ch / BLOCK) * hw * BLOCK..][..hw * BLOCK];
        for (d, px) in dst.iter_mut().zip(src.chunks_exact(BLOCK)) {
            *d = px[ch % BLOCK];
        }
    });
    out
}

/// Output blocks a product's register tile covers: two with AVX-512's 32 registers, one
/// otherwise.
fn group() -> usize {
    if crate::simd::level() == crate::simd::Level::Avx512 {
        2
    } else {
        1
    }
}

/// Tasks a pass splits a layer into at least (enough for the thread pool to balance).
fn tasks_wanted() -> usize {
    4 * rayon::current_num_threads().max(1)
}

/// A dense convolution with its epilogue: `x` (any layout) → blocked `[N, Cout, OH, OW]`. A 1×1
/// window reads the blocked input in place; other windows go through the planar im2col.
pub fn conv(conv: &Conv, packed: &PackedConv, x: &Value, epi: &Epilogue) -> Value {
    conv_adding(conv, packed, x, epi, None)
}

/// [`conv`], then `+ residual` (blocked, the output's shape) added to each finished value.
pub fn conv_adding(conv: &Conv, packed: &PackedConv, x: &Value, epi: &Epilogue, residual: Option<&Tensor>) -> Value {
    let win = &conv.window;
    if !win.is_pointwise() && residual.is_none() && win.stride[0] == win.stride[1] && win.stride[0] <= 2 {
        return direct(conv, packed, &x.as_planar(), epi);
    }
    let (co, product) = (conv.out_channels, Product::new(conv, packed, epi));
    // The input as `(data, per-image stride, channel offsets, pixel step)`.
    let (input, k, offsets, step, (oh, ow), n);
    if win.is_pointwise() {
        let (t, c) = x.as_blocked();
        let [nn, cp, h, w] = t.shape;
        (n, oh, ow, k) = (nn, h, w, c);
        offsets = (0..c).map(|i| (i / BLOCK) * h * w * BLOCK + i % BLOCK).collect::<Vec<_>>();
        step = BLOCK;
        input = (t, cp * h * w);
    } else {
        let t = x.as_planar();
        let [nn, _, ih, iw] = t.shape;
        let (h, w) = win.output_size(ih, iw).expect("shape checked by Graph::shapes");
        let cols = super::conv::im2col(&t, win, (h, w));
        (n, oh, ow, k) = (nn, h, w, cols.shape[1]);
        offsets = (0..k).map(|i| i * h * w).collect();
        step = 1;
        let stride = k * h * w;
        input = (std::borrow::Cow::Owned(cols), stride);
    }
    let (hw, cb) = (oh * ow, co.div_ceil(BLOCK));
    let mut out = Tensor::scratch([n, cb * BLOCK, oh, ow]);
    let group = group();
    let groups = cb.div_ceil(group);
    // Pixels per task: enough tasks, and a task's input columns within about 256 KB.
    let by_count = hw.div_ceil(tasks_wanted().div_ceil(n * groups).max(1));
    let by_cache = ((64 << 10) / k.max(1)).max(12);
    let chunk = by_count.min(by_cache).next_multiple_of(12).min(hw.next_multiple_of(12));
    let mut planes: Vec<Vec<Option<&mut [f32]>>> =
        out.data.chunks_mut(hw * BLOCK).map(|p| p.chunks_mut(chunk * BLOCK).map(Some).collect()).collect();
    let mut tasks = Vec::new();
    for img in 0..n {
        for g in 0..groups {
            let blocks = (g * group)..((g + 1) * group).min(cb);
            for (c, first) in (0..hw).step_by(chunk).enumerate() {
                let outs: Vec<&mut [f32]> =
                    blocks.clone().map(|b| planes[img * cb + b][c].take().expect("each chunk once")).collect();
                tasks.push((img, blocks.clone(), first, chunk.min(hw - first), outs));
            }
        }
    }
    let (data, stride) = (&input.0.data, input.1);
    tasks.into_par_iter().for_each(|(img, blocks, first, count, mut outs)| {
        product.run(blocks.clone(), &data[img * stride..(img + 1) * stride], &offsets, step, (first, count), &mut outs);
        if let Some(r) = residual {
            for (o, dst) in blocks.zip(outs.iter_mut()) {
                let src = &r.data[(img * cb + o) * hw * BLOCK + first * BLOCK..][..dst.len()];
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
            }
        }
    });
    Value::Blocked(out, co)
}

/// A dense convolution of stride 1 or 2 (any window) reading the planar input `x` where it lies
/// (after one zero-padded copy), output row by output row: the product of [`conv`]'s im2col
/// columns without writing them (the same input values in the same order, so the same bits).
fn direct(conv: &Conv, packed: &PackedConv, x: &Tensor, epi: &Epilogue) -> Value {
    let (co, win) = (conv.out_channels, &conv.window);
    let [n, ci, ih, iw] = x.shape;
    let (oh, ow) = win.output_size(ih, iw).expect("shape checked by Graph::shapes");
    let ([kh, kw], s, [pt, pl, pb, pr]) = (win.kernel, win.stride[0], win.pads_at(ih, iw));
    let (ph, pw) = ((ih + pt + pb).max((oh - 1) * s + kh), (iw + pl + pr).max((ow - 1) * s + kw));
    let mut padded = Tensor::zeros([n, ci, ph, pw]);
    padded.data.par_chunks_mut(ph * pw).zip(x.data.par_chunks(ih * iw)).for_each(|(dst, src)| {
        for (row, src) in src.chunks_exact(iw).enumerate() {
            dst[(row + pt) * pw + pl..][..iw].copy_from_slice(src);
        }
    });
    let offsets: Vec<usize> =
        (0..ci).flat_map(|c| (0..kh).flat_map(move |ky| (0..kw).map(move |kx| c * ph * pw + ky * pw + kx))).collect();
    let product = Product::new(conv, packed, epi);
    let (cb, group) = (co.div_ceil(BLOCK), group());
    let mut out = Tensor::scratch([n, cb * BLOCK, oh, ow]);
    let rows = oh.div_ceil(tasks_wanted().div_ceil(n * cb.div_ceil(group))).max(1);
    let mut tasks = Vec::new();
    for (img, planes) in out.data.chunks_mut(cb * oh * ow * BLOCK).enumerate() {
        let mut planes: Vec<_> = planes.chunks_mut(oh * ow * BLOCK).map(|p| p.chunks_mut(rows * ow * BLOCK)).collect();
        for r0 in (0..oh).step_by(rows) {
            for g in (0..cb).step_by(group) {
                let outs: Vec<&mut [f32]> =
                    planes[g..(g + group).min(cb)].iter_mut().map(|p| p.next().expect("a chunk")).collect();
                tasks.push((img, g, r0, outs));
            }
        }
    }
    tasks.into_par_iter().for_each(|(img, g, r0, mut outs)| {
        for r in 0..outs[0].len() / (ow * BLOCK) {
            let mut row: Vec<&mut [f32]> =
                outs.iter_mut().map(|o| &mut o[r * ow * BLOCK..(r + 1) * ow * BLOCK]).collect();
            let x = &padded.data[(img * ci * ph + (r0 + r) * s) * pw..];
            product.run(g..g + row.len(), x, &offsets, s, (0, ow), &mut row);
        }
    });
    Value::Blocked(out, co)
}

/// A depthwise convolution with its epilogue: `x` (any layout) → blocked; `packed` holds
/// `layer`'s taps.
pub fn depthwise(layer: &Depthwise, packed: &PackedDepthwise, x: &Value, epi: &Epilogue) -> Value {
    let (t, c) = x.as_blocked();
    let [n, cp, ih, iw] = t.shape;
    let win = &layer.window;
    let (oh, ow) = win.output_size(ih, iw).expect("shape checked by Graph::shapes");
    let [pt, pl, ..] = win.pads_at(ih, iw);
    let (kl, cb, w) = (win.kernel[0] * win.kernel[1], cp / BLOCK, &packed.w);
    let (s, b) = lanes(epi, &packed.q, c);
    let mut out = Tensor::scratch([n, cp, oh, ow]);
    let rows = oh.div_ceil(tasks_wanted().div_ceil(n * cb)).max((2048 / (ow * BLOCK)).max(1)).min(oh);
    let tasks: Vec<(usize, usize, &mut [f32])> = out
        .data
        .chunks_mut(oh * ow * BLOCK)
        .enumerate()
        .flat_map(|(plane, p)| p.chunks_mut(rows * ow * BLOCK).enumerate().map(move |(r, d)| (plane, r * rows, d)))
        .collect();
    tasks.into_par_iter().for_each(|(plane, r0, dst)| {
        let blk = plane % cb;
        let t = kernels::Depthwise {
            x: &t.data[plane * ih * iw * BLOCK..(plane + 1) * ih * iw * BLOCK],
            row0: 0,
            ih,
            iw,
            w: &w[blk * kl * BLOCK..(blk + 1) * kl * BLOCK],
            kernel: win.kernel,
            stride: win.stride,
            pad: [pt, pl],
            rows: r0..(r0 + rows).min(oh),
            ow,
            s: &s[blk * BLOCK..(blk + 1) * BLOCK],
            b: &b[blk * BLOCK..(blk + 1) * BLOCK],
            act: epi.act,
        };
        kernels::depthwise(&t, dst);
    });
    Value::Blocked(out, c)
}

/// A per-channel affine and activation in place, in either layout.
pub fn affine(a: &crate::graph::Affine, x: Value, act: Activation) -> Value {
    match x {
        Value::Planar(mut t) => {
            super::affine::forward(a, &mut t, act);
            Value::Planar(t)
        }
        Value::Blocked(mut t, c) => {
            let epi = Epilogue { scale: Some(&a.scale), bias: Some(&a.bias), act };
            let (s, b) = lanes(&epi, &vec![1.0; c], c);
            let [_, cp, h, w] = t.shape;
            let cb = cp / BLOCK;
            t.data.par_chunks_mut(h * w * BLOCK).enumerate().for_each(|(plane, v)| {
                let blk = plane % cb;
                kernels::affine_block(v, &s[blk * BLOCK..(blk + 1) * BLOCK], &b[blk * BLOCK..(blk + 1) * BLOCK], act);
            });
            Value::Blocked(t, c)
        }
    }
}
