//! The memory plan of CPU training: how many samples each forward and backward pass takes so
//! that a step's activations fit a budget.
//!
//! Every activation of a training pass has the batch as its first dimension, so a pass of `m`
//! samples holds `m` times what a pass of one sample holds. The planner measures that by running
//! one pass of one sample (a zero image, gradients discarded) with a fresh buffer pool: the
//! pool's bytes after the pass are exactly the most that pass's tensors held at once
//! ([`crate::tensor::Pool`] allocates only when no free buffer fits), and the step then reuses
//! the memory the probe freed. An inference pass (a head-only trainer's feature extraction)
//! frees values as it goes, so its bytes are measured on one and two images
//! ([`PassCost::from_probes`]). It takes the largest micro-batch, up to the batch, whose
//! activations, trained state ([`state_bytes`]) and other working memory ([`overhead_bytes`]:
//! the batches the loader prepares ahead) fit the budget.

use serde::Serialize;

use crate::{Error, Result};

/// Batches the data loader keeps waiting ([`crate::data::Loader::with_depth`]): two, or none
/// under a memory budget (the next batch is still built while a step runs).
pub fn loader_depth(budget: bool) -> usize {
    if budget {
        0
    } else {
        2
    }
}

/// The batches training holds at its peak besides its passes, with the loader keeping `depth`
/// waiting: the one it trains on and the waiting ones. (The loader also builds one more while it
/// waits for room; at 128–224 px and batches of 8–32, counting it too over-predicted the peak by
/// about one batch in every configuration measured, so it is not counted.)
pub fn batches_held(depth: usize) -> usize {
    depth + 1
}

/// The batches a feature extraction holds at its peak with the loader keeping `depth` waiting:
/// [`batches_held`] and the one the loader builds while it waits for room. A feature pass takes
/// far longer than decoding its images, so the loader is always that far ahead (at 224 px,
/// batch 16, the plan of a `logits` run came out 9.6 MB, one batch, under its peak without it).
pub fn batches_held_ahead(depth: usize) -> usize {
    batches_held(depth) + 1
}

/// The working memory of training beyond activations and state for batches of `batch` images
/// of `pixels` values each, with the loader keeping `depth` batches waiting: the batches held
/// ([`batches_held`]). Nothing more is counted. With the shipped model, over `sb`, `bias`, `dw`,
/// `sb+dw` (each with `logits`) and `full` at 128–224 px and 1–16 samples per pass, what else
/// the peak resident memory grew by was within −10 to +7 MB: the worker threads' scratch and packed
/// weight panels are that small, and memory the process freed before training is reused.
/// `tests/memory.rs` checks the whole prediction where it is over 80 MB.
pub fn overhead_bytes(batch: usize, pixels: usize, depth: usize) -> u64 {
    (batches_held(depth) * 4 * batch * pixels) as u64
}

/// The bytes of the training state of `values` trained f32 values: the trained copy, the
/// gradient, the optimizer's slots (momentum; Adam's two moments; RMSProp's mean square) and
/// the patch made at the end.
pub fn state_bytes(values: usize, optimizer: crate::train::OptimizerKind) -> u64 {
    let slots = match optimizer {
        crate::train::OptimizerKind::Adam => 2,
        _ => 1,
    };
    4 * values as u64 * (3 + slots)
}

/// The activation bytes of a pass as a function of its samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PassCost {
    /// Bytes that do not scale with the samples.
    pub fixed: u64,
    /// Bytes per sample.
    pub per_sample: u64,
}

impl PassCost {
    /// From the activation bytes of a one-sample and a two-sample pass.
    pub fn from_probes(one: u64, two: u64) -> Self {
        PassCost::from_probes_at((1, one), (2, two))
    }

    /// From the activation bytes of passes of `a` and `b > a` samples (the line through them).
    pub fn from_probes_at((a, at_a): (usize, u64), (b, at_b): (usize, u64)) -> Self {
        let per_sample = at_b.saturating_sub(at_a) / (b - a).max(1) as u64;
        PassCost { fixed: at_a.saturating_sub(per_sample * a as u64), per_sample }
    }

    /// The sample counts an inference engine's pass is probed at: every thread given whole
    /// images in both (the fused blocks cut an image's rows between threads otherwise, which
    /// takes other buffers), at most 4 and 8 samples.
    pub fn engine_probes() -> (usize, usize) {
        let a = rayon::current_num_threads().clamp(1, 4);
        (a, a + 1)
    }

    /// From the activation bytes of a one-sample pass, all of which scale with the samples.
    pub fn per_sample(one: u64) -> Self {
        PassCost { fixed: 0, per_sample: one }
    }

