//! Recomputation: a training pass that keeps, instead of everything the backward needs, only
//! the value that enters each segment of the graph, and recomputes a segment's tape just before
//! its backward. A segment starts at each block input: a value that is the only one alive at
//! that point of the pass (nothing else produced before it is read after it) and that a 1×1
//! convolution widens (an inverted residual block's expansion). The narrow block inputs are
//! kept; the wide activations inside a block exist for one block at a time.
//!
//! The forward runs once more in all, segment by segment; the values, and so the gradients and
//! the patch, are those of the pass without recomputation, bit for bit (`tests/memory.rs`).
//!
//! Peak: the kept segment inputs of a pass, plus one segment's tape and values, plus the
//! gradients flowing back.

use std::ops::Range;
use std::sync::Arc;

use super::tape::{self, Saved, Shapes};
use crate::graph::{Graph, Op, Shape};
use crate::schedule::Schedule;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// The segments of a graph's training pass: the first node of each and the value entering it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segments {
    starts: Vec<usize>,
    inputs: Vec<usize>,
    nodes: usize,
}

impl Segments {
    /// Cuts `graph` before each widening 1×1 convolution that starts a schedule step and whose
    /// input is the only value alive there.
    pub fn new(graph: &Graph, plan: &Schedule) -> Self {
        let (mut starts, mut inputs) = (vec![0], vec![0]);
        let read_from = |v: usize, p: usize| plan.last_use[v] != usize::MAX && plan.last_use[v] >= p;
        for (p, node) in graph.nodes.iter().enumerate().skip(1) {
            let Op::Conv(c) = &node.op else { continue };
            if !c.window.is_pointwise() || c.out_channels <= c.in_channels || plan.steps[plan.step_of[p]].head != p {
                continue;
            }
            let v = node.inputs[0];
            let others =
                (v != 0 && read_from(0, p)) || graph.nodes[..p].iter().any(|q| q.output != v && read_from(q.output, p));
            if !others {
                starts.push(p);
                inputs.push(v);
            }
        }
        Segments { starts, inputs, nodes: graph.nodes.len() }
    }

    /// Number of segments.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Always false: a graph has at least one segment.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn range(&self, i: usize) -> Range<usize> {
        self.starts[i]..self.starts.get(i + 1).copied().unwrap_or(self.nodes)
    }
}

/// What [`forward`] keeps for [`backward`]: each segment's input but the last's, and the last
/// segment's tape.
pub struct Checkpoints {
    inputs: Vec<Option<Arc<Tensor>>>,
    saved: Vec<Saved>,
    shapes: Vec<Shape>,
    batch: usize,
}

/// The training forward with recomputation: `input: [N, C, H, W]` → (logits, checkpoints).
pub fn forward(graph: &Graph, plan: &Schedule, segs: &Segments, input: Tensor) -> Result<(Tensor, Checkpoints)> {
    let (batch, shapes) = tape::check(graph, &input)?;
    let mut values: Vec<Option<Arc<Tensor>>> = vec![None; graph.num_values];
    values[0] = Some(Arc::new(input));
    let mut saved = tape::nothing_saved(graph);
    let mut inputs = Vec::with_capacity(segs.len());
    for i in 0..segs.len() {
        let last = i + 1 == segs.len();
        inputs.push(if last { None } else { values[segs.inputs[i]].clone() });
        tape::forward_nodes(graph, plan, &mut values, &mut saved, segs.range(i), last);
    }
    let out = values[graph.output].take().ok_or_else(|| Error::InvalidModel("output not computed".into()))?;
    let out = Arc::try_unwrap(out).unwrap_or_else(|t| (*t).clone());
    Ok((out, Checkpoints { inputs, saved, shapes, batch }))
}

/// The backward of a pass made by [`forward`]: each segment's tape recomputed from its input,
/// then its backward, last segment first. Gradients are added into `grads` as
/// [`tape::backward`] adds them.
pub fn backward(
    graph: &Graph,
    plan: &Schedule,
    segs: &Segments,
    kept: Checkpoints,
    dlogits: Tensor,
    grads: &mut [Vec<f32>],
) {
    let mut g: Vec<Option<Tensor>> = vec![None; graph.num_values];
    g[graph.output] = Some(dlogits);
    let Checkpoints { mut inputs, mut saved, shapes, batch } = kept;
    let pass = Shapes { shapes: &shapes, batch };
    for i in (0..segs.len()).rev() {
        if let Some(x) = inputs[i].take() {
            let mut values: Vec<Option<Arc<Tensor>>> = vec![None; graph.num_values];
            values[segs.inputs[i]] = Some(x);
            tape::forward_nodes(graph, plan, &mut values, &mut saved, segs.range(i), true);
        }
        tape::backward_nodes(graph, plan, &mut saved, pass, &mut g, segs.range(i), grads);
    }
}
