//! Session: a backbone ready to classify images.

use std::path::Path;

use rayon::prelude::*;

use crate::backbone::Backbone;
use crate::data::image::{self, Rgb8};
use crate::tensor::Tensor;
use crate::Result;

/// One class of a prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub class: usize,
    pub label: String,
    pub prob: f32,
}

/// Classifies images with a backbone at a fixed input size.
#[derive(Debug, Clone)]
pub struct Session {
    backbone: Backbone,
    size: u32,
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
        Session { backbone, size: 224 }
    }

    /// The backbone.
    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// Logits `[N, classes]` for decoded images (preprocessed in parallel).
    pub fn logits(&self, images: &[Rgb8]) -> Result<Tensor> {
        let pp = self.backbone.preprocess(self.size);
        let s = self.size as usize;
        let chw: Vec<Vec<f32>> = images.par_iter().map(|i| pp.apply(i)).collect::<Result<_>>()?;
        let input = Tensor { shape: [images.len(), 3, s, s], data: chw.concat() };
        self.backbone.forward(input)
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
                idx.iter()
                    .take(k)
                    .map(|&c| Scored { class: c, label: self.backbone.labels()[c].clone(), prob: p[c] })
                    .collect()
            })
            .collect())
    }

    /// Decodes image files and classifies them (top-`k`).
    pub fn classify_files(&self, paths: &[&Path], k: usize) -> Result<Vec<Vec<Scored>>> {
        let images: Vec<Rgb8> = paths.par_iter().map(|p| image::load(p)).collect::<Result<_>>()?;
        self.classify(&images, k)
    }
}
