//! Weights laid out for the blocked kernels once, kept by the engine between passes.

use super::BLOCK;
use crate::graph::{Conv, Depthwise, Op, Weights};
use crate::ops::Epilogue;
use crate::simd::blocked as kernels;
use std::sync::Arc;

/// The values of [`PackedConv`]: int8 weights stay int8 (converted as the kernel loads them).
#[derive(Debug, Clone)]
enum Packed {
    F32(Vec<f32>),
    I8(Vec<i8>),
}

/// A convolution's weights for [`conv`]: `[blocks][k][BLOCK]` (the raw int8 values, or the f32
/// weights), and each output channel's dequantization scale (1 for f32 weights).
/// Clones share the values (an engine taking up another patch keeps the unchanged layers' packs
/// without copying them).
#[derive(Debug, Clone)]
pub struct PackedConv {
    w: Arc<Packed>,
    pub(super) q: Arc<[f32]>,
    /// The int8 values packed (`None` for f32 weights, which may change in place).
    source: Option<Arc<[i8]>>,
}

impl PackedConv {
    /// Whether these are `conv`'s int8 weights (the same shared allocation, which cannot change
    /// while this holds it).
    pub fn fits(&self, conv: &Conv) -> bool {
        let k = conv.in_channels * conv.window.kernel[0] * conv.window.kernel[1];
        let same = match (&conv.weights, &self.source) {
            (Weights::Int8 { values, .. }, Some(s)) => Arc::ptr_eq(values, s),
            _ => false,
        };
        same && self.weights().len() == conv.out_channels.div_ceil(BLOCK) * k * BLOCK
    }

    pub(super) fn weights(&self) -> kernels::Weights<'_> {
        match &*self.w {
            Packed::F32(w) => kernels::Weights::F32(w.as_slice()),
            Packed::I8(w) => kernels::Weights::I8(w.as_slice()),
        }
    }

    /// `conv`'s weights packed.
    pub fn new(conv: &Conv) -> Self {
        let (co, k) = (conv.out_channels, conv.in_channels * conv.window.kernel[0] * conv.window.kernel[1]);
        let at = |o: usize, i: usize| ((o / BLOCK) * k + i) * BLOCK + o % BLOCK;
        let len = co.div_ceil(BLOCK) * k * BLOCK;
        let (w, q, source) = match &conv.weights {
            Weights::Int8 { values, scales } => {
                let mut w = vec![0i8; len];
                for (o, row) in values.chunks_exact(k).enumerate() {
                    for (i, &v) in row.iter().enumerate() {
                        w[at(o, i)] = v;
                    }
                }
                (Packed::I8(w), scales.clone(), Some(values.clone()))
            }
            Weights::F32(values) => {
                let mut w = vec![0f32; len];
                for (o, row) in values.chunks_exact(k).enumerate() {
                    for (i, &v) in row.iter().enumerate() {
                        w[at(o, i)] = v;
                    }
                }
                (Packed::F32(w), vec![1.0; co], None)
            }
        };
        PackedConv { w: Arc::new(w), q: q.into(), source }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        let w = match &*self.w {
            Packed::F32(w) => 4 * w.len(),
            Packed::I8(w) => w.len(),
        };
        w + 4 * self.q.len()
    }
}

/// Per output lane `(s, b)` of an epilogue over `c` channels whose accumulators carry the factor
/// `q[c]`: `s = q·scale`, `b = bias` (as [`Epilogue::finish`] computes them), zero past `c`.
pub(super) fn lanes(epi: &Epilogue, q: &[f32], c: usize) -> (Vec<f32>, Vec<f32>) {
    let n = c.div_ceil(BLOCK) * BLOCK;
    let (mut s, mut b) = (vec![0f32; n], vec![0f32; n]);
    for ch in 0..c {
        s[ch] = q[ch] * epi.scale.map_or(1.0, |v| v[ch]);
        b[ch] = epi.bias.map_or(0.0, |v| v[ch]);
    }
    (s, b)
}

/// A depthwise convolution's taps for [`super::depthwise`]: `[blocks][kh·kw][BLOCK]` without
/// their scale (int8 values converted exactly, or the f32 weights), zero past the channels, and
/// each channel's scale (1 for f32 weights). Clones share the values.
#[derive(Debug, Clone)]
pub struct PackedDepthwise {
    pub(super) w: Arc<[f32]>,
    pub(super) q: Arc<[f32]>,
    /// The int8 values packed (`None` for f32 weights, which may change in place).
    source: Option<Arc<[i8]>>,
}

