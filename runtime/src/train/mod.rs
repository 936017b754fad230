//! Learning a patch: the tape (forward keeping activations, reverse walk), the loss, the
//! optimizers and the training loop.

pub mod loss;
pub mod optim;
pub mod tape;
mod trainer;

pub use optim::{LrSchedule, OptimizerKind};
pub use trainer::{
    evaluate, evaluate_on, fit, fit_multi, fit_validated, CpuStep, EpochStats, Evaluation, FitReport, Progress,
    StepStats, TaskResult, TaskSpec, TrainConfig, Trainer,
};
