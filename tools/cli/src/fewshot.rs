//! `edgepatch prototype`: an instant `logits` patch from class prototypes (no training).

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use edgepatch::data;
use edgepatch::patch::file::{self as patch_file, ValueType};
use edgepatch::train::{self, prototype};
use edgepatch::Error;
use serde_json::json;

use crate::flags::{peak_rss_bytes, select, split, split_shots, TEST_SUBSET_SEED};

#[derive(Args)]
pub struct PrototypeArgs {
    /// The support images: idx:DIR/PREFIX or folder:DIR (every class needs at least one).
    #[arg(long)]
    pub train: String,
    /// Where to write the patch file (written atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Use this many images of each class, the first of each after a seeded shuffle.
    #[arg(long, conflicts_with = "limit", value_parser = clap::value_parser!(u64).range(1..))]
    pub shots: Option<u64>,
    /// Use this many images, taken after a seeded shuffle.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Input height and width: a multiple of 32, at least 32.
    #[arg(long, default_value_t = 224)]
    pub resolution: u32,
    /// How the patch file stores its values: f32 or f16.
    #[arg(long, default_value = "f32")]
    pub patch_dtype: ValueType,
    /// Test data, scored with the patch.
    #[arg(long)]
    pub test: Option<String>,
    /// Test on this many images (the subset `train --test-limit` scores).
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// An ONNX backbone; the shipped int8 MobileNetV2 when absent.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// End with one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn prototype(a: &PrototypeArgs) -> edgepatch::Result<String> {
    let backbone = crate::load(a.model.as_deref())?;
    let ds = data::open(&a.train)?;
    let test_ds = a.test.as_deref().map(data::open).transpose()?;
    if let Some(t) = &test_ds {
        if t.classes() != ds.classes() {
            return Err(Error::dataset(t.spec(), "its classes differ from the support set's"));
        }
    }
    let (indices, _) = match a.shots {
        Some(k) => split_shots(ds.as_ref(), k as usize, 0, a.seed)?,
        None => split(ds.as_ref(), a.limit, 0, a.seed)?,
    };
    edgepatch::fsio::output_target(&a.out)?;
    let test_idx = test_ds.as_ref().map(|t| select(t.as_ref(), a.test_limit, TEST_SUBSET_SEED));
    if let (Some(t), Some(idx)) = (&test_ds, &test_idx) {
        data::check_readable(t.as_ref(), idx, "test set")?;
    }
    let start = Instant::now();
    let (patch, protos) = prototype::prototype_patch(&backbone, ds.clone(), &indices, a.resolution)?;
    let seconds = start.elapsed().as_secs_f64();
    let encoded = patch_file::to_bytes_as(&patch, a.patch_dtype)?;
    let patch = patch.stored_as(a.patch_dtype);
    let test = match (&test_ds, &test_idx) {
        (Some(t), Some(idx)) => Some(train::evaluate(&backbone.patched(&patch)?, t.clone(), idx, patch.resolution)?),
        _ => None,
    };
    patch_file::write_atomic(&a.out, &encoded)?;
    let summary = json!({
        "patch": "logits", "head": "prototypes", "out": a.out.display().to_string(),
        "train_images": indices.len(), "shots": a.shots, "seed": a.seed, "resolution": a.resolution,
        "seconds": seconds, "images_per_second": indices.len() as f64 / seconds.max(1e-9),
        "temperature": protos.temperature, "scale": protos.scale,
        "patch_params": patch.params(), "patch_bytes": encoded.len(),
        "test_images": test.as_ref().map_or(0, |e| e.images), "test_accuracy": test.as_ref().map(|e| e.accuracy),
        "peak_rss_bytes": peak_rss_bytes(), "labels": patch.labels,
    });
    if a.json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&summary).expect("json")));
    }
    let mut o = format!(
        "prototype head of {} classes from {} images in {:.2} s (temperature {}): {} bytes → {}\n",
        patch.labels.len(),
        indices.len(),
        seconds,
        protos.temperature,
        encoded.len(),
        a.out.display()
    );
    if let Some(e) = &test {
        o += &format!("test accuracy {:.4} on {} images\n", e.accuracy, e.images);
    }
    Ok(o)
}
