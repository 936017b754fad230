//! The depthwise window of the channel-blocked layout: one block of channels of a plane, a
//! vector per pixel (see [`super`]).

use super::lanes::{Lanes, Portable};
use super::{emit, BLOCK, V};
use crate::ops::Activation;

/// A depthwise window over one block of channels: the operands of [`depthwise`].
pub struct Depthwise<'a> {
    /// Rows `row0..` of the block's input plane `[ih][iw][BLOCK]` (at least those the output
    /// rows' windows read).
    pub x: &'a [f32],
    pub row0: usize,
    pub ih: usize,
    pub iw: usize,
    /// The taps `[kh·kw][BLOCK]`, row by row.
    pub w: &'a [f32],
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    /// Top and left zero padding.
    pub pad: [usize; 2],
    /// Output rows `rows` of `ow` columns.
    pub rows: std::ops::Range<usize>,
    pub ow: usize,
    /// `act(acc·s + b)` per lane.
    pub s: &'a [f32],
    pub b: &'a [f32],
    pub act: Activation,
}

/// `out[oy][ox][l] = finish(Σ w[ky·kw + kx][l]·x[oy·sh + ky − pt][ox·sw + kx − pl][l])` for the
/// rows `t.rows` (`out` holds just them), the taps summed in order by fused multiply-adds from
/// zero as [`crate::simd::taps`] does. Taps over the padding are skipped: adding `w·0` to a sum that
/// started at +0 changes no bit of it.
pub fn depthwise(t: &Depthwise<'_>, out: &mut [f32]) {
    depthwise_at(crate::simd::level(), t, out)
}

/// [`depthwise`] at `level` (lowered to what the CPU has).
pub fn depthwise_at(level: crate::simd::Level, t: &Depthwise<'_>, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match crate::simd::lowered(level) {
        // SAFETY (both): `detected` found the level's features on this CPU.
        crate::simd::Level::Avx512 => return unsafe { x86::depthwise_avx512(t, out) },
        crate::simd::Level::Avx2 => return unsafe { x86::depthwise_avx2(t, out) },
        crate::simd::Level::Neon | crate::simd::Level::Portable => {}
    }
    #[cfg(target_arch = "aarch64")]
    if crate::simd::lowered(level) == crate::simd::Level::Neon {
        return depthwise_with::<super::lanes::Neon>(t, out);
    }
    depthwise_with::<Portable>(t, out)
}

/// [`depthwise`] with the vectors of `L`: a fixed-size window for the 3×3 and 5×5 kernels at
/// strides 1 and 2, any window otherwise.
#[inline(always)]
fn depthwise_with<L: Lanes>(t: &Depthwise<'_>, out: &mut [f32]) {
    let w: Vec<L> = t.w.chunks_exact(BLOCK).map(|c| L::load(c.try_into().expect("a block"))).collect();
    match (t.kernel, t.stride) {
        ([3, 3], [1, 1]) => depthwise_fixed::<L, 3, 1>(t, &w, out),
        ([3, 3], [2, 2]) => depthwise_fixed::<L, 3, 2>(t, &w, out),
        ([5, 5], [1, 1]) => depthwise_fixed::<L, 5, 1>(t, &w, out),
        ([5, 5], [2, 2]) => depthwise_fixed::<L, 5, 2>(t, &w, out),
        _ => {
            for (r, oy) in t.rows.clone().enumerate() {
                for ox in 0..t.ow {
                    let at = (r * t.ow + ox) * BLOCK;
                    pixel(t, &w, oy, ox, (&mut out[at..at + BLOCK]).try_into().expect("a block"));
                }
            }
        }
    }
}

/// One output pixel of [`depthwise`], any window, the taps over the padding skipped.
#[inline(always)]
fn pixel<L: Lanes>(t: &Depthwise<'_>, w: &[L], oy: usize, ox: usize, out: &mut V) {
    let [kh, kw] = t.kernel;
    let ([sh, sw], [pt, pl]) = (t.stride, t.pad);
    let (top, left) = (oy * sh, ox * sw);
    let (ky0, ky1) = (pt.saturating_sub(top), kh.min((t.ih + pt).saturating_sub(top)));
    let (kx0, kx1) = (pl.saturating_sub(left), kw.min((t.iw + pl).saturating_sub(left)));
    let mut acc = L::zero();
    for ky in ky0..ky1 {
        let iy = top + ky - pt - t.row0;
        let row = &t.x[iy * t.iw * BLOCK..(iy + 1) * t.iw * BLOCK];
        for kx in kx0..kx1 {
            let ix = left + kx - pl;
            acc = L::fma(w[ky * kw + kx], L::load(row[ix * BLOCK..(ix + 1) * BLOCK].try_into().expect("a block")), acc);
        }
    }
    let (s, b): (&V, &V) = (t.s.try_into().expect("a block"), t.b.try_into().expect("a block"));
    emit(acc, (L::load(s), s), (L::load(b), b), t.act, out);
}

