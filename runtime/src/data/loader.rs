//! Batching: images decoded, resized, augmented and normalised on a background thread, so the
//! trainer takes ready batches.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rayon::prelude::*;

use super::image::Preprocess;
use super::{Dataset, Rng};
use crate::tensor::Tensor;
use crate::Result;

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

/// Builds `[B, 3, R, R]` for `indices` (decoded in parallel).
pub fn make_batch(ds: &dyn Dataset, indices: &[usize], t: &Transform, seed: u64) -> Result<Batch> {
    let r = t.resolution as usize;
    let chw: Vec<Vec<f32>> = indices.par_iter().map(|&i| t.apply(ds, i, seed)).collect::<Result<_>>()?;
    Ok(Batch {
        input: Tensor { shape: [indices.len(), 3, r, r], data: chw.concat() },
        labels: indices.iter().map(|&i| ds.label(i)).collect(),
        indices: indices.to_vec(),
    })
}

/// Batches of a fixed order of images, prepared ahead on a background thread (two in flight).
pub struct Loader {
    rx: Receiver<Result<Batch>>,
    thread: Option<JoinHandle<()>>,
}

impl Loader {
    /// Starts preparing `order` in batches of `batch` (the last may be smaller).
    pub fn new(ds: Arc<dyn Dataset>, order: Vec<usize>, batch: usize, t: Transform, seed: u64) -> Self {
        let (tx, rx) = sync_channel(2);
        let thread = std::thread::Builder::new()
            .name("edgepatch-loader".into())
            .spawn(move || {
                for chunk in order.chunks(batch.max(1)) {
                    let b = make_batch(ds.as_ref(), chunk, &t, seed);
                    let failed = b.is_err();
                    if tx.send(b).is_err() || failed {
                        break;
                    }
                }
            })
            .expect("spawning the loader thread");
        Loader { rx, thread: Some(thread) }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
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
