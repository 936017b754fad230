//! The loss launch (time `count`, after the forward) and the update launches (after the
//! backward): the gradient norm in parts, the clip factor and step scalars, the optimizer.

use super::{IoBuf, Planner, Ref};
use crate::backend::gpu::kernels::params::{word, Clip, Elementwise, GradNorm, Loss};
use crate::backend::gpu::kernels::{Launch, Range};
use crate::backend::gpu::GpuTrainer;

/// Gradient values per partial sum of the norm.
pub(super) const CHUNK: usize = 4096;

impl Planner<'_> {
    /// Softmax cross-entropy of the logits: per-sample stats and the logits' gradient (of the
    /// batch's mean loss; a split step rewrites `first` for each pass).
    pub(super) fn loss(&mut self) {
        let (out, n) = (self.g.output, self.n);
        let p = Loss {
            n: word(n),
            k: word(self.shapes[out].c),
            smoothing: self.t.settings.label_smoothing,
            first: 0,
            batch: word(self.batch),
        };
        let (labels, stats) = (Ref::Io(IoBuf::Labels), Ref::Io(IoBuf::Stats));
        let launch = Launch::softmax_cross_entropy(Ref::Value(out), labels, Ref::Grad(out), stats, p);
        self.push(launch, self.g.nodes.len());
    }

    /// The gradient norm of `grads`, the clip and the optimizer (its parameters, and a split
    /// step's clip parameters, are rewritten every step).
    pub(super) fn update(&mut self, grads: Ref) {
        let (t, end) = (self.t, 2 * self.g.nodes.len() + 1);
        let (partial, stats, scalars) = (Ref::Io(IoBuf::Partial), Ref::Io(IoBuf::Stats), Ref::Io(IoBuf::Scalars));
        let p = GradNorm { len: word(t.total), chunk: word(CHUNK) };
        self.push(Launch::grad_norm(grads.clone(), partial.clone(), p), end);
        self.push(Launch::clip(partial, stats, scalars.clone(), t.clip_params(self.batch)), end);
        let (params, state) = (Ref::Fixed(Range::whole(t.params.clone())), Ref::Fixed(Range::whole(t.state.clone())));
        self.push(Launch::update(&t.update(0.0), params, grads, state, scalars), end + 1);
    }
}

impl Planner<'_> {
    /// The two ways a split step's pass adds its gradients to the sum: the first pass copies
    /// (`accumulate` 0), the others add.
    pub(super) fn fold(&mut self) {
        let t = self.t;
        for accumulate in [0, 1] {
            let p = Elementwise { total: word(t.total), accumulate };
            let grads = Ref::Fixed(Range::whole(t.grads.clone()));
            self.push(Launch::add_backward(grads, Ref::Io(IoBuf::Accum), p), 0);
        }
    }
}

impl GpuTrainer {
    /// The clip's parameters for batches of `batch`.
    pub(in crate::backend::gpu::train) fn clip_params(&self, batch: usize) -> Clip {
        Clip {
            count: word(self.total.div_ceil(CHUNK)),
            n: word(batch),
            max_norm: self.settings.clip_norm.unwrap_or(f32::INFINITY),
        }
    }
}