/// [`depthwise`] for a `K × K` window at stride `S`, [`GROUP`] pixels of a row at once
/// (independent sums, each input column loaded once per window row). Groups whose windows lie
/// inside the input run a fixed, unrolled sum; the others (borders, the row's tail) the same
/// sum with the taps over the padding skipped: the same taps in the same order as [`pixel`].
#[inline(always)]
fn depthwise_fixed<L: Lanes, const K: usize, const S: usize>(t: &Depthwise<'_>, w: &[L], out: &mut [f32]) {
    let [pt, pl] = t.pad;
    let wk: [[L; K]; K] = std::array::from_fn(|ky| std::array::from_fn(|kx| w[ky * K + kx]));
    let s: &V = t.s.try_into().expect("a block");
    let b: &V = t.b.try_into().expect("a block");
    let (sl, bl) = (L::load(s), L::load(b));
    // Columns whose window lies inside the input: `ox·S ≥ pl` and `ox·S − pl + K ≤ iw`.
    let lo = pl.div_ceil(S);
    let hi = if t.iw + pl >= K { ((t.iw + pl - K) / S + 1).min(t.ow) } else { 0 };
    let span = (GROUP - 1) * S + K;
    for (r, oy) in t.rows.clone().enumerate() {
        let row = &mut out[r * t.ow * BLOCK..(r + 1) * t.ow * BLOCK];
        let top = oy * S;
        // The window rows over the input.
        let (ky0, ky1) = (pt.saturating_sub(top), K.min((t.ih + pt).saturating_sub(top)));
        let mut ox = 0;
        while ox < t.ow {
            let mut acc = [L::zero(); GROUP];
            let count = GROUP.min(t.ow - ox);
            if ky0 == 0 && ky1 == K && ox >= lo && ox + GROUP <= hi {
                let first = (ox * S - pl) * BLOCK;
                for (ky, wr) in wk.iter().enumerate() {
                    let at = (top + ky - pt - t.row0) * t.iw * BLOCK + first;
                    let xs = &t.x[at..at + span * BLOCK];
                    let mut cols = [L::zero(); 16];
                    for (c, v) in cols.iter_mut().enumerate().take(span) {
                        *v = L::load(xs[c * BLOCK..(c + 1) * BLOCK].try_into().expect("a block"));
                    }
                    for (kx, &wv) in wr.iter().enumerate() {
                        for (j, a) in acc.iter_mut().enumerate() {
                            *a = L::fma(wv, cols[j * S + kx], *a);
                        }
                    }
                }
            } else {
                // Input column of span column `c`: `ox·S + c − pl`, when inside the input.
                let inside: [bool; 16] =
                    std::array::from_fn(|c| (ox * S + c).checked_sub(pl).is_some_and(|i| i < t.iw));
                for (ky, wr) in wk.iter().enumerate().take(ky1).skip(ky0) {
                    let at = (top + ky - pt - t.row0) * t.iw * BLOCK;
                    let mut cols = [L::zero(); 16];
                    for (c, v) in cols.iter_mut().enumerate().take(span) {
                        if inside[c] {
                            let i = at + (ox * S + c - pl) * BLOCK;
                            *v = L::load(t.x[i..i + BLOCK].try_into().expect("a block"));
                        }
                    }
                    for (kx, &wv) in wr.iter().enumerate() {
                        for (j, a) in acc.iter_mut().enumerate().take(count) {
                            if inside[j * S + kx] {
                                *a = L::fma(wv, cols[j * S + kx], *a);
                            }
                        }
                    }
                }
            }
            for (j, a) in acc.into_iter().enumerate().take(count) {
                let at = (ox + j) * BLOCK;
                emit(a, (sl, s), (bl, b), t.act, (&mut row[at..at + BLOCK]).try_into().expect("a block"));
            }
            ox += GROUP;
        }
    }
}

/// Output pixels [`depthwise_fixed`] sums at once (`(GROUP − 1)·S + K ≤ 16` input columns).
const GROUP: usize = 4;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::lanes::{Avx2, Avx512};
    use super::Depthwise;

    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    pub(super) fn depthwise_avx512(t: &Depthwise<'_>, out: &mut [f32]) {
        super::depthwise_with::<Avx512>(t, out)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn depthwise_avx2(t: &Depthwise<'_>, out: &mut [f32]) {
        super::depthwise_with::<Avx2>(t, out)
    }
}
