//! `edgepatch adapt`: a patch adapted to new conditions from unlabeled images.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use edgepatch::data;
use edgepatch::patch::file::{self as patch_file, ValueType};
use edgepatch::train::{self, adapt};
use edgepatch::Error;
use serde_json::json;

use crate::flags::{peak_rss_bytes, select, TEST_SUBSET_SEED};

/// How `adapt` adapts.
#[derive(Clone, Copy, ValueEnum)]
pub enum Method {
    /// Re-estimate every BatchNorm's statistics on the unlabeled images (AdaBN) and rewrite the
    /// S/B affines to normalise with them.
    Stats,
    /// `stats`, then train the S/B affines to lower the prediction entropy on the unlabeled
    /// images (TENT): --epochs passes, SGD at --lr, on the CPU.
    Entropy,
}

#[derive(Args)]
pub struct AdaptArgs {
    /// The patch to adapt.
    #[arg(long)]
    pub patch: PathBuf,
    /// Images of the new conditions (idx:DIR/PREFIX or folder:DIR; their labels are not read).
    #[arg(long)]
    pub unlabeled: String,
    /// Where to write the adapted patch (atomically; it holds S/B besides the patch's kinds).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "stats")]
    pub method: Method,
    /// `entropy`: passes over the unlabeled images.
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    /// `entropy`: SGD's peak learning rate (cosine decay to 0).
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f32,
    /// `entropy`: images per step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// The peak resident memory (MB) to aim the process at: the statistics keep fewer
    /// activations, in smaller passes on the calling thread, and `entropy`'s steps run as
    /// micro-batches planned to fit, as `train`'s. The statistics' passes have a floor: about 260
    /// MB at 224 px (README, "No labels").
    #[arg(long, value_name = "MB")]
    pub memory_budget: Option<f64>,
    /// Use this many unlabeled images, taken after a seeded shuffle.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Images of the conditions the patch was made for (its training data, say): their
    /// statistics, rather than the imported BatchNorms', are what the new images are matched to.
    /// Needed for a backbone whose BatchNorms were folded before import.
    #[arg(long)]
    pub source: Option<String>,
    /// Use this many source images, taken after a seeded shuffle.
    #[arg(long, requires = "source")]
    pub source_limit: Option<usize>,
    /// Match the new images to the imported BatchNorms' own statistics (classic AdaBN) instead
    /// of --source: right for the backbone's own classifier, wrong for a patch trained on other
    /// data with those statistics frozen (docs/adaptation.md measures both).
    #[arg(long, conflicts_with = "source")]
    pub imported_stats: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Labelled test images of the new conditions: the accuracy before and after.
    #[arg(long)]
    pub test: Option<String>,
    /// Test on this many images (the subset `train --test-limit` scores).
    #[arg(long)]
    pub test_limit: Option<usize>,
    #[arg(long, default_value = "f32")]
    pub patch_dtype: ValueType,
    /// An ONNX backbone; the shipped int8 MobileNetV2 when absent.
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn adapt(a: &AdaptArgs) -> edgepatch::Result<String> {
    let backbone = crate::load(a.model.as_deref())?;
    let patch = patch_file::load(&a.patch)?;
    patch.check(backbone.graph(), backbone.fingerprint())?;
    let unlabeled = data::open(&a.unlabeled)?;
    let indices = select(unlabeled.as_ref(), a.limit, a.seed);
    let reference = match &a.source {
        Some(spec) => {
            let ds = data::open(spec)?;
            let idx = select(ds.as_ref(), a.source_limit, a.seed);
            adapt::Reference::Source(ds, idx)
        }
        None if a.imported_stats => adapt::Reference::Imported,
        None => {
            return Err(Error::Train(
                "give --source (images of the conditions the patch was trained for) or --imported-stats".into(),
            ))
        }
    };
    let test = a.test.as_deref().map(data::open).transpose()?;
    if let Some(t) = &test {
        if t.classes() != patch.labels.as_slice() {
            return Err(Error::dataset(t.spec(), "its classes are not the patch's"));
        }
    }
    let test_idx = test.as_ref().map(|t| select(t.as_ref(), a.test_limit, TEST_SUBSET_SEED));
    edgepatch::fsio::output_target(&a.out)?;
    let score = |p: &edgepatch::Patch| -> edgepatch::Result<Option<f32>> {
        match (&test, &test_idx) {
            (Some(t), Some(idx)) => {
                Ok(Some(train::evaluate(&backbone.patched(p)?, t.clone(), idx, p.resolution)?.accuracy))
            }
            _ => Ok(None),
        }
    };
    let before = score(&patch)?;
    // What adapting may add to the process as it is now (out-of-range budgets become 0 bytes,
    // refused as too small by the step's plan).
    let budget = a.memory_budget.map(|mb| {
        let total = if mb.is_finite() && mb > 0.0 { (mb * 1e6) as u64 } else { 0 };
        total.saturating_sub(crate::flags::rss_bytes().unwrap_or(0))
    });
    let (adapted, report) = match a.method {
        Method::Stats => {
            let kept = budget.map_or(192 << 20, |b| (b / 3) as usize).min(192 << 20);
            adapt::adapt_stats_within(&backbone, &patch, unlabeled, &indices, &reference, kept)?
        }
        Method::Entropy => {
            let (epochs, batch, lr, seed) = (a.epochs, a.batch, a.lr, a.seed);
            let settings = adapt::EntropySettings { epochs, batch, lr, seed, memory_budget: budget };
            adapt::adapt_entropy(&backbone, &patch, unlabeled, &indices, &reference, &settings)?
        }
    };
    let encoded = patch_file::to_bytes_as(&adapted, a.patch_dtype)?;
    let adapted = adapted.stored_as(a.patch_dtype);
    let after = score(&adapted)?;
    patch_file::write_atomic(&a.out, &encoded)?;
    let summary = json!({
        "method": match a.method { Method::Stats => "stats", Method::Entropy => "entropy" }, "patch": adapted.kinds.to_string(), "out": a.out.display().to_string(),
        "unlabeled_images": report.images, "affines": report.affines, "seconds": report.seconds,
        "reference": if a.source.is_some() { "source images" } else { "imported BatchNorm statistics" },
        "test_images": test_idx.as_ref().map_or(0, Vec::len), "test_accuracy_before": before,
        "test_accuracy_after": after, "patch_bytes": encoded.len(), "peak_rss_bytes": peak_rss_bytes(),
    });
    if a.json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&summary).expect("json")));
    }
    let mut o = format!(
        "adapted {} affines to {} unlabeled images in {:.1} s: {} → {}\n",
        report.affines,
        report.images,
        report.seconds,
        adapted.kinds,
        a.out.display()
    );
    if let (Some(b), Some(f)) = (before, after) {
        o += &format!("test accuracy {b:.4} before, {f:.4} after\n");
    }
    Ok(o)
}
