//! The inner loops of the channel-blocked inference layout ([`crate::ops::blocked`]): values of
//! [`BLOCK`] consecutive channels of one pixel lie together, so a vector holds one pixel's block
//! of channels and the per-channel work (weights, scale, bias) is a vector too.
//!
//! Every output value is the same chain of f32 operations as in the planar kernels (the matrix
//! product's fused multiply-adds over the input channels in order, the depthwise taps in order,
//! then `act(v·s + b)`), so the two layouts give the same bits; see the notes at each kernel.

use super::lanes::{self, Lanes, Portable};
use crate::ops::Activation;

mod depthwise;
pub use depthwise::{depthwise, depthwise_at, Depthwise};

/// Channels per block.
pub const BLOCK: usize = 16;

/// One vector: a pixel's block of channels.
type V = [f32; BLOCK];

/// `act(v·s + b)` lane by lane (a multiply, then an add: the planar epilogue's operations).
#[inline(always)]
fn finish(v: &mut V, s: &V, b: &V, act: Activation) {
    for l in 0..BLOCK {
        let y = v[l] * s[l] + b[l];
        v[l] = match act {
            Activation::Identity => y,
            Activation::Relu => y.max(0.0),
            Activation::Relu6 => y.clamp(0.0, 6.0),
            Activation::Clip01 => y.clamp(0.0, 1.0),
        };
    }
}

