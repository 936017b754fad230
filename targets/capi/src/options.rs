//! The trainer's options (device, progress, checkpoints, cancel, time budget, validation) and its
//! evaluation on held-out and test images.

use edgepatch::train::checkpoint::Checkpointing;
use std::ffi::{c_char, c_void};

use super::device::{copy_str, parse_device};
use super::trainer::{take, EpProgressFn, EpTrainer};
use super::{arg, cstr, guard, handle, out, rgb8, Failure, EP_ERR_TRAIN};

/// Chooses where the trainer trains: `EP_DEVICE_AUTO`, `EP_DEVICE_CPU` (the default) or
/// `EP_DEVICE_GPU`; anything else is refused. `ep_trainer_device` tells where a fit ran. Looking
/// for a GPU loads the Vulkan drivers; on Linux with Mesa, set `NODEVICE_SELECT=1` before any
/// thread starts to keep its device-selection layer from printing about a missing display.
/// Threads: one call at a time per trainer: a call while another thread is inside one on the same
/// trainer returns `EP_ERR_BUSY`.
#[no_mangle]
pub extern "C" fn ep_trainer_set_device(tr: *mut EpTrainer, device: i32) -> i32 {
    guard(|| {
        let tr = &mut take(tr)?.trainer;
        let mut c = tr.config().clone();
        c.device = parse_device(device)?;
        Ok(tr.set_config(c)?)
    })
}

/// Where the last successful fit ran ("cpu", or "gpu (adapter)"), copied NUL-terminated into
/// `buf` of `len` bytes (cut to fit); an empty string before any fit.
/// Threads: one call at a time per trainer: a call while another thread is inside one on the same
/// trainer returns `EP_ERR_BUSY`.
#[no_mangle]
pub extern "C" fn ep_trainer_device(tr: *mut EpTrainer, buf: *mut c_char, len: usize) -> i32 {
    guard(|| copy_str(take(tr)?.trainer.device(), buf, len))
}

/// Sets the progress callback of the next fits (null: none) and its `user` pointer.
/// Threads: one call at a time per trainer: a call while another thread is inside one on the same
/// trainer returns `EP_ERR_BUSY`.
#[no_mangle]
pub extern "C" fn ep_trainer_set_progress(tr: *mut EpTrainer, callback: EpProgressFn, user: *mut c_void) -> i32 {
    guard(|| {
        let tr = &mut *take(tr)?;
        (tr.progress, tr.user) = (callback, user as usize);
        Ok(())
    })
}

/// Checkpoints the next fits at `path` (UTF-8; null: none) every `every` steps (at least 1) and
/// at the end, written atomically. With `resume` non-zero a fit starts from the checkpoint when
/// the file exists, so that a fit cancelled or killed at any moment and fitted again with the
/// same images and settings ends with the same patch, bit for bit on the CPU. A checkpoint of
/// other images or settings is refused (`EP_ERR_TRAIN`) and left as it is.
/// Threads: one call at a time per trainer: a call while another thread is inside one on the same
/// trainer returns `EP_ERR_BUSY`.
#[no_mangle]
pub extern "C" fn ep_trainer_set_checkpoint(tr: *mut EpTrainer, path: *const c_char, every: u32, resume: i32) -> i32 {
    guard(|| {
        let tr = &mut take(tr)?.trainer;
        let mut c = tr.config().clone();
        if path.is_null() {
            c.checkpoint = None;
            return Ok(tr.set_config(c)?);
        }
        if every == 0 {
            return Err(arg("checkpoints every 0 steps"));
        }
        let path = std::path::PathBuf::from(cstr(path, "path")?);
        edgepatch::fsio::output_target(&path)?;
        c.checkpoint = Some(Checkpointing { path, every: every as usize, resume: resume != 0 });
        Ok(tr.set_config(c)?)
    })
}

/// Stops the fit in progress on this trainer after its current step (it writes its checkpoint,
/// when one is set, and returns `EP_ERR_CANCELLED`). Any thread may call it at any time, also
/// while the fit holds the trainer; without a fit in progress it does nothing (a fit clears the
/// request when it starts).
/// Threads: any thread, any time, also while a fit holds the trainer.
#[no_mangle]
pub extern "C" fn ep_trainer_cancel(tr: *mut EpTrainer) -> i32 {
    guard(|| {
        handle(tr, "trainer")?.cancel.cancel();
        Ok(())
    })
}

