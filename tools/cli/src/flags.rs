//! The training flags `train` and `train-multi` share, the selection of training, held-out and
//! test images, and the process's resident memory (what `--memory-budget` and the JSON report
//! measure).

use std::path::PathBuf;

use clap::Args;
use edgepatch::backend::Device;
use edgepatch::data::{Dataset, Rng};
use edgepatch::train::{OptimizerKind, TrainConfig};
use edgepatch::{Error, PatchKinds};

/// The optimisation flags that `train` and `train-multi` share.
#[derive(Args, Clone)]
pub struct TrainFlags {
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Peak learning rate (default depends on the patch kinds and optimizer).
    #[arg(long)]
    pub lr: Option<f32>,
    #[arg(long, default_value = "sgd")]
    pub optimizer: OptimizerKind,
    /// L2 weight decay on kernels and classifier weights.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f32,
    /// Fraction of the steps spent warming up the learning rate.
    #[arg(long, default_value_t = 0.05)]
    pub warmup: f32,
    /// Clip the global gradient norm to this (0: no clipping).
    #[arg(long, default_value_t = 5.0)]
    pub clip_norm: f32,
    /// Input height and width: a multiple of 32, at least 32.
    #[arg(long, default_value_t = 224)]
    pub resolution: u32,
    /// Random crops and flips while training.
    #[arg(long)]
    pub augment: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How a new classifier starts: random, or prototypes (the class prototypes of the training
    /// images, as `edgepatch prototype` makes them: a good start for a few images per class)
    #[arg(long, default_value = "random")]
    pub head: edgepatch::train::HeadInit,
    /// Where to train and evaluate: auto (a hardware GPU when present), gpu or cpu.
    #[arg(long, default_value = "auto")]
    pub device: Device,
    /// The memory (MB, 10^6 bytes) training may use: on the CPU the peak resident memory of the
    /// whole process, on a GPU the device buffers of training. The largest micro-batch that fits
    /// is chosen (logged, and in --json's memory_plan), and a budget too small for one sample per
    /// pass is refused before training
    #[arg(long, value_name = "MB")]
    pub memory_budget: Option<f64>,
    /// Samples per forward and backward pass (a batch runs as micro-batches, their gradients
    /// summed: the same update up to rounding, less memory)
    #[arg(long, value_name = "N")]
    pub micro_batch: Option<usize>,
    /// Recompute each block's activations in the backward instead of keeping them (CPU; about
    /// one more forward pass per step, less memory). Without it, a --memory-budget recomputes
    /// only when that fits more samples per pass
    #[arg(long)]
    pub recompute: bool,
    /// Write a checkpoint here (atomically) every --checkpoint-every steps and at the end: the
    /// trained values, optimizer state, schedule position and data order
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Steps between checkpoints
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_every: u64,
    /// Continue from --checkpoint when the file exists (a run with the same data and settings
    /// then ends with the same patch, bit for bit on the CPU, as one never interrupted)
    #[arg(long, requires = "checkpoint")]
    pub resume: bool,
    /// Stop after the step during which training has taken this many seconds (the checkpoint, when
    /// one is written, resumes the run; the command fails as cancelled)
    #[arg(long, value_name = "SECONDS")]
    pub time_budget: Option<f64>,
}

impl TrainFlags {
    /// The training configuration of `kinds` under these flags.
    pub fn config(&self, kinds: PatchKinds) -> TrainConfig {
        let mut config = TrainConfig::new(kinds);
        config.epochs = self.epochs;
        config.batch = self.batch;
        config.lr = self.lr;
        config.optimizer = self.optimizer;
        config.weight_decay = self.weight_decay;
        config.label_smoothing = self.label_smoothing;
        config.warmup = self.warmup;
        // 0 turns clipping off; anything else (negative, NaN) reaches `TrainConfig::check`.
        config.clip_norm = (self.clip_norm != 0.0).then_some(self.clip_norm);
        config.resolution = self.resolution;
        config.augment = self.augment;
        config.seed = self.seed;
        config.head = self.head;
        config.device = self.device;
        config.micro_batch = self.micro_batch;
        config.recompute = self.recompute.then_some(true);
        config.time_budget = self.time_budget;
        // Ctrl-C (or SIGTERM) stops the run after its step, writing its checkpoint.
        config.cancel = crate::interrupt::cancel();
        config.checkpoint = self.checkpoint.as_ref().map(|path| edgepatch::train::checkpoint::Checkpointing {
            path: path.clone(),
            every: self.checkpoint_every as usize,
            resume: self.resume,
        });
        // On a GPU the library's budget is the device buffers'; on the CPU it is what training
        // adds: the process's budget less what it holds now, measured after the device is
        // resolved (looking for a GPU can load drivers that stay mapped). Out-of-range budgets
        // (negative, NaN) become 0 bytes, refused as too small.
        config.memory_budget = self.memory_budget_now();
        config
    }

