//! Learning a patch: the tape (forward keeping activations, reverse walk), the loss, the
//! optimizers, one step on a backend, the trainer and the training loops.

pub mod activations;
pub mod adapt;
pub mod checkpoint;
mod config;
mod evaluate;
mod fit;
pub mod loss;
pub mod memory;
pub mod optim;
pub mod prototype;
pub mod recompute;
mod step;
mod stream;
pub mod tape;
mod trainer;

pub use config::{Cancel, TrainConfig};
pub use evaluate::{evaluate, evaluate_on, evaluate_within, Evaluation};
pub use fit::{fit, fit_multi, fit_validated, EpochStats, FitReport, Progress, TaskResult, TaskSpec};
pub use optim::{LrSchedule, OptimizerKind};
pub use prototype::{HeadInit, Prototypes};
pub use step::{CpuStep, StepStats};
pub use trainer::Trainer;
