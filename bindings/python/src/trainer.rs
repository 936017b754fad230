//! `Trainer`: labelled images handed over as arrays, a fit with a progress callback and cancel,
//! the patch out ([`edgepatch::app::Trainer`]).

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, TryLockError};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use edgepatch::app;
use edgepatch::train::checkpoint::Checkpointing;
use edgepatch::train::{Cancel, OptimizerKind};
use edgepatch::PatchKinds;

use super::runtime::Runtime;
use super::{images, ArgumentError, BusyError, IntoPy};

/// Where a fit is, handed to the progress callback after every step.
#[pyclass(frozen, get_all, module = "edgepatch._edgepatch")]
pub struct Progress {
    /// 0-based epoch; steps done and in all.
    epoch: usize,
    step: usize,
    total_steps: usize,
    /// The step's loss, the training accuracy so far in this epoch, the learning rate.
    loss: f32,
    accuracy: f32,
    lr: f32,
    images_per_second: f32,
    /// Estimated seconds left.
    seconds_left: f64,
}

#[pymethods]
impl Progress {
    fn __repr__(&self) -> String {
        format!(
            "Progress(epoch={}, step={}/{}, loss={:.4}, accuracy={:.4}, images_per_second={:.1}, seconds_left={:.1})",
            self.epoch,
            self.step,
            self.total_steps,
            self.loss,
            self.accuracy,
            self.images_per_second,
            self.seconds_left
        )
    }
}

/// Learns one task patch from labelled images.
#[pyclass(frozen, module = "edgepatch._edgepatch")]
pub struct Trainer {
    state: Mutex<app::Trainer>,
    /// Outside the lock: any thread can stop a fit in progress.
    cancel: Cancel,
}

/// The result of a fit: train accuracy, final loss, validation accuracy, device, steps, seconds.
type Fitted = (f32, f32, Option<f32>, String, usize, f64);

impl Trainer {
    /// The trainer for one call, or `BusyError` while another thread is inside one.
    fn take(&self) -> PyResult<MutexGuard<'_, app::Trainer>> {
        match self.state.try_lock() {
            Ok(g) => Ok(g),
            Err(TryLockError::Poisoned(p)) => Ok(p.into_inner()),
            Err(TryLockError::WouldBlock) => {
                Err(BusyError::new_err("the trainer is inside a call on another thread (one call at a time)"))
            }
        }
    }
}

#[pymethods]
impl Trainer {
    /// A trainer of patch `kinds` (e.g. "sb+logits") over `runtime`'s backbone for `labels` (at
    /// least two) at `resolution` px; it trains on the CPU until `configure(device=...)`.
    #[new]
    #[pyo3(signature = (runtime, kinds, labels, resolution = 224))]
    fn new(runtime: &Runtime, kinds: &str, labels: Vec<String>, resolution: u32) -> PyResult<Self> {
        let kinds: PatchKinds = kinds.parse().map_err(|e: edgepatch::Error| ArgumentError::new_err(e.to_string()))?;
        let t = app::Trainer::new(runtime.rt.backbone(), kinds, labels, resolution).py()?;
        let cancel = t.cancel_flag();
        Ok(Trainer { state: Mutex::new(t), cancel })
    }

