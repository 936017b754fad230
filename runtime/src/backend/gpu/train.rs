//! Training on the GPU: the step (forward, loss, backward, gradient norm, optimizer) is planned
//! once per batch size as a list of kernel calls over buffers allocated by lifetime, then
//! replayed each step with one encoder and one submit; only five scalars come back per step.
//!
//! The forward writes an affine followed by its ReLU/ReLU6 in one kernel and keeps the
//! activation's output, from which the backward derives the activation's mask. Trained values
//! live in one flat buffer (`params`, with `grads` and the optimizer state beside it), each
//! tensor at a 256-byte boundary so that it binds as a range.

mod plan;
mod split;
mod state;

use std::collections::HashMap;
use std::sync::Arc;

use super::kernels::params::{word, Adam, RmsProp, Sgd};
use super::kernels::{self, align, bytes_of, f32s, pack, Call, DeviceWeights, Range, Update, WeightFormat};
use super::Gpu;
use crate::graph::{Graph, Op, Weights};
use crate::patch::{self, Role, Slot};
use crate::tensor::Tensor;
use crate::train::{optim, OptimizerKind, StepStats};
use crate::{Error, Result};
use plan::IoBuf;

/// What a [`GpuTrainer`] needs of the training configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuSettings {
    pub optimizer: OptimizerKind,
    pub weight_decay: f32,
    pub label_smoothing: f32,
    pub clip_norm: Option<f32>,
    /// Input height and width.
    pub resolution: usize,
    /// The batch of the steps (a larger one is planned for when it comes).
    pub batch: usize,
    /// Samples per pass ([`crate::train::TrainConfig::micro_batch`]).
    pub micro_batch: Option<usize>,
    /// The most bytes of device buffers training may hold: the largest micro-batch whose
    /// buffers fit is chosen ([`crate::train::TrainConfig::memory_budget`]).
    pub memory_budget: Option<u64>,
}

impl GpuSettings {
    /// True when steps run as passes whose gradients are summed (a micro-batch or a budget was
    /// given): every batch then runs on one set of buffers.
    fn split(&self) -> bool {
        self.micro_batch.is_some() || self.memory_budget.is_some()
    }
}

/// Where a per-channel vector or a weight tensor lives on the device.
#[derive(Debug, Clone, Copy)]
enum Src {
    /// Words `[at, at + len)` of the constants buffer.
    Const { at: usize, len: usize },
    /// Trained tensor `i` (in `params`).
    Param(usize),
}

#[derive(Debug, Clone, Copy, Default)]
struct NodeSrc {
    weights: Option<(Src, Src, WeightFormat)>,
    scale: Option<Src>,
    bias: Option<Src>,
}

/// A planned forward pass or whole training step for one input shape.
struct Program {
    calls: Vec<Call>,
    io: plan::Io,
    output: Range,
    /// The optimizer's call (whose uniform changes every step), when training.
    optimizer: Option<usize>,
    /// Bytes of the buffers it allocated.
    bytes: u64,
}

/// A patch being trained on the GPU. Holds the trained values, their gradients and the
/// optimizer state on the device, and one planned program per batch size seen.
pub struct GpuTrainer {
    gpu: Arc<Gpu>,
    graph: Graph,
    slots: Vec<Slot>,
    /// Word offset and length of each trained tensor in `params`.
    layout: Vec<(usize, usize)>,
    total: usize,
    decay_end: usize,
    params: Arc<wgpu::Buffer>,
    grads: Arc<wgpu::Buffer>,
    state: Arc<wgpu::Buffer>,
    consts: Arc<wgpu::Buffer>,
    ones: Src,
    zeros: Src,
    nodes: Vec<NodeSrc>,
    settings: GpuSettings,
    /// Planned programs by batch size, input height and width, and whether they train.
    programs: HashMap<(usize, usize, usize, bool), Program>,
    /// The split step, when steps run in passes ([`GpuSettings::split`]).
    split: Option<split::Split>,
    memory: Option<crate::train::memory::MemoryPlan>,
    adam_t: i32,
}

impl std::fmt::Debug for GpuTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuTrainer").field("gpu", &self.gpu).field("params", &self.total).finish()
    }
}

