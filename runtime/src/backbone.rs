//! The frozen backbone: the imported graph with its int8 weights, its fingerprint, its labels
//! and its preprocessing, plus the CPU engine that runs it.

use std::path::Path;

use crate::backend::cpu::CpuEngine;
use crate::data::image::Preprocess;
use crate::graph::Graph;
use crate::tensor::Tensor;
use crate::{import, Result};

/// The shipped int8 MobileNetV2 (QDQ ONNX), compiled into the library (feature
/// `embedded-model`, on by default; 3.9 MB).
#[cfg(feature = "embedded-model")]
pub static EMBEDDED_MODEL: &[u8] =
    include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/mobilenet_v2/mobilenet_v2_int8.onnx"));

/// The 1000 ImageNet class names in torchvision's order, one per line.
pub static IMAGENET_LABELS: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/mobilenet_v2/labels.txt"));

/// A frozen network ready to run.
#[derive(Debug, Clone)]
pub struct Backbone {
    graph: Graph,
    engine: CpuEngine,
    labels: Vec<String>,
    fingerprint: String,
}

impl Backbone {
    /// The shipped int8 MobileNetV2 with the ImageNet labels.
    #[cfg(feature = "embedded-model")]
    pub fn embedded() -> Result<Self> {
        Self::from_onnx_bytes(EMBEDDED_MODEL)
    }

    /// Without the `embedded-model` feature: an error asking for a model file.
    #[cfg(not(feature = "embedded-model"))]
    pub fn embedded() -> Result<Self> {
        Err(crate::Error::InvalidModel(
            "this build has no embedded model (the `embedded-model` feature is off): load a model file".into(),
        ))
    }

    /// Imports an ONNX file.
    pub fn from_path(path: &Path) -> Result<Self> {
        let bytes = crate::fsio::read_limited(path, crate::fsio::MAX_MODEL_BYTES, "a model file")?;
        Self::from_onnx_bytes(&bytes)
    }

    /// Imports ONNX bytes. A 1000-class model gets the ImageNet labels, any other `class N`.
    pub fn from_onnx_bytes(bytes: &[u8]) -> Result<Self> {
        let graph = import::from_bytes(bytes)?;
        let classes = graph.num_classes();
        let labels = if classes == 1000 {
            IMAGENET_LABELS.lines().map(str::to_string).collect()
        } else {
            (0..classes).map(|i| format!("class {i}")).collect()
        };
        let fingerprint = graph.fingerprint();
        let engine = CpuEngine::new(&graph);
        Ok(Backbone { graph, engine, labels, fingerprint })
    }

    /// The IR.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Class names, one per output.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Identifies the frozen weights and structure (16 hex digits).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The graph with `patch` applied, checked against this backbone's cached fingerprint (what
    /// [`Patch::apply`] does for a bare graph, without hashing the weights again).
    pub fn patched(&self, patch: &crate::Patch) -> Result<Graph> {
        patch.check(&self.graph, &self.fingerprint)?;
        let mut g = self.graph.clone();
        patch.write_into(&mut g);
        Ok(g)
    }

    /// Bytes the frozen weights occupy in memory (int8 values, scales, f32 affines and biases).
    pub fn resident_bytes(&self) -> usize {
        self.graph.resident_bytes()
    }

    /// The preprocessing for a `size`-pixel input.
    pub fn preprocess(&self, size: u32) -> Preprocess {
        Preprocess::imagenet(size)
    }

    /// Logits for a batch: `[N, 3, H, W]` (H, W ≥ 32) → `[N, classes]` row-major.
    pub fn forward(&self, input: Tensor) -> Result<Tensor> {
        self.engine.forward(&self.graph, input)
    }
}
