//! `dev.edgepatch.Runtime`: a backbone with named task patches ([`edgepatch::app::Runtime`]).

use std::path::Path;

use jni::objects::{JByteArray, JClass, JObject, JObjectArray, JString, JValue};
use jni::sys::{jint, jlong, jobjectArray, jstring};
use jni::JNIEnv;

use edgepatch::app::Runtime;
use edgepatch::Scored;

use super::registry::Registry;
use super::{byte_array, new_string_array, optional_string, rgb8, run, string, Failure, Res};

pub(crate) static RUNTIMES: Registry<Runtime> = Registry::new("runtime");

/// `Prediction[]` of one image's top classes.
fn predictions<'l>(env: &mut JNIEnv<'l>, top: &[Scored]) -> Res<JObjectArray<'l>> {
    let class = env.find_class("dev/edgepatch/Prediction")?;
    let array = env.new_object_array(top.len() as i32, &class, JObject::null())?;
    for (i, s) in top.iter().enumerate() {
        let label = env.new_string(&s.label)?;
        let p = env.new_object(
            &class,
            "(Ljava/lang/String;FI)V",
            &[JValue::Object(&label), JValue::Float(s.prob), JValue::Int(s.class as i32)],
        )?;
        env.set_object_array_element(&array, i as i32, &p)?;
        env.delete_local_ref(p)?;
        env.delete_local_ref(label)?;
    }
    Ok(array)
}

fn k(k: jint) -> Res<usize> {
    usize::try_from(k)
        .ok()
        .filter(|&k| k > 0)
        .ok_or_else(|| Failure::argument(format!("k = {k}: ask for at least one class")))
}

#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Runtime_nativeNew<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    model: JByteArray<'l>,
) -> jlong {
    run(&mut env, 0, |env| {
        let rt = if model.is_null() {
            Runtime::embedded()?
        } else {
            Runtime::from_onnx_bytes(&byte_array(env, &model, "model")?)?
        };
        Ok(RUNTIMES.insert(rt))
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Runtime_nativeFree<'l>(_: JNIEnv<'l>, _: JClass<'l>, handle: jlong) {
    RUNTIMES.remove(handle);
}

#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Runtime_nativeLoadPatch<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    handle: jlong,
    name: JString<'l>,
    patch: JByteArray<'l>,
) {
    run(&mut env, (), |env| {
        let (name, bytes) = (string(env, &name, "name")?, byte_array(env, &patch, "patch")?);
        Ok(RUNTIMES.get(handle)?.load_patch_bytes(&name, &bytes)?)
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Runtime_nativeLoadPatchFile<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    handle: jlong,
    name: JString<'l>,
    path: JString<'l>,
) {
    run(&mut env, (), |env| {
        let (name, path) = (string(env, &name, "name")?, string(env, &path, "path")?);
        Ok(RUNTIMES.get(handle)?.load_patch_file(&name, Path::new(&path))?)
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Runtime_nativeUnload<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    handle: jlong,
    name: JString<'l>,
) {
    run(&mut env, (), |env| {
        let name = string(env, &name, "name")?;
        Ok(RUNTIMES.get(handle)?.unload(&name)?)
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Runtime_nativeActivate<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    handle: jlong,
    name: JString<'l>,
) {
    run(&mut env, (), |env| {
        let name = optional_string(env, &name)?;
        Ok(RUNTIMES.get(handle)?.activate(name.as_deref())?)
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Runtime_nativeActive<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    handle: jlong,
) -> jstring {
    run(&mut env, std::ptr::null_mut(), |env| match RUNTIMES.get(handle)?.active() {
        None => Ok(std::ptr::null_mut()),
        Some(name) => Ok(env.new_string(name)?.into_raw()),
    })
}

/// `which`: 0 the loaded patches' names, 1 the class names of predictions now.
#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Runtime_nativeNames<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    handle: jlong,
    which: jint,
) -> jobjectArray {
    run(&mut env, std::ptr::null_mut(), |env| {
        let rt = RUNTIMES.get(handle)?;
        let names = if which == 0 { rt.patches() } else { rt.labels() };
        Ok(new_string_array(env, &names)?.into_raw())
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Runtime_nativeSetDevice<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    handle: jlong,
    device: JString<'l>,
) {
    run(&mut env, (), |env| {
        let device =
            string(env, &device, "device")?.parse().map_err(|e: edgepatch::Error| Failure::argument(e.to_string()))?;
        Ok(RUNTIMES.get(handle)?.set_device(device)?)
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Runtime_nativeDevice<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    handle: jlong,
) -> jstring {
    run(&mut env, std::ptr::null_mut(), |env| {
        let device = RUNTIMES.get(handle)?.device();
        Ok(env.new_string(device)?.into_raw())
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Runtime_nativePredict<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    handle: jlong,
    rgb: JByteArray<'l>,
    width: jint,
    height: jint,
    top: jint,
) -> jobjectArray {
    run(&mut env, std::ptr::null_mut(), |env| {
        let (image, k) = (rgb8(env, &rgb, width, height)?, k(top)?);
        let top = RUNTIMES.get(handle)?.classify(&[image], k)?.pop().unwrap_or_default();
        Ok(predictions(env, &top)?.into_raw())
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Runtime_nativePredictFile<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    handle: jlong,
    path: JString<'l>,
    top: jint,
) -> jobjectArray {
    run(&mut env, std::ptr::null_mut(), |env| {
        let (path, k) = (string(env, &path, "path")?, k(top)?);
        let top = RUNTIMES.get(handle)?.classify_files(&[Path::new(&path)], k)?.pop().unwrap_or_default();
        Ok(predictions(env, &top)?.into_raw())
    })
}
