//! Planning of a GPU step from the [`Schedule`]: the kernel launches of the forward
//! ([`forward`]), the loss, the backward ([`backward`]) and the update ([`update`]: gradient
//! norm, clip, optimizer) over planned buffers, then device buffers shared by lifetime.

mod backward;
mod forward;
mod io;
mod update;

pub(super) use io::{Io, IoBuf, IoSizes};

use std::collections::HashMap;

use super::{GpuTrainer, Program};
use crate::backend::gpu::kernels::params::{word, Channelwise};
use crate::backend::gpu::kernels::{Call, DeviceWeights, Launch, Range};
use crate::graph::{Graph, Op, Shape};
use crate::ops::Activation;
use crate::schedule::Schedule;
use crate::{Error, Result};

/// A buffer before allocation: a value of the graph, the gradient of one, a temporary of a
/// length, one of the step's fixed buffers ([`IoBuf`]), or a range that exists already.
#[derive(Debug, Clone)]
pub(super) enum Ref {
    Value(usize),
    Grad(usize),
    Temp(usize, usize),
    Io(IoBuf),
    Fixed(Range),
}

/// A planned launch over planned buffers, at a time (an order of the step; buffers whose first
/// and last times do not overlap share memory).
pub(super) struct Planned {
    launch: Launch<Ref>,
    time: usize,
}

/// The buffer range of each value, gradient and temporary of a planned step.
pub(super) type Allocation = HashMap<(u8, usize), Range>;

/// What a planned program computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum What {
    /// The forward pass.
    Forward,
    /// A whole training step: forward, loss, backward and the update over `grads`.
    Step,
    /// One pass of a split step: forward, loss and backward (the update is planned apart).
    Pass,
}

/// What the parts of the planner share while they add launches.
pub(super) struct Planner<'a> {
    t: &'a GpuTrainer,
    g: &'a Graph,
    sched: Schedule,
    shapes: Vec<Shape>,
    /// Samples per pass, and in the batch (labels and per-sample stats).
    n: usize,
    batch: usize,
    calls: Vec<Planned>,
    temps: usize,
}

impl Planner<'_> {
    fn push(&mut self, launch: Launch<Ref>, time: usize) {
        self.calls.push(Planned { launch, time });
    }

    /// Values of `v` in the batch.
    fn size(&self, v: usize) -> usize {
        let s = self.shapes[v];
        self.n * s.c * s.h * s.w
    }

    /// Values of product operand `a` per value of operand `b` (1, or H·W for a per-channel gate).
    fn per(&self, a: usize, b: usize) -> u32 {
        word(self.size(a) / self.size(b).max(1))
    }

    /// `size(v)` as a kernel parameter.
    fn size_word(&self, v: usize) -> u32 {
        word(self.size(v))
    }

    /// Value `v` (the graph input is a fixed buffer).
    fn value(&self, v: usize) -> Ref {
        if v == 0 {
            Ref::Io(IoBuf::Input)
        } else {
            Ref::Value(v)
        }
    }

    fn temp(&mut self, len: usize) -> Ref {
        self.temps += 1;
        Ref::Temp(self.temps - 1, len)
    }

    /// What the channelwise kernels compute for node `s` (an affine, with its fused activation,
    /// or a lone activation: an affine of scale 1 and bias 0): the value written, the activation,
    /// the scale and the bias.
    fn affine_parts(&self, s: usize) -> (usize, Activation, Range, Range) {
        let (t, node) = (self.t, &self.g.nodes[s]);
        let (out, act, scale, bias) = match (self.sched.fused_act(s), &node.op) {
            (Some(act), _) => (self.sched.output_of(self.g, s), act, t.nodes[s].scale, t.nodes[s].bias),
            (None, Op::Affine(_)) => (node.output, Activation::Identity, t.nodes[s].scale, t.nodes[s].bias),
            (None, op) => (node.output, op.activation().expect("an activation"), Some(t.ones), Some(t.zeros)),
        };
        (out, act, t.src(scale.expect("affine scale")), t.src(bias.expect("affine bias")))
    }

    /// The parameters of a channelwise launch over value `x` (its size and planes).
    fn channelwise(&self, x: usize, act: Activation, accumulate: bool) -> Channelwise {
        let xs = self.shapes[x];
        Channelwise {
            total: self.size_word(x),
            c: word(xs.c),
            hw: word(xs.h * xs.w),
            act: act.code(),
            accumulate: accumulate as u32,
        }
    }

    /// The weights of node `s` as planned bindings.
    fn weights(&self, s: usize) -> DeviceWeights<Ref> {
        let w = self.t.weights(s);
        DeviceWeights { w: Ref::Fixed(w.w), scale: Ref::Fixed(w.scale), format: w.format }
    }
}

