//! Session: a backbone, optionally with a task patch applied, ready to classify images.

use std::path::Path;

use rayon::prelude::*;

use crate::backbone::Backbone;
use crate::backend::{Device, Engine};
use crate::data::image::{self, Preprocess, Rgb8};
use crate::graph::Graph;
use crate::patch::Patch;
use crate::tensor::Tensor;
use crate::Result;

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
}

/// Classifies images with a backbone (ImageNet preprocessing at 224 px) or with a task patch
/// over it (the patch's resolution and the task preprocessing it was trained with).
#[derive(Debug, Clone)]
pub struct Session {
    backbone: Backbone,
    task: Option<Task>,
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
        Session { backbone, task: None, size: 224, preprocess: Preprocess::imagenet(224) }
    }

    /// A session running `backbone` at 224 px on `device`.
    pub fn new_on(backbone: Backbone, device: Device) -> Result<Self> {
        let engine = Engine::new(backbone.graph(), device)?;
        let task = Task { graph: backbone.graph().clone(), engine, labels: backbone.labels().to_vec() };
        Ok(Session { backbone, task: Some(task), size: 224, preprocess: Preprocess::imagenet(224) })
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
        let graph = patch.apply(backbone.graph())?;
        let engine = Engine::new(&graph, device)?;
        let task = Task { graph, engine, labels: patch.labels.clone() };
        let size = patch.resolution;
        Ok(Session { backbone, task: Some(task), size, preprocess: Preprocess::task(size) })
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
