//! One task's stream of batches for [`super::fit_multi`]: images from a loader, or cached
//! features for a head-only trainer, epoch after epoch.

use std::sync::Arc;

use super::checkpoint::StreamState;
use super::fit::EpochStats;
use super::Trainer;
use crate::data::{Dataset, Loader, Rng, Transform};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// One task's batches, epoch after epoch, in the order [`super::fit`] has always used (each epoch a
/// shuffle of the indices from one generator seeded by the task's seed).
pub(super) struct Stream {
    pub group: usize,
    pub train: Arc<dyn Dataset>,
    pub indices: Vec<usize>,
    pub batch: usize,
    /// Batches the loader keeps waiting ([`super::memory::loader_depth`]).
    pub depth: usize,
    pub transform: Transform,
    pub seed: u64,
    pub epochs: usize,
    pub rng: Rng,
    pub epoch: usize,
    pub loader: Option<Loader>,
    /// Feature width, features of every training image in `indices` order, and each image's
    /// position there (head-only trainers without augmentation).
    pub cached: Option<(usize, Vec<f32>, std::collections::HashMap<usize, usize>)>,
    /// The epoch's order and how far into it the cached path is.
    pub order: Vec<usize>,
    pub at: usize,
    pub steps: usize,
    pub total: usize,
    pub loss_sum: f64,
    pub correct: usize,
    pub last_epoch: (f64, usize),
    pub history: Vec<EpochStats>,
}

impl Stream {
    pub fn done(&self) -> bool {
        self.steps == self.total
    }

    fn start_epoch(&mut self) {
        self.order = self.indices.clone();
        self.rng.shuffle(&mut self.order);
        self.at = 0;
        if self.cached.is_none() {
            let seed = self.seed ^ ((self.epoch as u64 + 1) << 32);
            let (train, order) = (self.train.clone(), self.order.clone());
            self.loader = Some(Loader::with_depth(train, order, self.batch, self.transform, seed, self.depth));
        }
    }

    /// The next batch (images, or features for a head-only trainer), and whether it ends an epoch.
    pub fn next(&mut self, trainer: &Trainer) -> Result<(Tensor, Vec<usize>, bool)> {
        if self.at == 0 && self.loader.is_none() {
            self.start_epoch();
        }
        let (input, labels) = match &self.cached {
            Some((f, feats, position)) => {
                let chunk = &self.order[self.at..(self.at + self.batch).min(self.order.len())];
                let mut data = Vec::with_capacity(chunk.len() * f);
                for i in chunk {
                    let p = position[i];
                    data.extend_from_slice(&feats[p * f..(p + 1) * f]);
                }
                let labels = chunk.iter().map(|&i| self.train.label(i)).collect();
                (Tensor { shape: [chunk.len(), *f, 1, 1], data }, labels)
            }
            None => {
                let loader = self.loader.as_mut().expect("an epoch is running");
                let b = loader.next().ok_or_else(|| Error::Train("the data loader stopped early".into()))??;
                let input = if trainer.takes_features() { trainer.features(b.input)? } else { b.input };
                (input, b.labels)
            }
        };
        self.at += labels.len();
        let end = self.at >= self.order.len();
        if end {
            self.loader = None;
            self.at = 0;
            self.epoch += 1;
        }
        Ok((input, labels, end))
    }

    /// The stream's position and statistics (for a checkpoint).
    pub fn state(&self) -> StreamState {
        StreamState {
            rng: self.rng.state(),
            epoch: self.epoch,
            order: self.order.iter().map(|&i| i as u32).collect(),
            at: self.at,
            steps: self.steps,
            loss_sum: self.loss_sum,
            correct: self.correct,
            last_epoch: self.last_epoch,
            history: self.history.clone(),
        }
    }

    /// Continues from `s` (a [`Stream::state`] of this stream): mid-epoch, a loader over the
    /// rest of the epoch's order with the epoch's seed.
    pub fn restore(&mut self, s: StreamState) -> Result<()> {
        let order: Vec<usize> = s.order.iter().map(|&i| i as usize).collect();
        let mut sorted = order.clone();
        sorted.sort_unstable();
        let mut mine = self.indices.clone();
        mine.sort_unstable();
        let fits = (order.is_empty() || sorted == mine)
            && s.at <= order.len()
            && s.steps <= self.total
            && s.epoch <= self.epochs
            && s.loss_sum.is_finite();
        if !fits {
            return Err(Error::Train("the checkpoint's position in the data is not this task's".into()));
        }
        self.rng = Rng::new(s.rng);
        (self.epoch, self.order, self.at, self.steps) = (s.epoch, order, s.at, s.steps);
        (self.loss_sum, self.correct, self.last_epoch, self.history) = (s.loss_sum, s.correct, s.last_epoch, s.history);
        self.loader = None;
        if self.at > 0 && self.cached.is_none() {
            let seed = self.seed ^ ((self.epoch as u64 + 1) << 32);
            let rest = self.order[self.at..].to_vec();
            self.loader =
                Some(Loader::with_depth(self.train.clone(), rest, self.batch, self.transform, seed, self.depth));
        }
        Ok(())
    }
}
