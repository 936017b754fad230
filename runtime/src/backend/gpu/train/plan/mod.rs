//! Planning of a GPU step from the [`Schedule`]: the kernel launches of the forward
//! ([`forward`]), the loss, the backward ([`backward`]) and the update ([`update`]: gradient
//! norm, clip, optimizer) over planned buffers, then device buffers shared by lifetime.

mod backward;
mod forward;
mod update;

use std::collections::HashMap;
use std::sync::Arc;

use super::{GpuTrainer, Program};
use crate::backend::gpu::kernels::params::{word, Channelwise};
use crate::backend::gpu::kernels::{DeviceWeights, Launch, Range};
use crate::graph::{Graph, Op, Shape};
use crate::ops::Activation;
use crate::schedule::Schedule;
use crate::Result;

/// A buffer before allocation: a value of the graph, the gradient of one, a temporary of a
/// length, or a range that exists already.
#[derive(Debug, Clone)]
enum Ref {
    Value(usize),
    Grad(usize),
    Temp(usize, usize),
    Fixed(Range),
}

/// A launch over planned buffers, at a time (an order of the step; buffers whose first and
/// last times do not overlap share memory).
struct Planned {
    launch: Launch<Ref>,
    time: usize,
}

/// The buffer range of each value, gradient and temporary of a planned step.
type Allocation = HashMap<(u8, usize), Range>;

/// The buffers every step binds at the same place: the input batch, the labels, the
/// per-sample loss stats, the step's scalars and the gradient norm's partial sums.
struct Io {
    input: Range,
    labels: Range,
    stats: Range,
    scalars: Range,
    partial: Range,
}

/// What the parts of the planner share while they add launches.
struct Planner<'a> {
    t: &'a GpuTrainer,
    g: &'a Graph,
    sched: Schedule,
    shapes: Vec<Shape>,
    n: usize,
    io: Io,
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

    /// `size(v)` as a kernel parameter.
    fn size_word(&self, v: usize) -> u32 {
        word(self.size(v))
    }

    /// Value `v` (the graph input is a fixed buffer).
    fn value(&self, v: usize) -> Ref {
        if v == 0 {
            Ref::Fixed(self.io.input.clone())
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

impl GpuTrainer {
    /// The program for batches `[n, C, h, w]`: the forward, and when `train`, the loss, the
    /// backward, the gradient norm and the optimizer update.
    pub(super) fn plan(&self, n: usize, (h, w): (usize, usize), train: bool) -> Result<Program> {
        let g = &self.graph;
        let shapes = g.infer_shapes(h, w)?;
        let gpu = &self.gpu;
        let size0 = n * shapes[0].c * shapes[0].h * shapes[0].w;
        let parts = self.total.div_ceil(update::CHUNK);
        let io = Io {
            input: Range::words(&gpu.storage(size0, "input")?, 0, size0),
            labels: Range::words(&gpu.storage(n, "labels")?, 0, n),
            stats: Range::words(&gpu.storage(2 * n, "losses")?, 0, 2 * n),
            scalars: Range::words(&gpu.storage(8, "scalars")?, 0, 8),
            partial: Range::words(&gpu.storage(parts, "norm parts")?, 0, parts),
        };
        let mut p =
            Planner { t: self, g, sched: Schedule::new(g, &self.slots), shapes, n, io, calls: Vec::new(), temps: 0 };
        p.forward();
        if train {
            p.loss();
            p.backward()?;
            p.update();
        }

        let (buffers, bytes) = self.allocate(&p.calls, &p.shapes, n)?;
        let recorded: Vec<_> = p
            .calls
            .iter()
            .map(|c| {
                gpu.call(&c.launch.clone().map(|r| match r {
                    Ref::Fixed(range) => range,
                    other => buffers[&key(&other)].clone(),
                }))
            })
            .collect();
        gpu.check()?;
        let io = p.io;
        let fixed_bytes =
            [&io.input, &io.labels, &io.stats, &io.scalars, &io.partial].iter().map(|r| r.size).sum::<u64>();
        log::info!(
            "planned a GPU {} for batch {n} at {h}×{w}: {} kernel calls, {:.1} MiB of activation buffers",
            if train { "training step" } else { "forward pass" },
            recorded.len(),
            bytes as f64 / (1 << 20) as f64
        );
        let optimizer = train.then(|| recorded.len() - 1);
        let output = buffers[&key(&Ref::Value(g.output))].clone();
        Ok(Program {
            calls: recorded,
            input: io.input,
            labels: io.labels,
            scalars: io.scalars,
            output,
            optimizer,
            bytes: bytes + fixed_bytes,
        })
    }

    /// Buffers for every value, gradient and temporary, shared between those whose lifetimes
    /// (first to last call that names them) do not overlap.
    fn allocate(&self, calls: &[Planned], shapes: &[Shape], n: usize) -> Result<(Allocation, u64)> {
        let mut life: HashMap<(u8, usize), (usize, usize, usize)> = HashMap::new();
        for c in calls {
            for r in &c.launch.bindings {
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
