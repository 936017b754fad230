//! Training on the GPU: the step (forward, loss, backward, gradient norm, optimizer) is planned
//! once per batch size as a list of kernel calls over buffers allocated by lifetime, then
//! replayed each step with one encoder and one submit; only five scalars come back per step.
//!
//! The forward writes an affine followed by its ReLU/ReLU6 in one kernel and keeps the
//! activation's output, from which the backward derives the activation's mask. Trained values
//! live in one flat buffer (`params`, with `grads` and the optimizer state beside it), each
//! tensor at a 256-byte boundary so that it binds as a range.

use std::collections::HashMap;
use std::sync::Arc;

use super::kernels::{
    self, act_code, align, bytes_of, f32s, pack, per_element, window_words, Call, DeviceWeights, Groups, Kernel, Range,
    WeightFormat, Word,
};
use super::Gpu;
use crate::graph::{Graph, Op, Shape, Weights};
use crate::ops::Activation;
use crate::patch::{self, Role, Slot};
use crate::tensor::Tensor;
use crate::train::{OptimizerKind, StepStats};
use crate::{Error, Result};

/// What a [`GpuTrainer`] needs of the training configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuSettings {
    pub optimizer: OptimizerKind,
    pub weight_decay: f32,
    pub label_smoothing: f32,
    pub clip_norm: Option<f32>,
    /// Input height and width.
    pub resolution: usize,
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

/// A buffer reference before allocation.
#[derive(Debug, Clone)]
enum Ref {
    Value(usize),
    Grad(usize),
    Temp(usize, usize),
    Fixed(Range),
}

struct PlannedCall {
    kernel: Kernel,
    format: WeightFormat,
    refs: Vec<Ref>,
    words: Vec<Word>,
    groups: Groups,
    time: usize,
}

/// The buffer range of each value, gradient and temporary of a planned step.
type Allocation = HashMap<(u8, usize), Range>;

struct Program {
    calls: Vec<Call>,
    input: Range,
    labels: Range,
    scalars: Range,
    optimizer: usize,
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
    programs: HashMap<usize, Program>,
    adam_t: i32,
}

