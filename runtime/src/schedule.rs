//! The schedule: every fact about a graph that a backend needs to run it, computed once from the
//! graph and the set of trained parameters, and read by the CPU inference engine
//! ([`crate::backend::cpu`]), the CPU training tape ([`crate::train::tape`]) and the GPU program
//! planner ([`crate::backend::gpu::train`]).
//!
//! ```text
//! Graph (nodes in topological order) + trained slots
//!        │
//!        ▼
//! Schedule ── steps:      fused chains  conv/depthwise → affine → activation,  affine → activation
//!          ── values:     readers, last reader, needs a gradient
//!          ── per node:   which parameters train, what the backward keeps (input / mask / nothing)
//!          ── deferred:   affine → activation recomputed inside the frozen depthwise that reads it
//!          ── blocks:     [expand 1×1 →] depthwise → project 1×1 [→ add], run band by band by
//!                         the CPU inference engine ([`Schedule::blocks`])
//! ```
//!
//! The scheduling facts of each op kind are written once, in [`Op::activation`] and
//! [`Op::is_convolution`]: a new elementwise activation is one `Op` variant, its entry in
//! [`Op::activation`] and its [`Activation`] variant; the chains, the tape and the GPU plan pick it
//! up from here.
//!
//! A step is the most any backend fuses; a backend whose kernels fuse less runs a step's nodes
//! as separate calls (the GPU runs the convolution, then the affine with its activation).

use crate::graph::{Graph, Op, ValueId};
use crate::ops::Activation;
use crate::patch::{Role, Slot};

impl Op {
    /// The elementwise activation this op computes, if it is one.
    pub fn activation(&self) -> Option<Activation> {
        match self {
            Op::Act(a) => Some(*a),
            _ => None,
        }
    }

    /// True for the windowed layers whose output an affine can be computed from in cache.
    pub fn is_convolution(&self) -> bool {
        matches!(self, Op::Conv(_) | Op::Depthwise(_))
    }
}

/// Which parameters of a node train: indices into the trained slot (and gradient) list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trains {
    pub scale: Option<usize>,
    pub bias: Option<usize>,
    pub weights: Option<usize>,
}

impl Trains {
    /// True when any parameter of the node trains.
    pub fn any(&self) -> bool {
        self.scale.is_some() || self.bias.is_some() || self.weights.is_some()
    }

    /// The slot index of `role`.
    pub fn role(&self, role: Role) -> Option<usize> {
        match role {
            Role::Scale => self.scale,
            Role::Bias => self.bias,
            Role::Weights => self.weights,
        }
    }
}

/// One fused chain: `head` (a convolution, depthwise or affine node), the affine after a
/// convolution head, and the activation after the affine. Each link is the next node in order
/// and the only reader of the value before it (which is not the graph output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub head: usize,
    /// The affine node computed from a convolution head's output.
    pub affine: Option<usize>,
    /// The activation node computed from the affine's output, and its function.
    pub act: Option<(usize, Activation)>,
    /// The value the step produces (its last node's output).
    pub output: ValueId,
}

impl Step {
    /// The activation of the step (identity when it has none).
    pub fn activation(&self) -> Activation {
        self.act.map_or(Activation::Identity, |(_, a)| a)
    }
}

/// An inverted residual block: steps an inference backend may run band by band of output rows
/// without storing the values between them whole — `[expand →] depthwise → project [→ add]`,
/// each a step whose output only the next step reads (indices into [`Schedule::steps`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// A 1×1 convolution step.
    pub expand: Option<usize>,
    pub depthwise: usize,
    /// A 1×1 convolution step.
    pub project: usize,
    /// The step adding the projection to another value.
    pub add: Option<usize>,
}

impl Block {
    /// The block's first step.
    pub fn first(&self) -> usize {
        self.expand.unwrap_or(self.depthwise)
    }

    /// The block's last step.
    pub fn last(&self) -> usize {
        self.add.unwrap_or(self.project)
    }
}

