//! `edgepatch quantize`: an f32 ONNX model's kernels to int8 ([`edgepatch::quantize`]), written as
//! weight-only QDQ ONNX, with what it costs: agreement with the f32 model on images, and the test
//! accuracy of the same patch trained over each.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use edgepatch::backend::Device;
use edgepatch::data::{self, Dataset};
use edgepatch::export::{to_onnx, ExportWeights};
use edgepatch::quantize::{quantize_graph, Quantized};
use edgepatch::train::{self, TrainConfig};
use edgepatch::{Backbone, Error, PatchKinds};
use serde_json::{json, Value};

use crate::flags::select;

#[derive(Args)]
pub struct QuantizeArgs {
    /// The f32 ONNX model (any model edgepatch imports; kernels already int8 stay as they are).
    pub input: PathBuf,
    /// Where to write the int8 model (weight-only QDQ ONNX, written atomically; never the input).
    #[arg(long)]
    pub out: PathBuf,
    /// Images (JPEG or PNG) to run both models on: top-1 agreement and logit differences.
    #[arg(long, num_args = 1..)]
    pub images: Vec<PathBuf>,
    /// Training data (idx:DIR/PREFIX or folder:DIR): train the same patch over both models and
    /// report their test accuracy.
    #[arg(long, requires = "test")]
    pub train: Option<String>,
    /// Test data for the transfer comparison.
    #[arg(long, requires = "train")]
    pub test: Option<String>,
    /// Patch kinds of the transfer comparison.
    #[arg(long, default_value = "sb+logits")]
    pub patch: PatchKinds,
    /// Train on this many images (after a seeded shuffle).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Test on this many images (after a seeded shuffle).
    #[arg(long)]
    pub test_limit: Option<usize>,
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long)]
    pub lr: Option<f32>,
    /// Input size: of the images' preprocessing and of the transfer training.
    #[arg(long, default_value_t = 224)]
    pub resolution: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    #[arg(long)]
    pub json: bool,
}

/// How the two models agree on a set of images.
struct Agreement {
    images: usize,
    top1_same: usize,
    max_logit_diff: f32,
    mean_logit_diff: f32,
    max_prob_diff: f32,
}

fn agreement(f32_model: &Backbone, int8_model: &Backbone, images: &[PathBuf], r: u32) -> edgepatch::Result<Agreement> {
    let paths: Vec<&Path> = images.iter().map(PathBuf::as_path).collect();
    // Both models take the same preprocessing: the images are decoded once.
    let pp = f32_model.preprocess(r);
    let x: Vec<f32> =
        paths.iter().map(|p| pp.apply(&data::image::load(p)?)).collect::<edgepatch::Result<Vec<_>>>()?.concat();
    let x = edgepatch::Tensor::from_vec([paths.len(), 3, r as usize, r as usize], x).expect("r×r images");
    let logits = |b: &Backbone| b.forward(x.clone()).map(edgepatch::Tensor::into_data);
    let (a, b) = (logits(f32_model)?, logits(int8_model)?);
    let classes = a.len() / paths.len();
    let argmax = |v: &[f32]| (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j]).then(j.cmp(&i))).unwrap_or(0);
    let mut out =
        Agreement { images: paths.len(), top1_same: 0, max_logit_diff: 0.0, mean_logit_diff: 0.0, max_prob_diff: 0.0 };
    for (x, y) in a.chunks_exact(classes).zip(b.chunks_exact(classes)) {
        out.top1_same += usize::from(argmax(x) == argmax(y));
        let (px, py) = (edgepatch::session::softmax(x), edgepatch::session::softmax(y));
        for i in 0..classes {
            let d = (x[i] - y[i]).abs();
            out.max_logit_diff = out.max_logit_diff.max(d);
            out.mean_logit_diff += d / a.len() as f32;
            out.max_prob_diff = out.max_prob_diff.max((px[i] - py[i]).abs());
        }
    }
    Ok(out)
}

/// Test accuracy of a patch of the same settings trained over `model`.
fn transfer(
    model: &Backbone,
    a: &QuantizeArgs,
    train_ds: &Arc<dyn Dataset>,
    test_ds: &Arc<dyn Dataset>,
) -> edgepatch::Result<f32> {
    let mut config = TrainConfig::new(a.patch);
    (config.epochs, config.batch, config.lr, config.resolution) = (a.epochs, a.batch, a.lr, a.resolution);
    (config.seed, config.device) = (a.seed, a.device);
    config.cancel = crate::interrupt::cancel();
    config.check()?;
    let indices = select(train_ds.as_ref(), a.limit, a.seed);
    let (patch, _) = train::fit(model, train_ds.clone(), &indices, config, &mut |_| {})?;
    let test_idx = select(test_ds.as_ref(), a.test_limit, crate::flags::TEST_SUBSET_SEED);
    Ok(train::evaluate_on(&model.patched(&patch)?, test_ds.clone(), &test_idx, a.resolution, a.device)?.accuracy)
}