/// The buffers of a planned program before allocation: which buffer each value, gradient and
/// temporary shares, and each buffer's words. Made without the device, so that a plan's bytes
/// are known before anything is allocated.
pub(super) struct Layout {
    slot: HashMap<(u8, usize), usize>,
    words: Vec<usize>,
    /// Words of each value, gradient and temporary.
    need: HashMap<(u8, usize), usize>,
}

impl Layout {
    /// Bytes of its buffers.
    pub fn bytes(&self) -> u64 {
        self.words.iter().map(|&w| 4 * w.max(1) as u64).sum()
    }
}

/// A planned program on the device.
pub(super) struct Realized {
    pub calls: Vec<Call>,
    pub buffers: Allocation,
    /// Bytes of the buffers it allocated (none when it reused another's).
    pub bytes: u64,
}

impl Planner<'_> {
    /// The buffers of the planned calls: each value, gradient and temporary shares a buffer
    /// with those whose lifetimes (first to last call that names them) do not overlap, the
    /// smallest free one that is large enough, else a new one.
    pub fn layout(&self) -> Layout {
        let mut life: HashMap<(u8, usize), (usize, usize, usize)> = HashMap::new();
        for c in &self.calls {
            for r in &c.launch.bindings {
                let words = match r {
                    Ref::Fixed(_) | Ref::Io(_) => continue,
                    Ref::Value(v) | Ref::Grad(v) => self.size(*v),
                    Ref::Temp(_, len) => *len,
                };
                let e = life.entry(key(r)).or_insert((c.time, c.time, words));
                e.0 = e.0.min(c.time);
                e.1 = e.1.max(c.time);
            }
        }
        let mut order: Vec<_> = life.into_iter().collect();
        order.sort_by_key(|&(k, (start, ..))| (start, k));
        let (mut free, mut busy): (Vec<usize>, Vec<(usize, usize)>) = (Vec::new(), Vec::new());
        let mut layout = Layout { slot: HashMap::new(), words: Vec::new(), need: HashMap::new() };
        for (k, (start, end, words)) in order {
            let (done, still): (Vec<_>, Vec<_>) = busy.into_iter().partition(|(e, _)| *e < start);
            busy = still;
            free.extend(done.into_iter().map(|(_, b)| b));
            let size = |b: usize| 4 * layout.words[b].max(1);
            let pick = free
                .iter()
                .enumerate()
                .filter(|(_, &b)| size(b) >= 4 * words.max(1))
                .min_by_key(|(_, &b)| size(b))
                .map(|(i, _)| i);
            let buf = match pick {
                Some(i) => free.swap_remove(i),
                None => {
                    layout.words.push(words);
                    layout.words.len() - 1
                }
            };
            layout.slot.insert(k, buf);
            layout.need.insert(k, words);
            busy.push((end, buf));
        }
        layout
    }

    /// The calls on the device over `io` and `layout`'s buffers, new ones or, with `reuse`,
    /// those of a program of at least as many samples planned from the same graph (so that the
    /// same values, gradients and temporaries exist, each at least as large).
    pub fn realize(&self, layout: &Layout, io: &Io, reuse: Option<&Allocation>) -> Result<Realized> {
        let gpu = &self.t.gpu;
        let mut buffers = HashMap::new();
        let mut bytes = 0;
        match reuse {
            Some(other) => {
                for (k, &words) in &layout.need {
                    let r = other.get(k).filter(|r| r.size >= 4 * words.max(1) as u64).ok_or_else(|| {
                        Error::Gpu("a pass of fewer samples needs a buffer its larger pass lacks".into())
                    })?;
                    buffers.insert(*k, Range::words(&r.buf, 0, words));
                }
            }
            None => {
                let made = layout.words.iter().map(|&w| gpu.storage(w, "activations")).collect::<Result<Vec<_>>>()?;
                bytes = made.iter().map(|b| b.size()).sum();
                for (k, &b) in &layout.slot {
                    buffers.insert(*k, Range::words(&made[b], 0, layout.need[k]));
                }
            }
        }
        let calls = self
            .calls
            .iter()
            .map(|c| {
                gpu.call(&c.launch.clone().map(|r| match r {
                    Ref::Fixed(range) => range,
                    Ref::Io(b) => io.range(b).clone(),
                    other => buffers[&key(&other)].clone(),
                }))
            })
            .collect();
        gpu.check()?;
        Ok(Realized { calls, buffers, bytes })
    }

    /// The sizes of the fixed buffers for these passes (`split`: with the summed gradients).
    pub fn io_sizes(&self, split: bool) -> IoSizes {
        let t = self.t;
        IoSizes {
            input: self.size(0),
            labels: self.batch,
            stats: 2 * self.batch,
            partial: t.total.div_ceil(update::CHUNK),
            accum: if split { t.total } else { 0 },
        }
    }

    /// Index of the loss call among the planned calls.
    pub fn loss_index(&self) -> Option<usize> {
        self.calls.iter().position(|c| c.launch.kernel == crate::backend::gpu::kernels::Kernel::SoftmaxCrossEntropy)
    }
}

