//! The trainer of the C ABI: labelled images added one by one, a fit, the patch as bytes. One
//! call at a time per trainer (a second thread's call is refused with `EP_ERR_BUSY`), except
//! `ep_trainer_cancel`, which any thread may call at any time.

use std::ffi::{c_char, c_void};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use edgepatch::data::dataset::Memory;
use edgepatch::data::image::Rgb8;
use edgepatch::patch::file as patch_file;
use edgepatch::train::{self, Cancel, TrainConfig};
use edgepatch::{Backbone, Patch, PatchKinds};

use super::{arg, cstr, guard, handle, out, rgb8, EpRuntime, Failure, EP_ERR_BUSY, EP_ERR_TRAIN};

/// Where a fit is, passed to the progress callback after every step.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EpProgress {
    /// The size of this struct as the library filled it: a callback built with a newer header
    /// reads only fields that end within it.
    pub struct_size: u32,
    /// 0-based epoch.
    pub epoch: u32,
    /// Steps done and in all.
    pub step: u32,
    pub total_steps: u32,
    /// The step's loss and the training accuracy so far in this epoch.
    pub loss: f32,
    pub accuracy: f32,
    pub images_per_second: f32,
    /// Estimated seconds left.
    pub seconds_left: f64,
}

/// A progress callback: called on the fitting thread after every step with the progress and the
/// `user` pointer given to `ep_trainer_set_progress`; a non-zero return stops the fit
/// (`EP_ERR_CANCELLED`). It must not call functions on the same trainer except
/// `ep_trainer_cancel`.
pub type EpProgressFn = Option<extern "C" fn(progress: *const EpProgress, user: *mut c_void) -> i32>;

/// Learns a patch from labelled images added one by one.
pub struct EpTrainer {
    state: Mutex<TrainerState>,
    /// Outside the lock, so that another thread can cancel a fit in progress.
    pub(crate) cancel: Cancel,
}

pub(crate) struct TrainerState {
    pub(crate) backbone: Backbone,
    pub(crate) config: TrainConfig,
    pub(crate) labels: Vec<String>,
    pub(crate) images: Vec<(Rgb8, usize)>,
    pub(crate) patch: Option<Patch>,
    pub(crate) progress: EpProgressFn,
    /// The callback's user pointer (C's; kept as an address).
    pub(crate) user: usize,
    /// Where the last fit ran.
    pub(crate) device: String,
    /// Images held out of each fit and scored at its epochs' ends, and the last fit's score.
    pub(crate) validation: usize,
    pub(crate) validation_accuracy: Option<f32>,
    /// Labelled test images for `ep_trainer_evaluate`.
    pub(crate) tests: Vec<(Rgb8, usize)>,
}

/// The trainer's state for one call, or `EP_ERR_BUSY` while another thread is inside a call.
pub(crate) fn take(tr: *mut EpTrainer) -> Result<MutexGuard<'static, TrainerState>, Failure> {
    match handle(tr, "trainer")?.state.try_lock() {
        Ok(g) => Ok(g),
        Err(TryLockError::Poisoned(p)) => Ok(p.into_inner()),
        Err(TryLockError::WouldBlock) => Err(Failure {
            status: EP_ERR_BUSY,
            message: "the trainer is inside a call on another thread (one call at a time)".into(),
        }),
    }
}

