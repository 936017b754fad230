//! The trainer's options in one versioned struct: an app fills `EpTrainOptions` from
//! `ep_train_options_init`, changes what it needs and hands it to `ep_trainer_set_options`. The
//! struct's first field is its size as the app compiled it, so that a library and an app built
//! against different headers either agree on every field or refuse with a message that says why.

use edgepatch::train::{OptimizerKind, TrainConfig};

use super::device::{code, parse_device};
use super::trainer::{take, EpTrainer};
use super::{arg, guard, Failure};

/// SGD with momentum 0.9 (the default).
pub const EP_OPTIMIZER_SGD: i32 = 0;
/// Adam.
pub const EP_OPTIMIZER_ADAM: i32 = 1;
/// RMSProp.
pub const EP_OPTIMIZER_RMSPROP: i32 = 2;

/// The options of a trainer's fits (the patch kinds, labels and resolution are the trainer's).
/// Get one from `ep_train_options_init`, or a trainer's from `ep_trainer_options`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpTrainOptions {
    /// `sizeof(EpTrainOptions)` as the app compiled it (`ep_train_options_init` sets it). The
    /// library refuses sizes it does not know (a header newer than the library).
    pub struct_size: u32,
    /// `EP_DEVICE_AUTO`, `EP_DEVICE_CPU` (the default) or `EP_DEVICE_GPU`.
    pub device: i32,
    /// Images per step (default 32; at least 1; a fit on fewer images takes them all).
    pub batch: u32,
    /// `EP_OPTIMIZER_SGD` (the default), `EP_OPTIMIZER_ADAM` or `EP_OPTIMIZER_RMSPROP`.
    pub optimizer: i32,
    /// Non-zero: random crops and flips while training (default 0).
    pub augment: i32,
    /// Images held out of each fit and scored at its epochs' ends (`ep_trainer_set_validation`).
    pub validation: u32,
    /// L2 weight decay on kernels and classifier weights, ≥ 0 (default 0).
    pub weight_decay: f32,
    /// Label smoothing in [0, 1) (default 0).
    pub label_smoothing: f32,
    /// Fraction of the steps warming the learning rate up, in [0, 1) (default 0.05).
    pub warmup: f32,
    /// Largest global gradient norm; 0: no clipping (default 5).
    pub clip_norm: f32,
    /// Bytes training may add to the process's memory; 0: no limit (`ep_trainer_set_memory_budget`).
    pub memory_budget: u64,
    /// Training seconds per fit; 0: no limit (`ep_trainer_set_time_budget`).
    pub time_budget: f64,
}

/// The sizes of the struct's published versions (ABI 3: the first).
fn known_sizes() -> [usize; 1] {
    [std::mem::size_of::<EpTrainOptions>()]
}

impl EpTrainOptions {
    fn from_config(c: &TrainConfig, validation: usize) -> Self {
        EpTrainOptions {
            struct_size: std::mem::size_of::<Self>() as u32,
            device: code(c.device),
            batch: c.batch.min(u32::MAX as usize) as u32,
            optimizer: match c.optimizer {
                OptimizerKind::Sgd => EP_OPTIMIZER_SGD,
                OptimizerKind::Adam => EP_OPTIMIZER_ADAM,
                OptimizerKind::RmsProp => EP_OPTIMIZER_RMSPROP,
            },
            augment: c.augment as i32,
            validation: validation.min(u32::MAX as usize) as u32,
            weight_decay: c.weight_decay,
            label_smoothing: c.label_smoothing,
            warmup: c.warmup,
            clip_norm: c.clip_norm.unwrap_or(0.0),
            memory_budget: c.memory_budget.unwrap_or(0),
            time_budget: c.time_budget.unwrap_or(0.0),
        }
    }

