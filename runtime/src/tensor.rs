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
                if let Some(active) = p.as_mut() {
                    let bytes = 4 * self.data.capacity();
                    if active.bytes + bytes <= active.limit {
                        active.bytes += bytes;
                        active.free.push((std::mem::take(&mut self.data), true));
                    }
                }
            }
        });
    }
}

/// The pool of the [`Pool::scope`] running on a thread.
struct Active {
    /// Free buffers, each marked when it served (or came back) during the scope.
    free: Vec<(Vec<f32>, bool)>,
    /// Bytes of the free buffers.
    bytes: usize,
    limit: usize,
}

thread_local! {
    static POOL: RefCell<Option<Active>> = const { RefCell::new(None) };
}

/// The smallest free buffer of this thread's active pool that holds `len` values.
fn pooled(len: usize) -> Option<Vec<f32>> {
    POOL.try_with(|p| {
        let mut p = p.try_borrow_mut().ok()?;
        let active = p.as_mut()?;
        let (i, _) = active
            .free
            .iter()
            .enumerate()
            .filter(|(_, (b, _))| b.capacity() >= len)
            .min_by_key(|(_, (b, _))| b.capacity())?;
        let b = active.free.swap_remove(i).0;
        active.bytes -= 4 * b.capacity();
        Some(b)
    })
    .ok()
    .flatten()
}

/// Tensor buffers recycled across repeated passes of the same shapes (training steps): while
/// [`Pool::scope`] runs, tensors created on this thread take the smallest free buffer of the pool
/// that fits, and tensors dropped on this thread give their buffer back. A fresh allocation's
/// page faults and zeroing are then paid at the first pass only. After a scope the pool keeps
/// only the buffers that served or came back during it, so it never outgrows one pass's
/// working set, nor its limit.
#[derive(Debug)]
pub struct Pool {
    free: Vec<Vec<f32>>,
    limit: usize,
}

impl Default for Pool {
    /// A pool without a limit.
    fn default() -> Self {
        Pool::with_limit(usize::MAX)
    }
}

impl Pool {
    /// A pool that keeps at most `bytes` of free buffers (a dropped tensor beyond it is freed).
    pub fn with_limit(bytes: usize) -> Self {
        Pool { free: Vec::new(), limit: bytes }
    }

    /// Runs `f` with this pool serving the tensors of this thread.
    pub fn scope<R>(&mut self, f: impl FnOnce() -> R) -> R {
        struct Restore<'a>(&'a mut Vec<Vec<f32>>, Option<Active>);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                let mine = POOL.with(|p| p.replace(self.1.take())).map(|a| a.free).unwrap_or_default();
                *self.0 = mine.into_iter().filter(|(_, used)| *used).map(|(b, _)| b).collect();
            }
        }
        let free: Vec<(Vec<f32>, bool)> = std::mem::take(&mut self.free).into_iter().map(|b| (b, false)).collect();
        let bytes = free.iter().map(|(b, _)| 4 * b.capacity()).sum();
        let outer = POOL.with(|p| p.replace(Some(Active { free, bytes, limit: self.limit })));
        let _restore = Restore(&mut self.free, outer);
        f()
    }

    /// Bytes held by the free buffers.
    pub fn bytes(&self) -> usize {
        self.free.iter().map(|b| 4 * b.capacity()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_recycles_within_its_limit() {
        let mut pool = Pool::default();
        let first = pool.scope(|| {
            let t = Tensor::zeros([2, 3, 4, 5]);
            let at = t.data.as_ptr();
            drop(t);
            let again = Tensor::zeros([2, 3, 4, 5]);
            assert_eq!(again.data.as_ptr(), at, "a dropped buffer serves the next tensor of its size");
            assert!(again.data.iter().all(|&v| v == 0.0));
            let small = Tensor::zeros([1, 1, 2, 2]);
            assert_ne!(small.data.as_ptr(), at);
            at
        });
        assert_eq!(pool.bytes(), 4 * 120 + 16);
        pool.scope(|| {
            let mut t = Tensor::scratch([2, 3, 4, 5]);
            assert_eq!(t.data.as_ptr(), first, "kept across scopes");
            t.data.fill(7.0);
        });
        pool.scope(|| {});
        assert_eq!(pool.bytes(), 0, "buffers unused in a scope are released");
        let mut tight = Pool::with_limit(100);
        tight.scope(|| drop(Tensor::zeros([2, 3, 4, 5])));
        assert_eq!(tight.bytes(), 0);
        let t = Tensor::zeros([1, 2, 3, 4]);
        drop(t);
        assert_eq!(Tensor::zeros([1, 2, 3, 4]).data.len(), 24, "no pool outside a scope");
    }
}
