//! How to train a patch: the settings and their checks.

use super::optim::OptimizerKind;
use crate::backend::Device;
use crate::patch::{Patch, PatchKinds};
use crate::{Error, Result};

/// How to train a patch.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub kinds: PatchKinds,
    pub epochs: usize,
    pub batch: usize,
    /// Peak learning rate; `None` picks [`TrainConfig::default_lr`].
    pub lr: Option<f32>,
    pub optimizer: OptimizerKind,
    /// L2 weight decay on kernels and classifier weights (not on scales and biases).
    pub weight_decay: f32,
    pub label_smoothing: f32,
    /// Fraction of the steps spent warming the learning rate up from 0.
    pub warmup: f32,
    /// Largest global gradient norm (`None`: no clipping).
    pub clip_norm: Option<f32>,
    /// Input height and width (a multiple of 32, at least 32).
    pub resolution: u32,
    /// Samples per forward and backward pass on the CPU: a larger batch runs as micro-batches of
    /// this many, their gradients summed before one update. The backbone's statistics are
    /// frozen, so the update is the whole batch's up to summation order; the activations held
    /// shrink with the micro-batch. `None`: the whole batch, or what `memory_budget` picks.
    pub micro_batch: Option<usize>,
    /// The most bytes a training step may add to the process's resident memory (on a GPU: the
    /// device buffers of training): the trainer picks the largest micro-batch that fits
    /// ([`crate::train::memory`]) and refuses to start when even one sample does not. `None`: no
    /// limit.
    pub memory_budget: Option<u64>,
    /// Recomputation on the CPU ([`crate::train::recompute`]): keep only each block's input and
    /// recompute the block before its backward. `None`: only under a `memory_budget`, when it
    /// lets more samples per pass fit (or any at all); `Some(on)`: always or never.
    pub recompute: Option<bool>,
    /// Write a checkpoint every so many steps, and resume from it ([`super::checkpoint`]). For
    /// several tasks trained together, the first task's setting holds for the run.
    pub checkpoint: Option<super::checkpoint::Checkpointing>,
    /// Stops training after the step in progress when cancelled, from any thread or from the
    /// progress callback ([`Cancel`]). For several tasks trained together, the first task's.
    pub cancel: Cancel,
    /// Training seconds a call may take: past them the run stops after its current step as if
    /// cancelled (its checkpoint, when it has one, resumes it). For several tasks trained
    /// together, the first task's. `None`: no limit.
    pub time_budget: Option<f64>,
    pub augment: bool,
    pub seed: u64,
    /// Where the steps run.
    pub device: Device,
    /// Sequential transfer: start from this patch's values (same kinds, same backbone) instead
    /// of the backbone's; its classifier is kept when its labels equal the task's, else new.
    pub init: Option<Patch>,
    /// How a new classifier starts: random, or the prototype head of the training images
    /// ([`super::prototype`]; made by [`super::fit`], before the first step).
    pub head: super::prototype::HeadInit,
}

impl TrainConfig {
    /// Defaults for `kinds`: 3 epochs, batch 32, SGD, warm-up 5%, clipping at norm 5, 224 px, and
    /// [`Device::Auto`] (a hardware GPU when present), as the CLI.
    pub fn new(kinds: PatchKinds) -> Self {
        TrainConfig {
            kinds,
            epochs: 3,
            batch: 32,
            lr: None,
            optimizer: OptimizerKind::Sgd,
            weight_decay: 0.0,
            label_smoothing: 0.0,
            warmup: 0.05,
            clip_norm: Some(5.0),
            resolution: 224,
            augment: false,
            seed: 0,
            device: Device::Auto,
            micro_batch: None,
            memory_budget: None,
            recompute: None,
            checkpoint: None,
            cancel: Cancel::default(),
            time_budget: None,
            init: None,
            head: super::prototype::HeadInit::Random,
        }
    }

    /// The learning rate used when none is given: for SGD 0.01 when only the classifier trains,
    /// 0.001 for `full`, 0.003 otherwise (the best of a sweep in the reference PyTorch run,
    /// shared/guide/sources.md); a tenth of that for Adam and RMSProp.
    pub fn default_lr(&self) -> f32 {
        let sgd = if self.kinds.head_only() {
            0.01
        } else if self.kinds.full {
            0.001
        } else {
            0.003
        };
        match self.optimizer {
            OptimizerKind::Sgd => sgd,
            _ => sgd / 10.0,
        }
    }

    /// The learning rate in effect.
    pub fn lr(&self) -> f32 {
        self.lr.unwrap_or_else(|| self.default_lr())
    }

    /// Refuses a configuration that cannot train: resolution not a multiple of 32 in
    /// `32..=1024`, zero batch or epochs, a learning rate, weight decay or clipping norm that is
    /// not a finite number of the right sign, smoothing or warm-up outside `[0, 1)`.
    pub fn check(&self) -> Result<()> {
        let r = self.resolution;
        if r < 32 || !r.is_multiple_of(32) || r > 1024 {
            return Err(Error::Train(format!("resolution {r} is not a multiple of 32 between 32 and 1024")));
        }
        if self.batch == 0 || self.epochs == 0 || self.micro_batch == Some(0) {
            return Err(Error::Train("batch, micro-batch and epochs must be at least 1".into()));
        }
        if let Some(t) = self.time_budget.filter(|t| !(t.is_finite() && *t > 0.0)) {
            return Err(Error::Train(format!("time budget {t} s is not a finite positive number of seconds")));
        }
        let lr = self.lr();
        if !(lr.is_finite() && lr > 0.0) {
            return Err(Error::Train(format!("learning rate {lr} is not a finite positive number")));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::Train(format!("weight decay {} is not a finite number ≥ 0", self.weight_decay)));
        }
        if let Some(c) = self.clip_norm {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::Train(format!("gradient clipping norm {c} is not a finite positive number")));
            }
        }
        if !(0.0..1.0).contains(&self.label_smoothing) || !(0.0..1.0).contains(&self.warmup) {
            return Err(Error::Train("label smoothing and warm-up must be in [0, 1)".into()));
        }
        if self.head == super::prototype::HeadInit::Prototypes {
            if !self.kinds.new_head() {
                return Err(Error::Train(format!(
                    "a {} patch has no new classifier to start from prototypes",
                    self.kinds
                )));
            }
            if self.init.is_some() {
                return Err(Error::Train("an initial patch and a prototype head both set the classifier".into()));
            }
        }
        Ok(())
    }
}

/// A flag that stops a training run after its current step (it then writes its checkpoint, when
/// it has one, and fails with [`crate::Error::Cancelled`]). Clones share the flag: keep one to
/// cancel from another thread or from the progress callback.
#[derive(Debug, Clone, Default)]
pub struct Cancel(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Cancel {
    /// Asks the run to stop.
    pub fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether it was asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Clears the request (before a new run with the same flag).
    pub fn reset(&self) {
        self.0.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Two configurations are equal whatever their cancel flags.
impl PartialEq for Cancel {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