impl PackedDepthwise {
    /// `layer`'s taps packed.
    pub fn new(layer: &Depthwise) -> Self {
        let (c, kl) = (layer.channels, layer.window.kernel[0] * layer.window.kernel[1]);
        let mut w = vec![0f32; c.div_ceil(BLOCK) * kl * BLOCK];
        let mut q = vec![0f32; c];
        let mut row = vec![0f32; kl];
        for ch in 0..c {
            q[ch] = layer.weights.raw_row(ch, &mut row);
            for (tap, &v) in row.iter().enumerate() {
                w[((ch / BLOCK) * kl + tap) * BLOCK + ch % BLOCK] = v;
            }
        }
        let source = match &layer.weights {
            Weights::Int8 { values, .. } => Some(values.clone()),
            Weights::F32(_) => None,
        };
        PackedDepthwise { w: w.into(), q: q.into(), source }
    }

    /// Whether these are `layer`'s int8 taps (the same shared allocation, which cannot change
    /// while this holds it).
    pub fn fits(&self, layer: &Depthwise) -> bool {
        let same = match (&layer.weights, &self.source) {
            (Weights::Int8 { values, .. }, Some(s)) => Arc::ptr_eq(values, s),
            _ => false,
        };
        let kl = layer.window.kernel[0] * layer.window.kernel[1];
        same && self.q.len() == layer.channels && self.w.len() == layer.channels.div_ceil(BLOCK) * kl * BLOCK
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * (self.w.len() + self.q.len())
    }
}

/// The packed weights of an engine step: its dense or depthwise convolution's.
#[derive(Debug, Clone)]
pub enum Pack {
    Conv(PackedConv),
    Depthwise(PackedDepthwise),
}

impl Pack {
    /// `op`'s int8 weights packed to keep; `None` for other operations and for f32 weights
    /// (which may change in place, so each pass packs them).
    pub fn new(op: &Op) -> Option<Pack> {
        let pack = match op {
            Op::Conv(c) => Pack::Conv(PackedConv::new(c)),
            Op::Depthwise(d) => Pack::Depthwise(PackedDepthwise::new(d)),
            _ => return None,
        };
        pack.fits(op).then_some(pack)
    }

    /// Whether these are still `op`'s weights.
    pub fn fits(&self, op: &Op) -> bool {
        match (self, op) {
            (Pack::Conv(p), Op::Conv(c)) => p.fits(c),
            (Pack::Depthwise(p), Op::Depthwise(d)) => p.fits(d),
            _ => false,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            Pack::Conv(p) => p.bytes(),
            Pack::Depthwise(p) => p.bytes(),
        }
    }
}

/// A convolution's product as the blocked kernel runs it: its packed weights, its input rows
/// per output (`in_channels·kh·kw`) and its epilogue per output lane ([`lanes`]; the raw product
/// times the int8 scales when the epilogue is the identity).
pub(super) struct Product<'a> {
    w: kernels::Weights<'a>,
    k: usize,
    s: Vec<f32>,
    b: Vec<f32>,
    raw: bool,
    act: crate::ops::Activation,
}

impl<'a> Product<'a> {
    pub(super) fn new(conv: &Conv, packed: &'a PackedConv, epi: &Epilogue) -> Self {
        let co = conv.out_channels;
        let raw = epi.scale.is_none() && epi.bias.is_none() && epi.act == crate::ops::Activation::Identity;
        let (s, b) = if raw { (lanes(&Epilogue::NONE, &packed.q, co).0, vec![]) } else { lanes(epi, &packed.q, co) };
        let k = conv.in_channels * conv.window.kernel[0] * conv.window.kernel[1];
        Product { w: packed.weights(), k, s, b, raw, act: epi.act }
    }

    /// `outs[o][(p − first)·BLOCK + l]` for the output blocks `blocks` (`outs[o]` block
    /// `blocks.start + o`) and the pixels `first..first + count` of `x` (input row `i` of pixel
    /// `p` at `x[off[i] + p·step]`).
    pub(super) fn run(
        &self,
        blocks: std::ops::Range<usize>,
        x: &[f32],
        off: &[usize],
        step: usize,
        (first, count): (usize, usize),
        outs: &mut [&mut [f32]],
    ) {
        let (w, lanes) =
            (blocks.start * self.k * BLOCK..blocks.end * self.k * BLOCK, blocks.start * BLOCK..blocks.end * BLOCK);
        let t = kernels::Pointwise {
            w: match self.w {
                kernels::Weights::F32(v) => kernels::Weights::F32(&v[w]),
                kernels::Weights::I8(v) => kernels::Weights::I8(&v[w]),
            },
            k: self.k,
            x,
            off,
            step,
            first,
            count,
            s: &self.s[lanes.clone()],
            b: if self.raw { &[] } else { &self.b[lanes] },
            act: self.act,
            raw: self.raw,
            wide: super::group() == 2,
        };
        kernels::pointwise(&t, outs);
    }
}
