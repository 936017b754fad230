//! Split GPU steps: a batch runs as passes of at most `micro` samples (forward, loss and
//! backward each), every pass's gradients summed into one buffer, then one gradient norm, clip
//! and optimizer update over the sum. The backbone's statistics are frozen, so this is the
//! whole batch's step up to the order of summation.
//!
//! All passes, of `micro` samples or fewer (a batch's remainder, a smaller last batch), run on
//! the buffers of the `micro`-sample pass, so a split step's device memory is that pass's
//! activations, the fixed buffers ([`IoSizes`]) and the summed gradients, whatever the batch.
//! Its bytes are known before any is allocated ([`GpuTrainer::memory_plan_for`]): the planner's
//! [`super::plan::Layout`] is the allocation the device then makes.

use std::collections::HashMap;

use super::plan::{Allocation, Io, IoBuf, IoSizes, Layout, Planner, What};
use super::{labels_bytes, GpuTrainer};
use crate::backend::gpu::kernels::params::{word, Loss};
use crate::backend::gpu::kernels::Call;
use crate::tensor::Tensor;
use crate::train::memory::MemoryPlan;
use crate::{Error, Result};

/// One planned pass of a split step.
struct Pass {
    calls: Vec<Call>,
    /// Index of the loss call, whose samples and batch are rewritten for each pass.
    loss: usize,
    buffers: Allocation,
}

/// The planned split step for batches of up to `batch` images of one shape.
pub(super) struct Split {
    batch: usize,
    micro: usize,
    shape: (usize, usize),
    classes: usize,
    io: Io,
    full: Pass,
    /// Passes of fewer samples, on `full`'s buffers.
    rests: HashMap<usize, Pass>,
    /// The folds of a pass's gradients into the sum (the first pass's, the others'), the
    /// gradient norm, the clip and the optimizer.
    after: Vec<Call>,
    /// Bytes of the buffers it allocated.
    pub bytes: u64,
}

/// Bytes of a plan's parts: the activations of one pass with the fixed buffers, and the
/// trained state with the summed gradients.
struct Cost {
    activations: u64,
    accum: u64,
}

impl GpuTrainer {
    /// The device bytes of split steps of `batch` at `micro` samples per pass (without the
    /// trainer's own buffers), from the planner alone.
    fn split_cost(&self, batch: usize, micro: usize) -> Result<Cost> {
        let r = self.settings.resolution;
        let p = self.planned(micro, batch, (r, r), What::Pass)?;
        let sizes = p.io_sizes(true);
        let accum = 4 * sizes.accum.max(1) as u64;
        Ok(Cost { activations: p.layout().bytes() + IoSizes { accum: 0, ..sizes }.bytes(), accum })
    }

    /// The memory plan of steps of `batch` on this device: samples per pass (asked for, the most
    /// that fit the budget, or the whole batch) and the device bytes predicted. A budget that
    /// cannot hold one-sample passes is an error.
    pub(super) fn memory_plan_for(&self, batch: usize) -> Result<MemoryPlan> {
        let s = self.settings;
        let (state, overhead) = (self.state_bytes(), self.consts.size());
        let plan = |m: usize| -> Result<MemoryPlan> {
            let (activation_bytes, state_bytes) = if s.split() {
                let c = self.split_cost(batch, m)?;
                (c.activations, state + c.accum)
            } else {
                let r = s.resolution;
                let p = self.planned(batch, batch, (r, r), What::Step)?;
                (p.layout().bytes() + p.io_sizes(false).bytes(), state)
            };
            Ok(MemoryPlan {
                micro_batch: m,
                passes: batch.div_ceil(m),
                recompute: false,
                activation_bytes,
                state_bytes,
                overhead_bytes: overhead,
                predicted_bytes: activation_bytes + state_bytes + overhead,
                budget_bytes: s.memory_budget,
            })
        };
        let mb = |b: u64| b as f64 / 1e6;
        let chosen = match (s.micro_batch, s.memory_budget) {
            (Some(m), _) => plan(m.min(batch))?,
            (None, None) => plan(batch)?,
            (None, Some(budget)) => {
                let one = plan(1)?;
                if one.predicted_bytes > budget {
                    return Err(Error::Train(format!(
                        "GPU training needs at least {:.0} MB of device buffers (one sample per pass: {:.0} MB of \
                         activations, {:.0} MB of trained values, gradients and optimizer state, {:.0} MB of frozen \
                         weights) and the memory budget is {:.0} MB: raise the budget, lower the resolution, or train \
                         fewer parameters",
                        mb(one.predicted_bytes),
                        mb(one.activation_bytes),
                        mb(one.state_bytes),
                        mb(one.overhead_bytes),
                        mb(budget)
                    )));
                }
                // Bytes grow with the samples per pass: the largest that fits, by bisection.
                let (mut fits, mut over) = (1, batch + 1);
                let mut best = one;
                while over - fits > 1 {
                    let mid = (fits + over) / 2;
                    let p = plan(mid)?;
                    if p.predicted_bytes <= budget {
                        (fits, best) = (mid, p);
                    } else {
                        over = mid;
                    }
                }
                best
            }
        };
        if let Some(budget) = s.memory_budget.filter(|&b| chosen.predicted_bytes > b) {
            return Err(Error::Train(format!(
                "micro-batches of {} need {:.0} MB of device buffers and the memory budget is {:.0} MB: leave the \
                 micro-batch to the budget",
                chosen.micro_batch,
                mb(chosen.predicted_bytes),
                mb(budget)
            )));
        }
        Ok(chosen)
    }

