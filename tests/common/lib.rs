//! Shared helpers of the end-to-end tests: paths, a tract-onnx reference run, named tolerances,
//! deterministic random inputs and small ONNX graphs built in code.
#![forbid(unsafe_code)]

pub mod naive;
pub mod onnx_builder;

use std::path::PathBuf;

use tract_onnx::prelude::*;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the repo").to_path_buf()
}

/// `models/mobilenet_v2/reference`: three photos and onnxruntime's outputs on them, committed
/// with the model so that a clone tests itself.
pub fn reference_dir() -> PathBuf {
    repo_root().join("models/mobilenet_v2/reference")
}

/// The f32 ONNX built by `models/mobilenet_v2/build.sh` into the cache. Panics with the
/// command to run when it is missing: the parity tests must not silently skip.
pub fn f32_model() -> PathBuf {
    cached_model("mobilenet_v2_f32.onnx", "mobilenet_v2")
}

/// `file` in the cache, built by `models/{model}/build.sh`. Panics with the command to run when
/// it is missing: the parity tests must not silently skip.
pub fn cached_model(file: &str, model: &str) -> PathBuf {
    let cache = std::env::var_os("EDGEPATCH_CACHE").map(PathBuf::from).unwrap_or(repo_root().join("cache"));
    let p = cache.join(file);
    assert!(p.exists(), "{} is missing: run `bash models/{model}/build.sh` first", p.display());
    p
}

/// A comparison tolerance: `|x − y| ≤ max(rel·max(|x|, |y|), abs)`.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    pub rel: f32,
    pub abs: f32,
}

impl Tolerance {
    /// Index, values and excess of the worst element, or `None` when all are within tolerance.
    pub fn check(&self, got: &[f32], want: &[f32]) -> Option<(usize, f32, f32)> {
        assert_eq!(got.len(), want.len(), "lengths differ");
        got.iter()
            .zip(want)
            .enumerate()
            .filter(|(_, (x, y))| {
                let bound = (self.rel * x.abs().max(y.abs())).max(self.abs);
                (*x - *y).abs() > bound || x.is_nan() || y.is_nan()
            })
            .map(|(i, (x, y))| (i, *x, *y))
            .next()
    }
}

/// The largest difference between two patches of the same slots, relative to each value of
/// `a` (at least 0.01 in magnitude, so that values near zero compare absolutely).
pub fn largest_relative_difference(a: &edgepatch::Patch, b: &edgepatch::Patch) -> f32 {
    assert_eq!(a.tensors.len(), b.tensors.len(), "patches of other slots");
    let mut worst = 0f32;
    for (ta, tb) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!((ta.node, ta.role), (tb.node, tb.role), "patches of other slots");
        for (x, y) in ta.values.iter().zip(&tb.values) {
            worst = worst.max((x - y).abs() / x.abs().max(1e-2));
        }
    }
    worst
}

/// Deterministic pseudo-random values in `[-scale, scale]` (a 64-bit LCG; no extra crates).
pub fn random_values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Runs an ONNX model with tract-onnx on one NCHW f32 input; returns the first output.
pub fn tract_run(model: &[u8], shape: [usize; 4], input: &[f32]) -> TractResult<Vec<f32>> {
    let plan = tract_onnx::onnx()
        .model_for_read(&mut &model[..])?
        .with_input_fact(0, f32::fact(shape).into())?
        .into_optimized()?
        .into_runnable()?;
    let x = tract_ndarray::Array4::from_shape_vec(shape, input.to_vec())?;
    let out = plan.run(tvec!(Tensor::from(x).into()))?;
    Ok(out[0].to_plain_array_view::<f32>()?.iter().copied().collect())
}
