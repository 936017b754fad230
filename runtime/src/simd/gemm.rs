//! The packed matrix product: panels of `MR` rows times strips of `NR` columns, one register
//! tile at a time, with explicit vector intrinsics on x86-64.

use super::{copy_short, level, lowered, Level};

/// `(MR, NR)`: the rows and columns of one register tile of [`gemm_block`] at the dispatched
/// level. Matrices for it are packed in panels of `MR` rows ([`pack_panels`]).
pub fn gemm_tile() -> (usize, usize) {
    gemm_tile_at(level())
}

/// [`gemm_tile`] at `level` (lowered to what the CPU has).
pub fn gemm_tile_at(level: Level) -> (usize, usize) {
    match lowered(level) {
        Level::Avx512 => (8, 32),
        _ => (4, 16),
    }
}

/// Packs the `rows × k` matrix `at(r, p)` for [`gemm_block`]: panels of `MR` rows, each `k`
/// groups of `MR` values (row `r` of a panel at offset `p·MR + r`), rows past `rows` zero.
/// The panels are filled in parallel.
pub fn pack_panels(rows: usize, k: usize, at: impl Fn(usize, usize) -> f32 + Sync) -> Vec<f32> {
    pack_panels_at(level(), rows, k, at)
}

/// [`pack_panels`] for the tiles of `level`.
pub fn pack_panels_at(level: Level, rows: usize, k: usize, at: impl Fn(usize, usize) -> f32 + Sync) -> Vec<f32> {
    use rayon::prelude::*;
    let mr = gemm_tile_at(level).0;
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
    gemm_block_at(level(), a, k, b, c, size, scale)
}

/// [`gemm_block`] at `level` (lowered to what the CPU has), `a` packed for that level's tiles.
pub fn gemm_block_at(
    level: Level,
    a: &[f32],
    k: usize,
    b: (&[f32], usize),
    c: (&mut [f32], usize),
    size: (usize, usize),
    scale: &[f32],
) {
    let level = lowered(level);
    let (mr, nr) = gemm_tile_at(level);
    let ((b, ldb), (c, ldc), (rows, cols)) = (b, c, size);
    let mut tile = |panel: usize, strip: usize| {
        let (r0, j0) = (panel * mr, strip * nr);
        let t = Tile {
            a: &a[r0 * k..(r0 + mr) * k],
            k,
            b: &b[j0..],
            ldb,
            c: &mut c[r0 * ldc + j0..],
            ldc,
            scale: scale.get(r0..).unwrap_or(&[]),
            rows: (rows - r0).min(mr),
            cols: (cols - j0).min(nr),
        };
        tile_at(level, t);
    };
    let (panels, strips) = (rows.div_ceil(mr), cols.div_ceil(nr));
    let by_panel = k <= 64;
    let (outer, inner) = if by_panel { (panels, strips) } else { (strips, panels) };
    for o in 0..outer {
        for i in 0..inner {
            if by_panel {
                tile(o, i)
            } else {
                tile(i, o)
            }
        }
    }
}

/// The operands of one register tile of [`gemm_block`]: `a` one packed panel of `k` steps, `b`
/// with row stride `ldb`, `c` with row stride `ldc`, the rows' `scale` (none when empty), and
/// the `rows ≤ MR`, `cols ≤ NR` of the tile that are stored.
pub(super) struct Tile<'a> {
    a: &'a [f32],
    k: usize,
    b: &'a [f32],
    ldb: usize,
    c: &'a mut [f32],
    ldc: usize,
    scale: &'a [f32],
    rows: usize,
    cols: usize,
}

/// One tile of [`gemm_block_at`] at `level` (one the CPU has).
fn tile_at(level: Level, t: Tile) {
    let narrow = t.cols <= gemm_tile_at(level).1 / 2;
    #[cfg(target_arch = "x86_64")]
    match (level, narrow) {
        // SAFETY (all four): the caller lowered `level` to what `detected` found on this CPU.
        (Level::Avx512, false) => return unsafe { x86::tile_avx512::<2>(t) },
        (Level::Avx512, true) => return unsafe { x86::tile_avx512::<1>(t) },
        (Level::Avx2, false) => return unsafe { x86::tile_avx2::<2>(t) },
        (Level::Avx2, true) => return unsafe { x86::tile_avx2::<1>(t) },
        (Level::Neon | Level::Portable, _) => {}
    }
    #[cfg(target_arch = "aarch64")]
    if level == Level::Neon {
        return if narrow { arm::tile_neon::<2>(t) } else { arm::tile_neon::<4>(t) };
    }
    if narrow {
        tile::<4, 8>(t)
    } else {
        tile::<4, 16>(t)
    }
}