pub fn quantize(a: &QuantizeArgs) -> edgepatch::Result<String> {
    if a.input.canonicalize().ok().is_some_and(|i| a.out.canonicalize().ok() == Some(i)) {
        return Err(Error::Input(format!(
            "--out {} is the input model: write the int8 model elsewhere",
            a.out.display()
        )));
    }
    edgepatch::fsio::output_target(&a.out)?;
    let datasets = match (&a.train, &a.test) {
        (Some(tr), Some(te)) => {
            let (tr, te) = (data::open(tr)?, data::open(te)?);
            if tr.classes() != te.classes() {
                return Err(Error::dataset(te.spec(), "its classes differ from the training set's"));
            }
            Some((tr, te))
        }
        _ => None,
    };
    let source = Backbone::from_path(&a.input)?;
    let mut graph = source.graph().clone();
    let done = quantize_graph(&mut graph);
    if done.kernels == 0 {
        return Err(Error::InvalidModel(format!("{}: no f32 kernels to quantize", a.input.display())));
    }
    let bytes = to_onnx(&graph, None, ExportWeights::Int8)?;
    // What is written is what is measured: the int8 model is the file's bytes imported again.
    let int8 = Backbone::from_onnx_bytes(&bytes)?;
    let agree = if a.images.is_empty() { None } else { Some(agreement(&source, &int8, &a.images, a.resolution)?) };
    let accuracy = match &datasets {
        Some((tr, te)) => Some((transfer(&source, a, tr, te)?, transfer(&int8, a, tr, te)?)),
        None => None,
    };
    edgepatch::fsio::write_atomic(&a.out, &bytes)?;
    log::info!("wrote {} ({} bytes)", a.out.display(), bytes.len());
    Ok(report(a, &done, bytes.len(), agree.as_ref(), accuracy))
}

fn report(
    a: &QuantizeArgs,
    q: &Quantized,
    file_bytes: usize,
    agree: Option<&Agreement>,
    acc: Option<(f32, f32)>,
) -> String {
    let agreement = agree.map(|g| {
        json!({"images": g.images, "top1_same": g.top1_same, "max_logit_diff": g.max_logit_diff,
            "mean_logit_diff": g.mean_logit_diff, "max_probability_diff": g.max_prob_diff})
    });
    let transfer = acc.map(|(f, i)| {
        json!({"patch": a.patch.to_string(), "f32_accuracy": f, "int8_accuracy": i, "resolution": a.resolution,
            "epochs": a.epochs, "train_limit": a.limit, "test_limit": a.test_limit, "seed": a.seed})
    });
    if a.json {
        let v = json!({"out": a.out.display().to_string(), "file_bytes": file_bytes, "kernels": q.kernels,
            "values": q.values, "already_int8": q.already_int8, "resident_bytes_f32": q.bytes_before,
            "resident_bytes_int8": q.bytes_after, "agreement": agreement.unwrap_or(Value::Null),
            "transfer": transfer.unwrap_or(Value::Null)});
        return format!("{}\n", serde_json::to_string_pretty(&v).expect("json"));
    }
    let mut o = format!(
        "wrote {} ({file_bytes} bytes): {} kernels ({} values) to int8, {} already int8; weights {:.2} MB → {:.2} MB resident\n",
        a.out.display(),
        q.kernels,
        q.values,
        q.already_int8,
        q.bytes_before as f64 / 1e6,
        q.bytes_after as f64 / 1e6
    );
    if let Some(g) = agree {
        o += &format!(
            "on {} images at {} px: top-1 the same on {}; logits differ by {:.4} at most ({:.5} on average), probabilities by {:.4} at most\n",
            g.images, a.resolution, g.top1_same, g.max_logit_diff, g.mean_logit_diff, g.max_prob_diff
        );
    }
    if let Some((f, i)) = acc {
        o += &format!(
            "{} patch, test accuracy: {f:.4} over the f32 model, {i:.4} over the int8 one ({:+.4})\n",
            a.patch,
            i - f
        );
    }
    o
}
