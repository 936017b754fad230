//! The loss launch (time `count`, after the forward) and the update launches (after the
//! backward): the gradient norm in parts, the clip factor and step scalars, the optimizer.

use super::{Planner, Ref};
use crate::backend::gpu::kernels::params::{word, Clip, GradNorm, Loss};
use crate::backend::gpu::kernels::{Launch, Range};

/// Gradient values per partial sum of the norm.
pub(super) const CHUNK: usize = 4096;

impl Planner<'_> {
    /// Softmax cross-entropy of the logits: per-sample stats and the logits' gradient.
    pub(super) fn loss(&mut self) {
        let (out, n) = (self.g.output, self.n);
        let p = Loss { n: word(n), k: word(self.shapes[out].c), smoothing: self.t.settings.label_smoothing };
        let (labels, stats) = (Ref::Fixed(self.io.labels.clone()), Ref::Fixed(self.io.stats.clone()));
        let launch = Launch::softmax_cross_entropy(Ref::Value(out), labels, Ref::Grad(out), stats, p);
        self.push(launch, self.g.nodes.len());
    }

    /// The gradient norm, the clip and the optimizer (its parameters are rewritten every step).
    pub(super) fn update(&mut self) {
        let (t, end) = (self.t, 2 * self.g.nodes.len() + 1);
        let grads = Ref::Fixed(Range::whole(t.grads.clone()));
        let (partial, stats, scalars) = (
            Ref::Fixed(self.io.partial.clone()),
            Ref::Fixed(self.io.stats.clone()),
            Ref::Fixed(self.io.scalars.clone()),
        );
        let p = GradNorm { len: word(t.total), chunk: word(CHUNK) };
        self.push(Launch::grad_norm(grads.clone(), partial.clone(), p), end);
        let p = Clip {
            count: word(t.total.div_ceil(CHUNK)),
            n: word(self.n),
            max_norm: t.settings.clip_norm.unwrap_or(f32::INFINITY),
        };
        self.push(Launch::clip(partial, stats, scalars.clone(), p), end);
        let (params, state) = (Ref::Fixed(Range::whole(t.params.clone())), Ref::Fixed(Range::whole(t.state.clone())));
        self.push(Launch::update(&t.update(0.0), params, grads, state, scalars), end + 1);
    }
}