    /// Changes the options of the next fits; every given option is checked first, and on a
    /// refusal nothing changes. `checkpoint` (a path, or "" for none) with `checkpoint_every`
    /// steps and `resume` makes a cancelled fit resumable.
    #[pyo3(signature = (*, device = None, batch = None, optimizer = None, augment = None,
        validation = None, weight_decay = None, label_smoothing = None, warmup = None,
        clip_norm = None, memory_budget = None, time_budget = None, checkpoint = None,
        checkpoint_every = 20, resume = true))]
    #[allow(clippy::too_many_arguments)]
    fn configure(
        &self,
        device: Option<&str>,
        batch: Option<usize>,
        optimizer: Option<&str>,
        augment: Option<bool>,
        validation: Option<usize>,
        weight_decay: Option<f32>,
        label_smoothing: Option<f32>,
        warmup: Option<f32>,
        clip_norm: Option<f32>,
        memory_budget: Option<u64>,
        time_budget: Option<f64>,
        checkpoint: Option<PathBuf>,
        checkpoint_every: usize,
        resume: bool,
    ) -> PyResult<()> {
        let mut t = self.take()?;
        let mut c = t.config().clone();
        if let Some(d) = device {
            c.device = super::device(d)?;
        }
        let arg = |e: edgepatch::Error| ArgumentError::new_err(e.to_string());
        c.batch = batch.unwrap_or(c.batch);
        if let Some(o) = optimizer {
            c.optimizer = o.parse::<OptimizerKind>().map_err(arg)?;
        }
        c.augment = augment.unwrap_or(c.augment);
        c.weight_decay = weight_decay.unwrap_or(c.weight_decay);
        c.label_smoothing = label_smoothing.unwrap_or(c.label_smoothing);
        c.warmup = warmup.unwrap_or(c.warmup);
        if let Some(n) = clip_norm {
            c.clip_norm = (n != 0.0).then_some(n);
        }
        if let Some(b) = memory_budget {
            c.memory_budget = (b > 0).then_some(b);
        }
        if let Some(s) = time_budget {
            if !(s.is_finite() && s >= 0.0) {
                return Err(ArgumentError::new_err(format!("time budget {s} s")));
            }
            c.time_budget = (s > 0.0).then_some(s);
        }
        if let Some(path) = checkpoint {
            c.checkpoint = if path.as_os_str().is_empty() {
                None
            } else {
                if checkpoint_every == 0 {
                    return Err(ArgumentError::new_err("checkpoints every 0 steps"));
                }
                edgepatch::fsio::output_target(&path).py()?;
                Some(Checkpointing { path, every: checkpoint_every, resume })
            };
        }
        t.set_config(c).py()?;
        if let Some(v) = validation {
            t.set_validation(v);
        }
        Ok(())
    }

    /// The options as a dict.
    fn options<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let t = self.take()?;
        let c = t.config();
        let d = PyDict::new(py);
        d.set_item("kinds", c.kinds.to_string())?;
        d.set_item("resolution", c.resolution)?;
        d.set_item("device", c.device.to_string())?;
        d.set_item("batch", c.batch)?;
        d.set_item("optimizer", format!("{:?}", c.optimizer).to_lowercase())?;
        d.set_item("augment", c.augment)?;
        d.set_item("validation", t.validation())?;
        d.set_item("weight_decay", c.weight_decay)?;
        d.set_item("label_smoothing", c.label_smoothing)?;
        d.set_item("warmup", c.warmup)?;
        d.set_item("clip_norm", c.clip_norm.unwrap_or(0.0))?;
        d.set_item("memory_budget", c.memory_budget.unwrap_or(0))?;
        d.set_item("time_budget", c.time_budget.unwrap_or(0.0))?;
        d.set_item("checkpoint", c.checkpoint.as_ref().map(|k| k.path.clone()))?;
        Ok(d)
    }

    /// Adds `n` training images of `height × width` packed in `data`, with their labels.
    fn add(&self, data: &[u8], n: usize, height: u32, width: u32, labels: Vec<usize>) -> PyResult<()> {
        self.add_to(false, data, n, height, width, labels)
    }

    /// Adds `n` test images (for `evaluate`), with their labels.
    fn add_test(&self, data: &[u8], n: usize, height: u32, width: u32, labels: Vec<usize>) -> PyResult<()> {
        self.add_to(true, data, n, height, width, labels)
    }

    /// Training images added so far.
    fn __len__(&self) -> PyResult<usize> {
        Ok(self.take()?.len())
    }

    /// Trains for `epochs` epochs (`lr` None: the kinds' default) from `seed`, calling
    /// `callback(progress)` after every step; a `False` from it, `cancel()` from another thread
    /// or Ctrl-C stops the fit (`CancelledError`, or the `KeyboardInterrupt`); an exception in
    /// the callback stops it and is raised. The GIL is released between steps.
    #[pyo3(signature = (epochs, lr = None, seed = 0, callback = None))]
    fn fit(
        &self,
        py: Python<'_>,
        epochs: usize,
        lr: Option<f32>,
        seed: u64,
        callback: Option<Py<PyAny>>,
    ) -> PyResult<Fitted> {
        let mut guard = self.take()?;
        let t: &mut app::Trainer = &mut guard;
        let mut raised: Option<PyErr> = None;
        let result = py.detach(|| {
            t.fit(epochs, lr, seed, &mut |p| {
                Python::attach(|py| {
                    if let Err(e) = py.check_signals() {
                        raised = Some(e);
                        return false;
                    }
                    let Some(cb) = &callback else { return true };
                    let progress = Progress {
                        epoch: p.epoch,
                        step: p.step,
                        total_steps: p.total_steps,
                        loss: p.loss,
                        accuracy: p.accuracy,
                        lr: p.lr,
                        images_per_second: p.images_per_second,
                        seconds_left: p.seconds_left,
                    };
                    match cb.call1(py, (progress,)) {
                        Ok(v) => !matches!(v.extract::<bool>(py), Ok(false)),
                        Err(e) => {
                            raised = Some(e);
                            false
                        }
                    }
                })
            })
        });
        if let Some(e) = raised {
            return Err(e);
        }
        let s = result.py()?;
        Ok((s.train_accuracy, s.final_loss, s.validation_accuracy, s.device, s.steps, s.seconds))
    }

    /// Stops a fit in progress after its step (any thread).
    fn cancel(&self) {
        self.cancel.cancel();
    }

    /// The last fit's patch as patch-file bytes.
    fn patch_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = self.take()?.patch_bytes().py()?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// Writes the last fit's patch to `path` atomically (an existing file is replaced whole).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let t = self.take()?;
        let patch = t.patch().py()?;
        py.detach(|| edgepatch::patch::file::save(patch, &path)).py()
    }

    /// The last fit's patch on the test images: `(accuracy, per_class)` (NaN for a class with
    /// no test image).
    fn evaluate(&self, py: Python<'_>) -> PyResult<(f32, Vec<f32>)> {
        let t = self.take()?;
        let e = py.detach(|| t.evaluate()).py()?;
        Ok((e.accuracy, e.per_class))
    }

    /// Where the last fit ran ("" before one).
    #[getter]
    fn device(&self) -> PyResult<String> {
        Ok(self.take()?.device().to_string())
    }

    /// The labels, in index order.
    #[getter]
    fn labels(&self) -> PyResult<Vec<String>> {
        Ok(self.take()?.labels().to_vec())
    }
}

impl Trainer {
    fn add_to(&self, test: bool, data: &[u8], n: usize, height: u32, width: u32, labels: Vec<usize>) -> PyResult<()> {
        if labels.len() != n {
            return Err(ArgumentError::new_err(format!("{} labels for {n} images", labels.len())));
        }
        let imgs = images(data, n, height, width)?;
        let mut t = self.take()?;
        let classes = t.labels().len();
        if let Some(&bad) = labels.iter().find(|&&l| l >= classes) {
            // Checked before any image is kept: a refused call adds nothing.
            return Err(ArgumentError::new_err(format!("label {bad} for {classes} classes")));
        }
        for (img, label) in imgs.into_iter().zip(labels) {
            if test { t.add_test(img, label) } else { t.add(img, label) }.py()?;
        }
        Ok(())
    }
}
