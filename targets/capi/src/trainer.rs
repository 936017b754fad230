//! The trainer of the C ABI: labelled images added one by one, a fit, the patch as bytes. One
//! call at a time per trainer (a second thread's call is refused with `EP_ERR_BUSY`), except
//! `ep_trainer_cancel`, which any thread may call at any time.

use std::ffi::{c_char, c_void};
use std::sync::{Mutex, MutexGuard, TryLockError};

use edgepatch::app::Trainer;
use edgepatch::train::Cancel;
use edgepatch::PatchKinds;

use super::{arg, cstr, guard, handle, out, rgb8, runtime, EpRuntime, Failure, EP_ERR_BUSY};

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

/// Learns a patch from labelled images added one by one (the runtime's `app::Trainer`).
pub struct EpTrainer {
    state: Mutex<TrainerState>,
    /// Outside the lock, so that another thread can cancel a fit in progress.
    pub(crate) cancel: Cancel,
}

pub(crate) struct TrainerState {
    pub(crate) trainer: Trainer,
    pub(crate) progress: EpProgressFn,
    /// The callback's user pointer (C's; kept as an address).
    pub(crate) user: usize,
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
        let backbone = runtime(rt)?.backbone();
        let slot = out(out_tr, "out")?;
        let kinds: PatchKinds = cstr(kinds, "kinds")?.parse()?;
        if labels.is_null() || n_labels < 2 {
            return Err(arg("a task needs at least two labels"));
        }
        // SAFETY: C passes `n_labels` string pointers at `labels`.
        let names = unsafe { std::slice::from_raw_parts(labels, n_labels) };
        let names = names.iter().map(|&p| cstr(p, "label").map(str::to_string)).collect::<Result<Vec<_>, _>>()?;
        let trainer = Trainer::new(backbone, kinds, names, resolution)?;
        let cancel = trainer.cancel_flag();
        let state = TrainerState { trainer, progress: None, user: 0 };
        *slot = Box::into_raw(Box::new(EpTrainer { state: Mutex::new(state), cancel }));
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
        let tr = &mut take(tr)?.trainer;
        let mut c = tr.config().clone();
        c.memory_budget = (bytes > 0).then_some(bytes);
        Ok(tr.set_config(c)?)
    })
}

/// Adds one RGB8 training image with its label index.
/// Threads: one call at a time per trainer: a call while another thread is inside one on the same
/// trainer returns `EP_ERR_BUSY`.
#[no_mangle]
pub extern "C" fn ep_trainer_add_rgb8(tr: *mut EpTrainer, rgb: *const u8, width: u32, height: u32, label: u32) -> i32 {
    guard(|| Ok(take(tr)?.trainer.add(rgb8(rgb, width, height)?, label as usize)?))
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
    guard(|| {
        let state = &mut *take(tr)?;
        let (callback, user) = (state.progress, state.user);
        // ≤ 0: the default; NaN and infinities reach `TrainConfig::check` and are refused.
        let lr = (lr.is_nan() || lr > 0.0).then_some(lr);
        let summary = state.trainer.fit(epochs as usize, lr, seed, &mut |p| {
            let Some(f) = callback else { return true };
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
            f(&c, user as *mut c_void) == 0
        })?;
        if !train_accuracy.is_null() {
            *out(train_accuracy, "train_accuracy")? = summary.train_accuracy;
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
        let b = tr.trainer.patch_bytes()?.into_boxed_slice();
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
