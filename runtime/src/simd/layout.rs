//! A plane's padded, phase-split layout for a strided window ([`Phases`]), and the stride-2
//! transposed window that writes a plane back from such phases.

use super::epilogue::affine_act_row;
use super::LANES;
use crate::ops::Activation;

/// Where [`layout_input`] puts a plane: `sw` column phases of `rows × width` values,
/// phase-major, after `pt` rows and `pl` columns of padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases {
    pub rows: usize,
    pub width: usize,
    pub sw: usize,
    pub pt: usize,
    pub pl: usize,
}

/// The rows [`transpose_stride_2`] reads and the plane it writes: `len` values per gradient row,
/// `m` output phase values per row, `iw` columns of the written plane, which starts `pt` rows
/// and `pl` columns into the padded frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GradRows {
    pub len: usize,
    pub m: usize,
    pub iw: usize,
    pub pt: usize,
    pub pl: usize,
}

multiversion! {
    /// Lays out the plane `x: [ih, iw]` (`ih = x.len() / iw`) into `dst` as `geo` says: `sw`
    /// column phases of `rows × width` values, phase-major;
    /// input row `y` goes to padded row `y + pt`, input column `j` to padded column `p = j + pl`,
    /// which is index `p / sw` of phase `p % sw`; each value mapped by `map = Some((s, b, act))` to
    /// `act(v·s + b)`. Rows and columns past the layout are dropped; other positions are untouched.
    pub fn layout_input / layout_input_at(x: &[f32], iw: usize, dst: &mut [f32], geo: Phases, map: Option<(f32, f32, Activation)>) {
        let Phases { rows, width, sw, pt, pl } = geo;
        let cols = width * sw;
        let (lo, hi) = (pl, (iw + pl).min(cols));
        if lo >= hi {
            return;
        }
        for (y, xrow) in x.chunks_exact(iw).enumerate().take(rows.saturating_sub(pt)) {
            let r = y + pt;
            let at = |j: usize| ((((pl + j) % sw) * rows + r) * width + (pl + j) / sw, (hi - lo - j).div_ceil(sw));
            if sw == 2 && hi - lo >= 2 {
                let ((a0, n0), (a1, n1)) = (at(0), at(1));
                let (low, high) = dst.split_at_mut(a0.max(a1));
                let (first, second) = (&mut low[a0.min(a1)..], high);
                let (even, odd) = if a0 < a1 { (&mut first[..n0], &mut second[..n1]) } else { (&mut second[..n0], &mut first[..n1]) };
                deinterleave_row(xrow, even, odd, map);
                continue;
            }
            for j in 0..sw.min(hi - lo) {
                let (a, count) = at(j);
                let out = &mut dst[a..a + count];
                match (sw, map) {
                    (1, None) => out.copy_from_slice(&xrow[..count]),
                    (1, Some((s, b, act))) => affine_act_row(out, &xrow[..count], s, b, act),
                    (_, None) => out.iter_mut().zip(xrow[j..].iter().step_by(sw)).for_each(|(d, v)| *d = *v),
                    (_, Some((s, b, act))) => {
                        out.iter_mut().zip(xrow[j..].iter().step_by(sw)).for_each(|(d, v)| *d = act.apply(v * s + b))
                    }
                }
            }
        }
    }
}

/// Splits `src` by index parity: `even[i] = f(src[2i])` and `odd[i] = f(src[2i + 1])` for
/// `i < even.len()` and `i < odd.len()` (`src` holds at least `2·even.len() − 1` and
/// `2·odd.len()` values), `f(v) = act(v·s + b)` for `map = Some((s, b, act))`, else `v`.
#[inline(always)]
fn deinterleave_row(src: &[f32], even: &mut [f32], odd: &mut [f32], map: Option<(f32, f32, Activation)>) {
    let f = |v: f32| match map {
        Some((s, b, act)) => act.apply(v * s + b),
        None => v,
    };
    let blocks = even.len().min(odd.len()) / LANES;
    for i in 0..blocks {
        let x: &[f32; 2 * LANES] = src[2 * LANES * i..2 * LANES * (i + 1)].try_into().expect("2·LANES values");
        let (mut e, mut o) = ([0f32; LANES], [0f32; LANES]);
        for l in 0..LANES {
            e[l] = f(x[2 * l]);
            o[l] = f(x[2 * l + 1]);
        }
        even[LANES * i..LANES * (i + 1)].copy_from_slice(&e);
        odd[LANES * i..LANES * (i + 1)].copy_from_slice(&o);
    }
    for (i, e) in even.iter_mut().enumerate().skip(blocks * LANES) {
        *e = f(src[2 * i]);
    }
    for (i, o) in odd.iter_mut().enumerate().skip(blocks * LANES) {
        *o = f(src[2 * i + 1]);
    }
}