/// Labels as the words the labels buffer holds.
fn labels_bytes(labels: &[usize]) -> Vec<u8> {
    bytes_of(&labels.iter().map(|&l| l as u32).collect::<Vec<_>>())
}

struct Arena(Vec<u32>);

impl Arena {
    fn push(&mut self, words: &[u32]) -> Src {
        let at = self.0.len();
        self.0.extend_from_slice(words);
        self.0.resize(align(self.0.len().max(at + 1)), 0);
        Src::Const { at, len: words.len() }
    }
    fn push_f32(&mut self, v: &[f32]) -> Src {
        self.push(&v.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
    }
}

impl GpuTrainer {
    /// Uploads `graph` (whose trained slots hold their starting values, kernels made f32 by
    /// [`patch::make_trainable`]) and prepares training of `slots`.
    pub fn new(gpu: Arc<Gpu>, graph: &Graph, slots: &[Slot], settings: GpuSettings) -> Result<Self> {
        let mut order: Vec<usize> = (0..slots.len()).collect();
        order.sort_by_key(|&i| (slots[i].role != Role::Weights, slots[i].node, slots[i].role != Role::Scale));
        let mut layout = vec![(0, 0); slots.len()];
        let (mut at, mut decay_end) = (0, 0);
        for &i in &order {
            let len = patch::param(graph, slots[i]).len();
            layout[i] = (at, len);
            at += align(len);
            if slots[i].role == Role::Weights {
                decay_end = at;
            }
        }
        let total = at.max(kernels::ALIGN_WORDS);
        let mut init = vec![0f32; total];
        for (i, &s) in slots.iter().enumerate() {
            let (at, len) = layout[i];
            init[at..at + len].copy_from_slice(patch::param(graph, s));
        }
        let find =
            |node: usize, role: Role| slots.iter().position(|s| s.node == node && s.role == role).map(Src::Param);
        let mut arena = Arena(Vec::new());
        let mut nodes = vec![NodeSrc::default(); graph.nodes.len()];
        let mut widest = 1;
        for (i, node) in graph.nodes.iter().enumerate() {
            let weights = |w: &Weights, rows: usize, arena: &mut Arena| match find(i, Role::Weights) {
                Some(p) => (p, arena.push_f32(&vec![1.0; rows]), WeightFormat::F32),
                None => {
                    let (words, scales, format) = pack(w, rows);
                    (arena.push(&words), arena.push_f32(&scales), format)
                }
            };
            let ns = &mut nodes[i];
            match &node.op {
                Op::Conv(c) => ns.weights = Some(weights(&c.weights, c.out_channels, &mut arena)),
                Op::Depthwise(d) => ns.weights = Some(weights(&d.weights, d.channels, &mut arena)),
                Op::Linear(l) => {
                    ns.weights = Some(weights(&l.weights, l.out_features, &mut arena));
                    ns.bias = Some(find(i, Role::Bias).unwrap_or_else(|| arena.push_f32(&l.bias)));
                    widest = widest.max(l.out_features);
                }
                Op::Affine(a) => {
                    ns.scale = Some(find(i, Role::Scale).unwrap_or_else(|| arena.push_f32(&a.scale)));
                    ns.bias = Some(find(i, Role::Bias).unwrap_or_else(|| arena.push_f32(&a.bias)));
                    widest = widest.max(a.scale.len());
                }
                _ => {}
            }
        }
        for node in &graph.nodes {
            widest = widest.max(match &node.op {
                Op::Conv(c) => c.in_channels.max(c.out_channels),
                Op::Depthwise(d) => d.channels,
                _ => 1,
            });
        }
        let ones = arena.push_f32(&vec![1.0; widest]);
        let zeros = arena.push_f32(&vec![0.0; widest]);
        let state_len = if settings.optimizer == OptimizerKind::Adam { 2 * total } else { total };
        let trainer = GpuTrainer {
            params: gpu.storage_from(&bytes_of(&init), "params")?,
            grads: gpu.storage(total, "grads")?,
            state: gpu.storage(state_len, "optimizer state")?,
            consts: gpu.storage_from(&bytes_of(&arena.0), "frozen weights")?,
            gpu,
            graph: graph.clone(),
            slots: slots.to_vec(),
            layout,
            total,
            decay_end,
            ones,
            zeros,
            nodes,
            settings,
            programs: HashMap::new(),
            split: None,
            memory: None,
            adam_t: 1,
        };
        trainer.gpu.check()?;
        Ok(trainer)
    }

