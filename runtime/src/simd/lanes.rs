//! One vector of [`BLOCK`] lanes (a pixel's block of channels) at each instruction-set level:
//! what the blocked kernels ([`super::blocked`]) are written in. Every level computes each lane
//! with the same operations (`fma` rounds once everywhere), so the kernels give the same bits at
//! every level.

use super::blocked::BLOCK;

/// One pixel's block of channel values.
pub(super) type V = [f32; BLOCK];

/// A vector of [`BLOCK`] lanes at one instruction-set level: what the kernels above are written
/// in. `fma` is the fused multiply-add (one rounding) at every level.
pub(super) trait Lanes: Copy {
    fn zero() -> Self;
    fn load(v: &V) -> Self;
    /// [`BLOCK`] int8 values as f32 (exact).
    fn load_i8(v: &[i8; BLOCK]) -> Self;
    fn splat(x: f32) -> Self;
    /// `a·b + c`, rounded once.
    fn fma(a: Self, b: Self, c: Self) -> Self;
    fn mul(a: Self, b: Self) -> Self;
    fn add(a: Self, b: Self) -> Self;
    /// `f32::clamp(x, 0.0, hi)` lane by lane (NaN and −0 kept); `hi > 0`.
    fn clamp0(x: Self, hi: f32) -> Self;
    fn store(self, out: &mut V);
}

/// Plain arrays (`f32::mul_add`).
#[derive(Clone, Copy)]
pub(super) struct Portable(V);

impl Lanes for Portable {
    #[inline(always)]
    fn zero() -> Self {
        Portable([0.0; BLOCK])
    }
    #[inline(always)]
    fn load(v: &V) -> Self {
        Portable(*v)
    }
    #[inline(always)]
    fn load_i8(v: &[i8; BLOCK]) -> Self {
        Portable(v.map(f32::from))
    }
    #[inline(always)]
    fn splat(x: f32) -> Self {
        Portable([x; BLOCK])
    }
    #[inline(always)]
    fn fma(a: Self, b: Self, c: Self) -> Self {
        Portable(std::array::from_fn(|l| a.0[l].mul_add(b.0[l], c.0[l])))
    }
    #[inline(always)]
    fn mul(a: Self, b: Self) -> Self {
        Portable(std::array::from_fn(|l| a.0[l] * b.0[l]))
    }
    #[inline(always)]
    fn add(a: Self, b: Self) -> Self {
        Portable(std::array::from_fn(|l| a.0[l] + b.0[l]))
    }
    #[inline(always)]
    fn clamp0(x: Self, hi: f32) -> Self {
        Portable(x.0.map(|v| v.clamp(0.0, hi)))
    }
    #[inline(always)]
    fn store(self, out: &mut V) {
        *out = self.0;
    }
}

