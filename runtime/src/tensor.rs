//! The activation tensor: NCHW f32, contiguous.

/// A batch of feature maps, `data[((n·C + c)·H + h)·W + w]`. A feature vector is `[N, F, 1, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// `[N, C, H, W]`.
    pub shape: [usize; 4],
    pub data: Vec<f32>,
}

impl Tensor {
    /// A zero tensor of the given shape.
    pub fn zeros(shape: [usize; 4]) -> Self {
        Tensor { shape, data: vec![0.0; shape.iter().product()] }
    }

    /// Wraps `data`; `None` when its length does not match `shape`.
    pub fn from_vec(shape: [usize; 4], data: Vec<f32>) -> Option<Self> {
        (shape.iter().product::<usize>() == data.len()).then_some(Tensor { shape, data })
    }

    /// Elements in one channel plane (`H·W`).
    pub fn plane(&self) -> usize {
        self.shape[2] * self.shape[3]
    }

    /// Elements in one sample (`C·H·W`).
    pub fn sample_len(&self) -> usize {
        self.shape[1] * self.plane()
    }

    /// The `n`-th sample's values.
    pub fn sample(&self, n: usize) -> &[f32] {
        let l = self.sample_len();
        &self.data[n * l..(n + 1) * l]
    }

    /// The `n`-th sample's values, mutable.
    pub fn sample_mut(&mut self, n: usize) -> &mut [f32] {
        let l = self.sample_len();
        &mut self.data[n * l..(n + 1) * l]
    }

    /// `self += other` elementwise (same shape).
    pub fn add_assign(&mut self, other: &Tensor) {
        crate::ops::add::forward(self, other);
    }
}
