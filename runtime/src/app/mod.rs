//! The API that apps reach through a binding (C, Python, Java): a [`Runtime`] that predicts with
//! named, switchable task patches, and a [`Trainer`] that learns a patch from labelled images
//! handed over one at a time.
//!
//! Every rule of that API lives here (which patch is active, what a fit holds out, how a cancel
//! reaches the loop, what a bad argument is); the bindings under `targets/` and `bindings/` only
//! translate types, errors and threads.
//!
//! ```text
//! Runtime ── load_patch / activate ──▶ Session (CPU or GPU) ──▶ classify(images, k)
//!    │ backbone()
//!    ▼
//! Trainer ── add(image, label) … fit(epochs, progress) ──▶ Patch ──▶ Runtime::load_patch / Store
//! ```

mod runtime;
mod trainer;

pub use runtime::Runtime;
pub use trainer::{FitSummary, Trainer};
