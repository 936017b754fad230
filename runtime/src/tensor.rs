//! The activation tensor: NCHW f32, contiguous; and the buffer pool that recycles tensors
//! across training steps.

use std::cell::RefCell;

/// A batch of feature maps, `data[((n·C + c)·H + h)·W + w]`. A feature vector is `[N, F, 1, 1]`.
#[derive(Debug, PartialEq)]
pub struct Tensor {
    /// `[N, C, H, W]`.
    pub shape: [usize; 4],
    pub data: Vec<f32>,
}

impl Tensor {
    /// A zero tensor of the given shape.
    pub fn zeros(shape: [usize; 4]) -> Self {
        let len = shape.iter().product();
        let data = match pooled(len) {
            Some(mut b) => {
                b.clear();
                b.resize(len, 0.0);
                b
            }
            None => vec![0.0; len],
        };
        Tensor { shape, data }
    }

    /// A tensor of the given shape whose values are unspecified (zeros, or stale values of a
    /// recycled buffer): for kernels that overwrite every element.
    pub(crate) fn scratch(shape: [usize; 4]) -> Self {
        let len = shape.iter().product();
        let data = match pooled(len) {
            Some(mut b) => {
                b.truncate(len);
                b.resize(len, 0.0);
                b
            }
            None => vec![0.0; len],
        };
        Tensor { shape, data }
    }

    /// Wraps `data`; `None` when its length does not match `shape`.
    pub fn from_vec(shape: [usize; 4], data: Vec<f32>) -> Option<Self> {
        (shape.iter().product::<usize>() == data.len()).then_some(Tensor { shape, data })
    }

    /// The values, leaving this tensor empty.
    pub fn into_data(mut self) -> Vec<f32> {
        std::mem::take(&mut self.data)
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

impl Clone for Tensor {
    fn clone(&self) -> Self {
        let mut t = Tensor::scratch(self.shape);
        t.data.copy_from_slice(&self.data);
        t
    }
}

impl Drop for Tensor {
    fn drop(&mut self) {
        if self.data.capacity() == 0 {
            return;
        }
        let _ = POOL.try_with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                if let Some(free) = p.as_mut() {
                    free.push((std::mem::take(&mut self.data), true));
                }
            }
        });
    }
}

/// Free buffers, each marked when it served (or came back) during the current scope.
type Free = Vec<(Vec<f32>, bool)>;

thread_local! {
    /// The free buffers of the [`Pool::scope`] running on this thread.
    static POOL: RefCell<Option<Free>> = const { RefCell::new(None) };
}

/// The smallest free buffer of this thread's active pool that holds `len` values and not more
/// than an eighth beyond (a much larger buffer is left for the request it fits).
fn pooled(len: usize) -> Option<Vec<f32>> {
    POOL.try_with(|p| {
        let mut p = p.try_borrow_mut().ok()?;
        let free = p.as_mut()?;
        let (i, _) = free
            .iter()
            .enumerate()
            .filter(|(_, (b, _))| b.capacity() >= len && b.capacity() <= len + len / 8)
            .min_by_key(|(_, (b, _))| b.capacity())?;
        Some(free.swap_remove(i).0)
    })
    .ok()
    .flatten()
}

/// Tensor buffers recycled across repeated passes of the same shapes (training steps): while
/// [`Pool::scope`] runs, tensors created on this thread take the smallest free buffer of the pool
/// that fits, and tensors dropped on this thread give their buffer back. A fresh allocation's
/// page faults and zeroing are then paid at the first pass only. After a scope the pool keeps
/// only the buffers that served or came back during it, so it never outgrows one pass's
/// working set.
#[derive(Debug, Default)]
pub struct Pool {
    free: Vec<Vec<f32>>,
}

impl Pool {
    /// Runs `f` with this pool serving the tensors of this thread.
    pub fn scope<R>(&mut self, f: impl FnOnce() -> R) -> R {
        struct Restore<'a>(&'a mut Vec<Vec<f32>>, Option<Free>);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                let mine = POOL.with(|p| p.replace(self.1.take())).unwrap_or_default();
                *self.0 = mine.into_iter().filter(|(_, used)| *used).map(|(b, _)| b).collect();
            }
        }
        let free = std::mem::take(&mut self.free).into_iter().map(|b| (b, false)).collect();
        let outer = POOL.with(|p| p.replace(Some(free)));
        let _restore = Restore(&mut self.free, outer);
        f()
    }

    /// Bytes held by the free buffers.
    pub fn bytes(&self) -> usize {
        self.free.iter().map(|b| 4 * b.capacity()).sum()
    }
}
