//! The training forward pass, which keeps on a tape exactly what the backward pass needs, and
//! the backward pass, which walks the nodes in reverse and computes gradients only for what
//! trains (frozen layers pass input gradients through, and only where something upstream
//! trains).
//!
//! What is kept per node is [`Schedule::keep`]: a layer's input when its kernel trains (conv, depthwise, classifier); an
//! affine's input when its scale trains; a 1-bit mask per element for ReLU/ReLU6; both operands
//! of a product and the input of a max pooling when a gradient flows through. Nothing else:
//! a `bias+logits` patch keeps only masks and the pooled features.

mod fused;

use std::sync::Arc;

use fused::{accumulate, affine_before, convolve, deferred_before, next_affine, two_mut};

use crate::graph::{Graph, Op, Shape};
use crate::ops::{self, activation::Mask, Activation};
use crate::schedule::{Keep, Schedule};
use crate::tensor::Tensor;
use crate::{Error, Result};

#[derive(Debug)]
pub(super) enum Saved {
    Nothing,
    Input(Arc<Tensor>),
    Mask(Mask),
    /// Both operands of a product.
    Operands(Arc<Tensor>, Arc<Tensor>),
}

/// The activations kept by [`forward`] for [`backward`].
#[derive(Debug)]
pub struct Tape {
    saved: Vec<Saved>,
    shapes: Vec<Shape>,
    batch: usize,
}

impl Tape {
    /// Bytes of activations held.
    pub fn bytes(&self) -> usize {
        self.saved
            .iter()
            .map(|s| match s {
                Saved::Nothing => 0,
                Saved::Input(t) => 4 * t.data.len(),
                Saved::Mask(m) => m.bytes(),
                // (An operand another node keeps too is counted with each.)
                Saved::Operands(a, b) => 4 * (a.data.len() + b.data.len()),
            })
            .sum()
    }
}

fn owned(t: Arc<Tensor>) -> Tensor {
    Arc::try_unwrap(t).unwrap_or_else(|t| (*t).clone())
}

/// Node `s`'s first input `x` as an owned tensor to overwrite: moved out of `values` when this is
/// its last reader (no copy unless the tape also keeps it), cloned otherwise.
fn take(
    values: &mut [Option<Arc<Tensor>>],
    plan: &Schedule,
    node: &crate::graph::Node,
    s: usize,
    x: Arc<Tensor>,
) -> Tensor {
    let v = node.inputs[0];
    if plan.last_use[v] == s && node.inputs.iter().filter(|&&u| u == v).count() == 1 {
        values[v] = None;
        owned(x)
    } else {
        (*x).clone()
    }
}

/// Forward pass keeping the tape: `input: [N, C, H, W]` → (logits `[N, classes, 1, 1]`, tape).
pub fn forward(graph: &Graph, plan: &Schedule, input: Tensor) -> Result<(Tensor, Tape)> {
    let (n, shapes) = check(graph, &input)?;
    let mut values: Vec<Option<Arc<Tensor>>> = vec![None; graph.num_values];
    values[0] = Some(Arc::new(input));
    let mut saved = nothing_saved(graph);
    forward_nodes(graph, plan, &mut values, &mut saved, 0..graph.nodes.len(), true);
    let out = values[graph.output].take().ok_or_else(|| Error::InvalidModel("output not computed".into()))?;
    Ok((owned(out), Tape { saved, shapes, batch: n }))
}

/// The batch of `input` and the shapes of the graph's values for it.
pub(super) fn check(graph: &Graph, input: &Tensor) -> Result<(usize, Vec<Shape>)> {
    let [n, c, h, w] = input.shape;
    if n == 0 || c != graph.input_channels {
        return Err(Error::Input(format!("input of shape {:?} for a {c}-channel model", input.shape)));
    }
    Ok((n, graph.infer_shapes(h, w)?))
}

/// A tape with nothing kept yet, one entry per node.
pub(super) fn nothing_saved(graph: &Graph) -> Vec<Saved> {
    graph.nodes.iter().map(|_| Saved::Nothing).collect()
}

