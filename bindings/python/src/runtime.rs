//! `Runtime`: the backbone, its named task patches and the active one ([`edgepatch::app::Runtime`]).

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;

use edgepatch::app;

use super::{device, images, ArgumentError, IntoPy};

/// One class of a prediction: `(class_index, label, probability)`.
type Class = (usize, String, f32);

/// A backbone with named task patches; predictions use the active one.
#[pyclass(frozen, module = "edgepatch._edgepatch")]
pub struct Runtime {
    pub(crate) rt: Arc<app::Runtime>,
}

#[pymethods]
impl Runtime {
    /// The shipped int8 MobileNetV2, or the ONNX model in `model` (bytes).
    #[new]
    #[pyo3(signature = (model = None))]
    fn new(py: Python<'_>, model: Option<Vec<u8>>) -> PyResult<Self> {
        let rt = py.detach(|| match model {
            None => app::Runtime::embedded(),
            Some(bytes) => app::Runtime::from_onnx_bytes(&bytes),
        });
        Ok(Runtime { rt: Arc::new(rt.py()?) })
    }

    /// Keeps the patch file's bytes under `name` (replacing one of that name), checked against
    /// the backbone; it becomes active only through `activate` (or at once if `name` is active).
    fn load_patch(&self, py: Python<'_>, name: &str, data: Vec<u8>) -> PyResult<()> {
        py.detach(|| self.rt.load_patch_bytes(name, &data)).py()
    }

    /// `load_patch` from a patch file.
    fn load_patch_file(&self, py: Python<'_>, name: &str, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.rt.load_patch_file(name, &path)).py()
    }

    /// Forgets the patch `name` (the backbone alone becomes active if it was).
    fn unload(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        py.detach(|| self.rt.unload(name)).py()
    }

    /// Makes the loaded patch `name` active; `None`: the backbone alone.
    #[pyo3(signature = (name))]
    fn activate(&self, py: Python<'_>, name: Option<&str>) -> PyResult<()> {
        py.detach(|| self.rt.activate(name)).py()
    }

    /// The active patch's name, or `None`.
    #[getter]
    fn active(&self) -> Option<String> {
        self.rt.active()
    }

    /// The loaded patches' names, sorted.
    #[getter]
    fn patches(&self) -> Vec<String> {
        self.rt.patches()
    }

    /// The class names of predictions now (the active patch's, or the backbone's).
    #[getter]
    fn labels(&self) -> Vec<String> {
        self.rt.labels()
    }

    /// Moves predictions to "auto", "cpu" or "gpu" (patches kept); on a `DeviceError` nothing
    /// changes.
    fn set_device(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        let d = device(name)?;
        py.detach(|| self.rt.set_device(d)).py()
    }

    /// Where predictions run: "cpu" or "gpu (adapter)".
    #[getter]
    fn device(&self) -> String {
        self.rt.device()
    }

    /// The top `k` classes of each of `n` RGB8 images of `height × width` packed in `data`.
    fn classify(
        &self,
        py: Python<'_>,
        data: &[u8],
        n: usize,
        height: u32,
        width: u32,
        k: usize,
    ) -> PyResult<Vec<Vec<Class>>> {
        let imgs = images(data, n, height, width)?;
        let top = py.detach(|| self.rt.classify(&imgs, k)).py()?;
        Ok(top.into_iter().map(|t| t.into_iter().map(|s| (s.class, s.label, s.prob)).collect()).collect())
    }

    /// The top `k` classes of each JPEG or PNG file.
    fn classify_files(&self, py: Python<'_>, paths: Vec<PathBuf>, k: usize) -> PyResult<Vec<Vec<Class>>> {
        let refs: Vec<&std::path::Path> = paths.iter().map(PathBuf::as_path).collect();
        let top = py.detach(|| self.rt.classify_files(&refs, k)).py()?;
        Ok(top.into_iter().map(|t| t.into_iter().map(|s| (s.class, s.label, s.prob)).collect()).collect())
    }
}

/// The most pixels an image file may have to be decoded, for the whole process (default 2^25).
#[pyfunction]
pub fn set_max_pixels(pixels: u64) -> PyResult<()> {
    if pixels == 0 {
        return Err(ArgumentError::new_err("the pixel limit must be at least 1"));
    }
    edgepatch::data::image::set_max_pixels(pixels);
    Ok(())
}
