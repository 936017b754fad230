//! Per-channel epilogues: the affine and activation after a product, their backward, and the
//! one-bit activation masks.

use super::LANES;
use crate::ops::Activation;

multiversion! {
    /// `r[i] = r[i]·q + 0` (the raw convolution's dequantization, as [`epilogue`] computes it),
    /// then with `then = Some((s, b, act))`: `y[i] = act(r[i]·s + b)`, or, without `y`, that
    /// value in place of `r[i]`. One pass; the same values as those passes one after another.
    pub fn finish_plane / finish_plane_at(r: &mut [f32], y: Option<&mut [f32]>, q: f32, then: Option<(f32, f32, Activation)>) {
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
    pub fn epilogue / epilogue_at(v: &mut [f32], s: f32, b: f32, act: Activation) {
        match act {
            Activation::Identity => v.iter_mut().for_each(|x| *x = *x * s + b),
            Activation::Relu => v.iter_mut().for_each(|x| *x = (*x * s + b).max(0.0)),
            Activation::Relu6 => v.iter_mut().for_each(|x| *x = (*x * s + b).clamp(0.0, 6.0)),
            Activation::Clip01 => v.iter_mut().for_each(|x| *x = (*x * s + b).clamp(0.0, 1.0)),
        }
    }
}

multiversion! {
    /// `y[i] = act(x[i]·s + b)` (same lengths).
    pub fn affine_act / affine_act_at(y: &mut [f32], x: &[f32], s: f32, b: f32, act: Activation) {
        affine_act_row(y, x, s, b, act);
    }
}

/// [`affine_act`]'s body.
#[inline(always)]
pub(super) fn affine_act_row(y: &mut [f32], x: &[f32], s: f32, b: f32, act: Activation) {
    match act {
        Activation::Identity => y.iter_mut().zip(x).for_each(|(y, x)| *y = *x * s + b),
        Activation::Relu => y.iter_mut().zip(x).for_each(|(y, x)| *y = (*x * s + b).max(0.0)),
        Activation::Relu6 => y.iter_mut().zip(x).for_each(|(y, x)| *y = (*x * s + b).clamp(0.0, 6.0)),
        Activation::Clip01 => y.iter_mut().zip(x).for_each(|(y, x)| *y = (*x * s + b).clamp(0.0, 1.0)),
    }
}

/// Where `act` passes its gradient at input `z` (its derivative, 0 or 1).
#[inline(always)]
pub fn passes(act: Activation, z: f32) -> bool {
    match act {
        Activation::Identity => true,
        Activation::Relu => z > 0.0,
        Activation::Relu6 => (z > 0.0) & (z < 6.0),
        Activation::Clip01 => (z > 0.0) & (z < 1.0),
    }
}

multiversion! {
    /// The backward of `y = act(x·s + b)` over one channel plane (same lengths): `g = dy` where
    /// `act` passes its gradient at `z = x·s + b` (recomputed exactly as the forward computed it)
    /// and 0 elsewhere; `dy` is overwritten with `s·g` when `write_dx`. Returns `(Σ g·x, Σ g)`,
    /// each summed in [`LANES`] partial sums.
    pub fn affine_act_backward / affine_act_backward_at(dy: &mut [f32], x: &[f32], s: f32, b: f32, act: Activation, write_dx: bool) -> (f32, f32) {
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
    pub fn mask_bits / mask_bits_at(x: &[f32], act: Activation, bits: &mut [u64]) {
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
    pub fn masked_scale / masked_scale_at(v: &mut [f32], bits: &[u64], s: f32, write: bool) -> f32 {
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
