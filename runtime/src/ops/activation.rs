//! Elementwise activations (ReLU, ReLU6).

use rayon::prelude::*;

use super::Activation;
use crate::tensor::Tensor;

/// Applies `act` to every element of `x` in place.
pub fn forward(act: Activation, x: &mut Tensor) {
    x.data.par_chunks_mut(1 << 14).for_each(|c| c.iter_mut().for_each(|v| *v = act.apply(*v)));
}