multiversion! {
    /// The stride-2 3×3 transposed correlation of one plane by output phase (see
    /// `ops::depthwise::transposed_3x3_stride_2`), with `geo` ([`GradRows`]): `rows` holds
    /// the gradient's rows, `len` values each, row `oy` being `[0, dy[oy, 0], …, dy[oy, ow − 1], 0, …]`
    /// (`len ≥ m + 1`); `dx: [ih, iw]` is overwritten; `scratch` holds `2·m` values.
    pub fn transpose_stride_2 / transpose_stride_2_at(rows: &[f32], k: &[f32; 9], geo: GradRows, dx: &mut [f32], scratch: &mut [f32]) {
        let GradRows { len, m, iw, pt, pl } = geo;
        let oh = rows.len() / len;
        let (e, o) = scratch[..2 * m].split_at_mut(m);
        for (iy, out) in dx.chunks_exact_mut(iw).enumerate() {
            let t = iy + pt;
            let row = |oy: usize| (oy < oh).then(|| &rows[oy * len..oy * len + m + 1]);
            let (first, second, ky) = if t % 2 == 0 { (row(t / 2), (t / 2).checked_sub(1).and_then(row), 0) } else { (row(t / 2), None, 1) };
            let (a, b) = match (first, second) {
                (Some(a), b) => (a, b),
                (None, Some(b)) => (b, None),
                (None, None) => {
                    out.fill(0.0);
                    continue;
                }
            };
            let ka = if first.is_some() { ky } else { 2 };
            let (a0, a1) = (&a[..m], &a[1..=m]);
            let eo = e.iter_mut().zip(o.iter_mut());
            if let (0, Some(b)) = (ky, b) {
                let (b0, b1) = (&b[..m], &b[1..=m]);
                let (k0, k1, k2, k6, k7, k8) = (k[0], k[1], k[2], k[6], k[7], k[8]);
                for ((e, o), (((&x0, &x1), &y0), &y1)) in eo.zip(a0.iter().zip(a1).zip(b0).zip(b1)) {
                    *e = k0 * x1 + k2 * x0 + k6 * y1 + k8 * y0;
                    *o = k1 * x1 + k7 * y1;
                }
            } else {
                let (kl, km, kr) = (k[3 * ka], k[3 * ka + 1], k[3 * ka + 2]);
                for ((e, o), (&x0, &x1)) in eo.zip(a0.iter().zip(a1)) {
                    *e = kl * x1 + kr * x0;
                    *o = km * x1;
                }
            }
            if pl % 2 == 0 {
                interleave_rows(&e[pl / 2..], &o[pl / 2..], out);
            } else {
                interleave_rows(&o[(pl - 1) / 2..], &e[pl.div_ceil(2)..], out);
            }
        }
    }
}

/// Interleaves `even` and `odd` into `dst`: `dst[2i] = even[i]`, `dst[2i + 1] = odd[i]`
/// (`even` holds at least `⌈dst.len() / 2⌉` values, `odd` at least `⌊dst.len() / 2⌋`).
#[inline(always)]
fn interleave_rows(even: &[f32], odd: &[f32], dst: &mut [f32]) {
    let blocks = dst.len() / (2 * LANES);
    for i in 0..blocks {
        let e: &[f32; LANES] = even[LANES * i..LANES * (i + 1)].try_into().expect("LANES values");
        let o: &[f32; LANES] = odd[LANES * i..LANES * (i + 1)].try_into().expect("LANES values");
        let mut d = [0f32; 2 * LANES];
        for l in 0..LANES {
            d[2 * l] = e[l];
            d[2 * l + 1] = o[l];
        }
        dst[2 * LANES * i..2 * LANES * (i + 1)].copy_from_slice(&d);
    }
    let mut j = 2 * LANES * blocks;
    if dst.len() - j >= LANES {
        let h = LANES / 2;
        let e: &[f32; LANES / 2] = even[j / 2..j / 2 + h].try_into().expect("LANES / 2 values");
        let o: &[f32; LANES / 2] = odd[j / 2..j / 2 + h].try_into().expect("LANES / 2 values");
        let mut d = [0f32; LANES];
        for l in 0..h {
            d[2 * l] = e[l];
            d[2 * l + 1] = o[l];
        }
        dst[j..j + LANES].copy_from_slice(&d);
        j += LANES;
    }
    for (j, d) in dst.iter_mut().enumerate().skip(j) {
        *d = if j % 2 == 0 { even[j / 2] } else { odd[j / 2] };
    }
}
