//! [`Trainer`]: labelled images handed over one at a time, a fit with progress and cancel, the
//! patch out.

use std::sync::Arc;

use crate::backend::Device;
use crate::data::dataset::Memory;
use crate::data::image::Rgb8;
use crate::patch::file as patch_file;
use crate::train::{self, checkpoint, Cancel, Evaluation, Progress, TrainConfig};
use crate::{Backbone, Error, Patch, PatchKinds, Result};

/// Learns one task patch over a frozen backbone from images added one by one.
///
/// A trainer trains on its own handle of the backbone, so a [`crate::app::Runtime`] keeps
/// predicting while a trainer made from it fits on another thread. Its methods take `&mut self`:
/// a binding serialises calls (and refuses a second caller) with its own lock, and keeps a
/// [`Trainer::cancel_flag`] outside that lock so that any thread can stop a fit.
pub struct Trainer {
    backbone: Backbone,
    config: TrainConfig,
    labels: Vec<String>,
    images: Vec<(Rgb8, usize)>,
    tests: Vec<(Rgb8, usize)>,
    validation: usize,
    patch: Option<Patch>,
    /// Where the last fit ran, and its held-out accuracy.
    device: String,
    validation_accuracy: Option<f32>,
    cancel: Cancel,
}

/// What a fit reports besides the patch it keeps.
#[derive(Debug, Clone)]
pub struct FitSummary {
    /// Training accuracy over the last epoch (on the batches as trained).
    pub train_accuracy: f32,
    /// Mean loss over the last epoch.
    pub final_loss: f32,
    /// Accuracy on the held-out images at the last epoch's end (`None` without validation).
    pub validation_accuracy: Option<f32>,
    /// Where the steps ran (`cpu` or `gpu (adapter)`).
    pub device: String,
    pub steps: usize,
    pub seconds: f64,
}

impl Trainer {
    /// A trainer of `kinds` (e.g. `sb+logits`) over `backbone` for the classes `labels` (at
    /// least two) at `resolution` px (a multiple of 32 from 32 to 1024). It trains on the CPU
    /// until [`Trainer::set_config`] chooses a device.
    pub fn new(backbone: Backbone, kinds: PatchKinds, labels: Vec<String>, resolution: u32) -> Result<Self> {
        if labels.len() < 2 {
            return Err(Error::Argument("a task needs at least two labels".into()));
        }
        let mut config = TrainConfig::new(kinds);
        config.resolution = resolution;
        config.device = Device::Cpu;
        config.check()?;
        let cancel = Cancel::default();
        Ok(Trainer {
            backbone,
            config,
            labels,
            images: Vec::new(),
            tests: Vec::new(),
            validation: 0,
            patch: None,
            device: String::new(),
            validation_accuracy: None,
            cancel,
        })
    }

    /// The class names, in label order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The options of the next fits (its epochs, learning rate and seed are the fit's own).
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Replaces the options after checking them; on a refusal nothing changes. The patch kinds
    /// and the resolution stay the trainer's.
    pub fn set_config(&mut self, mut config: TrainConfig) -> Result<()> {
        config.kinds = self.config.kinds;
        config.resolution = self.config.resolution;
        config.check().map_err(|e| Error::Argument(e.to_string()))?;
        self.config = config;
        Ok(())
    }

    /// Images held out of each fit (the same ones for the same seed) and scored at its epochs'
    /// ends.
    pub fn set_validation(&mut self, count: usize) {
        self.validation = count;
    }

    pub fn validation(&self) -> usize {
        self.validation
    }

    fn labelled(&self, image: Rgb8, label: usize) -> Result<(Rgb8, usize)> {
        if label >= self.labels.len() {
            return Err(Error::Argument(format!("label {label} for {} classes", self.labels.len())));
        }
        image.check()?;
        Ok((image, label))
    }

    /// Adds one training image with its label index.
    pub fn add(&mut self, image: Rgb8, label: usize) -> Result<()> {
        let item = self.labelled(image, label)?;
        self.images.push(item);
        Ok(())
    }

