//! Label-free adaptation by re-estimated statistics (AdaBN): when the camera, the lighting or
//! the sensor changes, each BatchNorm's statistics are measured again on unlabeled images of the
//! new conditions and the S/B affines rewritten to normalise with them. No labels, no gradients.
//!
//! For a folded BatchNorm (`x` its input, [`NormStats`] the statistics it normalised with:
//! `σ = √(var + eps)`), a patch's affine `y = s·x + b` is the BatchNorm `γ·(x − mean)/σ + β`
//! with `γ = s·σ` and `β = b + s·mean`. Adapted: `s' = γ/σ_t`, `b' = β − mean_t·s'`, with
//! `mean_t`, `σ_t` the statistics of `x` on the new images *after every earlier affine is
//! adapted* (exact, in network order: one pass over the images up to each affine). The
//! reference statistics are the imported BatchNorm's, or, for a graph whose BatchNorms were
//! folded away before import (or to match the patch's own training data), those measured on
//! source images ([`Reference::Source`]): then the adapted affine gives the new images' `x` the
//! output statistics the source images had.

use std::sync::Arc;
use std::time::Instant;

use crate::backbone::Backbone;
use crate::backend::cpu::CpuEngine;
use crate::data::{Dataset, Loader, Transform};
use crate::graph::{Graph, NormStats, Op};
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

/// Per-channel mean and variance (population) of value `x` of `graph` over images `indices` of
/// `ds` at `resolution`: one pass of the graph up to `x`, in batches of 8.
pub fn value_stats(
    graph: &Graph,
    x: usize,
    ds: &Arc<dyn Dataset>,
    indices: &[usize],
    resolution: u32,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let last = graph.nodes.iter().position(|n| n.output == x).ok_or_else(|| Error::Train(format!("no value {x}")))?;
    let prefix = Graph {
        nodes: graph.nodes[..=last].to_vec(),
        input_channels: graph.input_channels,
        num_values: graph.num_values,
        output: x,
    };
    let engine = CpuEngine::new(&prefix);
    let transform = Transform { resolution, augment: false };
    let (mut sum, mut sq, mut count) = (Vec::new(), Vec::new(), 0usize);
    for b in Loader::new(ds.clone(), indices.to_vec(), 8, transform, 0) {
        let y = engine.forward(&prefix, b?.input)?;
        let [n, c, h, w] = y.shape;
        if sum.is_empty() {
            (sum, sq) = (vec![0f64; c], vec![0f64; c]);
        }
        for plane in 0..n * c {
            let v = &y.data[plane * h * w..(plane + 1) * h * w];
            sum[plane % c] += v.iter().map(|&e| e as f64).sum::<f64>();
            sq[plane % c] += v.iter().map(|&e| (e as f64) * (e as f64)).sum::<f64>();
        }
        count += n * h * w;
    }
    if count == 0 {
        return Err(Error::Train("no images to measure".into()));
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / count as f64).collect();
    let var = sq.iter().zip(&mean).map(|(q, m)| (q / count as f64 - m * m).max(0.0)).collect();
    Ok((mean, var))
}

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
    let start = Instant::now();
    if indices.is_empty() {
        return Err(Error::dataset(target.spec(), "no images to adapt to"));
    }
    let r = patch.resolution;
    let before = backbone.patched(patch)?;
    let affines: Vec<usize> = (0..before.nodes.len()).filter(|&k| matches!(before.nodes[k].op, Op::Affine(_))).collect();
    // The reference statistics of each affine's input, from the unadapted network.
    let mut refs: Vec<Option<NormStats>> = Vec::with_capacity(affines.len());
    for &k in &affines {
        let Op::Affine(a) = &before.nodes[k].op else { unreachable!("affines only") };
        refs.push(match reference {
            Reference::Imported => a.stats.clone(),
            Reference::Source(ds, idx) => {
                let (mean, var) = value_stats(&before, before.nodes[k].inputs[0], ds, idx, r)?;
                let eps = a.stats.as_ref().map_or(vec![1e-5; mean.len()], |s| s.eps.clone());
                Some(NormStats { mean: mean.iter().map(|&m| m as f32).collect(), var: to_f32(&var), eps })
            }
        });
    }
    if refs.iter().all(Option::is_none) {
        return Err(Error::Train(
            "the backbone has no BatchNorm statistics (folded before import): give source images to adapt from".into(),
        ));
    }
    let mut graph = before.clone();
    let mut adapted = 0;
    for (&k, reference) in affines.iter().zip(&refs) {
        let Some(rs) = reference else { continue };
        let (mean, var) = value_stats(&graph, graph.nodes[k].inputs[0], &target, indices, r)?;
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
    let tensors = patch::slots(&graph, kinds)?
        .into_iter()
        .map(|s| patch::PatchTensor {
            node: s.node as u32,
            role: s.role,
            shape: patch::slot_shape(&graph, s),
            values: patch::param(&graph, s).to_vec(),
        })
        .collect();
    let out = Patch { kinds, tensors, ..patch.clone() };
    let report = AdaptReport { images: indices.len(), affines: adapted, seconds: start.elapsed().as_secs_f64() };
    Ok((out, report))
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}
