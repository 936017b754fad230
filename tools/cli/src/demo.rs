//! `edgepatch demo`: the whole story with nothing but the binary — train `logits` and
//! `sb+logits` patches on a Fashion-MNIST subset compiled in, compare them, save the S/B patch,
//! reload it and classify test images with it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use edgepatch::data::dataset::Idx;
use edgepatch::data::Dataset;
use edgepatch::patch::file as patch_file;
use edgepatch::{Backbone, PatchKinds, Session};
use serde_json::{json, Value};

use crate::train::{run_training, TrainArgs, TrainFlags};

macro_rules! mini {
    ($f:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/datasets/fashion-mnist-mini/", $f))
    };
}

static TRAIN_IMAGES: &[u8] = mini!("train-images-idx3-ubyte.gz");
static TRAIN_LABELS: &[u8] = mini!("train-labels-idx1-ubyte.gz");
static TEST_IMAGES: &[u8] = mini!("t10k-images-idx3-ubyte.gz");
static TEST_LABELS: &[u8] = mini!("t10k-labels-idx1-ubyte.gz");
static NAMES: &str = include_str!("../../../models/datasets/fashion-mnist-mini/labels.txt");

fn embedded(spec: &str, images: &[u8], labels: &[u8]) -> edgepatch::Result<Arc<dyn Dataset>> {
    let names = |_| NAMES.lines().map(str::to_string).collect();
    Ok(Arc::new(Idx::from_bytes(spec, images, labels, names)?))
}

/// The demo's training settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub epochs: usize,
    pub resolution: u32,
    /// The process's peak resident memory while training, in MB (`train --memory-budget`).
    pub memory_budget: Option<f64>,
}

fn args(kinds: &str, out: &Path, s: Settings) -> TrainArgs {
    let Settings { epochs, resolution, memory_budget } = s;
    TrainArgs {
        train: "embedded:fashion-mnist-mini/train".into(),
        test: Some("embedded:fashion-mnist-mini/t10k".into()),
        patch: kinds.parse::<PatchKinds>().expect("a valid kind"),
        out: out.to_path_buf(),
        patch_dtype: edgepatch::patch::file::ValueType::F32,
        init_from: None,
        limit: None,
        shots: None,
        few_shot: false,
        test_limit: None,
        validate: 0,
        report: None,
        flags: TrainFlags {
            epochs,
            batch: 32,
            lr: None,
            optimizer: edgepatch::train::OptimizerKind::Sgd,
            weight_decay: 0.0,
            label_smoothing: 0.0,
            warmup: 0.05,
            clip_norm: 5.0,
            resolution,
            augment: false,
            seed: 0,
            head: edgepatch::train::HeadInit::Random,
            device: edgepatch::backend::Device::Auto,
            memory_budget,
            micro_batch: None,
            recompute: false,
            checkpoint: None,
            checkpoint_every: 20,
            resume: false,
            time_budget: None,
        },
        model: None,
        json: false,
    }
}

pub fn demo(out: &Path, settings: Settings, as_json: bool) -> edgepatch::Result<String> {
    let Settings { epochs, resolution, .. } = settings;
    // Refuse an output that is not a regular file or a new path before training.
    edgepatch::fsio::output_target(out)?;
    edgepatch::fsio::output_target(&PathBuf::from(format!("{}.logits", out.display())))?;
    let backbone = Backbone::embedded()?;
    let train = embedded("embedded:fashion-mnist-mini/train", TRAIN_IMAGES, TRAIN_LABELS)?;
    let test = embedded("embedded:fashion-mnist-mini/t10k", TEST_IMAGES, TEST_LABELS)?;
    let model_params = backbone.graph().params();
    let mut o = String::new();
    let mut runs = Vec::new();
    o += &format!(
        "Fashion-MNIST mini: {} training and {} test images, {} classes, at {resolution} px, {epochs} epochs,\n\
         over the embedded int8 MobileNetV2 ({} parameters, fingerprint {}).\n\n",
        train.len(),
        test.len(),
        train.classes().len(),
        model_params,
        backbone.fingerprint()
    );
    o += &format!(
        "{:<10} {:>8} {:>8} {:>9} {:>9} {:>8} {:>7}\n",
        "patch", "values", "% model", "bytes", "test acc", "train s", "img/s"
    );
    let logits_out = PathBuf::from(format!("{}.logits", out.display()));
    for (kinds, path) in [("logits", logits_out.as_path()), ("sb+logits", out)] {
        let t = run_training(&backbone, train.clone(), Some(test.clone()), &args(kinds, path, settings), as_json)?;
        let s = &t.summary;
        let acc = t.test.as_ref().map_or(0.0, |e| e.accuracy);
        o += &format!(
            "{:<10} {:>8} {:>7.2}% {:>9} {:>9.4} {:>8.1} {:>7.1}\n",
            kinds,
            t.patch.params(),
            100.0 * t.patch.params() as f64 / model_params as f64,
            s["patch_bytes"].as_u64().unwrap_or_default(),
            acc,
            s["seconds"].as_f64().unwrap_or_default(),
            s["images_per_second"].as_f64().unwrap_or_default()
        );
        runs.push(s.clone());
    }
    std::fs::remove_file(&logits_out).ok();
    let patch = patch_file::load(out)?;
    let session = Session::with_patch(backbone, &patch)?;
    o += &format!(
        "\nsaved the {} patch to {} and reloaded it: {} values, {} classes, {} px\n",
        patch.kinds,
        out.display(),
        patch.params(),
        patch.labels.len(),
        patch.resolution
    );
    let picks: Vec<usize> = (0..8).collect();
    let images = picks.iter().map(|&i| test.image(i)).collect::<edgepatch::Result<Vec<_>>>()?;
    let results = session.classify(&images, 1)?;
    let mut predictions: Vec<Value> = Vec::new();
    o += "its predictions on the first test images:\n";
    for (&i, r) in picks.iter().zip(&results) {
        let truth = &test.classes()[test.label(i)];
        let top = &r[0];
        let mark = if top.class == test.label(i) { "✓" } else { "✗" };
        o += &format!("  test #{i:<3} {truth:<12} → {:<12} {:>5.1}%  {mark}\n", top.label, 100.0 * top.prob);
        predictions.push(json!({"image": i, "label": truth, "predicted": top.label, "prob": top.prob}));
    }
    if as_json {
        let v = json!({"runs": runs, "patch": out.display().to_string(), "predictions": predictions});
        return Ok(format!("{}\n", serde_json::to_string_pretty(&v).expect("json")));
    }
    Ok(o)
}
