//! One optimisation step of a patch on a backend: the CPU step (the tape's forward and
//! backward, the loss, clipping and the optimizer) and the GPU trainer behind the same trait.

use super::memory::{self, MemoryPlan, PassCost};
use super::TrainConfig;

use super::checkpoint::OptimizerState;
use super::loss::softmax_cross_entropy;
use super::optim::{clip_global_norm, Optimizer};
use super::recompute::{self, Segments};
use super::tape;
use crate::backend::StepBackend;
use crate::graph::{Graph, Op};
use crate::patch::{self, Role, Slot};
use crate::schedule::Schedule;
use crate::tensor::{Pool, Tensor};
use crate::{Error, Result};

/// One optimisation step's outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    pub loss: f32,
    pub correct: usize,
    pub grad_norm: f32,
}

/// The CPU backend's training step: the tape's forward and backward,
/// the loss, global-norm clipping and the optimizer update, on the graph's own parameters.
pub struct CpuStep {
    schedule: Schedule,
    grads: Vec<Vec<f32>>,
    optimizer: Box<dyn Optimizer>,
    label_smoothing: f32,
    clip_norm: Option<f32>,
    weight_decay: f32,
    /// The batch, resolution, micro-batch and budget asked for, and the plan made for them.
    batch: usize,
    resolution: usize,
    asked_micro: Option<usize>,
    budget: Option<u64>,
    asked_recompute: Option<bool>,
    /// The segments of the pass when it recomputes ([`recompute`]).
    segments: Option<Segments>,
    /// Bytes of the trained values' copy, gradients and optimizer state.
    state: u64,
    memory: Option<MemoryPlan>,
    /// Activation buffers recycled from one step to the next.
    pool: Pool,
    /// Descend the prediction entropy instead of the cross-entropy with the labels
    /// ([`CpuStep::minimising_entropy`]).
    entropy: bool,
}

impl CpuStep {
    /// Plans steps of `slots` of `graph` under `config`.
    pub fn new(graph: &Graph, slots: &[Slot], config: &TrainConfig) -> Self {
        let lens: Vec<usize> = slots.iter().map(|&s| patch::param(graph, s).len()).collect();
        CpuStep {
            schedule: Schedule::new(graph, slots),
            grads: lens.iter().map(|&n| vec![0.0; n]).collect(),
            optimizer: config.optimizer.build(&lens),
            label_smoothing: config.label_smoothing,
            clip_norm: config.clip_norm,
            weight_decay: config.weight_decay,
            batch: config.batch,
            resolution: config.resolution as usize,
            asked_micro: config.micro_batch,
            budget: config.memory_budget,
            asked_recompute: config.recompute,
            segments: None,
            state: memory::state_bytes(lens.iter().sum(), config.optimizer),
            memory: None,
            pool: Pool::default(),
            entropy: false,
        }
    }

    /// Steps that descend the mean prediction entropy ([`super::loss::softmax_entropy`]; the
    /// labels are not read) instead of the cross-entropy: label-free adaptation.
    pub fn minimising_entropy(mut self) -> Self {
        self.entropy = true;
        self
    }

    /// Samples per forward and backward pass: the plan's, else the micro-batch asked for, else
    /// the whole batch (see [`TrainConfig::micro_batch`]).
    fn micro(&self) -> usize {
        self.memory.map(|p| p.micro_batch).or(self.asked_micro).unwrap_or(usize::MAX).max(1)
    }

    /// What a step takes besides its activations.
    fn fixed(&self, graph: &Graph) -> memory::Fixed {
        let pixels = graph.input_channels * self.resolution * self.resolution;
        let depth = memory::loader_depth(self.budget.is_some());
        memory::Fixed { state: self.state, overhead: memory::overhead_bytes(self.batch, pixels, depth) }
    }

    /// The activation bytes of one pass over `m` zero images (labels 0) with a fresh buffer
    /// pool, its gradients discarded, recomputing or not: the most its tensors held at once on
    /// this thread.
    fn probe(&mut self, graph: &Graph, m: usize, recompute: bool) -> Result<u64> {
        // A head-only step takes pooled features `[m, F, 1, 1]` (its graph is the classifier).
        let head_only = matches!(graph.nodes.first().map(|n| &n.op), Some(Op::Linear(_)));
        let r = if head_only { 1 } else { self.resolution };
        let mut pool = Pool::default();
        let mut grads = std::mem::take(&mut self.grads);
        let segments = recompute.then(|| Segments::new(graph, &self.schedule));
        let pass = Pass {
            graph,
            plan: &self.schedule,
            segments: segments.as_ref(),
            smoothing: self.label_smoothing,
            lr: 1.0,
            entropy: false,
        };
        let x = Tensor::zeros([m, graph.input_channels, r, r]);
        let probed = pool.scope(|| pass.run(x, &vec![0; m], &mut grads, None));
        grads.iter_mut().for_each(|g| g.fill(0.0));
        self.grads = grads;
        probed?;
        Ok(pool.bytes() as u64)
    }

