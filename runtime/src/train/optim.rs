//! Optimizers (SGD with momentum, Adam, RMSProp) and the learning-rate schedule.
//!
//! Updates follow PyTorch's definitions, with weight decay added to the gradient (L2).

use std::fmt;
use std::str::FromStr;

use super::checkpoint::OptimizerState;
use crate::{Error, Result};

/// Updates parameter tensors from their gradients; holds per-tensor state.
pub trait Optimizer: Send {
    /// Updates tensor `slot` in place: `p ← p − lr·update(g + weight_decay·p)`.
    fn update(&mut self, slot: usize, p: &mut [f32], g: &[f32], lr: f32, weight_decay: f32);
    /// Marks the end of one step (all tensors updated).
    fn finish_step(&mut self) {}
    /// The state the next updates depend on (for a checkpoint).
    fn state(&self) -> OptimizerState;
    /// Takes up `state` (from [`Optimizer::state`] of the same optimizer over the same tensors).
    fn set_state(&mut self, state: OptimizerState) -> Result<()>;
}

/// `state`'s vectors if they are `count` kinds of vectors as long as those of `like`.
fn checked(state: OptimizerState, like: &[Vec<f32>], count: usize) -> Result<Vec<Vec<Vec<f32>>>> {
    let fits = state.slots.len() == count
        && state
            .slots
            .iter()
            .all(|kind| kind.len() == like.len() && kind.iter().zip(like).all(|(a, b)| a.len() == b.len()));
    if !fits {
        return Err(Error::Train("the checkpoint's optimizer state is not this optimizer's".into()));
    }
    Ok(state.slots)
}

/// The optimizer to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerKind {
    Sgd,
    Adam,
    RmsProp,
}

impl FromStr for OptimizerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sgd" => Ok(OptimizerKind::Sgd),
            "adam" => Ok(OptimizerKind::Adam),
            "rmsprop" => Ok(OptimizerKind::RmsProp),
            _ => Err(Error::Train(format!("unknown optimizer '{s}' (sgd, adam or rmsprop)"))),
        }
    }
}

impl fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
            OptimizerKind::RmsProp => "rmsprop",
        })
    }
}

/// SGD's momentum (CPU and GPU).
pub const SGD_MOMENTUM: f32 = 0.9;
/// Adam's β₁ and β₂ (CPU and GPU).
pub const ADAM_BETAS: (f32, f32) = (0.9, 0.999);
/// RMSProp's decay α (CPU and GPU).
pub const RMSPROP_ALPHA: f32 = 0.99;
/// Adam's and RMSProp's ε (CPU and GPU).
pub const EPSILON: f32 = 1e-8;

impl OptimizerKind {
    /// An optimizer for tensors of the given lengths, with the constants above.
    pub fn build(self, lens: &[usize]) -> Box<dyn Optimizer> {
        let zeros = || lens.iter().map(|&n| vec![0f32; n]).collect::<Vec<_>>();
        match self {
            OptimizerKind::Sgd => Box::new(Sgd { momentum: SGD_MOMENTUM, velocity: zeros() }),
            OptimizerKind::Adam => {
                let (beta1, beta2) = ADAM_BETAS;
                Box::new(Adam { beta1, beta2, eps: EPSILON, t: 1, m: zeros(), v: zeros() })
            }
            OptimizerKind::RmsProp => Box::new(RmsProp { alpha: RMSPROP_ALPHA, eps: EPSILON, square: zeros() }),
        }
    }
}

/// SGD with momentum: `v ← μ·v + g`, `p ← p − lr·v`.
pub struct Sgd {
    pub momentum: f32,
    velocity: Vec<Vec<f32>>,
}