impl Realized {
    /// The range of value `v`.
    pub fn value(&self, v: usize) -> Range {
        self.buffers[&key(&Ref::Value(v))].clone()
    }
}

impl GpuTrainer {
    /// The program for batches `[n, C, h, w]`: the forward, and when `train`, the loss, the
    /// backward, the gradient norm and the optimizer update.
    pub(super) fn plan(&self, n: usize, (h, w): (usize, usize), train: bool) -> Result<Program> {
        let p = self.planned(n, n, (h, w), if train { What::Step } else { What::Forward })?;
        let (layout, sizes) = (p.layout(), p.io_sizes(false));
        let io = Io::new(&self.gpu, sizes)?;
        let r = p.realize(&layout, &io, None)?;
        log::info!(
            "planned a GPU {} for batch {n} at {h}×{w}: {} kernel calls, {:.1} MiB of activation buffers",
            if train { "training step" } else { "forward pass" },
            r.calls.len(),
            r.bytes as f64 / (1 << 20) as f64
        );
        let optimizer = train.then(|| r.calls.len() - 1);
        let output = r.value(self.graph.output);
        Ok(Program { bytes: r.bytes + sizes.bytes(), calls: r.calls, io, output, optimizer })
    }

    /// The device bytes a forward pass of `n` images `[n, C, h, w]` allocates when first run
    /// (planned without allocating).
    pub fn forward_bytes(&self, n: usize, (h, w): (usize, usize)) -> Result<u64> {
        if self.programs.contains_key(&(n, h, w, false)) {
            return Ok(0);
        }
        let p = self.planned(n, n, (h, w), What::Forward)?;
        Ok(p.layout().bytes() + p.io_sizes(false).bytes())
    }

    /// The calls of `what` for passes of `n` samples `[n, C, h, w]` of batches of `batch`.
    pub(super) fn planned(&self, n: usize, batch: usize, (h, w): (usize, usize), what: What) -> Result<Planner<'_>> {
        let g = &self.graph;
        let shapes = g.infer_shapes(h, w)?;
        let sched = Schedule::new(g, &self.slots);
        let mut p = Planner { t: self, g, sched, shapes, n, batch, calls: Vec::new(), temps: 0 };
        p.forward();
        if what != What::Forward {
            p.loss();
            p.backward()?;
        }
        if what == What::Step {
            p.update(Ref::Fixed(Range::whole(self.grads.clone())));
        }
        Ok(p)
    }

    /// The launches after each pass of a split step: the two folds of a pass's gradients into the
    /// sum ([`Planner::fold`]), then the gradient norm, clip and optimizer over the sum, for
    /// batches of up to `batch`.
    pub(super) fn planned_update(&self, batch: usize) -> Result<Planner<'_>> {
        let mut p = Planner {
            t: self,
            g: &self.graph,
            sched: Schedule::new(&self.graph, &self.slots),
            shapes: Vec::new(),
            n: batch,
            batch,
            calls: Vec::new(),
            temps: 0,
        };
        p.fold();
        p.update(Ref::Io(IoBuf::Accum));
        Ok(p)
    }
}

fn key(r: &Ref) -> (u8, usize) {
    match r {
        Ref::Value(v) => (0, *v),
        Ref::Grad(v) => (1, *v),
        Ref::Temp(t, _) => (2, *t),
        Ref::Fixed(_) | Ref::Io(_) => unreachable!("fixed ranges are not allocated"),
    }
}
