//! The tape's fusion helpers: which affine a convolution computes in cache, which affine a
//! depthwise computes while laying out its input, forward and backward, and the gradient
//! buffers a backward adds into.

use crate::graph::{Affine, Graph, Op};
use crate::ops::{self, Activation, Then};
use crate::schedule::Schedule;
use crate::tensor::Tensor;

use super::Saved;

/// The affine that [`Schedule::then`] computes inside convolution `s`, with its fused
/// activation: kept beside the raw output when its scale trains (its backward needs the raw
/// output), in place of it otherwise.
pub(super) fn next_affine<'g>(graph: &'g Graph, plan: &Schedule, s: usize) -> Then<'g> {
    match plan.then(s).filter(|&b| !plan.deferred[b]).map(|b| &graph.nodes[b].op) {
        Some(Op::Affine(a)) => {
            let act = plan.fused_act(s + 1).unwrap_or(Activation::Identity);
            if plan.trains[s + 1].scale.is_some() {
                Then::Keep(a, act)
            } else {
                Then::InPlace(a, act)
            }
        }
        _ => Then::Nothing,
    }
}

/// The affine and activation [`Schedule::deferred`] to depthwise node `s`.
pub(super) fn deferred_before<'g>(graph: &'g Graph, plan: &Schedule, s: usize) -> Option<(&'g Affine, Activation)> {
    let b = s.checked_sub(2)?;
    match (&graph.nodes[b].op, plan.deferred[b]) {
        (Op::Affine(a), true) => Some((a, plan.fused_act(b)?)),
        _ => None,
    }
}

/// Convolution node `op` on `x` (or, for a depthwise node, on `before`'s output from `x`, see
/// [`deferred_before`]), with `then` (from [`next_affine`]) computed inside: the raw output
/// (`None` when the affine ran in place: the affine is its only reader) and the affine's output.
pub(super) fn convolve(
    op: &Op,
    x: &Tensor,
    before: Option<(&Affine, Activation)>,
    then: Then,
) -> (Option<Tensor>, Option<Tensor>) {
    let (first, second) = match op {
        Op::Conv(c) => ops::conv::forward_with(c, x, then),
        Op::Depthwise(d) => ops::depthwise::forward_fused(d, x, before, then),
        _ => unreachable!("called on convolution nodes"),
    };
    match then {
        Then::InPlace(..) => (None, Some(first)),
        _ => (Some(first), second),
    }
}

/// The affine (node `b`, with its activation) whose kept input and activation the backward of
/// node `s` can finish plane by plane: `s`'s input is that activation's output, read by nothing
/// else, and the affine kept its input (its scale trains).
pub(super) fn affine_before<'g>(
    graph: &'g Graph,
    plan: &Schedule,
    saved: &[Saved],
    s: usize,
) -> Option<(usize, &'g Affine, Activation)> {
    let b = s.checked_sub(2)?;
    let input = graph.nodes[s].inputs[0];
    let Op::Affine(a) = &graph.nodes[b].op else { return None };
    let act = plan.fused_act(b)?;
    let sole = graph.nodes.iter().filter(|n| n.inputs.contains(&input)).count() == 1;
    (graph.nodes[b + 1].output == input && sole && matches!(saved[b], Saved::Input(_))).then_some((b, a, act))
}

pub(super) fn accumulate(g: &mut [Option<Tensor>], v: usize, dx: Tensor) {
    match &mut g[v] {
        Some(acc) => acc.add_assign(&dx),
        slot => *slot = Some(dx),
    }
}

/// Two distinct gradient buffers by optional index.
pub(super) fn two_mut(
    grads: &mut [Vec<f32>],
    a: Option<usize>,
    b: Option<usize>,
) -> (Option<&mut [f32]>, Option<&mut [f32]>) {
    match (a, b) {
        (Some(a), Some(b)) => {
            debug_assert_ne!(a, b);
            if a < b {
                let (lo, hi) = grads.split_at_mut(b);
                (Some(&mut lo[a]), Some(&mut hi[0]))
            } else {
                let (lo, hi) = grads.split_at_mut(a);
                (Some(&mut hi[0]), Some(&mut lo[b]))
            }
        }
        (Some(a), None) => (Some(&mut grads[a]), None),
        (None, Some(b)) => (None, Some(&mut grads[b])),
        (None, None) => (None, None),
    }
}
