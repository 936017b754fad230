//! Per-channel statistics of inner activations over a set of images, value after value in
//! network order, without a pass from the images for each: the activations at the latest *cut*
//! (a value after which nothing reads an earlier one, e.g. a residual block's output) are kept
//! for all the images, within a memory cap, and each later value is computed from them.
//! [`super::adapt`] measures the input of every affine this way.

use std::sync::Arc;

use crate::backend::cpu::CpuEngine;
use crate::data::{Dataset, Loader, Transform};
use crate::graph::{Graph, Node};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Caps under this ask for lean passes ([`Activations::engine`]).
const LEAN_BELOW: usize = 128 << 20;

/// Images per pass: 8, or fewer when the activations kept may take little memory (a pass of 8
/// images at 224 px holds about 80 MB).
fn chunk(cap: usize) -> usize {
    (cap / (24 << 20)).clamp(1, 8)
}

/// The activations of value `cut` for every image, when kept (`None`: from the images).
pub struct Activations {
    ds: Arc<dyn Dataset>,
    indices: Vec<usize>,
    resolution: u32,
    /// Bytes the kept activations may take.
    cap: usize,
    cut: usize,
    kept: Option<Vec<Tensor>>,
}

/// The node index that produces each value (`None` for the input).
fn producers(graph: &Graph) -> Vec<Option<usize>> {
    let mut p = vec![None; graph.num_values];
    for (i, n) in graph.nodes.iter().enumerate() {
        p[n.output] = Some(i);
    }
    p
}

/// Whether value `v` is a cut: produced before every later node's inputs (which are `v` or
/// later values), with value ids increasing in node order.
fn is_cut(graph: &Graph, producers: &[Option<usize>], v: usize) -> bool {
    let from = producers[v].map_or(0, |i| i + 1);
    let ordered = graph.nodes.windows(2).all(|w| w[0].output < w[1].output);
    ordered && graph.nodes[from..].iter().all(|n| n.inputs.iter().all(|&u| u >= v))
}

/// The nodes of `graph` from value `from` (a cut) to value `to`, as a graph whose input (value 0)
/// is `from`, with `channels` channels.
fn piece(graph: &Graph, producers: &[Option<usize>], from: usize, to: usize, channels: usize) -> Result<Graph> {
    let start = producers[from].map_or(0, |i| i + 1);
    let end = producers[to].ok_or_else(|| Error::Train(format!("value {to} is the input")))?;
    let nodes = graph.nodes[start..=end]
        .iter()
        .map(|n| Node { inputs: n.inputs.iter().map(|&u| u - from).collect(), output: n.output - from, ..n.clone() })
        .collect();
    Ok(Graph { nodes, input_channels: channels, num_values: graph.num_values - from, output: to - from })
}

impl Activations {
    /// Images `indices` of `ds` at `resolution`, keeping at most `cap` bytes of activations.
    pub fn new(ds: Arc<dyn Dataset>, indices: &[usize], resolution: u32, cap: usize) -> Self {
        Activations { ds, indices: indices.to_vec(), resolution, cap, cut: 0, kept: None }
    }

    /// `engine`, its passes kept on the calling thread under a small cap (a pass as a job of
    /// rayon's pool leaves more in a worker's heap, as a budgeted trainer's does).
    fn engine(&self, mut engine: CpuEngine) -> CpuEngine {
        if self.cap < LEAN_BELOW {
            engine.keep_passes_on_caller();
        }
        engine
    }

    /// Runs `f` on value `to` of `graph` for every chunk of images, from the kept cut. Every
    /// parameter upstream of the kept cut must be what it was when the cut was kept.
    fn each(&self, graph: &Graph, to: usize, mut f: impl FnMut(Tensor) -> Result<()>) -> Result<()> {
        let producers = producers(graph);
        match &self.kept {
            Some(chunks) if to == self.cut => chunks.iter().try_for_each(|x| f(x.clone()))?,
            Some(chunks) => {
                let channels = chunks.first().map_or(graph.input_channels, |x| x.shape[1]);
                let g = piece(graph, &producers, self.cut, to, channels)?;
                let engine = self.engine(CpuEngine::for_sub_graph(&g));
                for x in chunks {
                    f(engine.forward_from(&g, x.shape, &x.data)?)?;
                }
            }
            None => {
                let g = piece(graph, &producers, 0, to, graph.input_channels)?;
                let engine = self.engine(CpuEngine::new(&g));
                let t = Transform { resolution: self.resolution, augment: false };
                for b in Loader::new(self.ds.clone(), self.indices.clone(), chunk(self.cap), t, 0) {
                    f(engine.forward(&g, b?.input)?)?;
                }
            }
        }
        Ok(())
    }

    /// Keeps the activations of cut `v` instead of the kept ones, made from them chunk by chunk
    /// (each kept chunk is freed once its successor is made: the two sets are never both whole).
    fn advance(&mut self, graph: &Graph, producers: &[Option<usize>], v: usize) -> Result<()> {
        let mut next = Vec::new();
        match self.kept.take() {
            Some(chunks) => {
                let channels = chunks.first().map_or(graph.input_channels, |x| x.shape[1]);
                let g = piece(graph, producers, self.cut, v, channels)?;
                let engine = self.engine(CpuEngine::for_sub_graph(&g));
                for x in chunks {
                    next.push(engine.forward(&g, x)?);
                }
            }
            None => self.each(graph, v, |y| {
                next.push(y);
                Ok(())
            })?,
        }
        (self.cut, self.kept) = (v, Some(next));
        Ok(())
    }

    /// Per-channel mean and population variance of value `x` of `graph` over the images. Every
    /// parameter upstream of `x` must stay as it is for the later calls (the activations at the
    /// latest cut before `x` are kept, when they fit the cap).
    pub fn stats(&mut self, graph: &Graph, x: usize) -> Result<(Vec<f64>, Vec<f64>)> {
        let producers = producers(graph);
        let latest = (self.cut + 1..=x).rev().find(|&v| producers[v].is_some() && is_cut(graph, &producers, v));
        if let Some(v) = latest {
            let s = graph.shapes(self.resolution as usize, self.resolution as usize)?[v];
            if self.indices.len() * s.c * s.h * s.w * 4 <= self.cap {
                self.advance(graph, &producers, v)?;
            }
        }
        let (mut sum, mut sq, mut count) = (Vec::new(), Vec::new(), 0usize);
        self.each(graph, x, |y| {
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
            Ok(())
        })?;
        if count == 0 {
            return Err(Error::Train("no images to measure".into()));
        }
        let mean: Vec<f64> = sum.iter().map(|s| s / count as f64).collect();
        let var = sq.iter().zip(&mean).map(|(q, m)| (q / count as f64 - m * m).max(0.0)).collect();
        Ok((mean, var))
    }
}