    /// The library's memory budget for `--memory-budget` at this moment (see [`Self::config`]).
    pub fn memory_budget_now(&self) -> Option<u64> {
        self.memory_budget.map(|mb| {
            let total = if mb.is_finite() && mb > 0.0 { (mb * 1e6) as u64 } else { 0 };
            match edgepatch::backend::resolve(self.device) {
                Ok(Some(_)) => total,
                _ => total.saturating_sub(rss_bytes().unwrap_or(0)),
            }
        })
    }
}

/// The seed of a test subset (`--test-limit`): fixed, so that `train`, `train-multi` and `eval`
/// score the same images whatever the training seed.
pub const TEST_SUBSET_SEED: u64 = 0;

/// `n` indices of `ds` after a shuffle seeded by `seed` (all, in order, without a limit).
pub fn select(ds: &dyn Dataset, limit: Option<usize>, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..ds.len()).collect();
    if let Some(n) = limit {
        Rng::new(seed ^ 0x5eed).shuffle(&mut idx);
        idx.truncate(n);
    }
    idx
}

/// Training indices (`limit` of them, or all not held out) and `validate` held-out indices,
/// disjoint, from one seeded shuffle; without either, all images in order.
pub fn split(
    ds: &dyn Dataset,
    limit: Option<usize>,
    validate: usize,
    seed: u64,
) -> edgepatch::Result<(Vec<usize>, Vec<usize>)> {
    if validate == 0 {
        return Ok((select(ds, limit, seed), Vec::new()));
    }
    if validate >= ds.len() {
        return Err(Error::dataset(ds.spec(), format!("cannot hold out {validate} of {} images", ds.len())));
    }
    let mut idx: Vec<usize> = (0..ds.len()).collect();
    Rng::new(seed ^ 0x5eed).shuffle(&mut idx);
    let held: Vec<usize> = idx.split_off(ds.len() - validate);
    idx.truncate(limit.unwrap_or(usize::MAX));
    Ok((idx, held))
}

/// `shots` images of each class (fewer where a class has fewer) and `validate` held-out images,
/// disjoint, from the seeded shuffle [`split`] uses: the held-out images are the same as
/// `split`'s, the shots the first of each class among the rest.
pub fn split_shots(
    ds: &dyn Dataset,
    shots: usize,
    validate: usize,
    seed: u64,
) -> edgepatch::Result<(Vec<usize>, Vec<usize>)> {
    let (rest, held) = split(ds, None, validate, seed)?;
    let mut rest = rest;
    if validate == 0 {
        Rng::new(seed ^ 0x5eed).shuffle(&mut rest);
    }
    let mut taken = vec![0usize; ds.classes().len()];
    let picked: Vec<usize> = rest
        .into_iter()
        .filter(|&i| {
            let t = &mut taken[ds.label(i)];
            *t += 1;
            *t <= shots
        })
        .collect();
    Ok((picked, held))
}

/// Peak resident memory of this process (VmHWM), where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    status_kb("VmHWM:")
}

/// Resident memory of this process now, in bytes (Linux).
pub fn rss_bytes() -> Option<u64> {
    status_kb("VmRSS:")
}

fn status_kb(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// Resets this process's peak resident memory to its current resident memory (Linux ≥ 4.0:
/// `5` to `/proc/self/clear_refs`), so that [`peak_rss_bytes`] then reports the peak of what
/// follows; returns the resident memory at the reset, `None` where it cannot.
pub fn reset_peak_rss() -> Option<u64> {
    std::fs::write("/proc/self/clear_refs", "5").ok()?;
    rss_bytes()
}
