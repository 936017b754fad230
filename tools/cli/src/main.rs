//! `edgepatch`: inspect a backbone, learn task patches over it, and classify images with it.
#![forbid(unsafe_code)]

/// Appends one formatted line to a `String`.
macro_rules! outln {
    ($o:ident) => {
        $o.push('\n')
    };
    ($o:ident, $($t:tt)*) => {{
        $o.push_str(&format!($($t)*));
        $o.push('\n');
    }};
}

mod adapt;
mod demo;
mod fewshot;
mod flags;
mod info;
mod interrupt;
mod multi;
mod quantize;
mod report;
mod store;
mod train;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edgepatch::backend::Device;
use edgepatch::export::ExportWeights;
use edgepatch::patch::file::{self as patch_file, ValueType};
use edgepatch::patch::store::Store;
use edgepatch::{Backbone, Session};
use serde_json::json;

#[derive(Parser)]
#[command(name = "edgepatch", version, about = "Adapt one frozen network to many tasks with model patches")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Refuse images of more pixels than this (width × height), from their header, before
    /// decoding; bounds the memory one image takes.
    #[arg(long, global = true, default_value_t = edgepatch::data::image::DEFAULT_MAX_PIXELS, value_parser = clap::value_parser!(u64).range(1..))]
    max_pixels: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Layers, parameters, input shape and patchable parameter counts of a model.
    Info {
        /// An ONNX model; the shipped int8 MobileNetV2 when absent.
        #[arg(long)]
        model: Option<PathBuf>,
        /// List the GPU adapters wgpu sees (name, backend, type) instead.
        #[arg(long)]
        devices: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Classify images (JPEG or PNG) with a model.
    Predict {
        /// Image files.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// An ONNX model; the shipped int8 MobileNetV2 when absent.
        #[arg(long)]
        model: Option<PathBuf>,
        /// How many classes to show per image (at least 1).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        top: u64,
        /// A task patch: classify with the task's classes.
        #[arg(long, conflicts_with = "store")]
        patch: Option<PathBuf>,
        /// A patch store (with --task): classify with one of its tasks.
        #[arg(long, requires = "task")]
        store: Option<PathBuf>,
        /// The task's name in --store.
        #[arg(long, requires = "store")]
        task: Option<String>,
        /// Where to compute: auto (a hardware GPU when present), gpu or cpu.
        #[arg(long, default_value = "auto")]
        device: Device,
        /// Print a JSON array, one object per image.
        #[arg(long)]
        json: bool,
    },
    /// Learn a patch for a task (on the CPU or a GPU) and save it.
    Train(Box<train::TrainArgs>),
    /// Quantize an f32 ONNX model's kernels to int8 (per output channel, symmetric, the clipping
    /// range of least squared error) and report what it costs
    Quantize(Box<quantize::QuantizeArgs>),
    /// Make a `logits` patch from a few images per class at once, without training: the class
    /// prototypes of the backbone's features (nearest prototype by cosine, as a linear head).
    Prototype(Box<fewshot::PrototypeArgs>),
    /// Adapt a patch to new conditions (camera, lighting, sensor) from unlabeled images.
    Adapt(Box<adapt::AdaptArgs>),
    /// Learn K task patches at once over the shared backbone and write them into a patch store.
    TrainMulti(Box<multi::MultiArgs>),
    /// Score a patch on a labelled set: accuracy, per class, confusion matrix.
    Eval {
        /// Test data: idx:DIR/PREFIX or folder:DIR.
        #[arg(long)]
        test: String,
        /// The patch file.
        #[arg(long)]
        patch: PathBuf,
        /// Score this many images, taken after a seeded shuffle: by default the subset `train
        /// --test-limit N` scores, whatever the training's seed.
        #[arg(long)]
        test_limit: Option<usize>,
        /// The seed of the --test-limit shuffle (default: the one `train` and `train-multi` use).
        #[arg(long, default_value_t = flags::TEST_SUBSET_SEED)]
        seed: u64,
        /// An ONNX backbone; the shipped int8 MobileNetV2 when absent.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Where to compute: auto (a hardware GPU when present), gpu or cpu.
        #[arg(long, default_value = "auto")]
        device: Device,
        #[arg(long)]
        json: bool,
    },
    /// Train `logits` and `sb+logits` patches on a Fashion-MNIST subset compiled into the
    /// binary, compare them, save the S/B patch, reload it and predict with it.
    Demo {
        /// Where to save the `sb+logits` patch.
        #[arg(long, default_value = "edgepatch-demo.patch")]
        out: PathBuf,
        #[arg(long, default_value_t = 3)]
        epochs: usize,
        #[arg(long, default_value_t = 64)]
        resolution: u32,
        /// The peak resident memory (MB) the process may reach while training (as `train`'s)
        #[arg(long, value_name = "MB")]
        memory_budget: Option<f64>,
        #[arg(long)]
        json: bool,
    },
    /// Fold a task patch into the backbone and write a standard ONNX model for the task.
    Export {
        /// The patch file.
        #[arg(long, required_unless_present = "store", conflicts_with = "store")]
        patch: Option<PathBuf>,
        /// A patch store (with --task) holding the patch.
        #[arg(long, requires = "task")]
        store: Option<PathBuf>,
        /// The task's name in --store.
        #[arg(long, requires = "store")]
        task: Option<String>,
        /// Where to write the model (atomically).
        #[arg(long)]
        out: PathBuf,
        /// Kernels as int8 behind DequantizeLinear (frozen ones; trained ones stay f32) or all f32.
        #[arg(long, default_value = "int8")]
        weights: ExportWeights,
        /// An ONNX backbone; the shipped int8 MobileNetV2 when absent.
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// A self-contained HTML report over several runs' `train --json` output: curves per epoch,
    /// accuracy against patch bytes, confusion matrices, per-class accuracy, settings.
    Report {
        /// JSON summaries written by `edgepatch train --json`.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// The directory to write report.html into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Work with patch files.
    #[command(subcommand)]
    Patch(PatchCommand),
    /// A patch store: a directory of named task patches with an index; every write is atomic.
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Subcommand)]
enum StoreCommand {
    /// The tasks in a store.
    List {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Add a patch file as task NAME (replacing any task of that name); creates the store.
    Add {
        dir: PathBuf,
        name: String,
        file: PathBuf,
        /// Store the values as f32 or f16 (default: as in the file).
        #[arg(long)]
        values: Option<ValueType>,
        /// The backbone the patch must apply to; the shipped int8 MobileNetV2 when absent.
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Remove task NAME.
    Remove { dir: PathBuf, name: String },
    /// Check the index, decode every patch it names and check it applies to the backbone
    /// (exit status 1 on any problem).
    Verify {
        dir: PathBuf,
        /// The backbone; the shipped int8 MobileNetV2 when absent.
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PatchCommand {
    /// Kinds, parameter counts, bytes, backbone fingerprint, labels and resolution of a patch.
    Inspect {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn load(model: Option<&Path>) -> edgepatch::Result<Backbone> {
    match model {
        Some(p) => Backbone::from_path(p),
        None => Backbone::embedded(),
    }
}

/// Where a prediction's patch comes from.
enum PatchSource<'a> {
    None,
    File(&'a Path),
    Store(&'a Path, &'a str),
}

fn predict(
    images: &[PathBuf],
    model: Option<&Path>,
    patch: PatchSource<'_>,
    top: usize,
    device: Device,
    as_json: bool,
) -> edgepatch::Result<String> {
    let mut o = String::new();
    // Every path must be a readable regular file before anything runs (decoding comes later,
    // one image at a time).
    for p in images {
        edgepatch::fsio::open_regular(p, "an image file")?;
    }
    let backbone = load(model)?;
    let session = match patch {
        PatchSource::File(p) => Session::with_patch_on(backbone, &patch_file::load(p)?, device)?,
        PatchSource::Store(dir, task) => Session::with_patch_on(backbone, &Store::open(dir)?.get(task)?, device)?,
        PatchSource::None if device == Device::Cpu => Session::new(backbone),
        PatchSource::None => Session::new_on(backbone, device)?,
    };
    // One image at a time: only one decoded image is held, whatever the number of files.
    let results = images
        .iter()
        .map(|p| Ok(session.classify(&[edgepatch::data::image::load(p)?], top)?.remove(0)))
        .collect::<edgepatch::Result<Vec<_>>>()?;
    if as_json {
        let arr: Vec<_> = images
            .iter()
            .zip(&results)
            .map(|(p, r)| {
                let top: Vec<_> =
                    r.iter().map(|s| json!({"class": s.class, "label": s.label, "prob": s.prob})).collect();
                json!({"image": p.display().to_string(), "top": top})
            })
            .collect();
        outln!(o, "{}", serde_json::to_string_pretty(&arr).expect("json"));
        return Ok(o);
    }
    for (p, r) in images.iter().zip(&results) {
        outln!(o, "{}", p.display());
        for s in r {
            outln!(o, "  {:>6.2}%  {:>4}  {}", 100.0 * s.prob, s.class, s.label);
        }
    }
    Ok(o)
}

fn export(
    source: PatchSource<'_>,
    out: &Path,
    weights: ExportWeights,
    model: Option<&Path>,
    as_json: bool,
) -> edgepatch::Result<String> {
    let backbone = load(model)?;
    let patch = match source {
        PatchSource::File(p) => patch_file::load(p)?,
        PatchSource::Store(dir, task) => Store::open(dir)?.get(task)?,
        PatchSource::None => return Err(edgepatch::Error::Patch("export needs --patch or --store with --task".into())),
    };
    let bytes = edgepatch::export::patched_onnx(backbone.graph(), &patch, weights)?;
    patch_file::write_atomic(out, &bytes)?;
    if as_json {
        let v = json!({"out": out.display().to_string(), "bytes": bytes.len(), "weights": format!("{weights:?}").to_lowercase(),
            "patch": patch.kinds.to_string(), "classes": patch.labels.len(), "resolution": patch.resolution});
        return Ok(format!(
            "{}
",
            serde_json::to_string_pretty(&v).expect("json")
        ));
    }
    Ok(format!(
        "wrote {} ({} bytes, {} kernels): the backbone with the {} patch, {} classes, input [N, 3, {r}, {r}] → logits\n",
        out.display(),
        bytes.len(),
        format!("{weights:?}").to_lowercase(),
        patch.kinds,
        patch.labels.len(),
        r = patch.resolution
    ))
}

fn main() -> ExitCode {
    // Before any thread starts: it sets an environment variable.
    #[cfg(feature = "gpu")]
    edgepatch::backend::gpu::quiet_adapter_probe();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    edgepatch::data::image::set_max_pixels(cli.max_pixels);
    let result = match &cli.command {
        Command::Info { devices: true, json, .. } => Ok(info::devices(*json)),
        Command::Info { model, json, .. } => info::info(model.as_deref(), *json),
        Command::Predict { images, model, patch, store, task, top, device, json } => {
            let source = match (patch, store, task) {
                (Some(p), _, _) => PatchSource::File(p),
                (None, Some(s), Some(t)) => PatchSource::Store(s, t),
                _ => PatchSource::None,
            };
            predict(images, model.as_deref(), source, *top as usize, *device, *json)
        }
        Command::Train(args) => train::train(args),
        Command::Quantize(args) => quantize::quantize(args),
        Command::TrainMulti(args) => multi::train_multi(args),
        Command::Prototype(args) => fewshot::prototype(args),
        Command::Adapt(args) => adapt::adapt(args),
        Command::Eval { test, patch, test_limit, seed, model, device, json } => {
            train::eval(test, patch, *test_limit, *seed, model.as_deref(), *device, *json)
        }
        Command::Demo { out, epochs, resolution, memory_budget, json } => demo::demo(
            out,
            demo::Settings { epochs: *epochs, resolution: *resolution, memory_budget: *memory_budget },
            *json,
        ),
        Command::Export { patch, store, task, out, weights, model, json } => {
            let source = match (patch, store, task) {
                (Some(p), _, _) => PatchSource::File(p),
                (None, Some(s), Some(t)) => PatchSource::Store(s, t),
                _ => PatchSource::None,
            };
            export(source, out, *weights, model.as_deref(), *json)
        }
        Command::Patch(PatchCommand::Inspect { file, json }) => train::inspect(file, *json),
        Command::Report { runs, out } => report::from_files(runs, out),
        Command::Store(StoreCommand::List { dir, json }) => store::list(dir, *json),
        Command::Store(StoreCommand::Add { dir, name, file, values, model, json }) => {
            store::add(dir, name, file, *values, model.as_deref(), *json)
        }
        Command::Store(StoreCommand::Remove { dir, name }) => store::remove(dir, name),
        Command::Store(StoreCommand::Verify { dir, model, json }) => store::verify(dir, model.as_deref(), *json),
    };
    match result {
        Ok(text) => {
            let mut stdout = std::io::stdout().lock();
            match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("edgepatch: error: stdout: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("edgepatch: error: {e}");
            match e {
                edgepatch::Error::Cancelled(_) if interrupt::interrupted() => {
                    ExitCode::from(interrupt::EXIT_INTERRUPTED)
                }
                _ => ExitCode::FAILURE,
            }
        }
    }
}