    /// The device context.
    pub fn gpu(&self) -> Arc<Gpu> {
        self.gpu.clone()
    }

    /// The adapter's name.
    pub fn device_name(&self) -> &str {
        &self.gpu.info().name
    }

    /// Bytes of device buffers held (trained values, gradients, optimizer state, frozen
    /// weights, and the activations of every planned batch size).
    pub fn buffer_bytes(&self) -> u64 {
        self.state_bytes()
            + self.consts.size()
            + self.programs.values().map(|p| p.bytes).sum::<u64>()
            + self.split.as_ref().map_or(0, |s| s.bytes)
    }

    /// Bytes of the trained values, their gradients and the optimizer state.
    fn state_bytes(&self) -> u64 {
        [&self.params, &self.grads, &self.state].iter().map(|b| b.size()).sum::<u64>()
    }

    fn src(&self, s: Src) -> Range {
        match s {
            Src::Const { at, len } => Range::words(&self.consts, at, len),
            Src::Param(i) => Range::words(&self.params, self.layout[i].0, self.layout[i].1),
        }
    }

    fn grad_range(&self, i: usize) -> Range {
        Range::words(&self.grads, self.layout[i].0, self.layout[i].1)
    }

    fn weights(&self, node: usize) -> DeviceWeights<Range> {
        let (w, s, format) = self.nodes[node].weights.expect("weights of a conv, depthwise or linear node");
        DeviceWeights { w: self.src(w), scale: self.src(s), format }
    }

    /// One step on `input: [N, 3, R, R]` with `labels[n] <` classes at learning rate `lr`.
    pub fn step(&mut self, input: &Tensor, labels: &[usize], lr: f32) -> Result<StepStats> {
        let n = input.shape[0];
        let r = self.settings.resolution;
        if input.shape[1..] != [self.graph.input_channels, r, r] || labels.len() != n {
            return Err(Error::Input(format!("a batch of shape {:?} for a {r}×{r} GPU trainer", input.shape)));
        }
        if n == 0 {
            return Err(Error::Input("an empty batch".into()));
        }
        let started = std::time::Instant::now();
        let staging = if self.settings.split() {
            self.step_split(input, labels, lr)?
        } else {
            let key = (n, r, r, true);
            if !self.programs.contains_key(&key) {
                let p = self.plan(n, (r, r), true)?;
                self.programs.insert(key, p);
            }
            let p = &self.programs[&key];
            let q = &self.gpu.queue;
            q.write_buffer(&p.io.range(IoBuf::Input).buf, 0, bytemuck::cast_slice(&input.data));
            q.write_buffer(&p.io.range(IoBuf::Labels).buf, 0, &labels_bytes(labels));
            if let Some(o) = p.optimizer {
                q.write_buffer(&p.calls[o].uniform, 0, &self.update(lr).params());
            }
            let mut encoder = self.gpu.encoder();
            self.gpu.record(&mut encoder, &p.calls);
            let staging = self.gpu.stage(&mut encoder, p.io.range(IoBuf::Scalars));
            q.submit([encoder.finish()]);
            staging
        };
        let submitted = started.elapsed();
        let s = f32s(&self.gpu.read_staged(&staging)?);
        log::debug!("GPU step: {:?} to upload, record and submit, {:?} in all", submitted, started.elapsed());
        if s[4] == 0.0 {
            return Err(Error::Train(format!(
                "the loss is {} (gradient norm {}): lower the learning rate (now {lr})",
                s[2], s[1]
            )));
        }
        self.adam_t = self.adam_t.saturating_add(1);
        Ok(StepStats { loss: s[2], correct: s[3] as usize, grad_norm: s[1] })
    }

