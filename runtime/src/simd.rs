//! The hot inner loops of the CPU kernels, compiled once per x86-64 feature level (AVX-512,
//! AVX2 + FMA, baseline) and dispatched at run time; on other architectures (aarch64 has NEON
//! as its baseline) only the portable version exists.
//!
//! This is the only module allowed `unsafe`: calling a `#[target_feature]` function is unsafe
//! because the CPU must have the feature, which [`level`] checks first. Every loop is plain safe
//! slice code that the compiler vectorises; each output element is computed by the same
//! sequence of f32 operations at every level (no reassociation; the matrix product and the tap
//! sums use fused multiply-adds at every level, `f32::mul_add` being correctly rounded
//! everywhere), so the results are bit-identical whichever version runs.

use crate::ops::Activation;

/// The widest vector instruction set of this CPU that the kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Portable,
    Avx2,
    Avx512,
}

/// The level the kernels dispatch to (detected once; `EDGEPATCH_SIMD=portable|avx2` lowers it).
pub fn level() -> Level {
    static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = match std::env::var("EDGEPATCH_SIMD").as_deref() {
            Ok("portable") => Level::Portable,
            Ok("avx2") => Level::Avx2,
            _ => Level::Avx512,
        };
        let found = detect();
        match (cap, found) {
            (Level::Portable, _) | (_, Level::Portable) => Level::Portable,
            (Level::Avx2, _) | (_, Level::Avx2) => Level::Avx2,
            _ => Level::Avx512,
        }
    })
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Level {
    use std::arch::is_x86_feature_detected as has;
    if has!("avx512f") && has!("avx512vl") && has!("avx2") && has!("fma") {
        Level::Avx512
    } else if has!("avx2") && has!("fma") {
        Level::Avx2
    } else {
        Level::Portable
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Level {
    Level::Portable
}

/// Defines a public function whose body is compiled at each feature level and dispatched by
/// [`level`].
macro_rules! multiversion {
    ($(#[$m:meta])* pub fn $name:ident($($a:ident : $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        pub fn $name($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn body($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                fn avx512($($a: $t),*) $(-> $r)? { body($($a),*) }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($a: $t),*) $(-> $r)? { body($($a),*) }
                match level() {
                    // SAFETY: `level` returned this level only after detecting its features.
                    Level::Avx512 => return unsafe { avx512($($a),*) },
                    // SAFETY: as above.
                    Level::Avx2 => return unsafe { avx2($($a),*) },
                    Level::Portable => {}
                }
            }
            body($($a),*)
        }
    };
}

/// Lanes per block of the row kernels; sources padded to a multiple of it let every block run
/// at full vector width.
pub const LANES: usize = 16;

multiversion! {
    /// `out[i] (+)= Σₜ w[t]·src[t][i]` for `i < out.len()`, the taps summed in order; `out` is
    /// overwritten unless `accumulate`. Every `src[t]` holds at least `out.len()` values (at least
    /// `out.len()` rounded up to [`LANES`] for the fast path) and `w.len() == src.len()`.
    pub fn taps(out: &mut [f32], src: &[&[f32]], w: &[f32], accumulate: bool) {
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
    pub fn conv3x3(out: &mut [f32], ow: usize, src: &[f32], l: Layout, k: &[f32; 9], accumulate: bool) {
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
    pub fn tap_products(acc: &mut [Vec<f32>], src: &[&[f32]], g: &[f32]) {
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
    pub fn kernel_gradient_3x3(dk: &mut [f32; 9], g: &[f32], ow: usize, src: &[f32], l: Layout) {
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

/// `(MR, NR)`: the rows and columns of one register tile of [`gemm_block`] at the dispatched
/// level. Matrices for it are packed in panels of `MR` rows ([`pack_panels`]).
pub fn gemm_tile() -> (usize, usize) {
    match level() {
        Level::Avx512 => (8, 32),
        _ => (4, 16),
    }
}

/// Packs the `rows × k` matrix `at(r, p)` for [`gemm_block`]: panels of `MR` rows, each `k`
/// groups of `MR` values (row `r` of a panel at offset `p·MR + r`), rows past `rows` zero.
/// The panels are filled in parallel.
pub fn pack_panels(rows: usize, k: usize, at: impl Fn(usize, usize) -> f32 + Sync) -> Vec<f32> {
    use rayon::prelude::*;
    let mr = gemm_tile().0;
    let mut out = vec![0f32; rows.div_ceil(mr) * mr * k];
    out.par_chunks_exact_mut(mr * k).enumerate().for_each(|(panel, dst)| {
        for (p, group) in dst.chunks_exact_mut(mr).enumerate() {
            for (r, v) in group.iter_mut().enumerate().take(rows.saturating_sub(panel * mr)) {
                *v = at(panel * mr + r, p);
            }
        }
    });
    out
}

/// A block of a matrix product, with `b = (b, ldb)`, `c = (c, ldc)` and `size = (rows, cols)`:
/// `c[r·ldc + j] = Σₚ a(r, p)·b[p·ldb + j]` for `r < rows` and `j < cols`, each sum a chain of
/// fused multiply-adds over `p = 0…k-1` in order (so neither the tiling nor the level changes a
/// bit). `a` is packed by [`pack_panels`] (at least the panels holding `rows` rows). The columns
/// run in strips of `NR` ([`gemm_tile`]); `b` holds, from each `p·ldb`, the columns rounded up to
/// a whole strip (to half a strip when the last strip is at most half full). Row `r` is
/// multiplied by `scale[r]` when `scale` is not empty. Tiles run panel by panel when `k` is small
/// (a block of `b` stays in the first-level cache and each output row is written in long runs),
/// strip by strip otherwise. The x86 tiles are written with explicit vector intrinsics (the
/// compiler's vectoriser does not reliably keep a whole tile in registers); elsewhere plain loops.
pub fn gemm_block(
    a: &[f32],
    k: usize,
    b: (&[f32], usize),
    c: (&mut [f32], usize),
    size: (usize, usize),
    scale: &[f32],
) {
    let (mr, nr) = gemm_tile();
    let ((b, ldb), (c, ldc), (rows, cols)) = (b, c, size);
    let mut tile = |panel: usize, strip: usize| {
        let (r0, j0) = (panel * mr, strip * nr);
        let (ap, bs) = (&a[r0 * k..(r0 + mr) * k], &b[j0..]);
        let cs = &mut c[r0 * ldc + j0..];
        let sc = scale.get(r0..).unwrap_or(&[]);
        let size = ((rows - r0).min(mr), (cols - j0).min(nr));
        gemm_tile_at(ap, k, (bs, ldb), (cs, ldc, sc), size);
    };
    let (panels, strips) = (rows.div_ceil(mr), cols.div_ceil(nr));
    if k <= 64 {
        for p in 0..panels {
            for s in 0..strips {
                tile(p, s);
            }
        }
    } else {
        for s in 0..strips {
            for p in 0..panels {
                tile(p, s);
            }
        }
    }
}

/// One tile of [`gemm_block`]: `a` one panel, `size = (rows ≤ MR, cols ≤ NR)`.
fn gemm_tile_at(a: &[f32], k: usize, (b, ldb): (&[f32], usize), c: (&mut [f32], usize, &[f32]), size: (usize, usize)) {
    let (rows, cols) = size;
    let narrow = cols <= gemm_tile().1 / 2;
    #[cfg(target_arch = "x86_64")]
    match (level(), narrow) {
        // SAFETY (all four): `level` returned this level only after detecting its features.
        (Level::Avx512, false) => return unsafe { x86::tile_avx512::<2>(a, k, b, ldb, c, rows, cols) },
        (Level::Avx512, true) => return unsafe { x86::tile_avx512::<1>(a, k, b, ldb, c, rows, cols) },
        (Level::Avx2, false) => return unsafe { x86::tile_avx2::<2>(a, k, b, ldb, c, rows, cols) },
        (Level::Avx2, true) => return unsafe { x86::tile_avx2::<1>(a, k, b, ldb, c, rows, cols) },
        (Level::Portable, _) => {}
    }
    if narrow {
        tile::<4, 8>(a, k, b, ldb, c, rows, cols)
    } else {
        tile::<4, 16>(a, k, b, ldb, c, rows, cols)
    }
}

/// Copies the first `rows` rows and `cols` columns of a register tile into `c` (row stride `ldc`).
#[inline(always)]
fn store_tile<const NR: usize>(tile: &[[f32; NR]], c: &mut [f32], ldc: usize, rows: usize, cols: usize) {
    for (r, row) in tile.iter().enumerate().take(rows) {
        copy_short(&mut c[r * ldc..r * ldc + cols], &row[..cols]);
    }
}

/// `dst.copy_from_slice(src)` for fewer than 64 values, as fixed-size moves (a short copy of
/// unknown length would otherwise become a call to `memcpy`).
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let mut i = 0;
    for w in [32, 16, 8, 4, 2, 1] {
        if dst.len() - i >= w {
            dst[i..i + w].copy_from_slice(&src[i..i + w]);
            i += w;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Defines [`super::gemm_tile_at`] at one level: `MR` rows × `V` vectors of `W` columns, with
    /// that level's vector type and intrinsics.
    macro_rules! tile_at_level {
        ($(#[$m:meta])* $name:ident, $features:literal, $vec:ty, mr = $mr:literal, w = $w:literal,
         $zero:ident, $load:ident, $splat:ident, $fma:ident, $mul:ident, $store:ident) => {
            $(#[$m])*
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            pub(super) fn $name<const V: usize>(
                a: &[f32],
                k: usize,
                b: &[f32],
                ldb: usize,
                (c, ldc, scale): (&mut [f32], usize, &[f32]),
                rows: usize,
                cols: usize,
            ) {
                let mut acc: [[$vec; V]; $mr] = [[$zero(); V]; $mr];
                for (p, av) in a.chunks_exact($mr).take(k).enumerate() {
                    let bv = &b[p * ldb..p * ldb + $w * V];
                    let mut bx: [$vec; V] = [$zero(); V];
                    for (v, x) in bx.iter_mut().enumerate() {
                        let lanes: &[f32; $w] = bv[$w * v..$w * v + $w].try_into().expect("W values");
                        // SAFETY: `lanes` is W readable f32.
                        *x = unsafe { $load(lanes.as_ptr()) };
                    }
                    for (row, &x) in acc.iter_mut().zip(av) {
                        let x = $splat(x);
                        for (o, &bv) in row.iter_mut().zip(&bx) {
                            *o = $fma(x, bv, *o);
                        }
                    }
                }
                let mut tile = [[0f32; 2 * $w]; $mr];
                for (r, (t, row)) in tile.iter_mut().zip(&acc).enumerate() {
                    let q = $splat(scale.get(r).copied().unwrap_or(1.0));
                    for (v, &x) in row.iter().enumerate() {
                        let x = if scale.is_empty() { x } else { $mul(x, q) };
                        let lanes: &mut [f32; $w] = (&mut t[$w * v..$w * v + $w]).try_into().expect("W values");
                        // SAFETY: `lanes` is W writable f32.
                        unsafe { $store(lanes.as_mut_ptr(), x) };
                    }
                }
                super::store_tile(&tile, c, ldc, rows, cols);
            }
        };
    }

    tile_at_level!(
        /// [`super::gemm_tile_at`] at AVX-512: 8 rows × `V` vectors of 16 columns.
        tile_avx512, "avx512f,avx512vl,avx2,fma", __m512, mr = 8, w = 16,
        _mm512_setzero_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_mul_ps, _mm512_storeu_ps
    );
    tile_at_level!(
        /// [`super::gemm_tile_at`] at AVX2 + FMA: 4 rows × `V` vectors of 8 columns.
        tile_avx2, "avx2,fma", __m256, mr = 4, w = 8,
        _mm256_setzero_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_mul_ps, _mm256_storeu_ps
    );
}

/// [`gemm_tile_at`] with an `MR × NR` register tile in plain loops.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile<const MR: usize, const NR: usize>(
    a: &[f32],
    k: usize,
    b: &[f32],
    ldb: usize,
    (c, ldc, scale): (&mut [f32], usize, &[f32]),
    rows: usize,
    cols: usize,
) {
    let mut acc = [[0f32; NR]; MR];
    for (p, av) in a.chunks_exact(MR).take(k).enumerate() {
        let av: &[f32; MR] = av.try_into().expect("MR values");
        let bv: &[f32; NR] = b[p * ldb..p * ldb + NR].try_into().expect("NR values");
        for r in 0..MR {
            for j in 0..NR {
                acc[r][j] = av[r].mul_add(bv[j], acc[r][j]);
            }
        }
    }
    for (row, &q) in acc.iter_mut().zip(scale.iter().chain(std::iter::repeat(&1.0))) {
        if !scale.is_empty() {
            row.iter_mut().for_each(|v| *v *= q);
        }
    }
    store_tile(&acc, c, ldc, rows, cols);
}

multiversion! {
    /// Lays out the plane `x: [ih, iw]` (`ih = x.len() / iw`) into `dst`, with
    /// `geo = (rows, width, sw, pt, pl)`: `sw` column phases of `rows × width` values, phase-major;
    /// input row `y` goes to padded row `y + pt`, input column `j` to padded column `p = j + pl`,
    /// which is index `p / sw` of phase `p % sw`; each value mapped by `map = Some((s, b, act))` to
    /// `act(v·s + b)`. Rows and columns past the layout are dropped; other positions are untouched.
    pub fn layout_input(x: &[f32], iw: usize, dst: &mut [f32], geo: (usize, usize, usize, usize, usize), map: Option<(f32, f32, Activation)>) {
        let (rows, width, sw, pt, pl) = geo;
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
    /// `ops::depthwise::transposed_3x3_stride_2`), with `geo = (len, m, iw, pt, pl)`: `rows` holds
    /// the gradient's rows, `len` values each, row `oy` being `[0, dy[oy, 0], …, dy[oy, ow − 1], 0, …]`
    /// (`len ≥ m + 1`); `dx: [ih, iw]` is overwritten; `scratch` holds `2·m` values.
    pub fn transpose_stride_2(rows: &[f32], k: &[f32; 9], geo: (usize, usize, usize, usize, usize), dx: &mut [f32], scratch: &mut [f32]) {
        let (len, m, iw, pt, pl) = geo;
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

multiversion! {
    /// The inverse of [`deinterleave`] without a map: `dst[2i] = even[i]`, `dst[2i + 1] = odd[i]`
    /// (`even` holds at least `⌈dst.len() / 2⌉` values, `odd` at least `⌊dst.len() / 2⌋`).
    pub fn interleave(even: &[f32], odd: &[f32], dst: &mut [f32]) {
        interleave_rows(even, odd, dst);
    }
}

/// [`interleave`]'s body.
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

multiversion! {
    /// `y[i] += a·x[i]` (same lengths).
    pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        for (y, x) in y.iter_mut().zip(x) {
            *y += a * x;
        }
    }
}

multiversion! {
    /// `r[i] = r[i]·q + 0` (the raw convolution's dequantization, as [`epilogue`] computes it),
    /// then with `then = Some((s, b, act))`: `y[i] = act(r[i]·s + b)`, or, without `y`, that
    /// value in place of `r[i]`. One pass; the same values as those passes one after another.
    pub fn finish_plane(r: &mut [f32], y: Option<&mut [f32]>, q: f32, then: Option<(f32, f32, Activation)>) {
        match (then, y) {
            (None, _) => r.iter_mut().for_each(|v| *v = *v * q + 0.0),
            (Some((s, b, act)), Some(y)) => r.iter_mut().zip(y).for_each(|(v, y)| {
                *v = *v * q + 0.0;
                *y = act.apply(*v * s + b);
            }),
            (Some((s, b, act)), None) => r.iter_mut().for_each(|v| *v = act.apply((*v * q + 0.0) * s + b)),
        }
    }
}

multiversion! {
    /// `v[i] = act(v[i]·s + b)`.
    pub fn epilogue(v: &mut [f32], s: f32, b: f32, act: Activation) {
        match act {
            Activation::Identity => v.iter_mut().for_each(|x| *x = *x * s + b),
            Activation::Relu => v.iter_mut().for_each(|x| *x = (*x * s + b).max(0.0)),
            Activation::Relu6 => v.iter_mut().for_each(|x| *x = (*x * s + b).clamp(0.0, 6.0)),
        }
    }
}

multiversion! {
    /// `y[i] = act(x[i]·s + b)` (same lengths).
    pub fn affine_act(y: &mut [f32], x: &[f32], s: f32, b: f32, act: Activation) {
        affine_act_row(y, x, s, b, act);
    }
}

/// [`affine_act`]'s body.
#[inline(always)]
fn affine_act_row(y: &mut [f32], x: &[f32], s: f32, b: f32, act: Activation) {
    match act {
        Activation::Identity => y.iter_mut().zip(x).for_each(|(y, x)| *y = *x * s + b),
        Activation::Relu => y.iter_mut().zip(x).for_each(|(y, x)| *y = (*x * s + b).max(0.0)),
        Activation::Relu6 => y.iter_mut().zip(x).for_each(|(y, x)| *y = (*x * s + b).clamp(0.0, 6.0)),
    }
}

/// Where `act` passes its gradient at input `z` (its derivative, 0 or 1).
#[inline(always)]
pub fn passes(act: Activation, z: f32) -> bool {
    match act {
        Activation::Identity => true,
        Activation::Relu => z > 0.0,
        Activation::Relu6 => (z > 0.0) & (z < 6.0),
    }
}

multiversion! {
    /// The backward of `y = act(x·s + b)` over one channel plane (same lengths): `g = dy` where
    /// `act` passes its gradient at `z = x·s + b` (recomputed exactly as the forward computed it)
    /// and 0 elsewhere; `dy` is overwritten with `s·g` when `write_dx`. Returns `(Σ g·x, Σ g)`,
    /// each summed in [`LANES`] partial sums.
    pub fn affine_act_backward(dy: &mut [f32], x: &[f32], s: f32, b: f32, act: Activation, write_dx: bool) -> (f32, f32) {
        let (mut sx, mut sg) = ([0f32; LANES], [0f32; LANES]);
        let mut block = |d: &mut [f32], x: &[f32]| {
            for i in 0..d.len() {
                let g = if passes(act, x[i] * s + b) { d[i] } else { 0.0 };
                sx[i] += g * x[i];
                sg[i] += g;
                if write_dx {
                    d[i] = s * g;
                }
            }
        };
        let mut dc = dy.chunks_exact_mut(LANES);
        let mut xc = x.chunks_exact(LANES);
        for (d, x) in (&mut dc).zip(&mut xc) {
            let d: &mut [f32; LANES] = d.try_into().expect("LANES values");
            let x: &[f32; LANES] = x.try_into().expect("LANES values");
            block(d, x);
        }
        block(dc.into_remainder(), xc.remainder());
        (sx.iter().sum(), sg.iter().sum())
    }
}

multiversion! {
    /// Bit `i` of `bits[i / 64]` set where `act` passes its gradient at `x[i]` (`bits` holds
    /// `x.len()` rounded up to 64 bits; the bits past `x.len()` are cleared).
    pub fn mask_bits(x: &[f32], act: Activation, bits: &mut [u64]) {
        for (word, chunk) in bits.iter_mut().zip(x.chunks(64)) {
            let mut w = 0u64;
            for (k, block) in chunk.chunks(LANES).enumerate() {
                let mut b = 0u32;
                if let Ok(block) = <&[f32; LANES]>::try_from(block) {
                    for (j, &v) in block.iter().enumerate() {
                        b |= (passes(act, v) as u32) << j;
                    }
                } else {
                    for (j, &v) in block.iter().enumerate() {
                        b |= (passes(act, v) as u32) << j;
                    }
                }
                w |= (b as u64) << (k * LANES);
            }
            *word = w;
        }
    }
}

multiversion! {
    /// `g[i] = v[i]` where bit `i` of `bits` is set, else 0; `v` becomes `s·g` when `write`.
    /// Returns `Σ g`, summed in [`LANES`] partial sums (element `i` into sum `i mod LANES`).
    pub fn masked_scale(v: &mut [f32], bits: &[u64], s: f32, write: bool) -> f32 {
        let mut acc = [0f32; LANES];
        for (word, chunk) in bits.iter().zip(v.chunks_mut(64)) {
            for (k, block) in chunk.chunks_mut(LANES).enumerate() {
                let b = (word >> (k * LANES)) as u32;
                if let Ok(block) = <&mut [f32; LANES]>::try_from(&mut *block) {
                    let mut g = [0f32; LANES];
                    for j in 0..LANES {
                        let keep = 0u32.wrapping_sub((b >> j) & 1);
                        g[j] = f32::from_bits(block[j].to_bits() & keep);
                        acc[j] += g[j];
                    }
                    if write {
                        for j in 0..LANES {
                            block[j] = s * g[j];
                        }
                    }
                } else {
                    for (j, d) in block.iter_mut().enumerate() {
                        let g = if b & (1 << j) != 0 { *d } else { 0.0 };
                        acc[j] += g;
                        if write {
                            *d = s * g;
                        }
                    }
                }
            }
        }
        acc.iter().sum()
    }
}

/// `rounds` rounds over `N` independent multiply-add chains (12 registers of the level's width:
/// enough to cover the latency of two FMA units without spilling).
#[inline(always)]
fn burst<const N: usize>(rounds: usize, fma: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let mut acc = [1.0f32; N];
    for _ in 0..rounds {
        for v in acc.iter_mut() {
            *v = fma(*v, 0.999_999, 1e-7);
        }
    }
    acc.iter().sum()
}

/// A measurement of the CPU's peak f32 rate at `level`: `rounds` rounds of independent
/// multiply-add chains over the level's full vector width (fused multiply-adds at AVX2 and
/// AVX-512; a multiply and an add at the portable level). Returns a value that depends on every
/// operation and the number of f32 operations done, or `None` when the CPU lacks the level.
pub fn fma_burst(at: Level, rounds: usize) -> Option<(f32, u64)> {
    let ops = |chains: usize| (2 * chains * rounds) as u64;
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        fn avx512(r: usize) -> f32 {
            burst::<192>(r, f32::mul_add)
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2(r: usize) -> f32 {
            burst::<96>(r, f32::mul_add)
        }
        let found = detect();
        match at {
            Level::Avx512 if found == Level::Avx512 => {
                // SAFETY: the CPU has AVX-512 (detected above).
                return Some((unsafe { avx512(rounds) }, ops(192)));
            }
            Level::Avx2 if found != Level::Portable => {
                // SAFETY: the CPU has AVX2 and FMA (detected above).
                return Some((unsafe { avx2(rounds) }, ops(96)));
            }
            Level::Portable => {}
            _ => return None,
        }
    }
    match at {
        Level::Portable => Some((burst::<48>(rounds, |v, m, a| v * m + a), ops(48))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_agree_bit_for_bit() {
        let x: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 997) as f32 / 300.0 - 1.3).collect();
        let srcs: Vec<&[f32]> = (0..9).map(|t| &x[t..]).collect();
        let w: Vec<f32> = (0..9).map(|t| 0.3 - t as f32 * 0.07).collect();
        let mut out = vec![0.5f32; 991];
        taps(&mut out, &srcs, &w, true);
        for (i, o) in out.iter().enumerate() {
            let mut want = 0.5f32;
            for t in 0..9 {
                want = w[t].mul_add(x[i + t], want);
            }
            assert_eq!(*o, want, "tap sum {i}");
        }
        let mut out5 = vec![0f32; 991];
        taps(&mut out5, &srcs[..5], &w[..5], false);
        for (i, o) in out5.iter().enumerate() {
            let want = (0..5).fold(0f32, |a, t| w[t].mul_add(x[i + t], a));
            assert_eq!(*o, want, "five taps {i}");
        }
        let x: Vec<f32> = (0..10000).map(|i| ((i * 7919) % 997) as f32 / 300.0 - 1.3).collect();
        let nr = gemm_tile().1;
        for (rows, k, cols, ldb) in [
            (13, 7, nr, 40),
            (8, 1, nr / 2, nr),
            (3, 20, 5, 9),
            (17, 33, 11, 50),
            (4, 5, nr / 2 + 1, nr),
            (20, 70, 2 * nr + 5, 3 * nr),
            (9, 10, 3 * nr, 3 * nr + 1),
        ] {
            let a = |r: usize, p: usize| x[(r * 31 + p * 7) % 997];
            let packed = pack_panels(rows, k, a);
            let mut c = vec![f32::NAN; rows * 4 * nr];
            gemm_block(&packed, k, (&x[3..], ldb), (&mut c, 4 * nr), (rows, cols), &[]);
            for r in 0..rows {
                for j in 0..4 * nr {
                    let want = if j < cols {
                        (0..k).fold(0f32, |acc, p| a(r, p).mul_add(x[3 + p * ldb + j], acc))
                    } else {
                        f32::NAN
                    };
                    assert_eq!(c[r * 4 * nr + j].to_bits(), want.to_bits(), "gemm {rows}×{k}×{cols} ({r}, {j})");
                }
            }
        }
        for (oh, ow, sh, sw) in [(4, 4, 1, 1), (7, 7, 1, 1), (8, 8, 1, 1), (3, 5, 1, 1), (9, 2, 1, 1), (1, 1, 1, 1)]
            .into_iter()
            .chain([(14, 14, 1, 1), (16, 16, 1, 1), (4, 4, 2, 2), (7, 7, 2, 2), (5, 3, 2, 2), (3, 16, 2, 2)])
        {
            let (rows, width) = ((oh - 1) * sh + 3, LANES + 2 / sw);
            let src = &x[..rows * width * sw];
            let g: Vec<f32> = (0..oh * ow).map(|i| x[(i * 13 + 5) % 997] * 0.7).collect();
            let mut dk = [0.25f32; 9];
            kernel_gradient_3x3(&mut dk, &g, ow, src, Layout { rows, width, sh, sw });
            let slot = ow.next_power_of_two();
            let per = LANES / slot;
            for (t, &got) in dk.iter().enumerate() {
                let o = ((t % 3 % sw) * rows + t / 3) * width + t % 3 / sw;
                let at = |oy: usize, ox: usize| (src[o + oy * sh * width + ox], g[oy * ow + ox]);
                let mut lanes = [0f32; LANES];
                for group in 0..oh.div_ceil(per) {
                    for s in 0..per {
                        let oy = group * per + s;
                        for ox in 0..ow {
                            let (xv, gv) = if oy < oh { at(oy, ox) } else { (0.0, 0.0) };
                            lanes[s * slot + ox] = xv.mul_add(gv, lanes[s * slot + ox]);
                        }
                    }
                }
                let want = 0.25 + lanes.chunks_exact(slot).flat_map(|c| &c[..ow]).sum::<f32>();
                assert_eq!(got.to_bits(), want.to_bits(), "kernel gradient {oh}×{ow} /{sh}, tap {t}");
                let exact: f64 = (0..oh * ow).map(|i| at(i / ow, i % ow)).map(|(a, b)| a as f64 * b as f64).sum();
                assert!((got as f64 - 0.25 - exact).abs() < 1e-4 * (1.0 + exact.abs()), "{oh}×{ow}: {got} vs {exact}");
            }
        }
        let x = &x[..1000];
        let mut v = x.to_vec();
        epilogue(&mut v, 2.5, -0.25, Activation::Relu6);
        for (a, b) in v.iter().zip(x) {
            assert_eq!(*a, (b * 2.5 - 0.25).clamp(0.0, 6.0));
        }
    }
}
