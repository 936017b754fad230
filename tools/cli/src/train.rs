//! `edgepatch train`, `eval` and `patch inspect`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use edgepatch::backend::Device;
use edgepatch::data::{self, Dataset};
use edgepatch::patch::file::{self as patch_file, ValueType};
use edgepatch::train::{self, Evaluation};
use edgepatch::{Backbone, Error, Patch, PatchKinds};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

pub use crate::flags::{peak_rss_bytes, reset_peak_rss, select, split, TrainFlags};
use crate::load;

#[derive(Args)]
pub struct TrainArgs {
    /// Training data: idx:DIR/PREFIX or folder:DIR.
    #[arg(long)]
    pub train: String,
    /// Test data, scored after training.
    #[arg(long)]
    pub test: Option<String>,
    /// Patch kinds joined by '+': logits, sb, bias, dw, se, full (e.g. sb+logits; se: the squeeze-excitation convolutions).
    #[arg(long)]
    pub patch: PatchKinds,
    /// Where to write the patch file (written atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// How the patch file stores its values: f32, or f16 (half the bytes; the reported test
    /// accuracy is the f16 patch's).
    #[arg(long, default_value = "f32")]
    pub patch_dtype: ValueType,
    /// Sequential transfer: start from this patch (same kinds and backbone) instead of the
    /// backbone's values; its classifier is kept when the classes are the same.
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Train on this many images, taken after a seeded shuffle.
    #[arg(long, conflicts_with = "shots")]
    pub limit: Option<usize>,
    /// Train on this many images of each class (few-shot), the first of each after a seeded
    /// shuffle.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub shots: Option<u64>,
    /// The schedule for a few images per class (replaces --epochs, --batch, --augment and
    /// --head): the classifier starts from the class prototypes, random crops and flips, batch
    /// 16 (or all the images when fewer), about 150 steps (docs/few_shot.md measures it).
    #[arg(long)]
    pub few_shot: bool,
    /// Test on this many images, taken after a seeded shuffle.
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Hold out this many training images (after the seeded shuffle, never trained on) and
    /// report the accuracy on them: for choosing a learning rate without touching the test set.
    #[arg(long, default_value_t = 0)]
    pub validate: usize,
    #[command(flatten)]
    pub flags: TrainFlags,
    /// Write a self-contained HTML training report (curves, confusion matrix, per-class
    /// accuracy, test images with predictions, settings) to DIR/report.html.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// An ONNX backbone; the shipped int8 MobileNetV2 when absent.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// End with one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn progress_bar(quiet: bool) -> ProgressBar {
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} step {pos}/{len} · {msg} · {eta} left").expect("valid template"),
    );
    bar
}

/// Everything a finished training run reports.
pub struct Trained {
    pub patch: Patch,
    pub summary: Value,
    pub test: Option<Evaluation>,
}

