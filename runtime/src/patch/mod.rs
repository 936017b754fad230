//! Model patches: the few parameters that specialise the frozen backbone to one task.
//!
//! A patch is a list of tensors, each replacing one parameter of one node of the backbone's
//! graph: an affine's scale or bias (`sb`, `bias`), a depthwise kernel (`dw`), any kernel
//! (`full`), or the classifier (`logits`, a new head sized for the task's classes).

pub mod file;
pub mod store;
mod store_io;

use std::fmt;
use std::str::FromStr;

use crate::graph::{Graph, Linear, Op, Weights};
use crate::{Error, Result};

/// Which parameters a patch trains; kinds combine with `+` (`sb+logits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct PatchKinds {
    /// A new classifier for the task's classes.
    pub logits: bool,
    /// Every affine's scale and bias.
    pub sb: bool,
    /// Every affine's bias.
    pub bias: bool,
    /// Every depthwise kernel.
    pub dw: bool,
    /// Every weight: kernels, affines and the classifier (the fine-tuning baseline).
    pub full: bool,
    /// The squeeze-excitation convolutions' kernels and biases ([`Graph::excitation`]).
    pub se: bool,
}

const KIND_NAMES: [&str; 6] = ["logits", "sb", "bias", "dw", "full", "se"];

impl PatchKinds {
    fn flags(&self) -> [bool; 6] {
        [self.logits, self.sb, self.bias, self.dw, self.full, self.se]
    }

    /// The kinds as a bit set (bit 0 `logits`, 1 `sb`, 2 `bias`, 3 `dw`, 4 `full`, 5 `se`).
    pub fn bits(&self) -> u8 {
        self.flags().iter().enumerate().map(|(i, &f)| (f as u8) << i).sum()
    }

    /// The inverse of [`PatchKinds::bits`]; unknown bits or an empty set are refused.
    pub fn from_bits(bits: u8) -> Result<Self> {
        if bits == 0 || bits >> KIND_NAMES.len() != 0 {
            return Err(Error::Patch(format!("unknown patch kinds (bits {bits:#04x})")));
        }
        let f = |i: usize| bits >> i & 1 == 1;
        Ok(PatchKinds { logits: f(0), sb: f(1), bias: f(2), dw: f(3), full: f(4), se: f(5) })
    }

    /// True when the classifier is new (sized for the task).
    pub fn new_head(&self) -> bool {
        self.logits || self.full
    }

    /// True when only the classifier trains (the backbone's features are fixed).
    pub fn head_only(&self) -> bool {
        self.logits && !self.sb && !self.bias && !self.dw && !self.full && !self.se
    }
}

impl FromStr for PatchKinds {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let mut bits = 0u8;
        for part in s.split('+').map(str::trim) {
            let i = KIND_NAMES.iter().position(|&k| k == part).ok_or_else(|| {
                Error::Patch(format!("unknown patch kind '{part}' (expected {} joined by '+')", KIND_NAMES.join(", ")))
            })?;
            bits |= 1 << i;
        }
        Self::from_bits(bits)
    }
}

/// Written the usual way round: `sb+logits`, `sb+dw+logits`, `sb+se+logits`.
impl fmt::Display for PatchKinds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flags = self.flags();
        let names: Vec<&str> = [1, 2, 3, 5, 4, 0].iter().filter(|&&i| flags[i]).map(|&i| KIND_NAMES[i]).collect();
        f.write_str(&names.join("+"))
    }
}

/// Which parameter of a node a patch tensor replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// An affine's scale `[C]`.
    Scale,
    /// An affine's bias `[C]` or the classifier's bias `[classes]`.
    Bias,
    /// A kernel: conv `[Cout, Cin, kh, kw]`, depthwise `[C, kh, kw]`, classifier `[classes, F]`.
    Weights,
}

impl Role {
    pub(crate) fn code(self) -> u8 {
        match self {
            Role::Scale => 0,
            Role::Bias => 1,
            Role::Weights => 2,
        }
    }

    pub(crate) fn from_code(c: u8) -> Result<Self> {
        [Role::Scale, Role::Bias, Role::Weights]
            .get(c as usize)
            .copied()
            .ok_or_else(|| Error::Patch(format!("unknown tensor role {c}")))
    }
}

/// One trainable parameter tensor: `role` of node `node`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub node: usize,
    pub role: Role,
}

/// Index of the classifier: the last node, a linear layer producing the graph output.
pub fn head_index(graph: &Graph) -> Result<usize> {
    match graph.nodes.last() {
        Some(n) if matches!(n.op, Op::Linear(_)) && n.output == graph.output => Ok(graph.nodes.len() - 1),
        _ => Err(Error::Patch("the model does not end in a linear classifier".into())),
    }
}