/// The trainer's time budget for `seconds` from C (0: none; NaN, infinite or negative: refused),
/// for `ep_trainer_set_time_budget` and `ep_trainer_set_options`.
pub(crate) fn time_budget(seconds: f64) -> Result<Option<f64>, Failure> {
    if !(seconds.is_finite() && seconds >= 0.0) {
        return Err(arg(format!("time budget {seconds} s")));
    }
    Ok((seconds > 0.0).then_some(seconds))
}

/// Stops each fit after the step during which it has trained for `seconds` (0: no limit, the
/// default; NaN, infinite or negative: refused): the fit writes its checkpoint, when one is set,
/// and returns `EP_ERR_CANCELLED`; the next fit resumes it. Time before a resume does not count.
/// Threads: one call at a time per trainer: a call while another thread is inside one on the same
/// trainer returns `EP_ERR_BUSY`.
#[no_mangle]
pub extern "C" fn ep_trainer_set_time_budget(tr: *mut EpTrainer, seconds: f64) -> i32 {
    guard(|| {
        let tr = &mut take(tr)?.trainer;
        let mut c = tr.config().clone();
        c.time_budget = time_budget(seconds)?;
        Ok(tr.set_config(c)?)
    })
}

/// Holds `count` of the added images out of each fit (a seeded shuffle of the fit's seed picks
/// them) and scores the patch on them at every epoch's end; 0 (the default) holds none out.
/// `ep_trainer_validation_accuracy` gives the last fit's score. A fit that would leave no image
/// to train on is refused.
/// Threads: one call at a time per trainer: a call while another thread is inside one on the same
/// trainer returns `EP_ERR_BUSY`.
#[no_mangle]
pub extern "C" fn ep_trainer_set_validation(tr: *mut EpTrainer, count: u32) -> i32 {
    guard(|| {
        take(tr)?.trainer.set_validation(count as usize);
        Ok(())
    })
}

/// `*accuracy` receives the last fit's accuracy on its held-out images; `EP_ERR_TRAIN` when the
/// last fit held none out (or there was none).
/// Threads: one call at a time per trainer: a call while another thread is inside one on the same
/// trainer returns `EP_ERR_BUSY`.
#[no_mangle]
pub extern "C" fn ep_trainer_validation_accuracy(tr: *mut EpTrainer, accuracy: *mut f32) -> i32 {
    guard(|| {
        let tr = take(tr)?;
        let a = tr.trainer.validation_accuracy().ok_or_else(|| Failure {
            status: EP_ERR_TRAIN,
            message: "the last fit scored no held-out images (ep_trainer_set_validation)".into(),
        })?;
        *out(accuracy, "accuracy")? = a;
        Ok(())
    })
}

/// Adds one labelled RGB8 test image for `ep_trainer_evaluate` (never trained on).
/// Threads: one call at a time per trainer: a call while another thread is inside one on the same
/// trainer returns `EP_ERR_BUSY`.
#[no_mangle]
pub extern "C" fn ep_trainer_add_test_rgb8(
    tr: *mut EpTrainer,
    rgb: *const u8,
    width: u32,
    height: u32,
    label: u32,
) -> i32 {
    guard(|| Ok(take(tr)?.trainer.add_test(rgb8(rgb, width, height)?, label as usize)?))
}

/// Scores the trained patch on the test images added so far: `*accuracy` receives the share
/// classified right, `per_class` (may be null; else room for one value per label) each class's.
/// On the trainer's device and within its memory budget.
/// Threads: one call at a time per trainer: a call while another thread is inside one on the same
/// trainer returns `EP_ERR_BUSY`.
#[no_mangle]
pub extern "C" fn ep_trainer_evaluate(tr: *mut EpTrainer, accuracy: *mut f32, per_class: *mut f32) -> i32 {
    guard(|| {
        let e = take(tr)?.trainer.evaluate()?;
        *out(accuracy, "accuracy")? = e.accuracy;
        if !per_class.is_null() {
            // SAFETY: C passes room for one f32 per label at `per_class`.
            let dst = unsafe { std::slice::from_raw_parts_mut(per_class, e.per_class.len()) };
            dst.copy_from_slice(&e.per_class);
        }
        Ok(())
    })
}