/// Trains on `train_ds`, saves to `a.out` and scores on `test_ds`; used by `train` and `demo`
/// (the dataset specs in `a` are not read).
pub fn run_training(
    backbone: &Backbone,
    train_ds: Arc<dyn Dataset>,
    test_ds: Option<Arc<dyn Dataset>>,
    a: &TrainArgs,
    quiet: bool,
) -> edgepatch::Result<Trained> {
    if let Some(t) = &test_ds {
        if t.classes() != train_ds.classes() {
            return Err(Error::dataset(t.spec(), "its classes differ from the training set's"));
        }
    }
    let (indices, held_out) = match a.shots {
        Some(k) => crate::flags::split_shots(train_ds.as_ref(), k as usize, a.validate, a.flags.seed)?,
        None => split(train_ds.as_ref(), a.limit, a.validate, a.flags.seed)?,
    };
    let mut config = a.flags.config(a.patch);
    if a.few_shot {
        few_shot_schedule(&mut config, indices.len());
    }
    config.init = a.init_from.as_deref().map(patch_file::load).transpose()?;
    config.check()?;
    // Everything that could fail after training is checked before it: the output path, and
    // that every test and validation image can be read.
    edgepatch::fsio::output_target(&a.out)?;
    if let Some(c) = &config.checkpoint {
        edgepatch::fsio::output_target(&c.path)?;
    }
    let test_idx = test_ds.as_ref().map(|t| select(t.as_ref(), a.test_limit, crate::flags::TEST_SUBSET_SEED));
    if let (Some(t), Some(idx)) = (&test_ds, &test_idx) {
        data::check_readable(t.as_ref(), idx, "test set")?;
    }
    if !held_out.is_empty() {
        data::check_readable(train_ds.as_ref(), &held_out, "validation split")?;
    }
    if let Some(dir) = &a.report {
        // An existing directory must take report.html; a new one must have an existing parent.
        match dir.symlink_metadata() {
            Ok(_) => edgepatch::fsio::output_target(&dir.join("report.html"))?,
            Err(_) => edgepatch::fsio::output_target(dir)?,
        };
    }
    let bar = progress_bar(quiet);
    let peak_before = peak_rss_bytes();
    let rss_before = reset_peak_rss();
    let (patch, report) =
        train::fit_validated(backbone, train_ds.clone(), &indices, &held_out, config.clone(), &mut |p| {
            bar.set_length(p.total_steps as u64);
            bar.set_position(p.step as u64);
            bar.set_message(format!("loss {:.4} · {:.1} img/s", p.loss, p.images_per_second));
        })?;
    bar.finish_and_clear();
    let training_peak = rss_before.and(peak_rss_bytes());
    // The file is written last, once everything else has succeeded: a failed run leaves
    // nothing new at `--out`.
    let encoded = patch_file::to_bytes_as(&patch, a.patch_dtype)?;
    let bytes = encoded.len() as u64;
    let patch = patch.stored_as(a.patch_dtype);
    let test = match (&test_ds, &test_idx) {
        (Some(t), Some(idx)) => {
            let graph = backbone.patched(&patch)?;
            Some(train::evaluate_within(
                &graph,
                t.clone(),
                idx,
                patch.resolution,
                a.flags.device,
                config.memory_budget,
            )?)
        }
        _ => None,
    };
    let validation = if held_out.is_empty() {
        None
    } else {
        let graph = backbone.patched(&patch)?;
        let (r, device, budget) = (patch.resolution, a.flags.device, config.memory_budget);
        Some(train::evaluate_within(&graph, train_ds.clone(), &held_out, r, device, budget)?)
    };
    let history: Vec<Value> = report
        .history
        .iter()
        .map(|h| {
            json!({"epoch": h.epoch, "loss": h.loss, "train_accuracy": h.train_accuracy,
                "validation_accuracy": h.validation_accuracy, "seconds": h.seconds})
        })
        .collect();
    let mut summary = json!({
        "patch": patch.kinds.to_string(),
        "out": a.out.display().to_string(),
        "train_images": report.train_images,
        "test_images": test.as_ref().map_or(0, |e| e.images),
        "test_accuracy": test.as_ref().map(|e| e.accuracy),
        "train_accuracy": report.train_accuracy,
        "validation_images": held_out.len(),
        "validation_accuracy": validation.as_ref().map(|e| e.accuracy),
        "final_loss": report.final_loss,
        "patch_params": patch.params(),
        "patch_bytes": bytes,
        "patch_dtype": a.patch_dtype.to_string(),
        "init_from": a.init_from.as_ref().map(|p| p.display().to_string()),
        "epochs": config.epochs,
        "batch": config.batch,
        "lr": config.lr(),
        "optimizer": config.optimizer.to_string(),
        "resolution": config.resolution,
        "augment": config.augment,
        "seed": config.seed,
        "shots": a.shots,
        "few_shot": a.few_shot,
        "head": format!("{:?}", config.head).to_lowercase(),
        "steps": report.steps,
        "seconds": report.seconds,
        "images_per_second": report.images_per_second,
        "peak_rss_bytes": peak_before.max(peak_rss_bytes()),
        "device": report.device,
        "gpu_buffer_bytes": report.gpu_buffer_bytes,
        "memory_plan": report.memory,
        "rss_before_training_bytes": rss_before,
        "training_peak_rss_bytes": training_peak,
        "labels": patch.labels,
        "history": history,
    });
    if let Some(e) = &test {
        summary["per_class"] =
            json!(e.per_class.iter().map(|&x| if x.is_finite() { Some(x) } else { None }).collect::<Vec<_>>());
        summary["confusion"] = json!(e.confusion);
    }
    patch_file::write_atomic(&a.out, &encoded)?;
    if let Some(dir) = &a.report {
        let samples = match (&test_ds, &test_idx) {
            (Some(t), Some(idx)) => samples(backbone, &patch, t.as_ref(), idx)?,
            _ => Vec::new(),
        };
        crate::report::write(dir, std::slice::from_ref(&summary), &samples)?;
    }
    Ok(Trained { patch, summary, test })
}

/// `--few-shot`: for `images` training images, the classifier from the prototypes, augmentation,
/// batch 16 (all the images when fewer) and about 150 steps (at least 5 epochs).
pub fn few_shot_schedule(config: &mut edgepatch::train::TrainConfig, images: usize) {
    config.batch = images.clamp(1, 16);
    config.epochs = ((150.0 / images.div_ceil(config.batch) as f64).round() as usize).max(5);
    config.augment = true;
    if config.kinds.new_head() {
        config.head = edgepatch::train::HeadInit::Prototypes;
    }
}

