//! `dev.edgepatch.Trainer`: labelled images added one by one, a fit with a progress listener and
//! cancel, the patch out ([`edgepatch::app::Trainer`]).

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, TryLockError};

use jni::objects::{JByteArray, JClass, JObject, JObjectArray, JString, JValue};
use jni::sys::{jboolean, jbyteArray, jdouble, jfloat, jfloatArray, jint, jlong, jstring};
use jni::JNIEnv;

use edgepatch::app::Trainer;
use edgepatch::train::checkpoint::Checkpointing;
use edgepatch::train::{Cancel, OptimizerKind, Progress};

use super::registry::Registry;
use super::runtime::RUNTIMES;
use super::{kind, optional_string, rgb8, run, string, string_array, Failure, Res};

/// A trainer and its cancel flag, outside the lock so that any thread can stop a fit.
pub(crate) struct NativeTrainer {
    state: Mutex<Trainer>,
    cancel: Cancel,
}

static TRAINERS: Registry<NativeTrainer> = Registry::new("trainer");

/// The trainer for one call, or `BUSY` while another thread is inside one.
fn take(t: &NativeTrainer) -> Res<MutexGuard<'_, Trainer>> {
    match t.state.try_lock() {
        Ok(g) => Ok(g),
        Err(TryLockError::Poisoned(p)) => Ok(p.into_inner()),
        Err(TryLockError::WouldBlock) => {
            Err(Failure::new(kind::BUSY, "the trainer is inside a call on another thread (one call at a time)"))
        }
    }
}

