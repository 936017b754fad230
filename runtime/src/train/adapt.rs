//! Label-free adaptation: when the camera, the lighting or the sensor changes, a patch is
//! adapted from unlabeled images of the new conditions. [`adapt_stats`] (AdaBN) measures each
//! BatchNorm's statistics again and rewrites the S/B affines to normalise with them (no labels,
//! no gradients); [`adapt_entropy`] (TENT) then trains the S/B affines to lower the prediction
//! entropy.
//!
//! For a folded BatchNorm (`x` its input, [`NormStats`] the statistics it normalised with:
//! `σ = √(var + eps)`), a patch's affine `y = s·x + b` is the BatchNorm `γ·(x − mean)/σ + β`
//! with `γ = s·σ` and `β = b + s·mean`. Adapted: `s' = γ/σ_t`, `b' = β − mean_t·s'`, with
//! `mean_t`, `σ_t` the statistics of `x` on the new images *after every earlier affine is
//! adapted* (exact, in network order; [`Activations`] keeps the activations at block
//! boundaries so that each affine costs a pass over its block, not the network). The
//! reference statistics are the imported BatchNorm's, or, for a graph whose BatchNorms were
//! folded away before import (or to match the patch's own training data), those measured on
//! source images ([`Reference::Source`]): then the adapted affine gives the new images' `x` the
//! output statistics the source images had.

use std::sync::Arc;
use std::time::Instant;

use super::activations::Activations;
use super::{CpuStep, LrSchedule, OptimizerKind, TrainConfig};
use crate::backbone::Backbone;
use crate::backend::StepBackend;
use crate::data::{Dataset, Loader, Rng, Transform};
use crate::graph::{NormStats, Op};
use crate::patch::{self, Patch, PatchKinds};
use crate::{Error, Result};

/// Where the statistics the patch was made under come from.
#[derive(Clone)]
pub enum Reference {
    /// The imported BatchNorms' running statistics; affines without them stay as they are.
    Imported,
    /// Measured on these images of a dataset (the patch's training data, say), at the patch's
    /// resolution, before any change; every affine is then adapted.
    Source(Arc<dyn Dataset>, Vec<usize>),
}

/// What [`adapt_stats`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptReport {
    pub images: usize,
    /// Affines rewritten.
    pub affines: usize,
    pub seconds: f64,
}

/// Bytes of activations kept per set of images while measuring ([`Activations`]).
const KEPT_BYTES: usize = 192 << 20;

/// `patch` adapted to images `indices` of `target` (unlabeled: their labels are not read): its
/// S/B affines rewritten as the module describes. The result holds the patch's kinds and `sb`
/// (a `logits` patch becomes `sb+logits`), for the same backbone, classes and resolution.
pub fn adapt_stats(
    backbone: &Backbone,
    patch: &Patch,
    target: Arc<dyn Dataset>,
    indices: &[usize],
    reference: &Reference,
) -> Result<(Patch, AdaptReport)> {
    adapt_stats_within(backbone, patch, target, indices, reference, KEPT_BYTES)
}

/// [`adapt_stats`] keeping at most `kept_bytes` of activations per set of images (less memory,
/// more passes; 0: every affine measured from the images).
pub fn adapt_stats_within(
    backbone: &Backbone,
    patch: &Patch,
    target: Arc<dyn Dataset>,
    indices: &[usize],
    reference: &Reference,
    kept_bytes: usize,
) -> Result<(Patch, AdaptReport)> {
    let start = Instant::now();
    if indices.is_empty() {
        return Err(Error::dataset(target.spec(), "no images to adapt to"));
    }
    let r = patch.resolution;
    let before = backbone.patched(patch)?;
    let affines: Vec<usize> =
        (0..before.nodes.len()).filter(|&k| matches!(before.nodes[k].op, Op::Affine(_))).collect();
    // The reference statistics of each affine's input, from the unadapted network.
    let mut refs: Vec<Option<NormStats>> = Vec::with_capacity(affines.len());
    let mut source = match reference {
        Reference::Source(ds, idx) => Some(Activations::new(ds.clone(), idx, r, kept_bytes)),
        Reference::Imported => None,
    };
    for &k in &affines {
        let Op::Affine(a) = &before.nodes[k].op else { unreachable!("affines only") };
        refs.push(match source.as_mut() {
            None => a.stats.clone(),
            Some(source) => {
                let (mean, var) = source.stats(&before, before.nodes[k].inputs[0])?;
                let eps = a.stats.as_ref().map_or(vec![1e-5; mean.len()], |s| s.eps.clone());
                Some(NormStats { mean: mean.iter().map(|&m| m as f32).collect(), var: to_f32(&var), eps })
            }
        });
    }
    // The source images' activations are not needed any more.
    drop(source);
    if refs.iter().all(Option::is_none) {
        return Err(Error::Train(
            "the backbone has no BatchNorm statistics (folded before import): give source images to adapt from".into(),
        ));
    }
    let mut graph = before.clone();
    let mut adapted = 0;
    // Affines are adapted in order, so everything upstream of a kept cut stays as it is.
    let mut measured = Activations::new(target.clone(), indices, r, kept_bytes);
    for (&k, reference) in affines.iter().zip(&refs) {
        let Some(rs) = reference else { continue };
        let (mean, var) = measured.stats(&graph, graph.nodes[k].inputs[0])?;
        let Op::Affine(a0) = &before.nodes[k].op else { unreachable!("affines only") };
        let Op::Affine(a) = &mut graph.nodes[k].op else { unreachable!("affines only") };
        for c in 0..a.scale.len() {
            let (s, b) = (a0.scale[c] as f64, a0.bias[c] as f64);
            let eps = rs.eps[c] as f64;
            let gamma = s * (rs.var[c] as f64 + eps).sqrt();
            let beta = b + s * rs.mean[c] as f64;
            let scale = gamma / (var[c] + eps).sqrt();
            a.scale[c] = scale as f32;
            a.bias[c] = (beta - mean[c] * scale) as f32;
        }
        adapted += 1;
    }
    let kinds = if patch.kinds.full { patch.kinds } else { PatchKinds { sb: true, bias: false, ..patch.kinds } };
    let out = Patch::extract(&graph, kinds, &patch.fingerprint, patch.resolution, patch.labels.clone())?;
    let report = AdaptReport { images: indices.len(), affines: adapted, seconds: start.elapsed().as_secs_f64() };
    Ok((out, report))
}