/// The first 16 images of `idx` as 64 × 64 thumbnails with the patch's top class.
fn samples(
    backbone: &Backbone,
    patch: &Patch,
    ds: &dyn Dataset,
    idx: &[usize],
) -> edgepatch::Result<Vec<crate::report::Sample>> {
    let session = edgepatch::Session::with_patch(backbone.clone(), patch)?;
    let mut out = Vec::new();
    for &i in idx.iter().take(16) {
        let img = ds.image(i)?;
        let top = session.classify(std::slice::from_ref(&img), 1)?.remove(0).remove(0);
        let small = edgepatch::data::image::resize_bilinear(&img, 64, 64);
        let rgb = image::RgbImage::from_raw(64, 64, small.data).expect("64 × 64 × 3 bytes");
        let mut png = std::io::Cursor::new(Vec::new());
        rgb.write_to(&mut png, image::ImageFormat::Png).map_err(|e| Error::Input(format!("thumbnail: {e}")))?;
        out.push(crate::report::Sample {
            png: png.into_inner(),
            label: ds.classes()[ds.label(i)].clone(),
            predicted: top.label,
            prob: top.prob,
        });
    }
    Ok(out)
}

pub fn train(a: &TrainArgs) -> edgepatch::Result<String> {
    let backbone = load(a.model.as_deref())?;
    let train_ds = data::open(&a.train)?;
    let test_ds = a.test.as_deref().map(data::open).transpose()?;
    let t = run_training(&backbone, train_ds, test_ds, a, a.json)?;
    if a.json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&t.summary).expect("json")));
    }
    let s = &t.summary;
    let mut o = format!(
        "trained {} on {} images in {:.1} s ({:.1} img/s, {}): {} values, {} bytes → {}\n",
        s["patch"].as_str().unwrap_or_default(),
        s["train_images"],
        s["seconds"].as_f64().unwrap_or_default(),
        s["images_per_second"].as_f64().unwrap_or_default(),
        s["device"].as_str().unwrap_or_default(),
        s["patch_params"],
        s["patch_bytes"],
        a.out.display()
    );
    if let Some(v) = t.summary["validation_accuracy"].as_f64() {
        o += &format!("validation accuracy {v:.4} on {} held-out training images\n", t.summary["validation_images"]);
    }
    if let Some(e) = &t.test {
        o += &format!("test accuracy {:.4} on {} images\n", e.accuracy, e.images);
    }
    Ok(o)
}

pub fn eval(
    test: &str,
    patch_path: &Path,
    test_limit: Option<usize>,
    seed: u64,
    model: Option<&Path>,
    device: Device,
    as_json: bool,
) -> edgepatch::Result<String> {
    let backbone = load(model)?;
    let patch = patch_file::load(patch_path)?;
    let ds: Arc<dyn Dataset> = data::open(test)?;
    if ds.classes() != patch.labels.as_slice() {
        return Err(Error::dataset(
            test,
            format!("its classes {:?} are not the patch's {:?}", ds.classes(), patch.labels),
        ));
    }
    let graph = backbone.patched(&patch)?;
    let idx = select(ds.as_ref(), test_limit, seed);
    let e = train::evaluate_on(&graph, ds, &idx, patch.resolution, device)?;
    if as_json {
        let per_class: serde_json::Map<String, Value> =
            patch.labels.iter().zip(&e.per_class).map(|(l, &a)| (l.clone(), json!(a))).collect();
        let v = json!({"accuracy": e.accuracy, "images": e.images, "per_class": per_class, "confusion": e.confusion});
        return Ok(format!("{}\n", serde_json::to_string_pretty(&v).expect("json")));
    }
    let mut o = format!("accuracy {:.4} on {} images\n", e.accuracy, e.images);
    for (l, a) in patch.labels.iter().zip(&e.per_class) {
        o += &format!("  {a:>7.4}  {l}\n");
    }
    Ok(o)
}

pub fn inspect(path: &Path, as_json: bool) -> edgepatch::Result<String> {
    let data = patch_file::read_bytes(path)?;
    let (patch, values) = patch_file::from_bytes_typed(&data).map_err(|e| match e {
        Error::Patch(m) => Error::Patch(format!("{}: {m}", path.display())),
        e => e,
    })?;
    let bytes = data.len();
    let matches = Backbone::embedded().is_ok_and(|b| b.fingerprint() == patch.fingerprint);
    if as_json {
        let tensors: Vec<Value> = patch
            .tensors
            .iter()
            .map(|t| json!({"node": t.node, "role": format!("{:?}", t.role), "shape": t.shape}))
            .collect();
        let v = json!({
            "kinds": patch.kinds.to_string(),
            "params": patch.params(),
            "bytes": bytes,
            "values": values.to_string(),
            "fingerprint": patch.fingerprint,
            "embedded_backbone": matches,
            "resolution": patch.resolution,
            "labels": patch.labels,
            "tensors": tensors,
        });
        return Ok(format!("{}\n", serde_json::to_string_pretty(&v).expect("json")));
    }
    Ok(format!(
        "kinds        {}\nparams       {} ({values})\nbytes        {}\nfingerprint  {}{}\nresolution   {}\nclasses      {}: {}\ntensors      {}\n",
        patch.kinds,
        patch.params(),
        bytes,
        patch.fingerprint,
        if matches { " (the embedded MobileNetV2)" } else { "" },
        patch.resolution,
        patch.labels.len(),
        patch.labels.join(", "),
        patch.tensors.len()
    ))
}
