//! Elementwise activations (ReLU, ReLU6) and their gradients through a compact mask.

use rayon::prelude::*;

use super::Activation;
use crate::tensor::Tensor;

/// Applies `act` to every element of `x` in place.
pub fn forward(act: Activation, x: &mut Tensor) {
    x.data.par_chunks_mut(1 << 14).for_each(|c| c.iter_mut().for_each(|v| *v = act.apply(*v)));
}

/// Where an activation passes its gradient, one bit per element (what the backward pass keeps
/// instead of the activation's input). Each channel plane starts at a fresh 64-bit word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    pub shape: [usize; 4],
    bits: Vec<u64>,
}

impl Mask {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        8 * self.bits.len()
    }

    /// Words per channel plane.
    fn words(&self) -> usize {
        (self.shape[2] * self.shape[3]).div_ceil(64)
    }

    /// The bits of each channel plane, in order.
    pub(crate) fn planes(&self) -> std::slice::ChunksExact<'_, u64> {
        self.bits.chunks_exact(self.words().max(1))
    }
}

/// The mask of `act` at input `x`: set where the derivative is 1 (`x > 0`, and `x < 6` for ReLU6).
/// Also right at the activation's output (`0 < y < 6` exactly where `0 < x < 6`).
pub fn mask(act: Activation, x: &Tensor) -> Mask {
    let plane = x.plane();
    let words = plane.div_ceil(64).max(1);
    let mut bits = vec![0u64; words * x.shape[0] * x.shape[1]];
    bits.par_chunks_mut(words)
        .zip(x.data.par_chunks(plane.max(1)))
        .with_min_len(super::planes_per_task(plane))
        .for_each(|(b, v)| crate::simd::mask_bits(v, act, b));
    Mask { shape: x.shape, bits }
}

/// Input gradient in place: `dy` is zeroed where the mask is clear.
pub fn backward(mask: &Mask, dy: &mut Tensor) {
    debug_assert_eq!(mask.shape, dy.shape);
    let plane = dy.plane().max(1);
    let planes = dy.data.par_chunks_mut(plane).zip(mask.planes().collect::<Vec<_>>());
    planes.with_min_len(super::planes_per_task(plane)).for_each(|(v, b)| {
        crate::simd::masked_scale(v, b, 1.0, true);
    });
}
