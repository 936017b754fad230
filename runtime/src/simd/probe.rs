//! The peak f32 rate probe behind the benchmarks' roofline figures.

#[cfg(target_arch = "x86_64")]
use super::detected;
use super::Level;

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
        let found = detected();
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
    #[cfg(target_arch = "aarch64")]
    if at == Level::Neon {
        return Some((burst::<48>(rounds, f32::mul_add), ops(48)));
    }
    match at {
        Level::Portable => Some((burst::<48>(rounds, |v, m, a| v * m + a), ops(48))),
        _ => None,
    }
}
