//! Batching: images decoded, resized, augmented and normalised on a background thread, so the
//! trainer takes ready batches.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rayon::prelude::*;

use super::image::Preprocess;
use super::{Dataset, Rng};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// How an image becomes a training or evaluation input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transform {
    /// Input height and width.
    pub resolution: u32,
    /// Random crop (from the image resized to 8/7 of the resolution) and random left–right flip.
    pub augment: bool,
}

impl Transform {
    /// Image `i` of `ds` as `[3, R, R]`; augmentation draws from a generator seeded by `seed` and
    /// `i`, so a batch is the same whichever thread builds it.
    pub fn apply(&self, ds: &dyn Dataset, i: usize, seed: u64) -> Result<Vec<f32>> {
        let img = ds.image(i)?;
        let r = self.resolution;
        if !self.augment {
            return Preprocess::task(r).apply(&img);
        }
        let pp = Preprocess { resize: (r * 8).div_ceil(7), ..Preprocess::task(r) };
        let big = pp.resized(&img)?;
        let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let left = rng.below((big.width - r + 1) as usize) as u32;
        let top = rng.below((big.height - r + 1) as usize) as u32;
        Ok(pp.crop_normalize(&big, left, top, rng.uniform() < 0.5))
    }
}

/// A batch: inputs `[B, 3, R, R]`, their labels and dataset indices.
#[derive(Debug, Clone)]
pub struct Batch {
    pub input: Tensor,
    pub labels: Vec<usize>,
    pub indices: Vec<usize>,
}

/// Builds `[B, 3, R, R]` for `indices` (decoded in parallel, each image written into its place:
/// the batch is the only buffer of its size).
pub fn make_batch(ds: &dyn Dataset, indices: &[usize], t: &Transform, seed: u64) -> Result<Batch> {
    let r = t.resolution as usize;
    let per = 3 * r * r;
    let mut data = vec![0f32; indices.len() * per];
    data.par_chunks_mut(per).zip(indices.par_iter()).try_for_each(|(dst, &i)| -> Result<()> {
        let chw = t.apply(ds, i, seed)?;
        if chw.len() != per {
            return Err(Error::dataset(ds.spec(), format!("image {i} gave {} values, not 3×{r}×{r}", chw.len())));
        }
        dst.copy_from_slice(&chw);
        Ok(())
    })?;
    Ok(Batch {
        input: Tensor { shape: [indices.len(), 3, r, r], data },
        labels: indices.iter().map(|&i| ds.label(i)).collect(),
        indices: indices.to_vec(),
    })
}

/// Batches of a fixed order of images, prepared ahead on a background thread (two waiting, and
/// a third built, by default; see [`Loader::with_depth`]).
/// A failure of that thread is an error of the iteration, never a short one: a panic, a thread
/// that could not start or that stopped before the last batch yields `Err`, then ends.
pub struct Loader {
    rx: Receiver<Result<Batch>>,
    thread: Option<JoinHandle<()>>,
    spec: String,
    /// Batches still to come.
    left: usize,
    /// The thread could not be started.
    spawn_error: Option<std::io::Error>,
}

impl Loader {
    /// Starts preparing `order` in batches of `batch` (the last may be smaller).
    pub fn new(ds: Arc<dyn Dataset>, order: Vec<usize>, batch: usize, t: Transform, seed: u64) -> Self {
        Loader::with_depth(ds, order, batch, t, seed, 2)
    }

    /// [`Loader::new`] with `depth` batches waiting to be taken: the thread holds at most
    /// `depth + 1` batches (`depth` waiting, one built and waiting for room), the consumer the one
    /// it took.
    pub fn with_depth(
        ds: Arc<dyn Dataset>,
        order: Vec<usize>,
        batch: usize,
        t: Transform,
        seed: u64,
        depth: usize,
    ) -> Self {
        let (tx, rx) = sync_channel(depth);
        let spec = ds.spec().to_string();
        let left = order.len().div_ceil(batch.max(1));
        let spawned = std::thread::Builder::new().name("edgepatch-loader".into()).spawn(move || {
            for chunk in order.chunks(batch.max(1)) {
                let b = make_batch(ds.as_ref(), chunk, &t, seed);
                let failed = b.is_err();
                if tx.send(b).is_err() || failed {
                    break;
                }
            }
        });
        let (thread, spawn_error) = match spawned {
            Ok(t) => (Some(t), None),
            Err(e) => (None, Some(e)),
        };
        Loader { rx, thread, spec, left, spawn_error }
    }

    /// The error that ends an iteration cut short: the thread's panic, or its early end.
    fn failure(&mut self) -> Option<Error> {
        if let Some(e) = self.spawn_error.take() {
            self.left = 0;
            return Some(Error::dataset(&self.spec, format!("the data loader thread could not start: {e}")));
        }
        let joined = self.thread.take().map(JoinHandle::join);
        let left = std::mem::take(&mut self.left);
        match joined {
            Some(Err(panic)) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".into());
                Some(Error::dataset(&self.spec, format!("the data loader thread panicked: {msg}")))
            }
            _ if left > 0 => {
                Some(Error::dataset(&self.spec, format!("the data loader stopped with {left} batches left")))
            }
            _ => None,
        }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        match self.rx.recv() {
            Ok(b) => {
                // An error ends the iteration after it is returned.
                self.left = if b.is_err() { 0 } else { self.left - 1 };
                Some(b)
            }
            Err(_) => self.failure().map(Err),
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        let (_, dead) = sync_channel(0);
        drop(std::mem::replace(&mut self.rx, dead));
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::image::Rgb8;

    /// A dataset whose image `bad` panics when read.
    struct Panicking {
        bad: usize,
    }

    impl Dataset for Panicking {
        fn spec(&self) -> &str {
            "panicking"
        }
        fn len(&self) -> usize {
            8
        }
        fn label(&self, i: usize) -> usize {
            i % 2
        }
        fn classes(&self) -> &[String] {
            &[]
        }
        fn image(&self, i: usize) -> Result<Rgb8> {
            assert!(i != self.bad, "image {i} is broken");
            Ok(Rgb8 { width: 4, height: 4, data: vec![7; 48] })
        }
    }

    #[test]
    fn a_panicking_loader_is_an_error_not_a_short_iteration() {
        let t = Transform { resolution: 32, augment: false };
        let all: Vec<Result<Batch>> = Loader::new(Arc::new(Panicking { bad: 5 }), (0..8).collect(), 2, t, 0).collect();
        assert_eq!(all.len(), 3, "two batches, then the error");
        assert!(all[..2].iter().all(Result::is_ok));
        let e = all[2].as_ref().unwrap_err().to_string();
        assert!(e.contains("panicked") && e.contains("image 5 is broken"), "{e}");
        let fine: Vec<Result<Batch>> =
            Loader::new(Arc::new(Panicking { bad: 99 }), (0..8).collect(), 3, t, 0).collect();
        assert_eq!(fine.len(), 3);
        assert!(fine.iter().all(Result::is_ok));
    }
}