    /// Bytes of activation buffers the step keeps between steps (after the first step, the
    /// most its passes hold at once on the calling thread).
    pub fn pooled_bytes(&self) -> usize {
        self.pool.bytes()
    }
}

/// Samples `from..from + len` of `x`.
fn samples(x: &Tensor, from: usize, len: usize) -> Tensor {
    let [_, c, h, w] = x.shape;
    let per = c * h * w;
    let mut t = Tensor::scratch([len, c, h, w]);
    t.data.copy_from_slice(&x.data[from * per..(from + len) * per]);
    t
}

/// What a training forward keeps for its backward.
enum Kept {
    Tape(tape::Tape),
    Inputs(recompute::Checkpoints),
}

/// What every pass of one step shares.
struct Pass<'a> {
    graph: &'a Graph,
    plan: &'a Schedule,
    /// Recompute segment by segment ([`recompute`]) when given.
    segments: Option<&'a Segments>,
    smoothing: f32,
    lr: f32,
    entropy: bool,
}

impl Pass<'_> {
    /// One forward and backward pass of the tape over `input` with `labels`, its gradients added
    /// to `grads`, its loss gradient scaled by `share` when the pass is one micro-batch of a
    /// batch: its mean loss and correct count.
    fn run(&self, input: Tensor, labels: &[usize], grads: &mut [Vec<f32>], share: Option<f32>) -> Result<(f32, usize)> {
        let (logits, kept) = match self.segments {
            None => tape::forward(self.graph, self.plan, input).map(|(l, t)| (l, Kept::Tape(t)))?,
            Some(segs) => recompute::forward(self.graph, self.plan, segs, input).map(|(l, c)| (l, Kept::Inputs(c)))?,
        };
        let mut loss = if self.entropy {
            super::loss::softmax_entropy(&logits)
        } else {
            softmax_cross_entropy(&logits, labels, self.smoothing)
        };
        if !loss.value.is_finite() {
            return Err(Error::Train(format!("the loss is {}: lower the learning rate (now {})", loss.value, self.lr)));
        }
        if let Some(share) = share {
            loss.grad.data.iter_mut().for_each(|g| *g *= share);
        }
        match (kept, self.segments) {
            (Kept::Inputs(kept), Some(segs)) => {
                recompute::backward(self.graph, self.plan, segs, kept, loss.grad, grads)
            }
            (Kept::Tape(tape), _) => tape::backward(self.graph, self.plan, tape, loss.grad, grads),
            (Kept::Inputs(_), None) => unreachable!("kept inputs come from segments"),
        }
        Ok((loss.value, loss.correct))
    }
}

impl StepBackend for CpuStep {
    fn step(
        &mut self,
        graph: &mut Graph,
        slots: &[Slot],
        input: Tensor,
        labels: &[usize],
        lr: f32,
    ) -> Result<StepStats> {
        let segments = self.segments.as_ref();
        let (smoothing, entropy) = (self.label_smoothing, self.entropy);
        let pass = Pass { graph, plan: &self.schedule, segments, smoothing, lr, entropy };
        let (n, micro, grads) = (input.shape[0], self.micro(), &mut self.grads);
        let loss = self.pool.scope(|| -> Result<_> {
            grads.iter_mut().for_each(|g| g.fill(0.0));
            if n <= micro {
                // A copy from the pool: the caller's buffer is freed after the scope instead of
                // joining the pool, which would then grow by one batch a step until best-fit
                // reuse caught up (measured: +57 MB over 8 steps at 224 px, batch 16).
                return pass.run(samples(&input, 0, n), labels, grads, None);
            }
            // Micro-batches: each pass's loss gradient is its share of the batch's mean.
            let (mut loss, mut correct) = (0.0f32, 0);
            for from in (0..n).step_by(micro) {
                let m = micro.min(n - from);
                let x = samples(&input, from, m);
                let share = m as f32 / n as f32;
                let (l, c) = pass.run(x, &labels[from..from + m], grads, Some(share))?;
                loss += l * share;
                correct += c;
            }
            Ok((loss, correct))
        })?;
        let grad_norm = clip_global_norm(&mut self.grads, self.clip_norm.unwrap_or(f32::INFINITY));
        for (i, &slot) in slots.iter().enumerate() {
            let wd = if slot.role == Role::Weights { self.weight_decay } else { 0.0 };
            self.optimizer.update(i, patch::param_mut(graph, slot), &self.grads[i], lr, wd);
        }
        self.optimizer.finish_step();
        Ok(StepStats { loss: loss.0, correct: loss.1, grad_norm })
    }

    fn sync(&self, _graph: &mut Graph) -> Result<()> {
        Ok(())
    }

    fn device(&self) -> String {
        "cpu".into()
    }

    fn release(&mut self) {
        self.pool = Pool::default();
    }

    fn set_memory_budget(&mut self, budget: Option<u64>) {
        self.budget = budget;
        self.memory = None;
        self.segments = None;
    }

