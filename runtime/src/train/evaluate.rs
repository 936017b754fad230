//! Scoring a patched graph on labelled images: accuracy, per-class accuracy and the confusion
//! matrix, in batches on the CPU or a GPU, within a memory budget when one is given.

use std::sync::Arc;

use crate::backend::Device;
use crate::data::{Dataset, Loader, Transform};
use crate::graph::Graph;
use crate::{Error, Result};

/// Scores of a patch (or the backbone) on a labelled set.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub images: usize,
    pub accuracy: f32,
    /// Accuracy per class (NaN where a class has no images in the set).
    pub per_class: Vec<f32>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
}

/// Images per forward pass of an evaluation.
const EVAL_BATCH: usize = 32;

/// Evaluates `graph` (a backbone with a patch applied) on `indices` of `ds` at `resolution`,
/// on the CPU. No indices is an error, as is any image that cannot be read.
pub fn evaluate(graph: &Graph, ds: Arc<dyn Dataset>, indices: &[usize], resolution: u32) -> Result<Evaluation> {
    evaluate_on(graph, ds, indices, resolution, Device::Cpu)
}

/// [`evaluate`] computing on `device`.
pub fn evaluate_on(
    graph: &Graph,
    ds: Arc<dyn Dataset>,
    indices: &[usize],
    resolution: u32,
    device: Device,
) -> Result<Evaluation> {
    evaluate_within(graph, ds, indices, resolution, device, None)
}

/// [`evaluate_on`] within `budget` bytes of working memory when one is given (the memory a
/// budgeted training run has freed, [`super::memory`]): then no weights are kept packed, the
/// loader prepares no batch ahead, and the batch is the largest up to 32 whose pass fits (at
/// least one image). The accuracy is the same at any batch.
pub fn evaluate_within(
    graph: &Graph,
    ds: Arc<dyn Dataset>,
    indices: &[usize],
    resolution: u32,
    device: Device,
    budget: Option<u64>,
) -> Result<Evaluation> {
    let k = graph.num_classes();
    if ds.classes().len() != k {
        return Err(Error::dataset(ds.spec(), format!("has {} classes, the model {k}", ds.classes().len())));
    }
    if indices.is_empty() {
        return Err(Error::dataset(ds.spec(), "no images to evaluate on (an accuracy of 0 images is undefined)"));
    }
    let t = Transform { resolution, augment: false };
    let (engine, batch, depth) = match budget {
        None => (crate::backend::Engine::new(graph, device)?, EVAL_BATCH, 2),
        Some(budget) => {
            let engine = crate::backend::Engine::lean(graph, device)?;
            // The batch scored, the engine's copy of it (in its buffer pool) and the batch the
            // loader builds meanwhile.
            let image = (3 * 4 * graph.input_channels * (resolution * resolution) as usize) as u64;
            let batch = engine.batch_within(graph, resolution as usize, EVAL_BATCH, image, budget)?;
            log::debug!("scoring {} images in batches of {batch} within {:.0} MB", indices.len(), budget as f64 / 1e6);
            (engine, batch, 0)
        }
    };
    let mut confusion = vec![vec![0usize; k]; k];
    let mut loader = Loader::with_depth(ds.clone(), indices.to_vec(), batch, t, 0, depth);
    for b in &mut loader {
        let b = b?;
        let logits = engine.forward(graph, b.input)?;
        for (i, &label) in b.labels.iter().enumerate() {
            let z = logits.sample(i);
            let pred = (0..k).fold(0, |best, c| if z[c] > z[best] { c } else { best });
            confusion[label][pred] += 1;
        }
    }
    let images: usize = confusion.iter().flatten().sum();
    let right: usize = (0..k).map(|c| confusion[c][c]).sum();
    let per_class =
        confusion.iter().enumerate().map(|(c, row)| row[c] as f32 / row.iter().sum::<usize>() as f32).collect();
    Ok(Evaluation { images, accuracy: right as f32 / images.max(1) as f32, per_class, confusion })
}
