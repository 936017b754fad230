//! The Python extension `edgepatch._edgepatch`: thin classes over [`edgepatch::app`] and the
//! patch store. The package `edgepatch` (`python/edgepatch/__init__.py`) turns NumPy arrays into
//! the `(bytes, n, height, width)` these classes take; every rule stays in the runtime.
//!
//! **Threads.** Every call that predicts, trains, evaluates or touches files releases the GIL.
//! A runtime predicts from any number of Python threads at once; a trainer takes one call at a
//! time (a second thread's call raises `BusyError`), except `cancel`, which any thread may call
//! while a fit runs.
//!
//! **Errors.** A runtime error becomes the exception of its kind (all under `edgepatch.Error`)
//! with the runtime's message.

use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use edgepatch::data::image::Rgb8;
use edgepatch::Error;

mod runtime;
mod store;
mod trainer;

pyo3::create_exception!(_edgepatch, EdgepatchError, PyException, "Base of every edgepatch error.");
pyo3::create_exception!(_edgepatch, ArgumentError, EdgepatchError, "An argument the runtime refuses.");
pyo3::create_exception!(_edgepatch, ModelError, EdgepatchError, "A model that cannot be imported.");
pyo3::create_exception!(_edgepatch, PatchError, EdgepatchError, "A corrupt, truncated or foreign patch.");
pyo3::create_exception!(_edgepatch, ImageError, EdgepatchError, "An image that cannot be decoded or used.");
pyo3::create_exception!(_edgepatch, IoError, EdgepatchError, "A file that cannot be read or written.");
pyo3::create_exception!(_edgepatch, TrainError, EdgepatchError, "Training that cannot run.");
pyo3::create_exception!(_edgepatch, DeviceError, EdgepatchError, "An absent, failing or lost GPU.");
pyo3::create_exception!(_edgepatch, CancelledError, EdgepatchError, "A fit that was cancelled.");
pyo3::create_exception!(_edgepatch, BusyError, EdgepatchError, "A trainer inside a call on another thread.");

/// The Python exception of a runtime error, with the runtime's message.
pub(crate) fn py_err(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::Argument(_) => ArgumentError::new_err(msg),
        Error::OnnxParse(_) | Error::UnsupportedOp { .. } | Error::InvalidNode { .. } | Error::InvalidModel(_) => {
            ModelError::new_err(msg)
        }
        Error::Image { .. } | Error::Input(_) => ImageError::new_err(msg),
        Error::Io { .. } => IoError::new_err(msg),
        Error::Patch(_) => PatchError::new_err(msg),
        Error::Dataset { .. } | Error::Train(_) => TrainError::new_err(msg),
        Error::Gpu(_) => DeviceError::new_err(msg),
        Error::Cancelled(_) => CancelledError::new_err(msg),
    }
}

/// `Result<T, Error>` → `PyResult<T>`.
pub(crate) trait IntoPy<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for edgepatch::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(py_err)
    }
}

/// `n` RGB8 images of `height × width` packed in `data` (N·H·W·3 bytes, row-major), checked.
pub(crate) fn images(data: &[u8], n: usize, height: u32, width: u32) -> PyResult<Vec<Rgb8>> {
    let each = Rgb8::byte_len(width, height).py()?;
    if n == 0 || Some(data.len()) != each.checked_mul(n) {
        return Err(ArgumentError::new_err(format!("{} bytes for {n} image(s) of {height}×{width}×3", data.len())));
    }
    data.chunks_exact(each).map(|c| Rgb8::new(width, height, c.to_vec()).py()).collect()
}

/// A device name ("auto", "cpu", "gpu"), refused with an `ArgumentError` otherwise.
pub(crate) fn device(name: &str) -> PyResult<edgepatch::backend::Device> {
    name.parse().map_err(|e: Error| ArgumentError::new_err(e.to_string()))
}

#[pymodule]
fn _edgepatch(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("Error", py.get_type::<EdgepatchError>())?;
    m.add("ArgumentError", py.get_type::<ArgumentError>())?;
    m.add("ModelError", py.get_type::<ModelError>())?;
    m.add("PatchError", py.get_type::<PatchError>())?;
    m.add("ImageError", py.get_type::<ImageError>())?;
    m.add("IoError", py.get_type::<IoError>())?;
    m.add("TrainError", py.get_type::<TrainError>())?;
    m.add("DeviceError", py.get_type::<DeviceError>())?;
    m.add("CancelledError", py.get_type::<CancelledError>())?;
    m.add("BusyError", py.get_type::<BusyError>())?;
    m.add_class::<runtime::Runtime>()?;
    m.add_class::<trainer::Trainer>()?;
    m.add_class::<trainer::Progress>()?;
    m.add_class::<store::Store>()?;
    m.add_function(wrap_pyfunction!(runtime::set_max_pixels, m)?)?;
    Ok(())
}