    fn save_state(&self, graph: &Graph, slots: &[Slot]) -> Result<(Vec<Vec<f32>>, OptimizerState)> {
        Ok((slots.iter().map(|&s| patch::param(graph, s).to_vec()).collect(), self.optimizer.state()))
    }

    fn load_state(
        &mut self,
        graph: &mut Graph,
        slots: &[Slot],
        params: Vec<Vec<f32>>,
        state: OptimizerState,
    ) -> Result<()> {
        let fits = params.len() == slots.len()
            && slots.iter().zip(&params).all(|(&s, p)| patch::param(graph, s).len() == p.len());
        if !fits {
            return Err(Error::Train("the checkpoint's trained values are not this patch's".into()));
        }
        self.optimizer.set_state(state)?;
        for (&s, p) in slots.iter().zip(&params) {
            patch::param_mut(graph, s).copy_from_slice(p);
        }
        Ok(())
    }

    fn memory_plan(&mut self, graph: &Graph) -> Result<Option<MemoryPlan>> {
        if let Some(plan) = self.memory {
            return Ok(Some(plan));
        }
        // Recomputation costs a second forward, more than smaller passes do (measured at 224 px,
        // batch 16: sb+dw+logits in passes of one sample 23 images/s, recomputing in passes of
        // two 12): under a budget it is taken only when one sample per pass does not fit
        // without it.
        let plan = match self.asked_recompute {
            Some(on) => self.plan_with(graph, on)?,
            None if self.budget.is_none() => self.plan_with(graph, false)?,
            None => match self.plan_with(graph, false) {
                Ok(p) => p,
                Err(_) => self.plan_with(graph, true)?,
            },
        };
        self.segments = plan.recompute.then(|| Segments::new(graph, &self.schedule));
        log::info!(
            "memory plan: {} pass(es) of {} sample(s) per batch of {}{}, predicted {:.0} MB{}",
            plan.passes,
            plan.micro_batch,
            self.batch,
            if plan.recompute { " recomputing each block" } else { "" },
            plan.predicted_bytes as f64 / 1e6,
            plan.budget_bytes.map_or(String::new(), |b| format!(" (budget {:.0} MB)", b as f64 / 1e6))
        );
        self.memory = Some(plan);
        Ok(self.memory)
    }
}

impl CpuStep {
    /// The plan for passes that recompute or not: probed, then sized for the micro-batch asked
    /// for or the budget.
    fn plan_with(&mut self, graph: &Graph, recompute: bool) -> Result<MemoryPlan> {
        let cost = PassCost::per_sample(self.probe(graph, 1, recompute)?);
        let plan = match self.asked_micro {
            Some(m) => {
                let chosen = memory::plan(cost, self.fixed(graph), m.min(self.batch), None)?;
                let plan =
                    MemoryPlan { passes: self.batch.div_ceil(chosen.micro_batch), budget_bytes: self.budget, ..chosen };
                if let Some(budget) = self.budget.filter(|&b| plan.predicted_bytes > b) {
                    return Err(Error::Train(format!(
                        "micro-batches of {m} need {:.0} MB and the memory budget is {:.0} MB: leave the micro-batch to the budget",
                        plan.predicted_bytes as f64 / 1e6,
                        budget as f64 / 1e6
                    )));
                }
                plan
            }
            None => memory::plan(cost, self.fixed(graph), self.batch, self.budget)?,
        };
        Ok(MemoryPlan { recompute, ..plan })
    }
}

#[cfg(feature = "gpu")]
impl StepBackend for crate::backend::gpu::GpuTrainer {
    fn step(
        &mut self,
        _graph: &mut Graph,
        _slots: &[Slot],
        input: Tensor,
        labels: &[usize],
        lr: f32,
    ) -> Result<StepStats> {
        crate::backend::gpu::GpuTrainer::step(self, &input, labels, lr)
    }

    fn sync(&self, graph: &mut Graph) -> Result<()> {
        crate::backend::gpu::GpuTrainer::sync(self, graph)
    }

    fn device(&self) -> String {
        format!("gpu ({})", self.device_name())
    }

    fn device_bytes(&self) -> Option<u64> {
        Some(self.buffer_bytes())
    }

    fn memory_plan(&mut self, _graph: &Graph) -> Result<Option<MemoryPlan>> {
        crate::backend::gpu::GpuTrainer::memory_plan(self).map(Some)
    }

    fn set_memory_budget(&mut self, budget: Option<u64>) {
        crate::backend::gpu::GpuTrainer::set_memory_budget(self, budget)
    }

    fn save_state(&self, _graph: &Graph, _slots: &[Slot]) -> Result<(Vec<Vec<f32>>, OptimizerState)> {
        crate::backend::gpu::GpuTrainer::save_state(self)
    }

    fn load_state(
        &mut self,
        _graph: &mut Graph,
        _slots: &[Slot],
        params: Vec<Vec<f32>>,
        state: OptimizerState,
    ) -> Result<()> {
        crate::backend::gpu::GpuTrainer::load_state(self, params, state)
    }
}