/// What the training forward keeps of a node for its backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Nothing (the backward needs only the output gradient and frozen parameters).
    Nothing,
    /// The node's input: its kernel or scale trains, or it is [`Schedule::deferred`], or it is
    /// a max pooling a gradient flows through (the backward finds each window's winner again).
    Input,
    /// One bit per element of where the activation passed (the node's own activation, or the
    /// one fused into an affine), when a gradient flows through it.
    Mask,
    /// Both operands of a product, when a gradient flows to either (each one's gradient is the
    /// output gradient times the other).
    Operands,
}

/// The schedule of one graph for one set of trained slots.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The fused chains in execution order; every node is in exactly one.
    pub steps: Vec<Step>,
    /// For each node, the index of its step in `steps`.
    pub step_of: Vec<usize>,
    /// For each node, which of its parameters train.
    pub trains: Vec<Trains>,
    /// For each value, how many node inputs read it (the graph output counts once more).
    pub readers: Vec<usize>,
    /// For each value, the last node that reads it (`usize::MAX` when none does).
    pub last_use: Vec<usize>,
    /// For each value, whether the loss gradient with respect to it is needed (something
    /// upstream of it, or its producer, trains).
    pub needs_grad: Vec<bool>,
    /// For each node, what the training forward keeps for the backward.
    pub keep: Vec<Keep>,
    /// For each affine node with a trained scale and a fused activation whose output only a
    /// depthwise with frozen kernels reads (the next node): that depthwise computes the affine and
    /// activation while laying out each input plane, forward and backward; the affine's output is
    /// never stored, only its input.
    pub deferred: Vec<bool>,
}

impl Schedule {
    /// The schedule for inference (nothing trains).
    pub fn inference(graph: &Graph) -> Self {
        Schedule::new(graph, &[])
    }

    /// The schedule for training `slots` (gradient `i` belongs to `slots[i]`).
    pub fn new(graph: &Graph, slots: &[Slot]) -> Self {
        let count = graph.nodes.len();
        let mut trains = vec![Trains::default(); count];
        for (i, s) in slots.iter().enumerate() {
            let t = &mut trains[s.node];
            match s.role {
                Role::Scale => t.scale = Some(i),
                Role::Bias => t.bias = Some(i),
                Role::Weights => t.weights = Some(i),
            }
        }
        let mut readers = vec![0usize; graph.num_values];
        let mut last_use = vec![usize::MAX; graph.num_values];
        for (s, n) in graph.nodes.iter().enumerate() {
            for &v in &n.inputs {
                readers[v] += 1;
                last_use[v] = s;
            }
        }
        readers[graph.output] += 1;
        last_use[graph.output] = usize::MAX;
        let mut needs_grad = vec![false; graph.num_values];
        for (n, t) in graph.nodes.iter().zip(&trains) {
            needs_grad[n.output] = t.any() || n.inputs.iter().any(|&i| needs_grad[i]);
        }

        // Node `next` continues a chain ending in node `s` when it is the next node and the only
        // reader of `s`'s output.
        let continues = |s: usize| -> Option<&crate::graph::Node> {
            let out = graph.nodes[s].output;
            graph.nodes.get(s + 1).filter(|m| m.inputs == [out] && readers[out] == 1)
        };
        let mut steps = Vec::new();
        let mut step_of = vec![0; count];
        let mut s = 0;
        while s < count {
            let op = &graph.nodes[s].op;
            let mut step = Step { head: s, affine: None, act: None, output: graph.nodes[s].output };
            let mut end = s;
            if op.is_convolution() && continues(end).is_some_and(|m| matches!(m.op, Op::Affine(_))) {
                end += 1;
                step.affine = Some(end);
            }
            if matches!(graph.nodes[end].op, Op::Affine(_)) {
                if let Some(act) = continues(end).and_then(|m| m.op.activation()) {
                    end += 1;
                    step.act = Some((end, act));
                }
            }
            step.output = graph.nodes[end].output;
            step_of[s..=end].fill(steps.len());
            steps.push(step);
            s = end + 1;
        }

        let mut schedule = Schedule {
            steps,
            step_of,
            trains,
            readers,
            last_use,
            needs_grad,
            keep: vec![Keep::Nothing; count],
            deferred: vec![false; count],
        };
        schedule.deferred = (0..count).map(|b| schedule.defers(graph, b)).collect();
        schedule.keep = (0..count).map(|s| schedule.keeps(graph, s)).collect();
        schedule
    }

