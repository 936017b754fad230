//! Native objects named by `long` handles: Java holds a number, never a pointer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use super::{Failure, Res};

/// The live objects of one kind. Handles start at 1 and are never reused, so a closed handle
/// stays refused.
pub(crate) struct Registry<T> {
    what: &'static str,
    next: AtomicI64,
    live: Mutex<BTreeMap<i64, Arc<T>>>,
}

impl<T> Registry<T> {
    pub(crate) const fn new(what: &'static str) -> Self {
        Registry { what, next: AtomicI64::new(1), live: Mutex::new(BTreeMap::new()) }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, BTreeMap<i64, Arc<T>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `value` and returns its handle.
    pub(crate) fn insert(&self, value: T) -> i64 {
        let handle = self.next.fetch_add(1, Ordering::Relaxed);
        self.live().insert(handle, Arc::new(value));
        handle
    }

    /// The object of `handle` (shared: the registry's lock is not held during the call).
    pub(crate) fn get(&self, handle: i64) -> Res<Arc<T>> {
        self.live()
            .get(&handle)
            .cloned()
            .ok_or_else(|| Failure::argument(format!("the {} is closed (handle {handle})", self.what)))
    }

    /// Forgets `handle`; the object is dropped when the last call using it returns.
    pub(crate) fn remove(&self, handle: i64) {
        self.live().remove(&handle);
    }
}
