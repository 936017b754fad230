//! `dev.edgepatch.Store`: a directory of named task patches ([`edgepatch::patch::store`]).

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use jni::objects::{JByteArray, JClass, JString};
use jni::sys::{jboolean, jbyteArray, jlong, jobjectArray};
use jni::JNIEnv;

use edgepatch::patch::store::Store;

use super::registry::Registry;
use super::runtime::RUNTIMES;
use super::{byte_array, new_string_array, run, string, Res};

/// A store handle: calls wait for each other (the store's writes are atomic for other handles
/// and processes).
pub(crate) struct NativeStore(Mutex<Store>);

static STORES: Registry<NativeStore> = Registry::new("store");

fn lock(s: &NativeStore) -> MutexGuard<'_, Store> {
    s.0.lock().unwrap_or_else(|p| p.into_inner())
}

#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Store_nativeOpen<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    dir: JString<'l>,
    create: jboolean,
) -> jlong {
    run(&mut env, 0, |env| {
        let dir = string(env, &dir, "dir")?;
        let dir = Path::new(&dir);
        let s = if create != 0 { Store::open_or_create(dir)? } else { Store::open(dir)? };
        Ok(STORES.insert(NativeStore(Mutex::new(s))))
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Store_nativeFree<'l>(_: JNIEnv<'l>, _: JClass<'l>, handle: jlong) {
    STORES.remove(handle);
}

#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Store_nativeNames<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    handle: jlong,
) -> jobjectArray {
    run(&mut env, std::ptr::null_mut(), |env| {
        let names: Vec<String> = lock(&*STORES.get(handle)?).list()?.into_iter().map(|e| e.name).collect();
        Ok(new_string_array(env, &names)?.into_raw())
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Store_nativeAdd<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    handle: jlong,
    name: JString<'l>,
    patch: JByteArray<'l>,
) {
    run(&mut env, (), |env| {
        let (name, bytes) = (string(env, &name, "name")?, byte_array(env, &patch, "patch")?);
        lock(&*STORES.get(handle)?).add_bytes(&name, &bytes)?;
        Ok(())
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Store_nativeGet<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    handle: jlong,
    name: JString<'l>,
) -> jbyteArray {
    run(&mut env, std::ptr::null_mut(), |env| -> Res<jbyteArray> {
        let name = string(env, &name, "name")?;
        let (_, _, bytes) = lock(&*STORES.get(handle)?).get_bytes(&name)?;
        Ok(env.byte_array_from_slice(&bytes)?.into_raw())
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Store_nativeRemove<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    handle: jlong,
    name: JString<'l>,
) {
    run(&mut env, (), |env| {
        let name = string(env, &name, "name")?;
        lock(&*STORES.get(handle)?).remove(&name)?;
        Ok(())
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgepatch_Store_nativeActivate<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    handle: jlong,
    runtime: jlong,
    name: JString<'l>,
) {
    run(&mut env, (), |env| {
        let name = string(env, &name, "name")?;
        let patch = lock(&*STORES.get(handle)?).get(&name)?;
        let rt = RUNTIMES.get(runtime)?;
        rt.load_patch(&name, patch)?;
        Ok(rt.activate(Some(&name))?)
    })
}