    /// `c` with these options, checked.
    fn apply(&self, mut c: TrainConfig) -> Result<TrainConfig, Failure> {
        c.device = parse_device(self.device)?;
        c.batch = self.batch as usize;
        c.optimizer = match self.optimizer {
            EP_OPTIMIZER_SGD => OptimizerKind::Sgd,
            EP_OPTIMIZER_ADAM => OptimizerKind::Adam,
            EP_OPTIMIZER_RMSPROP => OptimizerKind::RmsProp,
            other => return Err(arg(format!("optimizer {other} (EP_OPTIMIZER_SGD, _ADAM or _RMSPROP)"))),
        };
        c.augment = self.augment != 0;
        c.weight_decay = self.weight_decay;
        c.label_smoothing = self.label_smoothing;
        c.warmup = self.warmup;
        // 0 turns clipping off; negative and NaN reach the check.
        c.clip_norm = (self.clip_norm != 0.0).then_some(self.clip_norm);
        c.memory_budget = (self.memory_budget > 0).then_some(self.memory_budget);
        c.time_budget = super::options::time_budget(self.time_budget)?;
        c.check().map_err(|e| arg(e.to_string()))?;
        Ok(c)
    }
}

/// The size an app's struct declares, checked against the published versions.
fn declared_size(p: *const EpTrainOptions) -> Result<usize, Failure> {
    if p.is_null() {
        return Err(arg("options is null"));
    }
    // SAFETY: C passes a struct that starts with its `uint32_t struct_size`.
    let size = unsafe { std::ptr::read_unaligned(p as *const u32) } as usize;
    if !known_sizes().contains(&size) {
        return Err(arg(format!(
            "options of {size} bytes: this library knows EpTrainOptions of {:?} bytes (set \
             struct_size with ep_train_options_init; a larger struct comes from a newer header than the library)",
            known_sizes()
        )));
    }
    Ok(size)
}

/// Fills `*options` with the defaults of a new trainer and its `struct_size`.
/// Threads: any thread.
#[no_mangle]
pub extern "C" fn ep_train_options_init(options: *mut EpTrainOptions) -> i32 {
    guard(|| {
        let mut c = TrainConfig::new(edgepatch::PatchKinds::default());
        c.device = edgepatch::backend::Device::Cpu;
        *super::out(options, "options")? = EpTrainOptions::from_config(&c, 0);
        Ok(())
    })
}

/// Sets all of the trainer's options at once from `*options` (its `struct_size` must be one this
/// library knows): every field is checked first, and on any refusal (`EP_ERR_ARGUMENT`, naming
/// the field) nothing changes.
/// Threads: one call at a time per trainer: a call while another thread is inside one on the same
/// trainer returns `EP_ERR_BUSY`.
#[no_mangle]
pub extern "C" fn ep_trainer_set_options(tr: *mut EpTrainer, options: *const EpTrainOptions) -> i32 {
    guard(|| {
        let size = declared_size(options)?;
        let tr = &mut *take(tr)?;
        let mut o = EpTrainOptions::from_config(tr.trainer.config(), tr.trainer.validation());
        // SAFETY: the app's struct holds `size` bytes (its own declaration), at most ours; every
        // field is a plain number, so any bytes are a value.
        unsafe { std::ptr::copy_nonoverlapping(options as *const u8, &mut o as *mut EpTrainOptions as *mut u8, size) };
        let c = o.apply(tr.trainer.config().clone())?;
        tr.trainer.set_config(c)?;
        tr.trainer.set_validation(o.validation as usize);
        Ok(())
    })
}

/// Writes the trainer's options into `*options`, whose `struct_size` the app sets first (one
/// this library knows).
/// Threads: one call at a time per trainer: a call while another thread is inside one on the same
/// trainer returns `EP_ERR_BUSY`.
#[no_mangle]
pub extern "C" fn ep_trainer_options(tr: *mut EpTrainer, options: *mut EpTrainOptions) -> i32 {
    guard(|| {
        let size = declared_size(options)?;
        let tr = take(tr)?;
        let o = EpTrainOptions::from_config(tr.trainer.config(), tr.trainer.validation());
        // SAFETY: the app's struct holds `size` bytes, at most ours.
        unsafe { std::ptr::copy_nonoverlapping(&o as *const EpTrainOptions as *const u8, options as *mut u8, size) };
        Ok(())
    })
}