    /// The optimizer's parameters for a step at learning rate `lr` (the constants are the CPU
    /// optimizer's, [`crate::train::optim`]).
    fn update(&self, lr: f32) -> Update {
        let (len, decay_end, wd) = (word(self.total), word(self.decay_end), self.settings.weight_decay);
        match self.settings.optimizer {
            OptimizerKind::Sgd => Update::Sgd(Sgd { len, decay_end, lr, wd, momentum: optim::SGD_MOMENTUM }),
            OptimizerKind::Adam => {
                let (beta1, beta2) = optim::ADAM_BETAS;
                let (c1, c2) = (1.0 - beta1.powi(self.adam_t), 1.0 - beta2.powi(self.adam_t));
                Update::Adam(Adam { len, decay_end, lr, wd, beta1, beta2, eps: optim::EPSILON, c1, c2 })
            }
            OptimizerKind::RmsProp => {
                Update::RmsProp(RmsProp { len, decay_end, lr, wd, alpha: optim::RMSPROP_ALPHA, eps: optim::EPSILON })
            }
        }
    }

    /// The same program with nothing trained: it serves inference, one forward pass per call of
    /// [`GpuTrainer::forward`] (what a GPU [`crate::Session`] runs).
    pub fn forward_only(gpu: Arc<Gpu>, graph: &Graph) -> Result<Self> {
        let settings = GpuSettings {
            optimizer: OptimizerKind::Sgd,
            weight_decay: 0.0,
            label_smoothing: 0.0,
            clip_norm: None,
            resolution: 0,
            batch: 1,
            micro_batch: None,
            memory_budget: None,
        };
        Self::new(gpu, graph, &[], settings)
    }

    /// Logits `[N, classes, 1, 1]` of the graph with its current trained values for images
    /// `[N, C, H, W]` (one program planned per input shape).
    pub fn forward(&mut self, input: &Tensor) -> Result<Tensor> {
        let [n, c, h, w] = input.shape;
        if n == 0 || c != self.graph.input_channels {
            return Err(Error::Input(format!(
                "input of shape {:?} for a {}-channel model",
                input.shape, self.graph.input_channels
            )));
        }
        let key = (n, h, w, false);
        if !self.programs.contains_key(&key) {
            let p = self.plan(n, (h, w), false)?;
            self.programs.insert(key, p);
        }
        let p = &self.programs[&key];
        self.gpu.queue.write_buffer(&p.io.range(IoBuf::Input).buf, 0, bytemuck::cast_slice(&input.data));
        let mut encoder = self.gpu.encoder();
        self.gpu.record(&mut encoder, &p.calls);
        let staging = self.gpu.stage(&mut encoder, &p.output);
        self.gpu.queue.submit([encoder.finish()]);
        let data = f32s(&self.gpu.read_staged(&staging)?);
        let k = data.len() / n;
        Ok(Tensor { shape: [n, k, 1, 1], data })
    }

    /// Wall time per kernel of one step on `input` (each call submitted and waited for alone,
    /// so each includes one submission's latency), slowest first: `(kernel, calls, ms)`. The
    /// step's updates are applied as in [`GpuTrainer::step`].
    pub fn profile(&mut self, input: &Tensor, labels: &[usize], lr: f32) -> Result<Vec<(&'static str, usize, f64)>> {
        if self.settings.split() {
            return Err(Error::Gpu(
                "the profile is of a whole step: leave the micro-batch and the budget unset".into(),
            ));
        }
        self.step(input, labels, lr)?;
        let r = self.settings.resolution;
        let p = &self.programs[&(input.shape[0], r, r, true)];
        let mut by: HashMap<&'static str, (usize, f64)> = HashMap::new();
        for c in &p.calls {
            let t = std::time::Instant::now();
            let mut encoder = self.gpu.encoder();
            self.gpu.record(&mut encoder, std::slice::from_ref(c));
            self.gpu.queue.submit([encoder.finish()]);
            self.gpu.wait()?;
            let e = by.entry(c.kernel.name()).or_default();
            e.0 += 1;
            e.1 += t.elapsed().as_secs_f64() * 1e3;
        }
        let mut v: Vec<_> = by.into_iter().map(|(k, (n, ms))| (k, n, ms)).collect();
        v.sort_by(|a, b| b.2.total_cmp(&a.2));
        Ok(v)
    }
}
