//! Global average pooling.

use crate::tensor::Tensor;

/// `[N, C, H, W]` → `[N, C, 1, 1]`, the mean of each channel plane.
pub fn forward(x: &Tensor) -> Tensor {
    let [n, c, ..] = x.shape;
    let plane = x.plane();
    let data = x.data.chunks_exact(plane).map(|p| p.iter().sum::<f32>() / plane as f32).collect();
    Tensor { shape: [n, c, 1, 1], data }
}