/// Copies the first `rows` rows and `cols` columns of a register tile into `c` (row stride `ldc`).
#[inline(always)]
fn store_tile<const NR: usize>(tile: &[[f32; NR]], c: &mut [f32], ldc: usize, rows: usize, cols: usize) {
    for (r, row) in tile.iter().enumerate().take(rows) {
        copy_short(&mut c[r * ldc..r * ldc + cols], &row[..cols]);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Defines [`super::tile_at`] at one level: `MR` rows × `V` vectors of `W` columns, with
    /// that level's vector type and intrinsics.
    macro_rules! tile_at_level {
        ($(#[$m:meta])* $name:ident, $features:literal, $vec:ty, mr = $mr:literal, w = $w:literal,
         $zero:ident, $load:ident, $splat:ident, $fma:ident, $mul:ident, $store:ident) => {
            $(#[$m])*
            #[target_feature(enable = $features)]
            pub(in crate::simd) fn $name<const V: usize>(t: super::Tile) {
                let super::Tile { a, k, b, ldb, c, ldc, scale, rows, cols } = t;
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
        /// [`super::tile_at`] at AVX-512: 8 rows × `V` vectors of 16 columns.
        tile_avx512, "avx512f,avx512vl,avx2,fma", __m512, mr = 8, w = 16,
        _mm512_setzero_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_mul_ps, _mm512_storeu_ps
    );
    tile_at_level!(
        /// [`super::tile_at`] at AVX2 + FMA: 4 rows × `V` vectors of 8 columns.
        tile_avx2, "avx2,fma", __m256, mr = 4, w = 8,
        _mm256_setzero_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_mul_ps, _mm256_storeu_ps
    );
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;

    /// [`super::tile_at`] at NEON: 4 rows × `V` vectors of 4 columns, fused multiply-adds
    /// (`vfmaq_f32`, one rounding, as every other level).
    pub(in crate::simd) fn tile_neon<const V: usize>(t: super::Tile) {
        let super::Tile { a, k, b, ldb, c, ldc, scale, rows, cols } = t;
        // SAFETY: NEON is part of every aarch64 CPU; every load and store below is of 4 f32 from
        // a slice checked to hold them.
        unsafe {
            let mut acc: [[float32x4_t; V]; 4] = [[vdupq_n_f32(0.0); V]; 4];
            for (p, av) in a.chunks_exact(4).take(k).enumerate() {
                let bv = &b[p * ldb..p * ldb + 4 * V];
                let mut bx: [float32x4_t; V] = [vdupq_n_f32(0.0); V];
                for (v, x) in bx.iter_mut().enumerate() {
                    let lanes: &[f32; 4] = bv[4 * v..4 * v + 4].try_into().expect("4 values");
                    *x = vld1q_f32(lanes.as_ptr());
                }
                for (row, &x) in acc.iter_mut().zip(av) {
                    let x = vdupq_n_f32(x);
                    for (o, &bv) in row.iter_mut().zip(&bx) {
                        *o = vfmaq_f32(*o, x, bv);
                    }
                }
            }
            let mut tile = [[0f32; 16]; 4];
            for (r, (t, row)) in tile.iter_mut().zip(&acc).enumerate() {
                let q = vdupq_n_f32(scale.get(r).copied().unwrap_or(1.0));
                for (v, &x) in row.iter().enumerate() {
                    let x = if scale.is_empty() { x } else { vmulq_f32(x, q) };
                    let lanes: &mut [f32; 4] = (&mut t[4 * v..4 * v + 4]).try_into().expect("4 values");
                    vst1q_f32(lanes.as_mut_ptr(), x);
                }
            }
            super::store_tile(&tile, c, ldc, rows, cols);
        }
    }
}

/// [`tile_at`] with an `MR × NR` register tile in plain loops.
#[inline(always)]
fn tile<const MR: usize, const NR: usize>(t: Tile) {
    let Tile { a, k, b, ldb, c, ldc, scale, rows, cols } = t;
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