/// The weights of a product: f32 values, or int8 values converted (exactly) as they are loaded,
/// a quarter of the bytes to stream.
#[derive(Debug, Clone, Copy)]
pub enum Weights<'a> {
    F32(&'a [f32]),
    I8(&'a [i8]),
}

impl Weights<'_> {
    /// Values held.
    pub fn len(&self) -> usize {
        match self {
            Weights::F32(w) => w.len(),
            Weights::I8(w) => w.len(),
        }
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where a kernel loads weight vectors from.
trait Source: Copy {
    /// The vector of [`BLOCK`] weights from `at`.
    fn vector<L: Lanes>(self, at: usize) -> L;
}

impl Source for &[f32] {
    #[inline(always)]
    fn vector<L: Lanes>(self, at: usize) -> L {
        L::load(self[at..at + BLOCK].try_into().expect("a block"))
    }
}

impl Source for &[i8] {
    #[inline(always)]
    fn vector<L: Lanes>(self, at: usize) -> L {
        L::load_i8(self[at..at + BLOCK].try_into().expect("a block"))
    }
}

/// A product over the input channels for some output blocks and pixels: the operands of
/// [`pointwise`].
pub struct Pointwise<'a> {
    /// The weights of the output blocks, `[blocks][k][BLOCK]`, lane `l` of block `o` at input
    /// channel `i` the weight of output channel `o·BLOCK + l` (zero past the real channels).
    pub w: Weights<'a>,
    /// Input channels (rows of the product).
    pub k: usize,
    /// The input values; input channel `i` of pixel `p` at `x[off[i] + p·step]`.
    pub x: &'a [f32],
    pub off: &'a [usize],
    pub step: usize,
    /// The pixels computed, `first..first + count`.
    pub first: usize,
    pub count: usize,
    /// Per output lane (`blocks·BLOCK` values): `act(acc·s + b)`, or `acc·s` alone when `raw`.
    pub s: &'a [f32],
    pub b: &'a [f32],
    pub act: Activation,
    pub raw: bool,
    /// Tiles of two output blocks by twelve pixels (for 32 vector registers) rather than one by
    /// six.
    pub wide: bool,
}

/// `outs[o][p − first][l] = finish(Σᵢ w[o][i][l]·x(i, p))` for the output blocks `o` of `t.w`
/// and the pixels `p` of `t.first..t.first + t.count`; `outs[o]` holds block `o`'s `[count][BLOCK]`
/// values. Each sum is a chain of fused multiply-adds over `i = 0…k-1` in order from zero, as in
/// [`super::gemm_block`], and `raw` multiplies by `s` alone as its row scale does.
pub fn pointwise(t: &Pointwise<'_>, outs: &mut [&mut [f32]]) {
    pointwise_at(super::level(), t, outs)
}

/// [`pointwise`] at `level` (lowered to what the CPU has).
pub fn pointwise_at(level: super::Level, t: &Pointwise<'_>, outs: &mut [&mut [f32]]) {
    #[cfg(target_arch = "x86_64")]
    match super::lowered(level) {
        // SAFETY (both): `detected` found the level's features on this CPU.
        super::Level::Avx512 => return unsafe { x86::pointwise_avx512(t, outs) },
        super::Level::Avx2 => return unsafe { x86::pointwise_avx2(t, outs) },
        super::Level::Neon | super::Level::Portable => {}
    }
    #[cfg(target_arch = "aarch64")]
    if super::lowered(level) == super::Level::Neon {
        return pointwise_with::<lanes::Neon>(t, outs);
    }
    pointwise_with::<Portable>(t, outs)
}

/// [`pointwise`] with the vectors of `L`.
#[inline(always)]
fn pointwise_with<L: Lanes>(t: &Pointwise<'_>, outs: &mut [&mut [f32]]) {
    match (t.step, t.w) {
        (BLOCK, Weights::F32(w)) => pointwise_step::<L, BLOCK, _>(t, w, outs),
        (BLOCK, Weights::I8(w)) => pointwise_step::<L, BLOCK, _>(t, w, outs),
        (1, Weights::F32(w)) => pointwise_step::<L, 1, _>(t, w, outs),
        (1, Weights::I8(w)) => pointwise_step::<L, 1, _>(t, w, outs),
        (2, Weights::F32(w)) => pointwise_step::<L, 2, _>(t, w, outs),
        (2, Weights::I8(w)) => pointwise_step::<L, 2, _>(t, w, outs),
        (s, _) => panic!("pixel step {s} (1, 2 or {BLOCK})"),
    }
}

/// [`pointwise`] with the vectors of `L`, the pixel step `S` (`t.step`) and the weights `w`.
#[inline(always)]
fn pointwise_step<L: Lanes, const S: usize, W: Source>(t: &Pointwise<'_>, w: W, outs: &mut [&mut [f32]]) {
    let blocks = t.w.len() / (t.k * BLOCK);
    let mut o = 0;
    while o < blocks {
        if t.wide && o + 1 < blocks {
            row::<L, 2, 12, 4, S, W>(t, w, o, outs);
            o += 2;
        } else {
            row::<L, 1, 6, 2, S, W>(t, w, o, outs);
            o += 1;
        }
    }
}

/// Output blocks `o..o + OB` over all of [`pointwise`]'s pixels: tiles of `BIG` pixels, then of
/// `MID`, then of one.
#[inline(always)]
fn row<L: Lanes, const OB: usize, const BIG: usize, const MID: usize, const S: usize, W: Source>(
    t: &Pointwise<'_>,
    w: W,
    o: usize,
    outs: &mut [&mut [f32]],
) {
    let (mut p, end) = (t.first, t.first + t.count);
    while p + BIG <= end {
        tile::<L, OB, BIG, S, W>(t, w, o, p, outs);
        p += BIG;
    }
    while p + MID <= end {
        tile::<L, OB, MID, S, W>(t, w, o, p, outs);
        p += MID;
    }
    while p < end {
        tile::<L, OB, 1, S, W>(t, w, o, p, outs);
        p += 1;
    }
}

/// One register tile of [`pointwise`]: output blocks `o..o + OB`, pixels `p0..p0 + P`, input
/// pixels `S` values apart.
#[inline(always)]
fn tile<L: Lanes, const OB: usize, const P: usize, const S: usize, W: Source>(
    t: &Pointwise,
    w: W,
    o: usize,
    p0: usize,
    outs: &mut [&mut [f32]],
) {
    let mut acc = [[L::zero(); OB]; P];
    let k = t.k;
    let planes = [o * k * BLOCK, (o + OB - 1) * k * BLOCK];
    for (i, &off) in t.off[..k].iter().enumerate() {
        let mut wv = [L::zero(); OB];
        for (v, plane) in wv.iter_mut().zip(planes) {
            *v = w.vector(plane + i * BLOCK);
        }
        let base = off + p0 * S;
        let xs = &t.x[base..base + (P - 1) * S + 1];
        for (p, a) in acc.iter_mut().enumerate() {
            let x = L::splat(xs[p * S]);
            for (a, &wv) in a.iter_mut().zip(&wv) {
                *a = L::fma(wv, x, *a);
            }
        }
    }
    // The sums leave the registers first, so that the epilogue does not compete with them.
    let mut tile = [[[0f32; BLOCK]; OB]; P];
    for (dst, a) in tile.iter_mut().zip(&acc) {
        for (d, &v) in dst.iter_mut().zip(a) {
            L::store(v, d);
        }
    }
    for (b, blk) in (o..o + OB).enumerate() {
        let s: &V = t.s[blk * BLOCK..(blk + 1) * BLOCK].try_into().expect("a block");
        let bias: &V = t.b.get(blk * BLOCK..(blk + 1) * BLOCK).map_or(s, |v| v.try_into().expect("a block"));
        let (sl, bl) = (L::load(s), L::load(bias));
        for (p, px) in tile.iter().enumerate() {
            let at = (p0 - t.first + p) * BLOCK;
            let out: &mut V = (&mut outs[blk][at..at + BLOCK]).try_into().expect("a block");
            let v = L::load(&px[b]);
            if t.raw {
                L::mul(v, sl).store(out);
            } else {
                emit(v, (sl, s), (bl, bias), t.act, out);
            }
        }
    }
}

/// `out = act(v·s + b)` ([`finish`]'s operations): in registers for the identity, ReLU6 and
/// clip01 (whose vector form keeps NaN and −0 as `f32::clamp` does), through [`finish`] for ReLU.
#[inline(always)]
fn emit<L: Lanes>(v: L, (sl, s): (L, &V), (bl, b): (L, &V), act: Activation, out: &mut V) {
    match act {
        Activation::Identity => L::add(L::mul(v, sl), bl).store(out),
        Activation::Relu6 => L::clamp0(L::add(L::mul(v, sl), bl), 6.0).store(out),
        Activation::Clip01 => L::clamp0(L::add(L::mul(v, sl), bl), 1.0).store(out),
        Activation::Relu => {
            v.store(out);
            finish(out, s, b, act);
        }
    }
}

multiversion! {
    /// `v = act(v·s + b)` over pixels of one block (`s`, `b`: one value per lane).
    pub fn affine_block / affine_block_at(v: &mut [f32], s: &[f32], b: &[f32], act: Activation) {
        let s: &V = s.try_into().expect("a block");
        let b: &V = b.try_into().expect("a block");
        for px in v.chunks_exact_mut(BLOCK) {
            finish(px.try_into().expect("a block"), s, b, act);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::lanes::{Avx2, Avx512};
    use super::Pointwise;

    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    pub(super) fn pointwise_avx512(t: &Pointwise<'_>, outs: &mut [&mut [f32]]) {
        super::pointwise_with::<Avx512>(t, outs)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn pointwise_avx2(t: &Pointwise<'_>, outs: &mut [&mut [f32]]) {
        super::pointwise_with::<Avx2>(t, outs)
    }
}