/// Runs `nodes` (whole schedule steps; every value they read is in `values` or computed by
/// them), keeping in `saved` what the backward needs when `keep` (nothing otherwise, as an
/// inference pass). Values are freed after their last reader.
pub(super) fn forward_nodes(
    graph: &Graph,
    plan: &Schedule,
    values: &mut [Option<Arc<Tensor>>],
    saved: &mut [Saved],
    nodes: std::ops::Range<usize>,
    keep: bool,
) {
    let mut ready: Option<Tensor> = None;
    for s in nodes {
        let node = &graph.nodes[s];
        if plan.absorbed(s) {
            continue;
        }
        let wanted = if keep { plan.keep[s] } else { Keep::Nothing };
        let input = values[node.inputs[0]].clone();
        let x = || input.clone().expect("computed before use");
        let output = plan.output_of(graph, s);
        if plan.deferred[s] {
            if plan.last_use[node.inputs[0]] == s {
                values[node.inputs[0]] = None;
            }
            if keep {
                saved[s] = Saved::Input(x());
            }
            values[output] = Some(x());
            continue;
        }
        let mut kept = Saved::Nothing;
        let out = match &node.op {
            Op::Conv(_) | Op::Depthwise(_) => {
                let x = x();
                if wanted == Keep::Input {
                    kept = Saved::Input(x.clone());
                }
                let (raw, y) = convolve(&node.op, &x, deferred_before(graph, plan, s), next_affine(graph, plan, s));
                ready = y;
                raw
            }
            Op::Linear(l) => {
                let x = x();
                if wanted == Keep::Input {
                    kept = Saved::Input(x.clone());
                }
                Some(ops::linear::forward(l, &x))
            }
            Op::GlobalPool => Some(ops::pool::forward(&x())),
            Op::MaxPool(w) => {
                if wanted == Keep::Input {
                    kept = Saved::Input(x());
                }
                Some(ops::maxpool::forward(w, &x()))
            }
            Op::Mul => {
                let b = values[node.inputs[1]].clone().expect("computed before use");
                if wanted == Keep::Operands {
                    kept = Saved::Operands(x(), b.clone());
                }
                let mut y = take(values, plan, node, s, x());
                ops::mul::forward(&mut y, &b);
                Some(y)
            }
            Op::Affine(a) => match plan.fused_act(s) {
                _ if wanted == Keep::Input => {
                    let y = match ready.take() {
                        Some(y) => y,
                        None => ops::affine::forward_act(a, &x(), plan.fused_act(s).unwrap_or(Activation::Identity)),
                    };
                    kept = Saved::Input(x());
                    Some(y)
                }
                Some(act) => {
                    let y = match ready.take() {
                        Some(y) => y,
                        None => {
                            let mut y = take(values, plan, node, s, x());
                            ops::affine::forward(a, &mut y, act);
                            y
                        }
                    };
                    if wanted == Keep::Mask {
                        kept = Saved::Mask(ops::activation::mask(act, &y));
                    }
                    Some(y)
                }
                None => Some(match ready.take() {
                    Some(y) => y,
                    None => {
                        let mut y = take(values, plan, node, s, x());
                        ops::affine::forward(a, &mut y, Activation::Identity);
                        y
                    }
                }),
            },
            &Op::Act(act) => {
                if wanted == Keep::Mask {
                    kept = Saved::Mask(ops::activation::mask(act, &x()));
                }
                let mut y = take(values, plan, node, s, x());
                ops::activation::forward(act, &mut y);
                Some(y)
            }
            Op::Add => {
                let mut y = take(values, plan, node, s, x());
                ops::add::forward(&mut y, values[node.inputs[1]].as_ref().expect("computed before use"));
                Some(y)
            }
        };
        for &v in &node.inputs {
            if plan.last_use[v] == s {
                values[v] = None;
            }
        }
        saved[s] = kept;
        values[output] = out.map(Arc::new);
    }
}

/// Backward pass: `dlogits` (the loss gradient at the output, `[N, classes, 1, 1]`) → gradients
/// added into `grads[i]` for each trained slot `i` of the plan.
pub fn backward(graph: &Graph, plan: &Schedule, tape: Tape, dlogits: Tensor, grads: &mut [Vec<f32>]) {
    let mut g: Vec<Option<Tensor>> = vec![None; graph.num_values];
    g[graph.output] = Some(dlogits);
    let Tape { mut saved, shapes, batch } = tape;
    let all = Shapes { shapes: &shapes, batch };
    backward_nodes(graph, plan, &mut saved, all, &mut g, 0..graph.nodes.len(), grads);
}

/// The shapes of a pass's values and its batch.
#[derive(Clone, Copy)]
pub(super) struct Shapes<'a> {
    pub shapes: &'a [Shape],
    pub batch: usize,
}

