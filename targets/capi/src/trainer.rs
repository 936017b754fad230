//! The trainer of the C ABI: labelled images added one by one, a fit, the patch as bytes. One
//! call at a time per trainer (a second thread's call is refused with `EP_ERR_BUSY`).

use std::ffi::c_char;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use edgepatch::data::dataset::Memory;
use edgepatch::data::image::Rgb8;
use edgepatch::patch::file as patch_file;
use edgepatch::train::{self, TrainConfig};
use edgepatch::{Backbone, Patch, PatchKinds};

use super::{arg, cstr, guard, handle, out, rgb8, EpRuntime, Failure, EP_ERR_BUSY, EP_ERR_TRAIN};

/// Learns a patch from labelled images added one by one.
pub struct EpTrainer {
    state: Mutex<TrainerState>,
}

struct TrainerState {
    backbone: Backbone,
    config: TrainConfig,
    labels: Vec<String>,
    images: Vec<(Rgb8, usize)>,
    patch: Option<Patch>,
}

/// The trainer's state for one call, or `EP_ERR_BUSY` while another thread is inside a call.
fn take(tr: *mut EpTrainer) -> Result<MutexGuard<'static, TrainerState>, Failure> {
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
        // The C ABI has no device choice yet: it trains on the CPU.
        config.device = edgepatch::backend::Device::Cpu;
        config.check()?;
        let state = TrainerState { backbone, config, labels: names, images: Vec::new(), patch: None };
        *slot = Box::into_raw(Box::new(EpTrainer { state: Mutex::new(state) }));
        Ok(())
    })
}

/// Sets the most bytes training may add to the process's resident memory (0: no limit, the
/// default). `ep_trainer_fit` then runs each batch as micro-batches of the largest size that fits
/// (the same update up to rounding) and fails with `EP_ERR_TRAIN`, before training, when one
/// sample per pass does not fit; `ep_last_error` says how much it needs.
#[no_mangle]
pub extern "C" fn ep_trainer_set_memory_budget(tr: *mut EpTrainer, bytes: u64) -> i32 {
    guard(|| {
        let tr = &mut *take(tr)?;
        tr.config.memory_budget = (bytes > 0).then_some(bytes);
        Ok(())
    })
}

/// Adds one RGB8 training image with its label index.
#[no_mangle]
pub extern "C" fn ep_trainer_add_rgb8(tr: *mut EpTrainer, rgb: *const u8, width: u32, height: u32, label: u32) -> i32 {
    guard(|| {
        let tr = &mut *take(tr)?;
        if label as usize >= tr.labels.len() {
            return Err(arg(format!("label {label} for {} classes", tr.labels.len())));
        }
        tr.images.push((rgb8(rgb, width, height)?, label as usize));
        Ok(())
    })
}

/// Trains on the images added so far for `epochs` epochs at learning rate `lr` (≤ 0: the
/// default for the patch kinds; NaN or infinite: refused) from `seed`; `*train_accuracy` (may be null) receives the
/// accuracy over the last epoch.
#[no_mangle]
pub extern "C" fn ep_trainer_fit(tr: *mut EpTrainer, epochs: u32, lr: f32, seed: u64, train_accuracy: *mut f32) -> i32 {
    guard(|| {
        let tr = &mut *take(tr)?;
        let mut config = tr.config.clone();
        config.epochs = epochs as usize;
        // ≤ 0: the default; NaN and infinities reach `TrainConfig::check` and are refused.
        config.lr = (lr.is_nan() || lr > 0.0).then_some(lr);
        config.seed = seed;
        config.batch = config.batch.min(tr.images.len().max(1));
        let ds = Arc::new(Memory::new("c-api images", tr.images.clone(), tr.labels.clone())?);
        let idx: Vec<usize> = (0..tr.images.len()).collect();
        let (patch, report) = train::fit(&tr.backbone, ds, &idx, config, &mut |_| {})?;
        tr.patch = Some(patch);
        if !train_accuracy.is_null() {
            *out(train_accuracy, "train_accuracy")? = report.train_accuracy;
        }
        Ok(())
    })
}

/// The trained patch as patch-file bytes: `*out_bytes` receives a buffer of `*out_len` bytes
/// to release with `ep_bytes_free`.
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
#[no_mangle]
pub extern "C" fn ep_trainer_free(tr: *mut EpTrainer) {
    if !tr.is_null() {
        // SAFETY: `tr` came from `Box::into_raw` in this library and is freed once.
        drop(unsafe { Box::from_raw(tr) });
    }
}