/// Creates a trainer over the runtime's backbone for patch `kinds` (e.g. "sb+logits") and
/// `n_labels` class names, at `resolution` px (a multiple of 32 from 32 to 1024: anything else is
/// refused here, not at fit).
/// Threads: one call at a time per trainer: a call while another thread is inside one on the same
/// trainer returns `EP_ERR_BUSY`.
#[no_mangle]
pub extern "C" fn ep_trainer_new(
    rt: *mut EpRuntime,
    kinds: *const c_char,
    labels: *const *const c_char,
    n_labels: usize,
    resolution: u32,
    out_tr: *mut *mut EpTrainer,
) -> i32 {
    guard(|| {
        let backbone = handle(rt, "runtime")?.read().backbone.clone();
        let slot = out(out_tr, "out")?;
        let kinds: PatchKinds = cstr(kinds, "kinds")?.parse()?;
        if labels.is_null() || n_labels < 2 {
            return Err(arg("a task needs at least two labels"));
        }
        // SAFETY: C passes `n_labels` string pointers at `labels`.
        let names = unsafe { std::slice::from_raw_parts(labels, n_labels) };
        let names = names.iter().map(|&p| cstr(p, "label").map(str::to_string)).collect::<Result<Vec<_>, _>>()?;
        let mut config = TrainConfig::new(kinds);
        config.resolution = resolution;
        // The CPU unless the app chooses (`ep_trainer_set_device`, `ep_trainer_set_options`).
        config.device = edgepatch::backend::Device::Cpu;
        config.check()?;
        let state = TrainerState {
            backbone,
            config,
            labels: names,
            images: Vec::new(),
            patch: None,
            progress: None,
            user: 0,
            device: String::new(),
            validation: 0,
            validation_accuracy: None,
            tests: Vec::new(),
        };
        *slot = Box::into_raw(Box::new(EpTrainer { state: Mutex::new(state), cancel: Cancel::default() }));
        Ok(())
    })
}

/// Sets the most bytes training may add to the process's resident memory (0: no limit, the
/// default). `ep_trainer_fit` then runs each batch as micro-batches of the largest size that fits
/// (the same update up to rounding) and fails with `EP_ERR_TRAIN`, before training, when one
/// sample per pass does not fit; `ep_last_error` says how much it needs.
/// Threads: one call at a time per trainer: a call while another thread is inside one on the same
/// trainer returns `EP_ERR_BUSY`.
#[no_mangle]
pub extern "C" fn ep_trainer_set_memory_budget(tr: *mut EpTrainer, bytes: u64) -> i32 {
    guard(|| {
        let tr = &mut *take(tr)?;
        tr.config.memory_budget = (bytes > 0).then_some(bytes);
        Ok(())
    })
}

/// Adds one RGB8 training image with its label index.
/// Threads: one call at a time per trainer: a call while another thread is inside one on the same
/// trainer returns `EP_ERR_BUSY`.
#[no_mangle]
pub extern "C" fn ep_trainer_add_rgb8(tr: *mut EpTrainer, rgb: *const u8, width: u32, height: u32, label: u32) -> i32 {
    guard(|| {
        let tr = &mut *take(tr)?;
        let image = labelled(tr, rgb, width, height, label)?;
        tr.images.push(image);
        Ok(())
    })
}