    /// Adds one test image for [`Trainer::evaluate`].
    pub fn add_test(&mut self, image: Rgb8, label: usize) -> Result<()> {
        let item = self.labelled(image, label)?;
        self.tests.push(item);
        Ok(())
    }

    /// Training images added so far.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// The flag that stops a fit after its step (with a checkpoint set, the next fit resumes).
    /// Clones share it: a binding keeps one outside its lock.
    pub fn cancel_flag(&self) -> Cancel {
        self.cancel.clone()
    }

    /// Trains on the images added so far for `epochs` epochs at learning rate `lr` (`None`: the
    /// default of the patch kinds) from `seed`, calling `progress` after every step; a `false`
    /// from it cancels the fit ([`Error::Cancelled`], like [`Trainer::cancel_flag`]). The patch
    /// is kept for [`Trainer::patch`] when the fit ends well.
    pub fn fit(
        &mut self,
        epochs: usize,
        lr: Option<f32>,
        seed: u64,
        progress: &mut dyn FnMut(&Progress) -> bool,
    ) -> Result<FitSummary> {
        let mut config = self.config.clone();
        config.epochs = epochs;
        config.lr = lr;
        config.seed = seed;
        let n = self.images.len();
        if self.validation >= n {
            let v = self.validation;
            return Err(Error::Argument(format!("{v} validation images of {n} leave none to train on")));
        }
        config.batch = config.batch.min(n - self.validation).max(1);
        // The images' digest names them in a checkpoint, so that another set is not resumed.
        let digest = checkpoint::digest(self.images.iter().flat_map(|(img, label)| {
            let head = [img.width, img.height, *label as u32].map(u32::to_le_bytes);
            head.into_iter().flatten().chain(img.data.iter().copied())
        }));
        let spec = format!("c-api images {digest:016x}");
        let ds = Arc::new(Memory::new(&spec, self.images.clone(), self.labels.clone())?);
        // A seeded shuffle holds `validation` images out (the same ones for the same seed).
        let mut idx: Vec<usize> = (0..n).collect();
        crate::data::Rng::new(seed ^ 0x7661_6c69).shuffle(&mut idx);
        let held: Vec<usize> = idx.drain(..self.validation).collect();
        idx.sort_unstable();
        self.cancel.reset();
        config.cancel = self.cancel.clone();
        let cancel = self.cancel.clone();
        let (patch, report) = train::fit_validated(&self.backbone, ds, &idx, &held, config, &mut |p| {
            if !progress(&p) {
                cancel.cancel();
            }
        })?;
        self.device = report.device.clone();
        self.validation_accuracy = report.history.last().and_then(|h| h.validation_accuracy);
        self.patch = Some(patch);
        Ok(FitSummary {
            train_accuracy: report.train_accuracy,
            final_loss: report.final_loss,
            validation_accuracy: self.validation_accuracy,
            device: report.device,
            steps: report.steps,
            seconds: report.seconds,
        })
    }

    /// The last fit's patch.
    pub fn patch(&self) -> Result<&Patch> {
        self.patch.as_ref().ok_or_else(|| Error::Train("nothing trained yet".into()))
    }

    /// The last fit's patch as patch-file bytes.
    pub fn patch_bytes(&self) -> Result<Vec<u8>> {
        patch_file::to_bytes(self.patch()?)
    }

    /// Where the last fit ran ("" before one).
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The last fit's held-out accuracy (`None` when it held none out).
    pub fn validation_accuracy(&self) -> Option<f32> {
        self.validation_accuracy
    }

    /// The last fit's patch scored on the test images, on the trainer's device and within its
    /// memory budget.
    pub fn evaluate(&self) -> Result<Evaluation> {
        let patch = self.patch()?;
        if self.tests.is_empty() {
            return Err(Error::Argument("no test images were added".into()));
        }
        let graph = self.backbone.patched(patch)?;
        let ds = Arc::new(Memory::new("app test images", self.tests.clone(), self.labels.clone())?);
        let idx: Vec<usize> = (0..self.tests.len()).collect();
        let c = &self.config;
        train::evaluate_within(&graph, ds, &idx, patch.resolution, c.device, c.memory_budget)
    }
}