impl Optimizer for Sgd {
    fn state(&self) -> OptimizerState {
        OptimizerState { slots: vec![self.velocity.clone()], t: 0 }
    }
    fn set_state(&mut self, state: OptimizerState) -> Result<()> {
        let [v] = <[_; 1]>::try_from(checked(state, &self.velocity, 1)?).expect("one kind");
        self.velocity = v;
        Ok(())
    }
    fn update(&mut self, slot: usize, p: &mut [f32], g: &[f32], lr: f32, wd: f32) {
        for ((p, &g), v) in p.iter_mut().zip(g).zip(&mut self.velocity[slot]) {
            *v = self.momentum * *v + g + wd * *p;
            *p -= lr * *v;
        }
    }
}

/// Adam with bias correction.
pub struct Adam {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    t: i32,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl Optimizer for Adam {
    fn state(&self) -> OptimizerState {
        OptimizerState { slots: vec![self.m.clone(), self.v.clone()], t: self.t }
    }
    fn set_state(&mut self, state: OptimizerState) -> Result<()> {
        let t = state.t;
        if t < 1 {
            return Err(Error::Train(format!("the checkpoint's Adam step {t} is not positive")));
        }
        let [m, v] = <[_; 2]>::try_from(checked(state, &self.m, 2)?).expect("two kinds");
        (self.m, self.v, self.t) = (m, v, t);
        Ok(())
    }
    fn update(&mut self, slot: usize, p: &mut [f32], g: &[f32], lr: f32, wd: f32) {
        let c1 = 1.0 - self.beta1.powi(self.t);
        let c2 = 1.0 - self.beta2.powi(self.t);
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(&mut self.m[slot]).zip(&mut self.v[slot]) {
            let g = g + wd * *p;
            *m = self.beta1 * *m + (1.0 - self.beta1) * g;
            *v = self.beta2 * *v + (1.0 - self.beta2) * g * g;
            *p -= lr * (*m / c1) / ((*v / c2).sqrt() + self.eps);
        }
    }
    fn finish_step(&mut self) {
        self.t = self.t.saturating_add(1);
    }
}

/// RMSProp: `s ← α·s + (1−α)·g²`, `p ← p − lr·g/(√s + ε)`.
pub struct RmsProp {
    pub alpha: f32,
    pub eps: f32,
    square: Vec<Vec<f32>>,
}

impl Optimizer for RmsProp {
    fn state(&self) -> OptimizerState {
        OptimizerState { slots: vec![self.square.clone()], t: 0 }
    }
    fn set_state(&mut self, state: OptimizerState) -> Result<()> {
        let [s] = <[_; 1]>::try_from(checked(state, &self.square, 1)?).expect("one kind");
        self.square = s;
        Ok(())
    }
    fn update(&mut self, slot: usize, p: &mut [f32], g: &[f32], lr: f32, wd: f32) {
        for ((p, &g), s) in p.iter_mut().zip(g).zip(&mut self.square[slot]) {
            let g = g + wd * *p;
            *s = self.alpha * *s + (1.0 - self.alpha) * g * g;
            *p -= lr * g / (s.sqrt() + self.eps);
        }
    }
}

/// Linear warm-up from 0 to `base` over `warmup` steps, then cosine decay to 0 at `total`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub base: f32,
    pub warmup: usize,
    pub total: usize,
}

impl LrSchedule {
    /// The learning rate of step `step` (0-based).
    pub fn at(&self, step: usize) -> f32 {
        if step < self.warmup {
            return self.base * (step + 1) as f32 / self.warmup as f32;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let t = ((step - self.warmup) as f32 / span as f32).min(1.0);
        self.base * 0.5 * (1.0 + (std::f32::consts::PI * t).cos())
    }
}

/// Scales all gradients so that their global L2 norm is at most `max_norm`; returns the norm
/// before clipping.
pub fn clip_global_norm(grads: &mut [Vec<f32>], max_norm: f32) -> f32 {
    let norm = grads.iter().flatten().map(|&g| (g as f64) * (g as f64)).sum::<f64>().sqrt() as f32;
    if norm > max_norm && norm > 0.0 {
        let f = max_norm / norm;
        grads.iter_mut().flatten().for_each(|g| *g *= f);
    }
    norm
}
