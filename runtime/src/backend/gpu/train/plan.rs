//! Planning of a GPU step: the kernel calls of the forward (and, when training, the loss, the
//! backward, the gradient norm and the optimizer) over abstract buffers, then buffers shared by
//! lifetime.

use std::collections::HashMap;
use std::sync::Arc;

use super::{GpuTrainer, Program};
use crate::backend::gpu::kernels::{act_code, per_element, window_words, Groups, Kernel, Range, WeightFormat, Word};
use crate::graph::{Op, Shape};
use crate::ops::Activation;
use crate::patch::Role;
use crate::schedule::Schedule;
use crate::train::OptimizerKind;
use crate::{Error, Result};

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

impl GpuTrainer {
    /// The program for batches `[n, C, h, w]`: the forward, and when `train`, the loss, the
    /// backward, the gradient norm and the optimizer update.
    pub(super) fn plan(&self, n: usize, (h, w): (usize, usize), train: bool) -> Result<Program> {
        let g = &self.graph;
        let shapes = g.infer_shapes(h, w)?;
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

        let sched = Schedule::new(g, &self.slots);
        let trains = |node: usize, role: Role| sched.trains[node].role(role);
        let needs_grad = &sched.needs_grad;
        let fused = |s: usize| sched.fused_act(s);
        let value = |v: usize| if v == 0 { Ref::Fixed(input.clone()) } else { Ref::Value(v) };
        let fixed = Ref::Fixed;
        let u = |v: &[usize]| v.iter().map(|&x| Word(x as u32)).collect::<Vec<_>>();
        let mut calls: Vec<PlannedCall> = Vec::new();
        let mut temps = 0;
        let mut push = |kernel, format, refs: Vec<Ref>, words: Vec<Word>, groups, time| {
            calls.push(PlannedCall { kernel, format, refs, words, groups, time })
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
                Op::Affine(_) | Op::Relu | Op::Relu6 if !sched.absorbed(s) => {
                    let (out, act, scale, bias) = if let Some(act) = fused(s) {
                        (g.nodes[s + 1].output, act, self.nodes[s].scale, self.nodes[s].bias)
                    } else if let Op::Affine(_) = node.op {
                        (y, Activation::Identity, self.nodes[s].scale, self.nodes[s].bias)
                    } else {
                        (y, node.op.activation().expect("an activation"), Some(self.ones), Some(self.zeros))
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
        if train {
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
                let dy_value = sched.output_of(g, s);
                if !written[dy_value] || sched.absorbed(s) {
                    continue;
                }
                let dy = Ref::Grad(dy_value);
                let need_dx = needs_grad[x];
                let acc = written[x];
                match &node.op {
                    Op::Conv(c) => {
                        if let Some(i) = trains(s, Role::Weights) {
                            let refs = vec![value(x), dy.clone(), fixed(self.grad_range(i))];
                            if c.window.is_pointwise() {
                                let grid =
                                    [c.in_channels.div_ceil(64), c.out_channels.div_ceil(64), 1].map(|v| v as u32);
                                let words = u(&[n, c.in_channels, c.out_channels, xs.h * xs.w]);
                                push(
                                    Kernel::PointwiseBackwardWeight,
                                    WeightFormat::F32,
                                    refs,
                                    words,
                                    Groups::Grid(grid),
                                    time,
                                );
                            } else {
                                let len = c.out_channels * c.in_channels * c.window.kernel[0] * c.window.kernel[1];
                                let words = window_words(
                                    &[c.in_channels, c.out_channels],
                                    n,
                                    (xs.h, xs.w),
                                    (ys.h, ys.w),
                                    &c.window,
                                );
                                push(
                                    Kernel::ConvBackwardWeight,
                                    WeightFormat::F32,
                                    refs,
                                    words,
                                    Groups::Flat(len as u32),
                                    time,
                                );
                            }
                        }
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
                        let (act, scale, mask) = if let Some(act) = fused(s) {
                            (act, self.nodes[s].scale, Ref::Value(dy_value))
                        } else if let Op::Affine(_) = node.op {
                            (Activation::Identity, self.nodes[s].scale, dy.clone())
                        } else {
                            (node.op.activation().expect("an activation"), Some(self.ones), Ref::Value(y))
                        };
                        let (ts, tb) = (trains(s, Role::Scale), trains(s, Role::Bias));
                        if ts.is_some() || tb.is_some() {
                            let first =
                                [ts, tb].into_iter().flatten().map(|i| self.layout[i].0).min().expect("one trains");
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
                            let refs = vec![
                                dy.clone(),
                                mask.clone(),
                                xr,
                                fixed(Range::words(&self.grads, first, last - first)),
                            ];
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
        }

        let (buffers, bytes) = self.allocate(&calls, &shapes, n)?;
        let mut recorded = Vec::with_capacity(calls.len());
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
            recorded.push(gpu.call(c.kernel, c.format, &refs, &c.words, c.groups));
        }
        gpu.check()?;
        let fixed_bytes = [&input, &labels, &stats, &scalars].iter().map(|r| r.size).sum::<u64>() + 4 * parts as u64;
        log::info!(
            "planned a GPU {} for batch {n} at {h}×{w}: {} kernel calls, {:.1} MiB of activation buffers",
            if train { "training step" } else { "forward pass" },
            recorded.len(),
            bytes as f64 / (1 << 20) as f64
        );
        let optimizer = train.then(|| recorded.len() - 1);
        let output = buffers[&key(&Ref::Value(out))].clone();
        Ok(Program { calls: recorded, input, labels, scalars, output, optimizer, bytes: bytes + fixed_bytes })
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
