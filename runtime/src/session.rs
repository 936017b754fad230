//! Session: a backbone, optionally with a task patch applied, ready to classify images.

use std::path::Path;

use rayon::prelude::*;

use crate::backbone::Backbone;
use crate::backend::{Device, Engine};
use crate::data::image::{self, Preprocess, Rgb8};
use crate::graph::Graph;
use crate::patch::store::Store;
use crate::patch::{Patch, Slot};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// One class of a prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub class: usize,
    pub label: String,
    pub prob: f32,
}

/// A task: the backbone's graph with a patch applied, and the task's labels.
#[derive(Debug, Clone)]
struct Task {
    graph: Graph,
    engine: Engine,
    labels: Vec<String>,
    /// The parameters whose values differ from the backbone's (those the patch names), in node
    /// order.
    patched: Vec<Slot>,
}

/// Classifies images with a backbone (ImageNet preprocessing at 224 px) or with a task patch
/// over it (the patch's resolution and the task preprocessing it was trained with), and switches
/// between task patches without reloading the backbone.
#[derive(Debug, Clone)]
pub struct Session {
    backbone: Backbone,
    task: Option<Task>,
    device: Device,
    size: u32,
    preprocess: Preprocess,
}

/// Softmax of one row of logits (max-subtracted).
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = logits.iter().map(|&x| (x - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

impl Session {
    /// A session running `backbone` at 224 px.
    pub fn new(backbone: Backbone) -> Self {
        Session { backbone, task: None, device: Device::Cpu, size: 224, preprocess: Preprocess::imagenet(224) }
    }

    /// A session running `backbone` at 224 px on `device`.
    pub fn new_on(backbone: Backbone, device: Device) -> Result<Self> {
        let mut s = Session::new(backbone);
        s.device = device;
        if device != Device::Cpu {
            let engine = Engine::new(s.backbone.graph(), device)?;
            let labels = s.backbone.labels().to_vec();
            s.task = Some(Task { graph: s.backbone.graph().clone(), engine, labels, patched: Vec::new() });
        }
        Ok(s)
    }

    /// Where the forward passes run (`cpu` or `gpu (adapter)`).
    pub fn device(&self) -> String {
        self.task.as_ref().map_or("cpu".into(), |t| t.engine.device())
    }

    /// A session running `patch` over `backbone` (refused when the patch was made for another
    /// backbone).
    pub fn with_patch(backbone: Backbone, patch: &Patch) -> Result<Self> {
        Self::with_patch_on(backbone, patch, Device::Cpu)
    }

    /// [`Session::with_patch`] computing on `device`.
    pub fn with_patch_on(backbone: Backbone, patch: &Patch, device: Device) -> Result<Self> {
        let mut s = Session { device, ..Session::new(backbone) };
        s.set_patch(patch)?;
        Ok(s)
    }

    /// Switches to `patch`: only the nodes the previous and the new patch name are rewritten
    /// (the backbone is neither reloaded nor copied again), and the outputs then equal a fresh
    /// session's with `patch`. A patch that does not fit (another backbone, a tensor of the
    /// wrong shape) is refused before anything changes; a GPU that fails while taking up the
    /// new values leaves the session running the backbone, on the CPU, and returns the error.
    pub fn set_patch(&mut self, patch: &Patch) -> Result<()> {
        patch.check(self.backbone.graph(), self.backbone.fingerprint())?;
        let old = self.task.take();
        self.size = 224;
        self.preprocess = Preprocess::imagenet(224);
        let mut task = match old {
            Some(mut t) => {
                let incoming = patch.slots();
                let mut stale: Vec<usize> =
                    t.patched.iter().filter(|s| !incoming.contains(s)).map(|s| s.node).collect();
                stale.dedup();
                for n in stale {
                    t.graph.nodes[n] = self.backbone.graph().nodes[n].clone();
                }
                patch.write_into(&mut t.graph);
                t.engine.update(&t.graph)?;
                t
            }
            None => {
                let mut graph = self.backbone.graph().clone();
                patch.write_into(&mut graph);
                let engine = Engine::new(&graph, self.device)?;
                Task { graph, engine, labels: Vec::new(), patched: Vec::new() }
            }
        };
        task.patched = patch.slots();
        task.labels = patch.labels.clone();
        self.task = Some(task);
        self.size = patch.resolution;
        self.preprocess = Preprocess::task(patch.resolution);
        Ok(())
    }

    /// Switches to the task stored as `name` in `store` (see [`Session::set_patch`]).
    pub fn set_task(&mut self, store: &Store, name: &str) -> Result<()> {
        self.set_patch(&store.get(name)?)
    }

    /// Back to the backbone's own classes at 224 px.
    pub fn clear_patch(&mut self) -> Result<()> {
        let task = self.task.take();
        self.size = 224;
        self.preprocess = Preprocess::imagenet(224);
        if let Some(mut t) = task.filter(|_| self.device != Device::Cpu) {
            for n in t.patched.iter().map(|s| s.node) {
                t.graph.nodes[n] = self.backbone.graph().nodes[n].clone();
            }
            t.patched.clear();
            t.labels = self.backbone.labels().to_vec();
            t.engine.update(&t.graph)?;
            self.task = Some(t);
        }
        Ok(())
    }

    /// The class names of the outputs.
    pub fn labels(&self) -> &[String] {
        self.task.as_ref().map_or(self.backbone.labels(), |t| &t.labels)
    }

    /// The backbone.
    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// Logits `[N, classes]` for decoded images (preprocessed in parallel).
    pub fn logits(&self, images: &[Rgb8]) -> Result<Tensor> {
        let s = self.size as usize;
        let chw: Vec<Vec<f32>> = images.par_iter().map(|i| self.preprocess.apply(i)).collect::<Result<_>>()?;
        let input = Tensor { shape: [images.len(), 3, s, s], data: chw.concat() };
        match &self.task {
            Some(t) => t.engine.forward(&t.graph, input),
            None => self.backbone.forward(input),
        }
    }

    /// Top-`k` classes with softmax probabilities for each image, in order.
    pub fn classify(&self, images: &[Rgb8], k: usize) -> Result<Vec<Vec<Scored>>> {
        let logits = self.logits(images)?;
        let classes = logits.sample_len();
        if classes != self.labels().len() {
            return Err(Error::InvalidModel(format!(
                "the model computes {classes} outputs for {} class labels",
                self.labels().len()
            )));
        }
        Ok((0..images.len())
            .map(|i| {
                let p = softmax(&logits.data[i * classes..(i + 1) * classes]);
                let mut idx: Vec<usize> = (0..classes).collect();
                idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
                idx.iter().take(k).map(|&c| Scored { class: c, label: self.labels()[c].clone(), prob: p[c] }).collect()
            })
            .collect())
    }

    /// Decodes image files and classifies them (top-`k`).
    pub fn classify_files(&self, paths: &[&Path], k: usize) -> Result<Vec<Vec<Scored>>> {
        let images: Vec<Rgb8> = paths.par_iter().map(|p| image::load(p)).collect::<Result<_>>()?;
        self.classify(&images, k)
    }
}
