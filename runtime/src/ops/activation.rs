//! Elementwise activations (ReLU, ReLU6) and their gradients through a compact mask.

use rayon::prelude::*;

use super::Activation;
use crate::tensor::Tensor;

/// Applies `act` to every element of `x` in place.
pub fn forward(act: Activation, x: &mut Tensor) {
    x.data.par_chunks_mut(1 << 14).for_each(|c| c.iter_mut().for_each(|v| *v = act.apply(*v)));
}

/// Where an activation passes its gradient, one bit per element (what the backward pass keeps
/// instead of the activation's input).
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
}

/// Elements per parallel chunk of the mask (a multiple of 64).
const CHUNK: usize = 1 << 14;

/// The mask of `act` at input `x`: set where the derivative is 1 (`x > 0`, and `x < 6` for ReLU6).
pub fn mask(act: Activation, x: &Tensor) -> Mask {
    let mut bits = vec![0u64; x.data.len().div_ceil(64)];
    bits.par_chunks_mut(CHUNK / 64).zip(x.data.par_chunks(CHUNK)).for_each(|(b, v)| {
        for (word, vals) in b.iter_mut().zip(v.chunks(64)) {
            for (i, &x) in vals.iter().enumerate() {
                let pass = match act {
                    Activation::Identity => true,
                    Activation::Relu => x > 0.0,
                    Activation::Relu6 => x > 0.0 && x < 6.0,
                };
                *word |= (pass as u64) << i;
            }
        }
    });
    Mask { shape: x.shape, bits }
}

/// Input gradient in place: `dy` is zeroed where the mask is clear.
pub fn backward(mask: &Mask, dy: &mut Tensor) {
    debug_assert_eq!(mask.shape, dy.shape);
    dy.data.par_chunks_mut(CHUNK).zip(mask.bits.par_chunks(CHUNK / 64)).for_each(|(v, b)| {
        for (vals, word) in v.chunks_mut(64).zip(b) {
            for (i, g) in vals.iter_mut().enumerate() {
                if word >> i & 1 == 0 {
                    *g = 0.0;
                }
            }
        }
    });
}
