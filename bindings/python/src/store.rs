//! `Store`: a directory of named task patches, every change atomic ([`edgepatch::patch::store`]).

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use edgepatch::patch::store;

use super::runtime::Runtime;
use super::IntoPy;

/// An open patch store. Calls on one handle wait for each other; the store's writes are atomic
/// for other handles and processes.
#[pyclass(frozen, module = "edgepatch._edgepatch")]
pub struct Store {
    store: Mutex<store::Store>,
}

impl Store {
    fn lock(&self) -> MutexGuard<'_, store::Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[pymethods]
impl Store {
    /// Opens the store in `path`; with `create` an absent store is made (the directory must be
    /// new or empty).
    #[new]
    #[pyo3(signature = (path, create = false))]
    fn new(py: Python<'_>, path: PathBuf, create: bool) -> PyResult<Self> {
        let s = py.detach(|| if create { store::Store::open_or_create(&path) } else { store::Store::open(&path) });
        Ok(Store { store: Mutex::new(s.py()?) })
    }

    /// The tasks' names, in the order they were added.
    fn names(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let entries = py.detach(|| self.lock().list()).py()?;
        Ok(entries.into_iter().map(|e| e.name).collect())
    }

    /// Adds (or replaces) task `name` with a patch file's bytes, checked and written atomically.
    fn add(&self, py: Python<'_>, name: &str, data: Vec<u8>) -> PyResult<()> {
        py.detach(|| self.lock().add_bytes(name, &data).map(drop)).py()
    }

    /// Task `name`'s patch file bytes (checked).
    fn get<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyBytes>> {
        let (_, _, bytes) = py.detach(|| self.lock().get_bytes(name)).py()?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// Removes task `name` (its file and index entry, atomically).
    fn remove(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        py.detach(|| self.lock().remove(name).map(drop)).py()
    }

    /// Loads task `name` into `runtime` under the same name and makes it active.
    fn activate(&self, py: Python<'_>, runtime: &Runtime, name: &str) -> PyResult<()> {
        py.detach(|| {
            let patch = self.lock().get(name)?;
            runtime.rt.load_patch(name, patch)?;
            runtime.rt.activate(Some(name))
        })
        .py()
    }
}
