//! Dot products of the classifier: f32 · f32, and f32 · int8 with the int8 row converted in
//! registers (never written out as f32). Eight lane accumulators, then the lanes summed in
//! order, then the tail: the same operations in the same order at every level, so every level
//! gives the same bits, and `dot_i8(a, q)` the bits of `dot(a, q as f32)`.

multiversion! {
    /// `Σ a[i]·b[i]` over `min(a.len(), b.len())` values.
    pub fn dot / dot_at(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
        let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
        for (x, y) in ca.zip(cb) {
            for i in 0..8 {
                acc[i] += x[i] * y[i];
            }
        }
        acc.iter().sum::<f32>() + tail
    }
}

multiversion! {
    /// `Σ a[i]·(b[i] as f32)`: [`dot`] against an int8 row.
    pub fn dot_i8 / dot_i8_at(a: &[f32], b: &[i8]) -> f32 {
        let mut acc = [0f32; 8];
        let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
        let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, &y)| x * y as f32).sum();
        for (x, y) in ca.zip(cb) {
            for i in 0..8 {
                acc[i] += x[i] * y[i] as f32;
            }
        }
        acc.iter().sum::<f32>() + tail
    }
}
