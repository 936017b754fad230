//! 3×3 window sums over padded planes and their kernel gradients (the depthwise kernels' inner
//! loops).

use super::{copy_short, LANES};

multiversion! {
    /// `out[i] (+)= Σₜ w[t]·src[t][i]` for `i < out.len()`, the taps summed in order; `out` is
    /// overwritten unless `accumulate`. Every `src[t]` holds at least `out.len()` values (at least
    /// `out.len()` rounded up to [`LANES`] for the fast path) and `w.len() == src.len()`.
    pub fn taps / taps_at(out: &mut [f32], src: &[&[f32]], w: &[f32], accumulate: bool) {
        let n = out.len();
        let full = n.next_multiple_of(LANES);
        if let (Ok(s), Ok(w)) = (<&[&[f32]; 9]>::try_from(src), <&[f32; 9]>::try_from(w)) {
            if s.iter().all(|s| s.len() >= full) {
                nine(out, s, w, accumulate);
                return;
            }
        }
        if !accumulate {
            out.fill(0.0);
        }
        for (s, &wv) in src.iter().zip(w) {
            for (o, x) in out.iter_mut().zip(&s[..n]) {
                *o = wv.mul_add(*x, *o);
            }
        }
    }
}

/// [`taps`] with nine sources of at least `out.len()` rounded up to [`LANES`] values each.
#[inline(always)]
fn nine(out: &mut [f32], s: &[&[f32]; 9], w: &[f32; 9], accumulate: bool) {
    nine_at(out, |t, j| &s[t][j..j + LANES], w, accumulate);
}

/// [`nine`] with the sources given by `at(t, j)`: `LANES` values of source `t` from `j`.
#[inline(always)]
fn nine_at<'a>(out: &mut [f32], at: impl Fn(usize, usize) -> &'a [f32], w: &[f32; 9], accumulate: bool) {
    let n = out.len();
    let block = |j: usize, mut acc: [f32; LANES]| -> [f32; LANES] {
        for (t, &wt) in w.iter().enumerate() {
            let x: &[f32; LANES] = at(t, j).try_into().expect("LANES values");
            for i in 0..LANES {
                acc[i] = wt.mul_add(x[i], acc[i]);
            }
        }
        acc
    };
    let whole = n - n % LANES;
    for j in (0..whole).step_by(LANES) {
        let o: &mut [f32; LANES] = (&mut out[j..j + LANES]).try_into().expect("LANES values");
        *o = block(j, if accumulate { *o } else { [0.0; LANES] });
    }
    if whole < n {
        let m = n - whole;
        let mut acc = [0f32; LANES];
        if accumulate {
            copy_short(&mut acc[..m], &out[whole..]);
        }
        copy_short(&mut out[whole..], &block(whole, acc)[..m]);
    }
}

/// A padded plane's layout for a window (`ops::depthwise::Padded`): `sw` column phases, each
/// `rows × width` values, phase-major; the window's strides `sh`, `sw`.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub rows: usize,
    pub width: usize,
    pub sh: usize,
    pub sw: usize,
}

/// The offset in a plane laid out as `l` of 3×3 tap `t = 3·ky + kx` at output `(0, 0)`:
/// `((kx mod sw)·rows + ky)·width + ⌊kx / sw⌋`.
#[inline(always)]
fn tap_offsets(l: Layout) -> [usize; 9] {
    let Layout { rows, width, sw, .. } = l;
    [0, 1, 2, 3, 4, 5, 6, 7, 8].map(|t| ((t % 3 % sw) * rows + t / 3) * width + t % 3 / sw)
}

multiversion! {
    /// A 3×3 window over a whole plane laid out as `l`: `out[oy·ow + ox] (+)= Σ k[3·ky + kx] ·
    /// src[((kx mod sw)·rows + oy·sh + ky)·width + ⌊kx / sw⌋ + ox]`, overwritten unless
    /// `accumulate`. Needs `width ≥ ⌊2 / sw⌋ + ow` rounded up to [`LANES`].
    pub fn conv3x3 / conv3x3_at(out: &mut [f32], ow: usize, src: &[f32], l: Layout, k: &[f32; 9], accumulate: bool) {
        let Layout { width, sh, .. } = l;
        let full = ow.next_multiple_of(LANES);
        let off = tap_offsets(l);
        let span = off.iter().max().copied().unwrap_or(0) + full;
        for (oy, orow) in out.chunks_exact_mut(ow).enumerate() {
            let s = &src[oy * sh * width..oy * sh * width + span];
            nine_at(orow, |t, j| &s[off[t] + j..off[t] + j + LANES], k, accumulate);
        }
    }
}

multiversion! {
    /// `acc[t][i] += g[i]·src[t][i]` for every tap `t` and `i < g.len()` (a kernel gradient's
    /// products, summed later); `acc[t]` and `src[t]` hold at least `g.len()` rounded up to
    /// [`LANES`] values (the lanes past `g.len()` get zero added).
    pub fn tap_products / tap_products_at(acc: &mut [Vec<f32>], src: &[&[f32]], g: &[f32]) {
        let n = g.len();
        for j in (0..n).step_by(LANES) {
            let m = (n - j).min(LANES);
            let mut gb = [0f32; LANES];
            gb[..m].copy_from_slice(&g[j..j + m]);
            for (a, s) in acc.iter_mut().zip(src) {
                let a: &mut [f32; LANES] = (&mut a[j..j + LANES]).try_into().expect("LANES values");
                let x: &[f32; LANES] = s[j..j + LANES].try_into().expect("LANES values");
                for i in 0..LANES {
                    a[i] += x[i] * gb[i];
                }
            }
        }
    }
}

multiversion! {
    /// The gradient of a 3×3 window over a whole plane laid out as `l` (the source of
    /// [`conv3x3`]) for the output gradient `g: [oh, ow]` with `ow ≤ LANES`:
    /// `dk[t] += Σ_{oy, ox} g[oy·ow + ox] · src[off(t) + oy·sh·width + ox]`. The rows go
    /// `LANES / slot` to a block of lanes (`slot`: `ow` rounded up to a power of two), row `oy` to
    /// the lanes of slot `oy mod (LANES / slot)`; the products are summed lane by lane as fused
    /// multiply-adds in row order, then the `ow` lanes of each slot in order, slot by slot.
    pub fn kernel_gradient_3x3 / kernel_gradient_3x3_at(dk: &mut [f32; 9], g: &[f32], ow: usize, src: &[f32], l: Layout) {
        let Layout { width, sh, .. } = l;
        let slot = ow.next_power_of_two().min(LANES);
        let per = LANES / slot;
        let off = tap_offsets(l);
        let mut acc = [[0f32; LANES]; 9];
        for (group, gs) in g.chunks(per * ow).enumerate() {
            let mut gb = [0f32; LANES];
            for (s, gr) in gs.chunks_exact(ow).enumerate() {
                copy_short(&mut gb[s * slot..s * slot + ow], gr);
            }
            let base = group * per * sh * width;
            for (a, &o) in acc.iter_mut().zip(&off) {
                let mut xb = [0f32; LANES];
                for s in 0..gs.len() / ow {
                    let at = base + o + s * sh * width;
                    copy_short(&mut xb[s * slot..(s + 1) * slot], &src[at..at + slot]);
                }
                for i in 0..LANES {
                    a[i] = xb[i].mul_add(gb[i], a[i]);
                }
            }
        }
        for (d, a) in dk.iter_mut().zip(&acc) {
            *d += a.chunks_exact(slot).flat_map(|s| &s[..ow]).sum::<f32>();
        }
    }
}