/// The backward of `nodes` (whole schedule steps, in reverse), from the gradients in `g` and
/// what `saved` kept of them, adding parameter gradients to `grads` and leaving the gradients of
/// the values `nodes` read in `g`.
pub(super) fn backward_nodes(
    graph: &Graph,
    plan: &Schedule,
    saved: &mut [Saved],
    pass: Shapes,
    g: &mut [Option<Tensor>],
    nodes: std::ops::Range<usize>,
    grads: &mut [Vec<f32>],
) {
    let (shapes, batch) = (pass.shapes, pass.batch);
    for s in nodes.rev() {
        let node = &graph.nodes[s];
        if plan.absorbed(s) {
            continue;
        }
        let output = plan.output_of(graph, s);
        let Some(mut dy) = g[output].take() else { continue };
        let t = plan.trains[s];
        let input = node.inputs[0];
        let need_dx = plan.needs_grad[input];
        let ins = shapes[input];
        let kept = std::mem::replace(&mut saved[s], Saved::Nothing);
        let kept_input = match &kept {
            Saved::Input(x) => Some(x.as_ref()),
            _ => None,
        };
        let dx = match &node.op {
            Op::Conv(conv) => {
                if let (Some(i), Some(x)) = (t.weights, kept_input) {
                    ops::conv::backward_weight(conv, x, &dy, &mut grads[i]);
                }
                need_dx.then(|| ops::conv::backward_input(conv, &dy, (ins.h, ins.w)))
            }
            Op::Depthwise(dw) => {
                if let (Some(i), Some(x)) = (t.weights, kept_input) {
                    ops::depthwise::backward_weight(dw, x, &dy, &mut grads[i]);
                }
                match need_dx.then(|| affine_before(graph, plan, saved, s)).flatten() {
                    Some((b, a, act)) => {
                        let Saved::Input(x) = std::mem::replace(&mut saved[b], Saved::Nothing) else {
                            unreachable!("affine_before checked the kept input")
                        };
                        let tb = plan.trains[b];
                        let into = graph.nodes[b].inputs[0];
                        let (dx, sums) =
                            ops::depthwise::backward_input_then(dw, &dy, (a, &x, act), plan.needs_grad[into]);
                        let (ds, db) = two_mut(grads, tb.scale, tb.bias);
                        ops::affine::add_sums(&sums, (x.shape[0], x.shape[1]), ds, db);
                        if plan.needs_grad[into] {
                            accumulate(g, into, dx);
                        }
                        None
                    }
                    None => need_dx.then(|| ops::depthwise::backward_input(dw, &dy, (ins.h, ins.w))),
                }
            }
            Op::Linear(l) => {
                if let Some(x) = kept_input {
                    let (dw, db) = two_mut(grads, t.weights, t.bias);
                    ops::linear::backward_params(x, &dy, dw, db);
                } else if let Some(i) = t.bias {
                    ops::linear::backward_params(&Tensor::zeros([batch, 0, 1, 1]), &dy, None, Some(&mut grads[i]));
                }
                need_dx.then(|| ops::linear::backward_input(l, &dy))
            }
            Op::GlobalPool => need_dx.then(|| ops::pool::backward(&dy, (ins.h, ins.w))),
            Op::MaxPool(w) => kept_input.filter(|_| need_dx).map(|x| ops::maxpool::backward(w, x, &dy)),
            Op::Mul => match &kept {
                Saved::Operands(a, b) => {
                    let other = node.inputs[1];
                    let (da, db) = ops::mul::backward(a, b, &dy, (need_dx, plan.needs_grad[other]));
                    if let Some(db) = db {
                        accumulate(g, other, db);
                    }
                    da
                }
                _ => None,
            },
            Op::Affine(a) if kept_input.is_some() => {
                let (ds, db) = two_mut(grads, t.scale, t.bias);
                let act = plan.fused_act(s).unwrap_or(Activation::Identity);
                ops::affine::backward_act(a, kept_input.expect("kept"), act, &mut dy, ds, db, need_dx);
                need_dx.then_some(dy)
            }
            Op::Affine(a) if matches!((plan.fused_act(s), &kept), (Some(_), Saved::Mask(_))) => {
                let Saved::Mask(m) = &kept else { unreachable!("matched a mask") };
                debug_assert!(t.scale.is_none(), "a trained scale keeps the affine's input");
                let db = t.bias.map(|i| &mut grads[i][..]);
                ops::affine::backward_masked(a, m, &mut dy, db, need_dx);
                need_dx.then_some(dy)
            }
            Op::Affine(a) => {
                let (ds, db) = two_mut(grads, t.scale, t.bias);
                if ds.is_some() || db.is_some() {
                    ops::affine::backward_params(&dy, kept_input, ds, db);
                }
                need_dx.then(|| {
                    ops::affine::backward_input(a, &mut dy);
                    dy
                })
            }
            Op::Act(_) => match &kept {
                Saved::Mask(m) => {
                    ops::activation::backward(m, &mut dy);
                    Some(dy)
                }
                _ => None,
            },
            Op::Add => {
                if plan.needs_grad[node.inputs[1]] {
                    accumulate(g, node.inputs[1], dy.clone());
                }
                need_dx.then_some(dy)
            }
        };
        if let Some(dx) = dx {
            accumulate(g, input, dx);
        }
    }
}
