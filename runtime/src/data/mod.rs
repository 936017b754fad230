//! Input data: decoding and preprocessing images, datasets, batching.

pub mod dataset;
pub mod image;
pub mod loader;
mod rng;

pub use dataset::{check_readable, open, Dataset};
pub use loader::{Batch, Loader, Transform};
pub use rng::Rng;