#[cfg(target_arch = "aarch64")]
pub(super) use arm::Neon;
#[cfg(target_arch = "x86_64")]
pub(super) use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Lanes, V};

    /// One AVX-512 register.
    #[derive(Clone, Copy)]
    pub(in crate::simd) struct Avx512(__m512);

    impl Lanes for Avx512 {
        #[inline(always)]
        fn zero() -> Self {
            // SAFETY: only reached from functions compiled with AVX-512 on a CPU that has it.
            Avx512(unsafe { _mm512_setzero_ps() })
        }
        #[inline(always)]
        fn load(v: &V) -> Self {
            // SAFETY: 16 readable f32; AVX-512 as above.
            Avx512(unsafe { _mm512_loadu_ps(v.as_ptr()) })
        }
        #[inline(always)]
        fn load_i8(v: &[i8; 16]) -> Self {
            // SAFETY: 16 readable bytes; AVX-512 as above.
            Avx512(unsafe { _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(v.as_ptr() as *const __m128i))) })
        }
        #[inline(always)]
        fn splat(x: f32) -> Self {
            // SAFETY: AVX-512 as above.
            Avx512(unsafe { _mm512_set1_ps(x) })
        }
        #[inline(always)]
        fn fma(a: Self, b: Self, c: Self) -> Self {
            // SAFETY: AVX-512 as above.
            Avx512(unsafe { _mm512_fmadd_ps(a.0, b.0, c.0) })
        }
        #[inline(always)]
        fn mul(a: Self, b: Self) -> Self {
            // SAFETY: AVX-512 as above.
            Avx512(unsafe { _mm512_mul_ps(a.0, b.0) })
        }
        #[inline(always)]
        fn add(a: Self, b: Self) -> Self {
            // SAFETY: AVX-512 as above.
            Avx512(unsafe { _mm512_add_ps(a.0, b.0) })
        }
        #[inline(always)]
        fn clamp0(x: Self, hi: f32) -> Self {
            // `max(0, x)` returns x when x is NaN or a zero (its second operand), `min(hi, ·)`
            // likewise: `f32::clamp`'s results, NaN and −0 included.
            // SAFETY: AVX-512 as above.
            Avx512(unsafe { _mm512_min_ps(_mm512_set1_ps(hi), _mm512_max_ps(_mm512_setzero_ps(), x.0)) })
        }
        #[inline(always)]
        fn store(self, out: &mut V) {
            // SAFETY: 16 writable f32; AVX-512 as above.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), self.0) }
        }
    }

    /// Two AVX2 registers.
    #[derive(Clone, Copy)]
    pub(in crate::simd) struct Avx2([__m256; 2]);

    impl Lanes for Avx2 {
        #[inline(always)]
        fn zero() -> Self {
            // SAFETY: only reached from functions compiled with AVX2 + FMA on a CPU that has them.
            Avx2(unsafe { [_mm256_setzero_ps(); 2] })
        }
        #[inline(always)]
        fn load(v: &V) -> Self {
            // SAFETY: 16 readable f32; AVX2 as above.
            Avx2(unsafe { [_mm256_loadu_ps(v.as_ptr()), _mm256_loadu_ps(v.as_ptr().add(8))] })
        }
        #[inline(always)]
        fn load_i8(v: &[i8; 16]) -> Self {
            // SAFETY: 16 readable bytes, read as two halves of 8; AVX2 as above.
            Avx2(unsafe {
                let lo = _mm_loadl_epi64(v.as_ptr() as *const __m128i);
                let hi = _mm_loadl_epi64(v.as_ptr().add(8) as *const __m128i);
                [_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi))]
            })
        }
        #[inline(always)]
        fn splat(x: f32) -> Self {
            // SAFETY: AVX2 as above.
            Avx2(unsafe { [_mm256_set1_ps(x); 2] })
        }
        #[inline(always)]
        fn fma(a: Self, b: Self, c: Self) -> Self {
            // SAFETY: AVX2 + FMA as above.
            Avx2(unsafe { [_mm256_fmadd_ps(a.0[0], b.0[0], c.0[0]), _mm256_fmadd_ps(a.0[1], b.0[1], c.0[1])] })
        }
        #[inline(always)]
        fn mul(a: Self, b: Self) -> Self {
            // SAFETY: AVX2 as above.
            Avx2(unsafe { [_mm256_mul_ps(a.0[0], b.0[0]), _mm256_mul_ps(a.0[1], b.0[1])] })
        }
        #[inline(always)]
        fn add(a: Self, b: Self) -> Self {
            // SAFETY: AVX2 as above.
            Avx2(unsafe { [_mm256_add_ps(a.0[0], b.0[0]), _mm256_add_ps(a.0[1], b.0[1])] })
        }
        #[inline(always)]
        fn clamp0(x: Self, hi: f32) -> Self {
            // As the AVX-512 version: NaN and −0 kept.
            // SAFETY: AVX2 as above.
            Avx2(unsafe {
                let (zero, six) = (_mm256_setzero_ps(), _mm256_set1_ps(hi));
                x.0.map(|v| _mm256_min_ps(six, _mm256_max_ps(zero, v)))
            })
        }
        #[inline(always)]
        fn store(self, out: &mut V) {
            // SAFETY: 16 writable f32; AVX2 as above.
            unsafe {
                _mm256_storeu_ps(out.as_mut_ptr(), self.0[0]);
                _mm256_storeu_ps(out.as_mut_ptr().add(8), self.0[1]);
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;

    use super::{Lanes, V};

    /// Four NEON registers (every aarch64 CPU has NEON, so these need no detection).
    #[derive(Clone, Copy)]
    pub(in crate::simd) struct Neon([float32x4_t; 4]);

    impl Lanes for Neon {
        #[inline(always)]
        fn zero() -> Self {
            // SAFETY: NEON is part of every aarch64 CPU.
            Neon(unsafe { [vdupq_n_f32(0.0); 4] })
        }
        #[inline(always)]
        fn load(v: &V) -> Self {
            // SAFETY: 16 readable f32, as four runs of 4; NEON as above.
            Neon(unsafe { std::array::from_fn(|i| vld1q_f32(v.as_ptr().add(4 * i))) })
        }
        #[inline(always)]
        fn load_i8(v: &[i8; 16]) -> Self {
            // SAFETY: 16 readable bytes; NEON as above. Widened 8 → 16 → 32 bits, then converted
            // (exact for int8).
            Neon(unsafe {
                let b = vld1q_s8(v.as_ptr());
                let (lo, hi) = (vmovl_s8(vget_low_s8(b)), vmovl_s8(vget_high_s8(b)));
                [
                    vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))),
                    vcvtq_f32_s32(vmovl_s16(vget_high_s16(lo))),
                    vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))),
                    vcvtq_f32_s32(vmovl_s16(vget_high_s16(hi))),
                ]
            })
        }
        #[inline(always)]
        fn splat(x: f32) -> Self {
            // SAFETY: NEON as above.
            Neon(unsafe { [vdupq_n_f32(x); 4] })
        }
        #[inline(always)]
        fn fma(a: Self, b: Self, c: Self) -> Self {
            // SAFETY: NEON as above; `vfmaq_f32(c, a, b)` = a·b + c rounded once.
            Neon(unsafe { std::array::from_fn(|i| vfmaq_f32(c.0[i], a.0[i], b.0[i])) })
        }
        #[inline(always)]
        fn mul(a: Self, b: Self) -> Self {
            // SAFETY: NEON as above.
            Neon(unsafe { std::array::from_fn(|i| vmulq_f32(a.0[i], b.0[i])) })
        }
        #[inline(always)]
        fn add(a: Self, b: Self) -> Self {
            // SAFETY: NEON as above.
            Neon(unsafe { std::array::from_fn(|i| vaddq_f32(a.0[i], b.0[i])) })
        }
        #[inline(always)]
        fn clamp0(x: Self, hi: f32) -> Self {
            // `f32::clamp` as two selects (NEON's max and min would turn −0 into +0): below 0
            // becomes 0, above `hi` becomes `hi`, NaN and −0 stay.
            // SAFETY: NEON as above.
            Neon(unsafe {
                let (zero, six) = (vdupq_n_f32(0.0), vdupq_n_f32(hi));
                x.0.map(|v| {
                    let v = vbslq_f32(vcltq_f32(v, zero), zero, v);
                    vbslq_f32(vcgtq_f32(v, six), six, v)
                })
            })
        }
        #[inline(always)]
        fn store(self, out: &mut V) {
            // SAFETY: 16 writable f32, as four runs of 4; NEON as above.
            unsafe {
                for (i, v) in self.0.iter().enumerate() {
                    vst1q_f32(out.as_mut_ptr().add(4 * i), *v);
                }
            }
        }
    }
}