/// Entropy minimisation (TENT): how long and how fast.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntropySettings {
    /// Passes over the unlabeled images.
    pub epochs: usize,
    pub batch: usize,
    /// SGD's (momentum 0.9) peak rate, decayed by a cosine to 0, gradients clipped at norm 5.
    pub lr: f32,
    pub seed: u64,
    /// Bytes the steps may add (each batch then runs as micro-batches that fit, as in training:
    /// [`TrainConfig::memory_budget`]); the statistics keep a third of it at most. `None`: no limit.
    pub memory_budget: Option<u64>,
}

impl Default for EntropySettings {
    fn default() -> Self {
        EntropySettings { epochs: 2, batch: 32, lr: 1e-4, seed: 0, memory_budget: None }
    }
}

/// [`adapt_stats`], then the S/B affines (only they: the classifier and kernels stay) trained
/// to lower the mean prediction entropy on the unlabeled images (TENT): a few passes of SGD on
/// the CPU, without labels. The report's `seconds` covers both.
pub fn adapt_entropy(
    backbone: &Backbone,
    patch: &Patch,
    target: Arc<dyn Dataset>,
    indices: &[usize],
    reference: &Reference,
    settings: &EntropySettings,
) -> Result<(Patch, AdaptReport)> {
    let start = Instant::now();
    let kept = settings.memory_budget.map_or(KEPT_BYTES, |b| KEPT_BYTES.min(b as usize / 3));
    let (adapted, report) = adapt_stats_within(backbone, patch, target.clone(), indices, reference, kept)?;
    let mut graph = backbone.patched(&adapted)?;
    let slots = patch::slots(&graph, "sb".parse()?)?;
    patch::make_trainable(&mut graph, &slots);
    let mut config = TrainConfig::new(adapted.kinds);
    (config.batch, config.resolution, config.optimizer) = (settings.batch, adapted.resolution, OptimizerKind::Sgd);
    (config.lr, config.seed, config.epochs) = (Some(settings.lr), settings.seed, settings.epochs);
    config.memory_budget = settings.memory_budget;
    config.check()?;
    let mut step = CpuStep::new(&graph, &slots, &config).minimising_entropy();
    if config.memory_budget.is_some() {
        // Planned (and refused when even one sample does not fit) before the first step.
        step.memory_plan(&graph)?;
    }
    let per_epoch = indices.len().div_ceil(settings.batch);
    let schedule = LrSchedule { base: settings.lr, warmup: 0, total: per_epoch * settings.epochs };
    let mut rng = Rng::new(settings.seed);
    let transform = Transform { resolution: adapted.resolution, augment: false };
    let mut done = 0;
    for epoch in 0..settings.epochs {
        let mut order = indices.to_vec();
        rng.shuffle(&mut order);
        let seed = settings.seed ^ ((epoch as u64 + 1) << 32);
        for b in Loader::new(target.clone(), order, settings.batch, transform, seed) {
            let input = b?.input;
            let none = vec![0; input.shape[0]];
            step.step(&mut graph, &slots, input, &none, schedule.at(done))?;
            done += 1;
        }
    }
    let (p, kinds) = (&adapted, adapted.kinds);
    let out = Patch::extract(&graph, kinds, &p.fingerprint, p.resolution, p.labels.clone())?;
    Ok((out, AdaptReport { seconds: start.elapsed().as_secs_f64(), ..report }))
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}
