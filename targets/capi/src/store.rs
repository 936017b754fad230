//! The patch store through the C ABI: a directory of named task patches with an index, every
//! change atomic (`edgepatch::patch::store`). A store handle takes one call at a time from any
//! number of threads (calls wait for each other); several processes may share a directory as
//! the store allows.

use std::ffi::c_char;
use std::path::Path;
use std::sync::Mutex;

use edgepatch::patch::store::Store;

use super::{arg, bytes, cstr, guard, handle, out, runtime, EpRuntime, Failure};

/// An open patch store.
pub struct EpStore {
    store: Mutex<Store>,
}

fn store<'a>(s: *mut EpStore) -> Result<std::sync::MutexGuard<'a, Store>, Failure> {
    Ok(handle(s, "store")?.store.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Opens the store in directory `dir` (UTF-8); with `create` non-zero an absent store is created
/// (the directory must be new or empty). `*out_store` receives the handle (free it with
/// `ep_store_free`).
/// Threads: any thread; calls on one handle wait for each other, and the store's writes are atomic
/// for other handles and processes.
#[no_mangle]
pub extern "C" fn ep_store_open(dir: *const c_char, create: i32, out_store: *mut *mut EpStore) -> i32 {
    guard(|| {
        let slot = out(out_store, "out_store")?;
        let dir = Path::new(cstr(dir, "dir")?);
        let s = if create != 0 { Store::open_or_create(dir)? } else { Store::open(dir)? };
        *slot = Box::into_raw(Box::new(EpStore { store: Mutex::new(s) }));
        Ok(())
    })
}

/// Frees a store handle (null is ignored; the files stay).
/// Threads: not while any other call uses the store handle.
#[no_mangle]
pub extern "C" fn ep_store_free(s: *mut EpStore) {
    if !s.is_null() {
        // SAFETY: `s` came from `Box::into_raw` in this library and is freed once.
        drop(unsafe { Box::from_raw(s) });
    }
}

/// `*out_count` receives the number of tasks in the store now.
/// Threads: any thread; calls on one handle wait for each other, and the store's writes are atomic
/// for other handles and processes.
#[no_mangle]
pub extern "C" fn ep_store_count(s: *mut EpStore, out_count: *mut usize) -> i32 {
    guard(|| {
        let n = store(s)?.list()?.len();
        *out(out_count, "out_count")? = n;
        Ok(())
    })
}

/// The name of task `index` (in the order they were added), copied NUL-terminated into `buf` of
/// `len` bytes; a name that does not fit is refused (`EP_ERR_ARGUMENT`; names are at most 64
/// bytes). An index past the end is refused.
/// Threads: any thread; calls on one handle wait for each other, and the store's writes are atomic
/// for other handles and processes.
#[no_mangle]
pub extern "C" fn ep_store_name(s: *mut EpStore, index: usize, buf: *mut c_char, len: usize) -> i32 {
    guard(|| {
        let entries = store(s)?.list()?;
        let e = entries.get(index).ok_or_else(|| arg(format!("task {index} of {}", entries.len())))?;
        if buf.is_null() || len <= e.name.len() {
            return Err(arg(format!("buf is null or shorter than {} bytes", e.name.len() + 1)));
        }
        // SAFETY: C passes `len` writable bytes at `buf`.
        let dst = unsafe { std::slice::from_raw_parts_mut(buf as *mut u8, len) };
        dst[..e.name.len()].copy_from_slice(e.name.as_bytes());
        dst[e.name.len()] = 0;
        Ok(())
    })
}

/// Adds (or replaces) task `name` with a patch file's bytes, checked and written atomically.
/// Threads: any thread; calls on one handle wait for each other, and the store's writes are atomic
/// for other handles and processes.
#[no_mangle]
pub extern "C" fn ep_store_add_bytes(s: *mut EpStore, name: *const c_char, patch: *const u8, len: usize) -> i32 {
    guard(|| {
        let (name, patch) = (cstr(name, "name")?, bytes(patch, len, "patch")?);
        store(s)?.add_bytes(name, patch)?;
        Ok(())
    })
}

/// Removes task `name` from the store (its file and index entry, atomically).
/// Threads: any thread; calls on one handle wait for each other, and the store's writes are atomic
/// for other handles and processes.
#[no_mangle]
pub extern "C" fn ep_store_remove(s: *mut EpStore, name: *const c_char) -> i32 {
    guard(|| {
        let name = cstr(name, "name")?;
        store(s)?.remove(name)?;
        Ok(())
    })
}

/// Loads task `name` from the store into the runtime under the same name (checked against the
/// runtime's backbone) and makes it active.
/// Threads: any thread; calls on one handle wait for each other, and the store's writes are atomic
/// for other handles and processes.
#[no_mangle]
pub extern "C" fn ep_store_activate(s: *mut EpStore, rt: *mut EpRuntime, name: *const c_char) -> i32 {
    guard(|| {
        let name = cstr(name, "name")?;
        let patch = store(s)?.get(name)?;
        let rt = runtime(rt)?;
        rt.load_patch(name, patch)?;
        Ok(rt.activate(Some(name))?)
    })
}