impl std::fmt::Debug for GpuTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuTrainer").field("gpu", &self.gpu).field("params", &self.total).finish()
    }
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
        for s in slots {
            if s.role == Role::Weights && matches!(graph.nodes[s.node].op, Op::Conv(_)) {
                return Err(Error::Gpu(
                    "training dense convolution kernels (patch kind full) is not implemented on the GPU: use the CPU"
                        .into(),
                ));
            }
        }
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
        let shapes = graph.infer_shapes(settings.resolution, settings.resolution)?;
        widest = widest.max(shapes.iter().map(|s| s.c).max().unwrap_or(1));
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
            adam_t: 1,
        };
        trainer.gpu.check()?;
        Ok(trainer)
    }

    /// The adapter's name.
    pub fn device_name(&self) -> &str {
        &self.gpu.info().name
    }

    /// Bytes of device buffers held (trained values, gradients, optimizer state, frozen
    /// weights, and the activations of every planned batch size).
    pub fn buffer_bytes(&self) -> u64 {
        [&self.params, &self.grads, &self.state, &self.consts].iter().map(|b| b.size()).sum::<u64>()
            + self.programs.values().map(|p| p.bytes).sum::<u64>()
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

    fn weights(&self, node: usize) -> DeviceWeights {
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
        if !self.programs.contains_key(&n) {
            let p = self.plan(n)?;
            self.programs.insert(n, p);
        }
        let started = std::time::Instant::now();
        let p = &self.programs[&n];
        let q = &self.gpu.queue;
        q.write_buffer(&p.input.buf, p.input.offset, bytemuck::cast_slice(&input.data));
        q.write_buffer(
            &p.labels.buf,
            p.labels.offset,
            &bytes_of(&labels.iter().map(|&l| l as u32).collect::<Vec<_>>()),
        );
        q.write_buffer(&p.calls[p.optimizer].uniform, 0, &self.optimizer_words(lr));
        let mut encoder = self.gpu.encoder();
        self.gpu.record(&mut encoder, &p.calls);
        let staging = self.gpu.stage(&mut encoder, &p.scalars);
        q.submit([encoder.finish()]);
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

    fn optimizer_words(&self, lr: f32) -> Vec<u8> {
        let head = [Word(self.total as u32), Word(self.decay_end as u32), lr.into(), self.settings.weight_decay.into()];
        let tail: Vec<Word> = match self.settings.optimizer {
            OptimizerKind::Sgd => vec![0.9f32.into()],
            OptimizerKind::Adam => {
                let (b1, b2) = (0.9f32, 0.999f32);
                vec![
                    b1.into(),
                    b2.into(),
                    1e-8f32.into(),
                    (1.0 - b1.powi(self.adam_t)).into(),
                    (1.0 - b2.powi(self.adam_t)).into(),
                ]
            }
            OptimizerKind::RmsProp => vec![0.99f32.into(), 1e-8f32.into()],
        };
        let mut bytes = [0u8; 64];
        for (i, w) in head.iter().chain(&tail).enumerate() {
            bytes[4 * i..4 * i + 4].copy_from_slice(&w.0.to_le_bytes());
        }
        bytes.to_vec()
    }

    /// Wall time per kernel of one step on `input` (each call submitted and waited for alone,
    /// so each includes one submission's latency), slowest first: `(kernel, calls, ms)`. The
    /// step's updates are applied as in [`GpuTrainer::step`].
    pub fn profile(&mut self, input: &Tensor, labels: &[usize], lr: f32) -> Result<Vec<(&'static str, usize, f64)>> {
        self.step(input, labels, lr)?;
        let p = &self.programs[&input.shape[0]];
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

    /// The trained values, one vector per slot (in slot order).
    pub fn read_params(&self) -> Result<Vec<Vec<f32>>> {
        let mut encoder = self.gpu.encoder();
        let staging = self.gpu.stage(&mut encoder, &Range::whole(self.params.clone()));
        self.gpu.queue.submit([encoder.finish()]);
        let all = f32s(&self.gpu.read_staged(&staging)?);
        Ok(self.layout.iter().map(|&(at, len)| all[at..at + len].to_vec()).collect())
    }

    /// Copies the trained values into `graph` (the graph the trainer was made from).
    pub fn sync(&self, graph: &mut Graph) -> Result<()> {
        for (s, v) in self.slots.iter().zip(self.read_params()?) {
            patch::param_mut(graph, *s).copy_from_slice(&v);
        }
        Ok(())
    }

    fn plan(&self, n: usize) -> Result<Program> {
        let g = &self.graph;
        let r = self.settings.resolution;
        let shapes = g.infer_shapes(r, r)?;
        let count = g.nodes.len();
        let size = |v: usize| n * shapes[v].c * shapes[v].h * shapes[v].w;
        let gpu = &self.gpu;
        let input = Range::words(&gpu.storage(size(0), "input")?, 0, size(0));
        let labels = Range::words(&gpu.storage(n, "labels")?, 0, n);
        let stats = Range::words(&gpu.storage(2 * n, "losses")?, 0, 2 * n);
        let scalars = Range::words(&gpu.storage(8, "scalars")?, 0, 8);
        let chunk = 4096;
        let parts = self.total.div_ceil(chunk);
        let partial = Range::words(&gpu.storage(parts, "norm parts")?, 0, parts);

        let trains = |node: usize, role: Role| self.slots.iter().position(|s| s.node == node && s.role == role);
        let mut needs_grad = vec![false; g.num_values];
        for (i, node) in g.nodes.iter().enumerate() {
            let t = self.slots.iter().any(|s| s.node == i);
            needs_grad[node.output] = t || node.inputs.iter().any(|&v| needs_grad[v]);
        }
        let readers = |v: usize| g.nodes.iter().filter(|m| m.inputs.contains(&v)).count();
        let fused: Vec<bool> = (0..count)
            .map(|s| {
                matches!(g.nodes[s].op, Op::Affine(_))
                    && g.nodes
                        .get(s + 1)
                        .is_some_and(|m| matches!(m.op, Op::Relu | Op::Relu6) && m.inputs == [g.nodes[s].output])
                    && readers(g.nodes[s].output) == 1
                    && g.nodes[s].output != g.output
            })
            .collect();
        let fused_into = |s: usize| s > 0 && fused[s - 1];

        let value = |v: usize| if v == 0 { Ref::Fixed(input.clone()) } else { Ref::Value(v) };
        let fixed = Ref::Fixed;
        let u = |v: &[usize]| v.iter().map(|&x| Word(x as u32)).collect::<Vec<_>>();
        let mut calls: Vec<PlannedCall> = Vec::new();
        let mut temps = 0;
        let mut push = |kernel, format, refs: Vec<Ref>, words: Vec<Word>, groups, time| {
            calls.push(PlannedCall { kernel, format, refs, words, groups, time })
        };
        let act_of = |op: &Op| match op {
            Op::Relu => Activation::Relu,
            _ => Activation::Relu6,
        };

        for (s, node) in g.nodes.iter().enumerate() {
            let (x, y) = (node.inputs[0], node.output);
            let (xs, ys): (Shape, Shape) = (shapes[x], shapes[y]);
            match &node.op {
                Op::Conv(c) => {
                    let w = self.weights(s);
                    let refs = vec![value(x), fixed(w.w), fixed(w.scale), Ref::Value(y)];
                    if c.window.is_pointwise() {
                        let grid = [(xs.h * xs.w).div_ceil(64), c.out_channels.div_ceil(64), n].map(|v| v as u32);
                        push(
                            Kernel::PointwiseForward,
                            w.format,
                            refs,
                            u(&[n, c.in_channels, c.out_channels, xs.h * xs.w]),
                            Groups::Grid(grid),
                            s,
                        );
                    } else {
                        let words =
                            window_words(&[c.in_channels, c.out_channels], n, (xs.h, xs.w), (ys.h, ys.w), &c.window);
                        push(Kernel::ConvForward, w.format, refs, words, per_element(size(y)), s);
                    }
                }
                Op::Depthwise(d) => {
                    let w = self.weights(s);
                    let words = window_words(&[d.channels], n, (xs.h, xs.w), (ys.h, ys.w), &d.window);
                    push(
                        Kernel::DepthwiseForward,
                        w.format,
                        vec![value(x), fixed(w.w), fixed(w.scale), Ref::Value(y)],
                        words,
                        per_element(size(y)),
                        s,
                    );
                }
                Op::Affine(_) | Op::Relu | Op::Relu6 if !fused_into(s) => {
                    let (out, act, scale, bias) = if fused[s] {
                        (g.nodes[s + 1].output, act_of(&g.nodes[s + 1].op), self.nodes[s].scale, self.nodes[s].bias)
                    } else if let Op::Affine(_) = node.op {
                        (y, Activation::Identity, self.nodes[s].scale, self.nodes[s].bias)
                    } else {
                        (y, act_of(&node.op), Some(self.ones), Some(self.zeros))
                    };
                    let (sc, bi) = (self.src(scale.expect("affine scale")), self.src(bias.expect("affine bias")));
                    let words = u(&[size(x), xs.c, xs.h * xs.w, act_code(act) as usize]);
                    push(
                        Kernel::AffineForward,
                        WeightFormat::F32,
                        vec![value(x), fixed(sc), fixed(bi), Ref::Value(out)],
                        words,
                        per_element(size(x)),
                        s,
                    );
                }
                Op::Affine(_) | Op::Relu | Op::Relu6 => {}
                Op::Add => {
                    let refs = vec![value(x), value(node.inputs[1]), Ref::Value(y)];
                    push(Kernel::AddForward, WeightFormat::F32, refs, u(&[size(y)]), per_element(size(y)), s);
                }
                Op::GlobalPool => {
                    push(
                        Kernel::PoolForward,
                        WeightFormat::F32,
                        vec![value(x), Ref::Value(y)],
                        u(&[n * xs.c, xs.h * xs.w]),
                        per_element(n * xs.c),
                        s,
                    );
                }
                Op::Linear(l) => {
                    let w = self.weights(s);
                    let tmp = Ref::Temp(temps, n * l.out_features);
                    temps += 1;
                    let grid = [1, l.out_features.div_ceil(64) as u32, n as u32];
                    let refs = vec![value(x), fixed(w.w), fixed(w.scale), tmp.clone()];
                    push(
                        Kernel::PointwiseForward,
                        w.format,
                        refs,
                        u(&[n, l.in_features, l.out_features, 1]),
                        Groups::Grid(grid),
                        s,
                    );
                    let bias = self.src(self.nodes[s].bias.expect("linear bias"));
                    let refs = vec![tmp, fixed(self.src(self.ones)), fixed(bias), Ref::Value(y)];
                    push(
                        Kernel::AffineForward,
                        WeightFormat::F32,
                        refs,
                        u(&[n * l.out_features, l.out_features, 1, 0]),
                        per_element(n * l.out_features),
                        s,
                    );
                }
            }
        }

        let out = g.output;
        let k = shapes[out].c;
        let loss_words = vec![Word(n as u32), Word(k as u32), self.settings.label_smoothing.into()];
        let refs = vec![Ref::Value(out), fixed(labels.clone()), Ref::Grad(out), fixed(stats.clone())];
        push(
            Kernel::SoftmaxCrossEntropy,
            WeightFormat::F32,
            refs,
            loss_words,
            Groups::Flat((n as u32).div_ceil(64)),
            count,
        );
        let mut written = vec![false; g.num_values];
        written[out] = true;

        for (s, node) in g.nodes.iter().enumerate().rev() {
            let time = 2 * count - s;
            let (x, y) = (node.inputs[0], node.output);
            let (xs, ys) = (shapes[x], shapes[y]);
            let dy_value = if fused[s] { g.nodes[s + 1].output } else { y };
            if !written[dy_value] || fused_into(s) {
                continue;
            }
            let dy = Ref::Grad(dy_value);
            let need_dx = needs_grad[x];
            let acc = written[x];
            match &node.op {
                Op::Conv(c) => {
                    if need_dx {
                        if !c.window.is_pointwise() {
                            return Err(Error::Gpu(format!(
                                "node '{}': the input gradient of a {}×{} convolution is not implemented on the GPU",
                                node.name, c.window.kernel[0], c.window.kernel[1]
                            )));
                        }
                        let w = self.weights(s);
                        let grid = [(xs.h * xs.w).div_ceil(64), c.in_channels.div_ceil(64), n].map(|v| v as u32);
                        let words = u(&[n, c.in_channels, c.out_channels, xs.h * xs.w, acc as usize]);
                        push(
                            Kernel::PointwiseBackwardInput,
                            w.format,
                            vec![dy, fixed(w.w), fixed(w.scale), Ref::Grad(x)],
                            words,
                            Groups::Grid(grid),
                            time,
                        );
                    }
                }
                Op::Depthwise(d) => {
                    let words = window_words(&[d.channels], n, (xs.h, xs.w), (ys.h, ys.w), &d.window);
                    if let Some(i) = trains(s, Role::Weights) {
                        let len = d.channels * d.window.kernel[0] * d.window.kernel[1];
                        let refs = vec![value(x), dy.clone(), fixed(self.grad_range(i))];
                        push(
                            Kernel::DepthwiseBackwardWeight,
                            WeightFormat::F32,
                            refs,
                            words.clone(),
                            Groups::Flat(len as u32),
                            time,
                        );
                    }
                    if need_dx {
                        let w = self.weights(s);
                        let mut words = words;
                        words.push(Word(acc as u32));
                        let refs = vec![dy, fixed(w.w), fixed(w.scale), Ref::Grad(x)];
                        push(Kernel::DepthwiseBackwardInput, w.format, refs, words, per_element(size(x)), time);
                    }
                }
                Op::Linear(l) => {
                    let o = l.out_features;
                    if let Some(i) = trains(s, Role::Weights) {
                        let refs = vec![dy.clone(), value(x), fixed(self.grad_range(i))];
                        push(
                            Kernel::LinearBackwardWeight,
                            WeightFormat::F32,
                            refs,
                            u(&[n, o, l.in_features]),
                            per_element(o * l.in_features),
                            time,
                        );
                    }
                    if let Some(i) = trains(s, Role::Bias) {
                        let refs = vec![dy.clone(), dy.clone(), dy.clone(), fixed(self.grad_range(i))];
                        push(
                            Kernel::AffineBackwardParams,
                            WeightFormat::F32,
                            refs,
                            u(&[n, o, 1, 0, 0, 1, 0, 0]),
                            Groups::Flat(o as u32),
                            time,
                        );
                    }
                    if need_dx {
                        let w = self.weights(s);
                        let grid = [1, l.in_features.div_ceil(64) as u32, n as u32];
                        let words = u(&[n, l.in_features, o, 1, acc as usize]);
                        push(
                            Kernel::PointwiseBackwardInput,
                            w.format,
                            vec![dy, fixed(w.w), fixed(w.scale), Ref::Grad(x)],
                            words,
                            Groups::Grid(grid),
                            time,
                        );
                    }
                }
                Op::GlobalPool => {
                    if need_dx {
                        let words = u(&[size(x), xs.h * xs.w, acc as usize]);
                        push(
                            Kernel::PoolBackward,
                            WeightFormat::F32,
                            vec![dy, Ref::Grad(x)],
                            words,
                            per_element(size(x)),
                            time,
                        );
                    }
                }
                Op::Affine(_) | Op::Relu | Op::Relu6 => {
                    let (act, scale, mask) = if fused[s] {
                        (act_of(&g.nodes[s + 1].op), self.nodes[s].scale, Ref::Value(dy_value))
                    } else if let Op::Affine(_) = node.op {
                        (Activation::Identity, self.nodes[s].scale, dy.clone())
                    } else {
                        (act_of(&node.op), Some(self.ones), Ref::Value(y))
                    };
                    let (ts, tb) = (trains(s, Role::Scale), trains(s, Role::Bias));
                    if ts.is_some() || tb.is_some() {
                        let first = [ts, tb].into_iter().flatten().map(|i| self.layout[i].0).min().expect("one trains");
                        let last = [ts, tb]
                            .into_iter()
                            .flatten()
                            .map(|i| self.layout[i].0 + self.layout[i].1)
                            .max()
                            .expect("one trains");
                        let rel = |i: Option<usize>| i.map_or(0, |i| self.layout[i].0 - first);
                        let words = u(&[
                            n,
                            xs.c,
                            xs.h * xs.w,
                            act_code(act) as usize,
                            ts.is_some() as usize,
                            tb.is_some() as usize,
                            rel(ts),
                            rel(tb),
                        ]);
                        let xr = if ts.is_some() { value(x) } else { dy.clone() };
                        let refs =
                            vec![dy.clone(), mask.clone(), xr, fixed(Range::words(&self.grads, first, last - first))];
                        push(
                            Kernel::AffineBackwardParams,
                            WeightFormat::F32,
                            refs,
                            words,
                            Groups::Flat(xs.c as u32),
                            time,
                        );
                    }
                    if need_dx {
                        let sc = self.src(scale.expect("affine scale"));
                        let words = u(&[size(x), xs.c, xs.h * xs.w, act_code(act) as usize, acc as usize]);
                        push(
                            Kernel::AffineBackwardInput,
                            WeightFormat::F32,
                            vec![dy, mask, fixed(sc), Ref::Grad(x)],
                            words,
                            per_element(size(x)),
                            time,
                        );
                    }
                }
                Op::Add => {
                    for (j, &v) in node.inputs.iter().enumerate() {
                        if needs_grad[v] {
                            let acc = written[v] || (j == 1 && node.inputs[0] == v);
                            push(
                                Kernel::AddBackward,
                                WeightFormat::F32,
                                vec![dy.clone(), Ref::Grad(v)],
                                u(&[size(y), acc as usize]),
                                per_element(size(y)),
                                time,
                            );
                        }
                    }
                    for &v in &node.inputs {
                        written[v] |= needs_grad[v];
                    }
                    continue;
                }
            }
            if need_dx {
                written[x] = true;
            }
        }

        let end = 2 * count + 1;
        let grads = Range::whole(self.grads.clone());
        push(
            Kernel::GradNorm,
            WeightFormat::F32,
            vec![fixed(grads.clone()), fixed(partial.clone())],
            u(&[self.total, chunk]),
            Groups::Flat(parts as u32),
            end,
        );
        let clip_words =
            vec![Word(parts as u32), Word(n as u32), self.settings.clip_norm.unwrap_or(f32::INFINITY).into()];
        push(
            Kernel::Clip,
            WeightFormat::F32,
            vec![fixed(partial), fixed(stats.clone()), fixed(scalars.clone())],
            clip_words,
            Groups::Grid([1, 1, 1]),
            end,
        );
        let kernel = match self.settings.optimizer {
            OptimizerKind::Sgd => Kernel::SgdUpdate,
            OptimizerKind::Adam => Kernel::AdamUpdate,
            OptimizerKind::RmsProp => Kernel::RmspropUpdate,
        };
        let refs = vec![
            fixed(Range::whole(self.params.clone())),
            fixed(grads),
            fixed(Range::whole(self.state.clone())),
            fixed(scalars.clone()),
        ];
        push(kernel, WeightFormat::F32, refs, Vec::new(), per_element(self.total), end + 1);

        let (buffers, bytes) = self.allocate(&calls, &shapes, n)?;
        let mut out = Vec::with_capacity(calls.len());
        for c in &calls {
            let ranges: Vec<Range> = c
                .refs
                .iter()
                .map(|r| match r {
                    Ref::Fixed(range) => range.clone(),
                    other => buffers[&key(other)].clone(),
                })
                .collect();
            let refs: Vec<&Range> = ranges.iter().collect();
            out.push(gpu.call(c.kernel, c.format, &refs, &c.words, c.groups));
        }
        gpu.check()?;
        let fixed_bytes = [&input, &labels, &stats, &scalars].iter().map(|r| r.size).sum::<u64>() + 4 * parts as u64;
        log::info!(
            "planned a GPU step for batch {n}: {} kernel calls, {:.1} MiB of activation buffers",
            out.len(),
            bytes as f64 / (1 << 20) as f64
        );
        let optimizer = out.len() - 1;
        Ok(Program { calls: out, input, labels, scalars, optimizer, bytes: bytes + fixed_bytes })
    }

    /// Buffers for every value, gradient and temporary, shared between those whose lifetimes
    /// (first to last call that names them) do not overlap.
    fn allocate(&self, calls: &[PlannedCall], shapes: &[Shape], n: usize) -> Result<(Allocation, u64)> {
        let mut life: HashMap<(u8, usize), (usize, usize, usize)> = HashMap::new();
        for c in calls {
            for r in &c.refs {
                let words = match r {
                    Ref::Fixed(_) => continue,
                    Ref::Value(v) | Ref::Grad(v) => n * shapes[*v].c * shapes[*v].h * shapes[*v].w,
                    Ref::Temp(_, len) => *len,
                };
                let e = life.entry(key(r)).or_insert((c.time, c.time, words));
                e.0 = e.0.min(c.time);
                e.1 = e.1.max(c.time);
            }
        }
        let mut order: Vec<_> = life.into_iter().collect();
        order.sort_by_key(|&(k, (start, ..))| (start, k));
        let mut free: Vec<Arc<wgpu::Buffer>> = Vec::new();
        let mut busy: Vec<(usize, Arc<wgpu::Buffer>)> = Vec::new();
        let mut out = HashMap::new();
        let mut bytes = 0;
        for (k, (start, end, words)) in order {
            let (done, still): (Vec<_>, Vec<_>) = busy.into_iter().partition(|(e, _)| *e < start);
            busy = still;
            free.extend(done.into_iter().map(|(_, b)| b));
            let need = 4 * words as u64;
            let pick =
                free.iter().enumerate().filter(|(_, b)| b.size() >= need).min_by_key(|(_, b)| b.size()).map(|(i, _)| i);
            let buf = match pick {
                Some(i) => free.swap_remove(i),
                None => {
                    let b = self.gpu.storage(words, "activations")?;
                    bytes += b.size();
                    b
                }
            };
            out.insert(k, Range::words(&buf, 0, words));
            busy.push((end, buf));
        }
        Ok((out, bytes))
    }
}

fn key(r: &Ref) -> (u8, usize) {
    match r {
        Ref::Value(v) => (0, *v),
        Ref::Grad(v) => (1, *v),
        Ref::Temp(t, _) => (2, *t),
        Ref::Fixed(_) => unreachable!("fixed ranges are not allocated"),
    }
}