    /// The inverted residual blocks of `graph` (see [`Block`]), in order, none overlapping.
    pub fn blocks(&self, graph: &Graph) -> Vec<Block> {
        let op = |s: usize| &graph.nodes[self.steps[s].head].op;
        let pointwise = |s: usize| matches!(op(s), Op::Conv(c) if c.window.is_pointwise());
        // Step `s`'s output is read by the next step's head alone.
        let feeds = |s: usize| {
            let out = self.steps[s].output;
            self.readers[out] == 1 && self.steps.get(s + 1).is_some_and(|n| graph.nodes[n.head].inputs.contains(&out))
        };
        let mut blocks: Vec<Block> = Vec::new();
        for d in 0..self.steps.len().saturating_sub(1) {
            if !(matches!(op(d), Op::Depthwise(_)) && pointwise(d + 1) && feeds(d)) {
                continue;
            }
            let free = blocks.last().is_none_or(|b| b.last() + 1 < d);
            let expand = (free && d > 0 && pointwise(d - 1) && feeds(d - 1)).then(|| d - 1);
            let add = (d + 2 < self.steps.len() && matches!(op(d + 2), Op::Add) && feeds(d + 1)).then_some(d + 2);
            blocks.push(Block { expand, depthwise: d, project: d + 1, add });
        }
        blocks
    }

    /// The activation fused into affine node `s` (run in the same pass; the activation node is
    /// then [`Schedule::absorbed`]).
    pub fn fused_act(&self, s: usize) -> Option<Activation> {
        let step = &self.steps[self.step_of[s]];
        let end = step.affine.unwrap_or(step.head);
        (end == s).then_some(step.act).flatten().map(|(_, a)| a)
    }

    /// True for an activation node computed inside the affine before it.
    pub fn absorbed(&self, s: usize) -> bool {
        self.steps[self.step_of[s]].act.is_some_and(|(a, _)| a == s)
    }

    /// The affine node computed from convolution node `s`'s output in the same pass, if any.
    pub fn then(&self, s: usize) -> Option<usize> {
        let step = &self.steps[self.step_of[s]];
        (step.head == s).then_some(step.affine).flatten()
    }

    /// The value node `s`'s backward starts from: its activation's output when one is fused.
    pub fn output_of(&self, graph: &Graph, s: usize) -> ValueId {
        match self.fused_act(s) {
            Some(_) => graph.nodes[s + 1].output,
            None => graph.nodes[s].output,
        }
    }

    fn defers(&self, graph: &Graph, b: usize) -> bool {
        let (Some(act), Some(dw)) = (graph.nodes.get(b + 1), graph.nodes.get(b + 2)) else { return false };
        matches!(graph.nodes[b].op, Op::Affine(_))
            && self.fused_act(b).is_some()
            && self.trains[b].scale.is_some()
            && matches!(dw.op, Op::Depthwise(_))
            && self.trains[b + 2].weights.is_none()
            && dw.inputs == [act.output]
            && self.readers[act.output] == 1
    }

    fn keeps(&self, graph: &Graph, s: usize) -> Keep {
        let node = &graph.nodes[s];
        let t = self.trains[s];
        let grad_out = self.needs_grad[self.output_of(graph, s)];
        match &node.op {
            _ if self.absorbed(s) => Keep::Nothing,
            _ if self.deferred[s] => Keep::Input,
            Op::Conv(_) | Op::Depthwise(_) | Op::Linear(_) if t.weights.is_some() => Keep::Input,
            Op::Affine(_) if t.scale.is_some() => Keep::Input,
            Op::Affine(_) if self.fused_act(s).is_some() && grad_out => Keep::Mask,
            Op::Mul if node.inputs.iter().any(|&i| self.needs_grad[i]) => Keep::Operands,
            Op::MaxPool(_) if self.needs_grad[node.inputs[0]] => Keep::Input,
            op if op.activation().is_some() && grad_out => Keep::Mask,
            _ => Keep::Nothing,
        }
    }
}
