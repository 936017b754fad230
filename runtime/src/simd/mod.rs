//! The hot inner loops of the CPU kernels, compiled once per x86-64 feature level (AVX-512,
//! AVX2 + FMA, baseline) and dispatched at run time; on aarch64, NEON (its baseline) register
//! tiles for the matrix product and the blocked kernels beside the portable loops; elsewhere
//! only the portable version exists.
//!
//! This is the only module allowed `unsafe`: calling a `#[target_feature]` function is unsafe
//! because the CPU must have the feature, which [`level`] checks first. Most loops are safe slice
//! code over fixed-size blocks that the compiler vectorises; the matrix product's register tiles
//! on x86-64 use explicit intrinsics ([`gemm`]). Each output element is computed by the same
//! sequence of f32 operations at every level (no reassociation; the matrix product and the tap
//! sums use fused multiply-adds at every level, `f32::mul_add` being correctly rounded
//! everywhere), so the results are bit-identical whichever version runs.

//!
//! One file per concern: [`taps`] (3×3 window sums and their kernel gradients), [`gemm`] (the
//! packed matrix product), [`layout`] (a plane's padded, phase-split layout and its inverse),
//! [`epilogue`] (per-channel affine, activation, masks), [`probe`] (the peak-rate measurement).
//! Every multiversioned kernel `k` also exists as `k_at(level, …)`, which runs it at a given level
//! (one the CPU has; a higher one runs at the highest it has): what the tests use to compare the
//! levels inside one process.
/// The widest vector instruction set of this CPU that the kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Portable,
    /// aarch64's NEON (every aarch64 CPU has it).
    Neon,
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
        lowered(cap)
    })
}

/// `level` lowered to the highest level this CPU has at or below it (an x86 level on aarch64,
/// or NEON on x86-64, lowers to the portable one).
pub(crate) fn lowered(level: Level) -> Level {
    let found = detected();
    if level >= found {
        return found;
    }
    match level {
        Level::Avx2 if cfg!(target_arch = "x86_64") => Level::Avx2,
        _ => Level::Portable,
    }
}

/// The widest level this CPU has (detected once).
pub fn detected() -> Level {
    static FOUND: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *FOUND.get_or_init(detect)
}

/// Every level this CPU has, lowest first.
pub fn levels() -> Vec<Level> {
    let arch = |l: Level| match l {
        Level::Portable => true,
        Level::Neon => cfg!(target_arch = "aarch64"),
        Level::Avx2 | Level::Avx512 => cfg!(target_arch = "x86_64"),
    };
    [Level::Portable, Level::Neon, Level::Avx2, Level::Avx512]
        .into_iter()
        .filter(|&l| arch(l) && l <= detected())
        .collect()
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

#[cfg(target_arch = "aarch64")]
fn detect() -> Level {
    Level::Neon
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detect() -> Level {
    Level::Portable
}

/// Defines `pub fn $name`, whose body is compiled at each feature level and dispatched by
/// [`level`], and `pub fn $at`, the same at a given level (lowered to what the CPU has).
macro_rules! multiversion {
    ($(#[$m:meta])* pub fn $name:ident / $at:ident($($a:ident : $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        pub fn $name($($a: $t),*) $(-> $r)? {
            $at($crate::simd::level(), $($a),*)
        }

        #[doc = concat!("[`", stringify!($name), "`] at `level` (lowered to the highest level the CPU has).")]
        #[allow(unused_variables)]
        pub fn $at(level: $crate::simd::Level, $($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn body($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                use $crate::simd::Level;
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                fn avx512($($a: $t),*) $(-> $r)? { body($($a),*) }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($a: $t),*) $(-> $r)? { body($($a),*) }
                match $crate::simd::lowered(level) {
                    // SAFETY: `detected` found this level's features on this CPU.
                    Level::Avx512 => return unsafe { avx512($($a),*) },
                    // SAFETY: as above.
                    Level::Avx2 => return unsafe { avx2($($a),*) },
                    Level::Neon | Level::Portable => {}
                }
            }
            body($($a),*)
        }
    };
}

pub mod blocked;
mod dot;
mod epilogue;
pub mod gemm;
mod lanes;
mod layout;
mod probe;
mod taps;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_blocked;

pub use dot::*;
pub use epilogue::*;
pub use gemm::{gemm_block, gemm_block_at, gemm_tile, gemm_tile_at, pack_panels, pack_panels_at};
pub use layout::*;
pub use probe::fma_burst;
pub use taps::*;

/// Lanes per block of the row kernels; sources padded to a multiple of it let every block run
/// at full vector width.
pub const LANES: usize = 16;

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