    /// The activation bytes of a pass of `m` samples.
    pub fn bytes(&self, m: usize) -> u64 {
        self.fixed + self.per_sample * m as u64
    }
}

/// How a step runs on the CPU, and what it is predicted to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryPlan {
    /// Samples per forward and backward pass.
    pub micro_batch: usize,
    /// Passes per step (of the configured batch).
    pub passes: usize,
    /// Activations recomputed in the backward instead of stored.
    pub recompute: bool,
    /// Bytes of the activations of one pass (measured, [`PassCost`]).
    pub activation_bytes: u64,
    /// Bytes of the trained values' copy, gradients and optimizer state ([`state_bytes`]; for a
    /// head-only trainer also the feature engine's packed weights).
    pub state_bytes: u64,
    /// Bytes of the other working memory ([`overhead_bytes`]; for a head-only trainer, the
    /// cached features).
    pub overhead_bytes: u64,
    /// The predicted increase of resident memory while training: activations, state and
    /// overhead.
    pub predicted_bytes: u64,
    /// The budget the plan was made for, if any.
    pub budget_bytes: Option<u64>,
}

/// The budget a plan needs: its prediction and a tenth more, because the prediction can be low
/// (by up to 7 MB in the measurements behind [`overhead_bytes`]; `tests/memory.rs` allows 15%).
pub fn needs(plan: &MemoryPlan) -> u64 {
    plan.predicted_bytes + plan.predicted_bytes / 10
}

/// What a step takes besides its activations: its trained state and its other working memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fixed {
    pub state: u64,
    pub overhead: u64,
}

/// The plan for batches of `batch` under `budget` (bytes; `None`: the whole batch in one pass)
/// for a step whose passes cost `cost` and that takes `fixed` besides.
pub fn plan(cost: PassCost, fixed: Fixed, batch: usize, budget: Option<u64>) -> Result<MemoryPlan> {
    let make = |m: usize| MemoryPlan {
        micro_batch: m,
        passes: batch.div_ceil(m),
        recompute: false,
        activation_bytes: cost.bytes(m),
        state_bytes: fixed.state,
        overhead_bytes: fixed.overhead,
        predicted_bytes: cost.bytes(m) + fixed.state + fixed.overhead,
        budget_bytes: budget,
    };
    let Some(budget) = budget else { return Ok(make(batch)) };
    let fits = |m: usize| needs(&make(m)) <= budget;
    if !fits(1) {
        return Err(Error::Train(format!(
            "training needs at least {:.0} MB more (one sample per pass: {:.0} MB of activations, {:.0} MB of trained \
             values, gradients and optimizer state, {:.0} MB for the loader's next batch) and the memory budget \
             leaves {:.0} MB: raise the budget, lower the resolution or the batch, or train fewer parameters \
             (bias+logits keeps the least)",
            mb(needs(&make(1))),
            mb(cost.bytes(1)),
            mb(fixed.state),
            mb(fixed.overhead),
            mb(budget)
        )));
    }
    let m = (1..=batch).rev().find(|&m| fits(m)).unwrap_or(1);
    Ok(make(m))
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_takes_the_largest_micro_batch_that_fits() {
        let cost = PassCost::from_probes(30 << 20, 50 << 20);
        assert_eq!(cost, PassCost { fixed: 10 << 20, per_sample: 20 << 20 });
        let fixed = |state| Fixed { state, overhead: 5 << 20 };
        assert_eq!(plan(cost, fixed(0), 16, None).unwrap().micro_batch, 16);
        // Four samples: 10 + 80 + 5 = 95 MiB predicted, 104.5 needed.
        let p = plan(cost, fixed(0), 16, Some(105 << 20)).unwrap();
        assert_eq!((p.micro_batch, p.passes), (4, 4));
        assert_eq!(p.predicted_bytes, 95 << 20);
        assert!(needs(&p) <= 105 << 20);
        let q = plan(cost, fixed(20 << 20), 16, Some(105 << 20)).unwrap();
        assert_eq!((q.micro_batch, q.passes), (3, 6));
        // One sample: 35 MiB predicted, 38.5 MiB (40.4 MB) needed.
        let err = plan(cost, fixed(0), 16, Some((38 << 20) + (1 << 19) - 1)).unwrap_err().to_string();
        assert!(err.contains("at least 40 MB"), "{err}");
        assert!(plan(cost, fixed(0), 16, Some((38 << 20) + (1 << 19))).is_ok());
        assert_eq!(plan(cost, fixed(0), 2, Some(1 << 40)).unwrap().micro_batch, 2);
    }
}
