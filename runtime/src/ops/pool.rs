//! Global average pooling.

use crate::tensor::Tensor;

/// `[N, C, H, W]` → `[N, C, 1, 1]`, the mean of each channel plane.
pub fn forward(x: &Tensor) -> Tensor {
    let [n, c, ..] = x.shape;
    let plane = x.plane();
    let data = x.data.chunks_exact(plane).map(|p| p.iter().sum::<f32>() / plane as f32).collect();
    Tensor { shape: [n, c, 1, 1], data }
}

/// Input gradient: `dy: [N, C, 1, 1]` → `[N, C, h, w]`, each plane filled with `dy / (h·w)`.
pub fn backward(dy: &Tensor, (h, w): (usize, usize)) -> Tensor {
    let [n, c, ..] = dy.shape;
    let plane = (h * w).max(1);
    let mut dx = Tensor::scratch([n, c, h, w]);
    dx.data.chunks_mut(plane).zip(&dy.data).for_each(|(p, &g)| p.fill(g / plane as f32));
    dx
}