/// The nodes of `graph` before its classifier, as a graph whose output is the classifier's input
/// (pooled features `[N, F, 1, 1]`).
pub fn feature_graph(graph: &Graph) -> Result<Graph> {
    let head = head_index(graph)?;
    Ok(Graph {
        nodes: graph.nodes[..head].to_vec(),
        input_channels: graph.input_channels,
        num_values: graph.num_values,
        output: graph.nodes[head].inputs[0],
    })
}

/// The parameters `kinds` trains in `graph`, in node order.
pub fn slots(graph: &Graph, kinds: PatchKinds) -> Result<Vec<Slot>> {
    let head = if kinds.new_head() { Some(head_index(graph)?) } else { None };
    let excitation = graph.excitation();
    if kinds.se && !excitation.contains(&true) {
        return Err(Error::Patch("`se`: the model has no squeeze-excitation convolutions".into()));
    }
    // The affine computed from a squeeze-excitation convolution's output (its bias).
    let se_bias = |node: usize| {
        kinds.se && node > 0 && excitation[node - 1] && graph.nodes[node].inputs == [graph.nodes[node - 1].output]
    };
    let mut out = Vec::new();
    for (node, n) in graph.nodes.iter().enumerate() {
        let mut add = |role| out.push(Slot { node, role });
        match &n.op {
            Op::Affine(_) if kinds.sb || kinds.full => {
                add(Role::Scale);
                add(Role::Bias);
            }
            Op::Affine(_) if kinds.bias || se_bias(node) => add(Role::Bias),
            Op::Depthwise(_) if kinds.dw || kinds.full => add(Role::Weights),
            Op::Conv(_) if kinds.full || kinds.se && excitation[node] => add(Role::Weights),
            Op::Linear(_) if Some(node) == head => {
                add(Role::Weights);
                add(Role::Bias);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The shape of a slot's tensor in `graph`.
pub fn slot_shape(graph: &Graph, slot: Slot) -> Vec<u32> {
    let u = |v: usize| v as u32;
    match (&graph.nodes[slot.node].op, slot.role) {
        (Op::Affine(a), _) => vec![u(a.scale.len())],
        (Op::Depthwise(d), _) => vec![u(d.channels), u(d.window.kernel[0]), u(d.window.kernel[1])],
        (Op::Conv(c), _) => vec![u(c.out_channels), u(c.in_channels), u(c.window.kernel[0]), u(c.window.kernel[1])],
        (Op::Linear(l), Role::Weights) => vec![u(l.out_features), u(l.in_features)],
        (Op::Linear(l), _) => vec![u(l.out_features)],
        _ => vec![0],
    }
}

/// The values of a slot (kernels must already be f32: see [`make_trainable`]).
pub fn param(graph: &Graph, slot: Slot) -> &[f32] {
    match (&graph.nodes[slot.node].op, slot.role) {
        (Op::Affine(a), Role::Scale) => &a.scale,
        (Op::Affine(a), Role::Bias) => &a.bias,
        (Op::Linear(l), Role::Bias) => &l.bias,
        (Op::Depthwise(d), Role::Weights) => f32_weights(&d.weights),
        (Op::Conv(c), Role::Weights) => f32_weights(&c.weights),
        (Op::Linear(l), Role::Weights) => f32_weights(&l.weights),
        _ => &[],
    }
}

/// The values of a slot, mutable (kernels must already be f32: see [`make_trainable`]).
pub fn param_mut(graph: &mut Graph, slot: Slot) -> &mut [f32] {
    match (&mut graph.nodes[slot.node].op, slot.role) {
        (Op::Affine(a), Role::Scale) => &mut a.scale,
        (Op::Affine(a), Role::Bias) => &mut a.bias,
        (Op::Linear(l), Role::Bias) => &mut l.bias,
        (Op::Depthwise(d), Role::Weights) => f32_weights_mut(&mut d.weights),
        (Op::Conv(c), Role::Weights) => f32_weights_mut(&mut c.weights),
        (Op::Linear(l), Role::Weights) => f32_weights_mut(&mut l.weights),
        _ => &mut [],
    }
}

fn f32_weights(w: &Weights) -> &[f32] {
    match w {
        Weights::F32(v) => v,
        Weights::Int8 { .. } => &[],
    }
}

fn f32_weights_mut(w: &mut Weights) -> &mut [f32] {
    match w {
        Weights::F32(v) => v,
        Weights::Int8 { .. } => &mut [],
    }
}

/// Turns the kernels among `slots` into f32 copies (the values they had, dequantized), so that
/// they can be trained.
pub fn make_trainable(graph: &mut Graph, slots: &[Slot]) {
    for s in slots.iter().filter(|s| s.role == Role::Weights) {
        match &mut graph.nodes[s.node].op {
            Op::Depthwise(d) if !matches!(d.weights, Weights::F32(_)) => d.weights = Weights::F32(d.weights.to_f32()),
            Op::Conv(c) if !matches!(c.weights, Weights::F32(_)) => c.weights = Weights::F32(c.weights.to_f32()),
            Op::Linear(l) if !matches!(l.weights, Weights::F32(_)) => l.weights = Weights::F32(l.weights.to_f32()),
            _ => {}
        }
    }
}

/// Replaces the classifier with a new one for `classes` outputs: weights uniform in
/// `±1/√F` from `seed` (PyTorch's default for a linear layer), bias zero.
pub fn new_head(graph: &mut Graph, classes: usize, seed: u64) -> Result<()> {
    let head = head_index(graph)?;
    let Op::Linear(l) = &graph.nodes[head].op else { unreachable!("head_index checks the op") };
    let f = l.in_features;
    let bound = 1.0 / (f as f32).sqrt();
    let mut rng = crate::data::Rng::new(seed ^ 0x6865_6164);
    let weights = (0..classes * f).map(|_| (rng.uniform() * 2.0 - 1.0) * bound).collect();
    graph.nodes[head].op = Op::Linear(Linear {
        in_features: f,
        out_features: classes,
        weights: Weights::F32(weights),
        bias: vec![0.0; classes],
    });
    Ok(())
}

/// Copies into the classifier at node `head` (made by [`new_head`] for `labels`) the rows that
/// `rows` (a patch's classifier tensors for classes `old`) hold for the same class names; returns
/// how many classes kept their rows.
pub fn keep_rows(graph: &mut Graph, head: usize, rows: &[PatchTensor], old: &[String], labels: &[String]) -> usize {
    let Op::Linear(l) = &mut graph.nodes[head].op else { return 0 };
    let f = l.in_features;
    let (weights, bias) = (rows.iter().find(|t| t.role == Role::Weights), rows.iter().find(|t| t.role == Role::Bias));
    let mut kept = 0;
    for (j, name) in labels.iter().enumerate() {
        let Some(i) = old.iter().position(|o| o == name) else { continue };
        if let (Some(t), Weights::F32(w)) = (weights, &mut l.weights) {
            if let Some(row) = t.values.get(i * f..(i + 1) * f) {
                w[j * f..(j + 1) * f].copy_from_slice(row);
            }
        }
        if let Some(&b) = bias.and_then(|t| t.values.get(i)) {
            l.bias[j] = b;
        }
        kept += 1;
    }
    kept
}

/// One tensor of a patch: the new value of `role` at node `node` (named `name` in the graph).
#[derive(Debug, Clone, PartialEq)]
pub struct PatchTensor {
    pub node: u32,
    pub role: Role,
    pub shape: Vec<u32>,
    pub values: Vec<f32>,
}

/// A task patch for one backbone: what trains, for which classes and input size, and the values.
#[derive(Debug, Clone, PartialEq)]
pub struct Patch {
    pub kinds: PatchKinds,
    /// The fingerprint of the backbone it was trained on (see [`Graph::fingerprint`]).
    pub fingerprint: String,
    /// Input height and width the patch was trained at.
    pub resolution: u32,
    /// The task's class names, one per output.
    pub labels: Vec<String>,
    pub tensors: Vec<PatchTensor>,
}

impl Patch {
    /// Reads the patch of `kinds` out of a graph being trained.
    pub fn extract(
        graph: &Graph,
        kinds: PatchKinds,
        fingerprint: &str,
        resolution: u32,
        labels: Vec<String>,
    ) -> Result<Self> {
        let tensors = slots(graph, kinds)?
            .into_iter()
            .map(|s| PatchTensor {
                node: s.node as u32,
                role: s.role,
                shape: slot_shape(graph, s),
                values: param(graph, s).to_vec(),
            })
            .collect();
        Ok(Patch { kinds, fingerprint: fingerprint.to_string(), resolution, labels, tensors })
    }

    /// The patch as it reads back after its values are stored as `value_type`.
    pub fn stored_as(&self, value_type: file::ValueType) -> Patch {
        let mut p = self.clone();
        for t in &mut p.tensors {
            t.values.iter_mut().for_each(|v| *v = value_type.round(*v));
        }
        p
    }

    /// Number of values.
    pub fn params(&self) -> usize {
        self.tensors.iter().map(|t| t.values.len()).sum()
    }

    /// The backbone's graph with this patch applied. Refuses a patch made for another backbone
    /// and any tensor that does not fit the node it names. Hashes `base` to compare fingerprints;
    /// [`crate::Backbone::patched`] uses the backbone's cached one.
    pub fn apply(&self, base: &Graph) -> Result<Graph> {
        self.check(base, &base.fingerprint())?;
        let mut g = base.clone();
        self.write_into(&mut g);
        Ok(g)
    }

    /// The parameters the patch replaces, in node order, without repeats.
    pub fn slots(&self) -> Vec<Slot> {
        let mut s: Vec<Slot> = self.tensors.iter().map(|t| Slot { node: t.node as usize, role: t.role }).collect();
        s.sort_by_key(|s| (s.node, s.role.code()));
        s.dedup();
        s
    }

    /// Checks, without changing anything, that the patch was made for the backbone with
    /// `fingerprint` (whose graph is `base`) and that every tensor fits the node it names; after
    /// it, [`Patch::write_into`] cannot fail.
    pub fn check(&self, base: &Graph, fingerprint: &str) -> Result<()> {
        if fingerprint != self.fingerprint {
            return Err(Error::Patch(format!(
                "the patch was made for backbone {}, this backbone is {fingerprint}",
                self.fingerprint
            )));
        }
        let mut want = slots(base, self.kinds)?;
        want.sort_by_key(|s| (s.node, s.role.code()));
        if self.slots() != want || self.tensors.len() != want.len() {
            return Err(Error::Patch(format!(
                "its {} tensors are not the {} parameters a {} patch holds for this backbone",
                self.tensors.len(),
                want.len(),
                self.kinds
            )));
        }
        let head = head_index(base).ok();
        let mut head_shape = head.map(|h| {
            let Op::Linear(l) = &base.nodes[h].op else { unreachable!("head_index checks the op") };
            (l.out_features, l.bias.len())
        });
        for t in &self.tensors {
            let node = t.node as usize;
            let bad = |why: &str| Error::Patch(format!("tensor for node {node} ({:?}): {why}", t.role));
            let n = base.nodes.get(node).ok_or_else(|| bad("no such node"))?;
            if t.shape.iter().map(|&d| d as usize).product::<usize>() != t.values.len() {
                return Err(bad("shape and value count disagree"));
            }
            if Some(node) == head && self.kinds.new_head() {
                let Op::Linear(l) = &n.op else { unreachable!("head_index checks the op") };
                let (outputs, biases) = head_shape.as_mut().expect("a head exists");
                match (t.role, t.shape.as_slice()) {
                    (Role::Weights, &[o, i]) if i as usize == l.in_features => *outputs = o as usize,
                    (Role::Bias, &[b]) => *biases = b as usize,
                    _ => return Err(bad("does not fit the classifier")),
                }
                continue;
            }
            let allowed = matches!(
                (&n.op, t.role),
                (Op::Affine(_), Role::Scale | Role::Bias)
                    | (Op::Depthwise(_) | Op::Conv(_) | Op::Linear(_), Role::Weights)
                    | (Op::Linear(_), Role::Bias)
            );
            if !allowed || slot_shape(base, Slot { node, role: t.role }) != t.shape {
                return Err(bad("does not fit the node"));
            }
        }
        if let Some((outputs, biases)) = head_shape {
            if outputs != biases {
                return Err(Error::Patch("the classifier's weights and bias disagree".into()));
            }
            if self.labels.len() != outputs {
                return Err(Error::Patch(format!("{} labels for {outputs} outputs", self.labels.len())));
            }
        }
        Ok(())
    }

    /// Writes the patch's values into `graph`, a copy of the graph [`Patch::check`] accepted
    /// (other patches' values may be in it: only the nodes in [`Patch::nodes`] change).
    pub fn write_into(&self, graph: &mut Graph) {
        let head = head_index(graph).ok();
        for t in &self.tensors {
            let node = t.node as usize;
            if Some(node) == head && self.kinds.new_head() {
                let Op::Linear(l) = &mut graph.nodes[node].op else { unreachable!("head_index checks the op") };
                match t.role {
                    Role::Weights => {
                        l.out_features = t.shape[0] as usize;
                        l.weights = Weights::F32(t.values.clone());
                    }
                    _ => l.bias = t.values.clone(),
                }
                continue;
            }
            let slot = Slot { node, role: t.role };
            make_trainable(graph, &[slot]);
            param_mut(graph, slot).copy_from_slice(&t.values);
        }
    }
}
