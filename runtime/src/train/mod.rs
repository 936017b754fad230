//! Learning a patch: the tape (forward keeping activations, reverse walk), the loss, the
//! optimizers, one step on a backend, the trainer and the training loops.

mod config;
mod fit;
pub mod loss;
pub mod memory;
pub mod optim;
pub mod recompute;
mod step;
pub mod tape;
mod trainer;

pub use config::TrainConfig;
pub use fit::{
    evaluate, evaluate_on, evaluate_within, fit, fit_multi, fit_validated, EpochStats, Evaluation, FitReport, Progress,
    TaskResult, TaskSpec,
};
pub use optim::{LrSchedule, OptimizerKind};
pub use step::{CpuStep, StepStats};
pub use trainer::Trainer;