    /// The memory plan of the configured batch (made once).
    pub fn memory_plan(&mut self) -> Result<MemoryPlan> {
        if let Some(p) = self.memory {
            return Ok(p);
        }
        let plan = self.memory_plan_for(self.settings.batch.max(1))?;
        log::info!(
            "GPU memory plan: {} pass(es) of {} sample(s) per batch of {}, {:.0} MB of device buffers predicted{}",
            plan.passes,
            plan.micro_batch,
            self.settings.batch,
            plan.predicted_bytes as f64 / 1e6,
            plan.budget_bytes.map_or(String::new(), |b| format!(" (budget {:.0} MB)", b as f64 / 1e6))
        );
        self.memory = Some(plan);
        Ok(plan)
    }

    /// Plans again under `budget`: the split step is planned anew at the next step.
    pub fn set_memory_budget(&mut self, budget: Option<u64>) {
        self.settings.memory_budget = budget;
        self.memory = None;
        self.split = None;
    }

    /// A pass of `n` samples planned for `split`'s shape, on `reuse`'s buffers when given.
    fn pass(&self, n: usize, batch: usize, shape: (usize, usize), io: &Io, reuse: Option<&Allocation>) -> Result<Pass> {
        let p = self.planned(n, batch, shape, What::Pass)?;
        realize_pass(&p, &p.layout(), io, reuse)
    }

    /// Plans the split step for batches of up to `batch` (replacing a smaller one).
    fn make_split(&mut self, batch: usize) -> Result<()> {
        self.split = None;
        let plan = self.memory_plan_for(batch)?;
        let r = self.settings.resolution;
        let micro = plan.micro_batch;
        let p = self.planned(micro, batch, (r, r), What::Pass)?;
        let sizes = p.io_sizes(true);
        let io = Io::new(&self.gpu, sizes)?;
        let layout = p.layout();
        let full = realize_pass(&p, &layout, &io, None)?;
        let after = self.planned_update(batch)?.realize(&layout, &io, Some(&full.buffers))?.calls;
        let bytes = layout.bytes() + sizes.bytes();
        log::info!(
            "planned split GPU steps for batches of up to {batch} at {r}×{r}: passes of {micro}, {:.1} MiB of buffers",
            bytes as f64 / (1 << 20) as f64
        );
        let classes = self.graph.infer_shapes(r, r)?[self.graph.output].c;
        self.split =
            Some(Split { batch, micro, shape: (r, r), classes, io, full, rests: HashMap::new(), after, bytes });
        Ok(())
    }

    /// Records and submits the passes of a split step on `input` (the batch checked by the
    /// caller); returns the staged step scalars.
    pub(super) fn step_split(&mut self, input: &Tensor, labels: &[usize], lr: f32) -> Result<wgpu::Buffer> {
        let n = input.shape[0];
        let r = self.settings.resolution;
        if self.split.as_ref().is_none_or(|s| s.batch < n || s.shape != (r, r)) {
            self.make_split(n.max(self.settings.batch))?;
        }
        let mut split = self.split.take().expect("planned above");
        let result = self.run_split(&mut split, input, labels, lr);
        self.split = Some(split);
        result
    }

    fn run_split(&self, s: &mut Split, input: &Tensor, labels: &[usize], lr: f32) -> Result<wgpu::Buffer> {
        let n = input.shape[0];
        let rest = n % s.micro;
        if rest > 0 && !s.rests.contains_key(&rest) {
            let pass = self.pass(rest, s.batch, s.shape, &s.io, Some(&s.full.buffers))?;
            s.rests.insert(rest, pass);
        }
        let q = &self.gpu.queue;
        q.write_buffer(&s.io.range(IoBuf::Labels).buf, 0, &labels_bytes(labels));
        let [fold_first, fold_next, norm, clip, update] = &s.after[..] else {
            unreachable!("two folds, the norm, the clip and the update")
        };
        q.write_buffer(&clip.uniform, 0, bytemuck::bytes_of(&self.clip_params(n)));
        q.write_buffer(&update.uniform, 0, &self.update(lr).params());
        let per = input.data.len() / n;
        let mut staging = None;
        for from in (0..n).step_by(s.micro) {
            let m = s.micro.min(n - from);
            let pass = if m == s.micro { &s.full } else { &s.rests[&m] };
            q.write_buffer(
                &s.io.range(IoBuf::Input).buf,
                0,
                bytemuck::cast_slice(&input.data[from * per..(from + m) * per]),
            );
            let p = Loss {
                n: word(m),
                k: word(s.classes),
                smoothing: self.settings.label_smoothing,
                first: word(from),
                batch: word(n),
            };
            q.write_buffer(&pass.calls[pass.loss].uniform, 0, bytemuck::bytes_of(&p));
            let mut encoder = self.gpu.encoder();
            self.gpu.record(&mut encoder, &pass.calls);
            let fold = if from == 0 { fold_first } else { fold_next };
            self.gpu.record(&mut encoder, std::slice::from_ref(fold));
            if from + m == n {
                self.gpu.record(&mut encoder, std::slice::from_ref(norm));
                self.gpu.record(&mut encoder, std::slice::from_ref(clip));
                self.gpu.record(&mut encoder, std::slice::from_ref(update));
                staging = Some(self.gpu.stage(&mut encoder, s.io.range(IoBuf::Scalars)));
            }
            q.submit([encoder.finish()]);
        }
        Ok(staging.expect("a batch of at least one sample"))
    }
}

/// The planned pass `p` on the device, over `layout`'s new buffers or `reuse`'s.
fn realize_pass(p: &Planner, layout: &Layout, io: &Io, reuse: Option<&Allocation>) -> Result<Pass> {
    let loss = p.loss_index().expect("a training pass has a loss");
    let r = p.realize(layout, io, reuse)?;
    Ok(Pass { calls: r.calls, loss, buffers: r.buffers })
}