#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Trainer_nativeNew<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    runtime: jlong,
    kinds: JString<'l>,
    labels: JObjectArray<'l>,
    resolution: jint,
) -> jlong {
    run(&mut env, 0, |env| {
        let kinds =
            string(env, &kinds, "kinds")?.parse().map_err(|e: edgepatch::Error| Failure::argument(e.to_string()))?;
        let labels = string_array(env, &labels, "labels")?;
        let resolution =
            u32::try_from(resolution).map_err(|_| Failure::argument(format!("resolution {resolution}")))?;
        let t = Trainer::new(RUNTIMES.get(runtime)?.backbone(), kinds, labels, resolution)?;
        let cancel = t.cancel_flag();
        Ok(TRAINERS.insert(NativeTrainer { state: Mutex::new(t), cancel }))
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Trainer_nativeFree<'l>(_: JNIEnv<'l>, _: JClass<'l>, handle: jlong) {
    TRAINERS.remove(handle);
}

/// Changes the options of the next fits (`Trainer.Options`): a null string, a negative number
/// keeps the option; every change is checked first and a refusal changes nothing.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "system" fn Java_dev_edgepatch_Trainer_nativeConfigure<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    handle: jlong,
    device: JString<'l>,
    batch: jint,
    optimizer: JString<'l>,
    augment: jint,
    validation: jint,
    memory_budget: jlong,
    time_budget: jdouble,
    checkpoint: JString<'l>,
    checkpoint_every: jint,
    resume: jboolean,
) {
    run(&mut env, (), |env| {
        let arg = |e: edgepatch::Error| Failure::argument(e.to_string());
        let device = optional_string(env, &device)?;
        let optimizer = optional_string(env, &optimizer)?;
        let checkpoint = optional_string(env, &checkpoint)?;
        let t = TRAINERS.get(handle)?;
        let mut t = take(&t)?;
        let mut c = t.config().clone();
        if let Some(d) = device {
            c.device = d.parse().map_err(arg)?;
        }
        if batch >= 0 {
            c.batch = batch as usize;
        }
        if let Some(o) = optimizer {
            c.optimizer = o.parse::<OptimizerKind>().map_err(arg)?;
        }
        if augment >= 0 {
            c.augment = augment != 0;
        }
        if memory_budget >= 0 {
            c.memory_budget = (memory_budget > 0).then_some(memory_budget as u64);
        }
        if !time_budget.is_nan() && time_budget >= 0.0 {
            if !time_budget.is_finite() {
                return Err(Failure::argument(format!("time budget {time_budget} s")));
            }
            c.time_budget = (time_budget > 0.0).then_some(time_budget);
        }
        if let Some(path) = checkpoint {
            c.checkpoint = if path.is_empty() {
                None
            } else {
                let every = usize::try_from(checkpoint_every).ok().filter(|&n| n > 0);
                let every =
                    every.ok_or_else(|| Failure::argument(format!("checkpoints every {checkpoint_every} steps")))?;
                let path = PathBuf::from(path);
                edgepatch::fsio::output_target(&path)?;
                Some(Checkpointing { path, every, resume: resume != 0 })
            };
        }
        t.set_config(c)?;
        if validation >= 0 {
            t.set_validation(validation as usize);
        }
        Ok(())
    })
}

/// Adds one image (`test` false: for training; true: for `evaluate`).
#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Trainer_nativeAdd<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    handle: jlong,
    rgb: JByteArray<'l>,
    width: jint,
    height: jint,
    label: jint,
    test: jboolean,
) {
    run(&mut env, (), |env| {
        let image = rgb8(env, &rgb, width, height)?;
        let label = usize::try_from(label).map_err(|_| Failure::argument(format!("label {label}")))?;
        let t = TRAINERS.get(handle)?;
        let mut t = take(&t)?;
        Ok(if test != 0 { t.add_test(image, label) } else { t.add(image, label) }?)
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Trainer_nativeSize<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    handle: jlong,
) -> jint {
    run(&mut env, 0, |_| Ok(take(&*TRAINERS.get(handle)?)?.len() as jint))
}

/// A `dev.edgepatch.Progress` of `p`, handed to the listener; its answer (false: stop). The
/// call's local references live in a frame of their own, released when it returns (a fit makes
/// one call per step).
fn report(env: &mut JNIEnv<'_>, listener: &JObject<'_>, p: &Progress) -> Res<bool> {
    env.with_local_frame(8, |env| -> Res<bool> { report_in_frame(env, listener, p) })
}

fn report_in_frame(env: &mut JNIEnv<'_>, listener: &JObject<'_>, p: &Progress) -> Res<bool> {
    let progress = env.new_object(
        "dev/edgepatch/Progress",
        "(IIIFFFFD)V",
        &[
            JValue::Int(p.epoch as i32),
            JValue::Int(p.step as i32),
            JValue::Int(p.total_steps as i32),
            JValue::Float(p.loss),
            JValue::Float(p.accuracy),
            JValue::Float(p.lr),
            JValue::Float(p.images_per_second),
            JValue::Double(p.seconds_left),
        ],
    )?;
    Ok(env.call_method(listener, "onProgress", "(Ldev/edgepatch/Progress;)Z", &[JValue::Object(&progress)])?.z()?)
}

/// Trains; returns `{train accuracy, final loss, validation accuracy (NaN without), steps,
/// seconds}`. The listener (may be null) runs on this thread after every step; `false` from it,
/// or `cancel` from another thread, stops the fit (`CANCELLED`); an exception it throws stops
/// the fit and propagates.
#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Trainer_nativeFit<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    handle: jlong,
    epochs: jint,
    lr: jfloat,
    seed: jlong,
    listener: JObject<'l>,
) -> jfloatArray {
    run(&mut env, std::ptr::null_mut(), |env| {
        let epochs = usize::try_from(epochs).map_err(|_| Failure::argument(format!("{epochs} epochs")))?;
        let t = TRAINERS.get(handle)?;
        let mut t = take(&t)?;
        // ≤ 0: the default; NaN and infinities reach the configuration check and are refused.
        let lr = (lr.is_nan() || lr > 0.0).then_some(lr);
        let mut thrown = false;
        let fitted = t.fit(epochs, lr, seed as u64, &mut |p| {
            if listener.is_null() || thrown {
                return !thrown;
            }
            match report(env, &listener, p) {
                Ok(go) => go,
                Err(_) => {
                    // The listener threw: its exception stays pending and is what Java sees.
                    thrown = true;
                    false
                }
            }
        });
        if thrown {
            return Err(Failure::new(kind::CANCELLED, "the progress listener threw"));
        }
        let s = fitted?;
        let out = [
            s.train_accuracy,
            s.final_loss,
            s.validation_accuracy.unwrap_or(f32::NAN),
            s.steps as f32,
            s.seconds as f32,
        ];
        let array = env.new_float_array(out.len() as i32)?;
        env.set_float_array_region(&array, 0, &out)?;
        Ok(array.into_raw())
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Trainer_nativeCancel<'l>(mut env: JNIEnv<'l>, _: JClass<'l>, handle: jlong) {
    run(&mut env, (), |_| {
        TRAINERS.get(handle)?.cancel.cancel();
        Ok(())
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Trainer_nativePatchBytes<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    handle: jlong,
) -> jbyteArray {
    run(&mut env, std::ptr::null_mut(), |env| {
        let bytes = take(&*TRAINERS.get(handle)?)?.patch_bytes()?;
        Ok(env.byte_array_from_slice(&bytes)?.into_raw())
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Trainer_nativeSave<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    handle: jlong,
    path: JString<'l>,
) {
    run(&mut env, (), |env| {
        let path = PathBuf::from(string(env, &path, "path")?);
        let t = TRAINERS.get(handle)?;
        let t = take(&t)?;
        Ok(edgepatch::patch::file::save(t.patch()?, &path)?)
    })
}

/// `{accuracy, per-class accuracy…}` of the last fit's patch on the test images.
#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Trainer_nativeEvaluate<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    handle: jlong,
) -> jfloatArray {
    run(&mut env, std::ptr::null_mut(), |env| {
        let e = take(&*TRAINERS.get(handle)?)?.evaluate()?;
        let out: Vec<f32> = std::iter::once(e.accuracy).chain(e.per_class).collect();
        let array = env.new_float_array(out.len() as i32)?;
        env.set_float_array_region(&array, 0, &out)?;
        Ok(array.into_raw())
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Trainer_nativeDevice<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    handle: jlong,
) -> jstring {
    run(&mut env, std::ptr::null_mut(), |env| {
        let device = take(&*TRAINERS.get(handle)?)?.device().to_string();
        Ok(env.new_string(device)?.into_raw())
    })
}
