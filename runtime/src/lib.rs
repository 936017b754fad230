//! # edgepatch
//!
//! A runtime that adapts one frozen network to many tasks on the device, after
//! "K for the Price of 1: Parameter-efficient Multi-task and Transfer Learning"
//! (Mudrakarta et al., ICLR 2019): a task is a small *model patch* (per-channel scales and
//! biases, depthwise kernels, a new classifier) over a shared, frozen, int8 backbone.
//!
//! ```text
//! ONNX file ──import (tract-onnx parses)──▶ Graph IR ──▶ Backbone (int8 weights, frozen)
//!                                                          │
//! images ─▶ data (decode, resize, crop, normalise) ──────▶ forward (CPU engine) ─▶ logits
//! ```
//!
//! Every convolution in the IR is followed by a per-channel [`graph::Affine`]
//! (`y = s·conv(x) + b`): BatchNorm folded, or the conv bias with `s = 1`. That affine is what
//! the S/B patch replaces.
#![deny(unsafe_code)]

pub mod app;
pub mod backbone;
pub mod backend;
pub mod data;
mod error;
pub mod export;
pub mod fsio;
pub mod graph;
pub mod import;
pub mod ops;
pub mod patch;
pub mod quantize;
pub mod schedule;
pub mod session;
#[allow(unsafe_code)]
pub mod simd;
pub mod tensor;
pub mod train;

pub use backbone::Backbone;
pub use error::{Error, Result};
pub use graph::Graph;
pub use patch::{Patch, PatchKinds};
pub use session::{Scored, Session};
pub use tensor::Tensor;