/// Trains on the images added so far for `epochs` epochs at learning rate `lr` (≤ 0: the
/// default for the patch kinds; NaN or infinite: refused) from `seed`; `*train_accuracy` (may be
/// null) receives the accuracy over the last epoch. Calls the progress callback after every step
/// (`ep_trainer_set_progress`), writes checkpoints and resumes from one
/// (`ep_trainer_set_checkpoint`), and returns `EP_ERR_CANCELLED` when cancelled
/// (`ep_trainer_cancel`, or the callback).
/// Threads: one call at a time per trainer: a call while another thread is inside one on the same
/// trainer returns `EP_ERR_BUSY`.
#[no_mangle]
pub extern "C" fn ep_trainer_fit(tr: *mut EpTrainer, epochs: u32, lr: f32, seed: u64, train_accuracy: *mut f32) -> i32 {
    let trp = tr;
    guard(|| {
        let tr = &mut *take(tr)?;
        let mut config = tr.config.clone();
        config.epochs = epochs as usize;
        // ≤ 0: the default; NaN and infinities reach `TrainConfig::check` and are refused.
        config.lr = (lr.is_nan() || lr > 0.0).then_some(lr);
        config.seed = seed;
        config.batch = config.batch.min((tr.images.len() - tr.validation.min(tr.images.len())).max(1));
        // The images' digest names them in a checkpoint, so that another set is not resumed.
        let digest = edgepatch::train::checkpoint::digest(tr.images.iter().flat_map(|(img, label)| {
            let head = [img.width, img.height, *label as u32].map(u32::to_le_bytes);
            head.into_iter().flatten().chain(img.data.iter().copied())
        }));
        let spec = format!("c-api images {digest:016x}");
        let ds = Arc::new(Memory::new(&spec, tr.images.clone(), tr.labels.clone())?);
        // A seeded shuffle holds `validation` images out (the same ones for the same seed).
        let mut idx: Vec<usize> = (0..tr.images.len()).collect();
        if tr.validation >= idx.len() {
            return Err(arg(format!("{} validation images of {} leave none to train on", tr.validation, idx.len())));
        }
        edgepatch::data::Rng::new(seed ^ 0x7661_6c69).shuffle(&mut idx);
        let held: Vec<usize> = idx.drain(..tr.validation).collect();
        idx.sort_unstable();
        let cancel = handle(trp, "trainer")?.cancel.clone();
        cancel.reset();
        config.cancel = cancel.clone();
        let (callback, user) = (tr.progress, tr.user);
        let (patch, report) = train::fit_validated(&tr.backbone, ds, &idx, &held, config, &mut |p| {
            let Some(f) = callback else { return };
            let c = EpProgress {
                struct_size: std::mem::size_of::<EpProgress>() as u32,
                epoch: p.epoch as u32,
                step: p.step as u32,
                total_steps: p.total_steps as u32,
                loss: p.loss,
                accuracy: p.accuracy,
                images_per_second: p.images_per_second,
                seconds_left: p.seconds_left,
            };
            if f(&c, user as *mut c_void) != 0 {
                cancel.cancel();
            }
        })?;
        tr.device = report.device.clone();
        tr.validation_accuracy = report.history.last().and_then(|h| h.validation_accuracy);
        tr.patch = Some(patch);
        if !train_accuracy.is_null() {
            *out(train_accuracy, "train_accuracy")? = report.train_accuracy;
        }
        Ok(())
    })
}

/// The trained patch as patch-file bytes: `*out_bytes` receives a buffer of `*out_len` bytes
/// to release with `ep_bytes_free`.
/// Threads: one call at a time per trainer: a call while another thread is inside one on the same
/// trainer returns `EP_ERR_BUSY`.
#[no_mangle]
pub extern "C" fn ep_trainer_save(tr: *mut EpTrainer, out_bytes: *mut *mut u8, out_len: *mut usize) -> i32 {
    guard(|| {
        let tr = take(tr)?;
        let (slot, len) = (out(out_bytes, "out_bytes")?, out(out_len, "out_len")?);
        let patch =
            tr.patch.as_ref().ok_or_else(|| Failure { status: EP_ERR_TRAIN, message: "nothing trained yet".into() })?;
        let b = patch_file::to_bytes(patch)?.into_boxed_slice();
        *len = b.len();
        *slot = Box::into_raw(b) as *mut u8;
        Ok(())
    })
}

/// Frees a trainer (null is ignored; not while another thread is inside a call on it).
/// Threads: not while any other call uses the trainer.
#[no_mangle]
pub extern "C" fn ep_trainer_free(tr: *mut EpTrainer) {
    if !tr.is_null() {
        // SAFETY: `tr` came from `Box::into_raw` in this library and is freed once.
        drop(unsafe { Box::from_raw(tr) });
    }
}

/// An RGB8 image and its label index, checked against the trainer's labels.
pub(crate) fn labelled(
    tr: &TrainerState,
    rgb: *const u8,
    width: u32,
    height: u32,
    label: u32,
) -> Result<(Rgb8, usize), Failure> {
    if label as usize >= tr.labels.len() {
        return Err(arg(format!("label {label} for {} classes", tr.labels.len())));
    }
    Ok((rgb8(rgb, width, height)?, label as usize))
}
