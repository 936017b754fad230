//! `edgepatch train-multi`: K tasks over one frozen backbone, one patch each (or one per group of
//! tasks sharing it), trained together and written into a patch store.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use edgepatch::data::{self, Dataset};
use edgepatch::patch::file::ValueType;
use edgepatch::patch::store::Store;
use edgepatch::train::{self, TaskSpec, TrainConfig};
use edgepatch::{Error, PatchKinds};
use serde_json::{json, Value};

use crate::load;
use crate::train::{peak_rss_bytes, select, split, TrainFlags};

#[derive(Args)]
pub struct MultiArgs {
    /// A task: NAME=TRAIN[,test=SPEC][,patch=KINDS][,resolution=R][,limit=N][,test-limit=N]
    /// [,validate=N][,epochs=N][,batch=N][,lr=X][,seed=N][,share=GROUP]; data specs as for
    /// `train` (idx:DIR/PREFIX, folder:DIR); `validate` holds out training images as `train` does.
    /// Tasks with the same `share` group train one patch together (same kinds and classes).
    #[arg(long = "task", required = true)]
    pub tasks: Vec<String>,
    /// The patch store to write every task's patch into (created when absent).
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Patch kinds for tasks that do not name theirs.
    #[arg(long, default_value = "sb+logits")]
    pub patch: PatchKinds,
    /// The defaults for every task (`--resolution`, `--epochs`, `--batch`, `--lr`, `--seed`:
    /// for the tasks that do not name theirs).
    #[command(flatten)]
    pub flags: TrainFlags,
    /// How the stored patches keep their values: f32 or f16.
    #[arg(long, default_value = "f32")]
    pub patch_dtype: ValueType,
    /// An ONNX backbone; the shipped int8 MobileNetV2 when absent.
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

/// One parsed `--task`.
struct Task {
    name: String,
    train: Arc<dyn Dataset>,
    test: Option<Arc<dyn Dataset>>,
    limit: Option<usize>,
    test_limit: Option<usize>,
    validate: usize,
    share: Option<String>,
    config: TrainConfig,
}

fn parse_task(spec: &str, a: &MultiArgs) -> edgepatch::Result<Task> {
    let bad = |why: String| Error::Train(format!("--task '{spec}': {why}"));
    let mut parts = spec.split(',');
    let (name, train) =
        parts.next().and_then(|p| p.split_once('=')).ok_or_else(|| bad("expected NAME=TRAIN first".into()))?;
    edgepatch::patch::store::check_name(name)?;
    let mut config = a.flags.config(a.patch);
    let (mut test, mut limit, mut test_limit, mut share, mut validate) = (None, None, None, None, 0);
    for p in parts {
        let (k, v) = p.split_once('=').ok_or_else(|| bad(format!("'{p}' is not KEY=VALUE")))?;
        let num = |v: &str| v.parse::<usize>().map_err(|_| bad(format!("{k}={v} is not a count")));
        match k {
            "test" => test = Some(data::open(v)?),
            "patch" => config.kinds = v.parse()?,
            "resolution" => config.resolution = v.parse().map_err(|_| bad(format!("resolution={v}")))?,
            "limit" => limit = Some(num(v)?),
            "test-limit" => test_limit = Some(num(v)?),
            "validate" => validate = num(v)?,
            "epochs" => config.epochs = num(v)?,
            "batch" => config.batch = num(v)?,
            "lr" => config.lr = Some(v.parse().map_err(|_| bad(format!("lr={v}")))?),
            "seed" => config.seed = v.parse().map_err(|_| bad(format!("seed={v}")))?,
            "share" => share = Some(v.to_string()),
            _ => return Err(bad(format!("unknown key '{k}'"))),
        }
    }
    let train = data::open(train)?;
    if let Some(t) = &test {
        if t.classes() != train.classes() {
            return Err(Error::dataset(t.spec(), format!("task '{name}': its classes differ from the training set's")));
        }
    }
    Ok(Task { name: name.to_string(), train, test, limit, test_limit, validate, share, config })
}

pub fn train_multi(a: &MultiArgs) -> edgepatch::Result<String> {
    let backbone = load(a.model.as_deref())?;
    let mut tasks = a.tasks.iter().map(|t| parse_task(t, a)).collect::<edgepatch::Result<Vec<_>>>()?;
    // The budget is what the process holds besides, once every task's data is open.
    let budget = a.flags.memory_budget_now();
    tasks.iter_mut().for_each(|t| t.config.memory_budget = budget);
    // Refuse a directory the store cannot use before training; create the store only once
    // there are patches to put in it, so that a failed run leaves nothing behind.
    Store::check_target(&a.out_dir)?;
    let specs = tasks
        .iter()
        .map(|t| {
            let (indices, validation) = split(t.train.as_ref(), t.limit, t.validate, t.config.seed)?;
            Ok(TaskSpec {
                name: t.name.clone(),
                train: t.train.clone(),
                indices,
                validation,
                config: t.config.clone(),
                group: t.share.clone(),
            })
        })
        .collect::<edgepatch::Result<Vec<_>>>()?;
    let bar = indicatif::ProgressBar::new(0);
    if a.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} ETA {eta}").expect("valid template"),
    );
    let results = train::fit_multi(&backbone, specs, &mut |k, p| {
        bar.set_length(p.total_steps as u64);
        bar.set_position(p.step as u64);
        bar.set_message(format!("{} loss {:.4} · {:.1} img/s", tasks[k].name, p.loss, p.images_per_second));
    })?;
    bar.finish_and_clear();
    let store = Store::open_or_create(&a.out_dir)?;
    let mut rows: Vec<Value> = Vec::new();
    let mut total_bytes = 0u64;
    for (t, r) in tasks.iter().zip(&results) {
        let entry = store.add(&t.name, &r.patch, a.patch_dtype)?;
        total_bytes += entry.bytes;
        let patch = r.patch.stored_as(a.patch_dtype);
        let test = match &t.test {
            Some(ds) => {
                let idx = select(ds.as_ref(), t.test_limit, crate::flags::TEST_SUBSET_SEED);
                let graph = backbone.patched(&patch)?;
                let (r, device, budget) = (patch.resolution, a.flags.device, t.config.memory_budget);
                Some(train::evaluate_within(&graph, ds.clone(), &idx, r, device, budget)?)
            }
            None => None,
        };
        rows.push(json!({
            "name": t.name,
            "patch": patch.kinds.to_string(),
            "share": t.share,
            "resolution": patch.resolution,
            "classes": patch.labels.len(),
            "train_images": r.report.train_images,
            "epochs": t.config.epochs,
            "lr": t.config.lr(),
            "steps": r.report.steps,
            "final_loss": r.report.final_loss,
            "train_accuracy": r.report.train_accuracy,
            "test_images": test.as_ref().map_or(0, |e| e.images),
            "test_accuracy": test.as_ref().map(|e| e.accuracy),
            "patch_params": patch.params(),
            "patch_bytes": entry.bytes,
            "file": a.out_dir.join(&entry.file).display().to_string(),
            "memory_plan": r.report.memory,
        }));
    }
    let report = &results[0].report;
    let k = tasks.len() as u64;
    let model_params = backbone.graph().params() as u64;
    let summary = json!({
        "tasks": rows,
        "store": a.out_dir.display().to_string(),
        "seconds": report.seconds,
        "images_per_second": report.images_per_second,
        "device": report.device,
        "peak_rss_bytes": peak_rss_bytes(),
        "patch_dtype": a.patch_dtype.to_string(),
        "total_patch_bytes": total_bytes,
        "backbone_params": model_params,
        "backbone_resident_bytes": backbone.resident_bytes(),
        "k_fine_tuned_f32_bytes": k * model_params * 4,
        "k_fine_tuned_int8_bytes": k * backbone.resident_bytes() as u64,
    });
    if a.json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&summary).expect("json")));
    }
    let mut o = format!(
        "trained {} tasks in {:.1} s ({:.1} img/s, {}) into the store {}\n",
        k,
        report.seconds,
        report.images_per_second,
        report.device,
        a.out_dir.display()
    );
    for r in &rows {
        o += &format!(
            "  {:<20} {:<14} {:>4} px  {:>9} values {:>10} B  test accuracy {}\n",
            r["name"].as_str().unwrap_or_default(),
            r["patch"].as_str().unwrap_or_default(),
            r["resolution"],
            r["patch_params"],
            r["patch_bytes"],
            r["test_accuracy"].as_f64().map_or("-".into(), |x| format!("{x:.4}")),
        );
    }
    o += &format!(
        "{} patch bytes for {k} tasks over one backbone ({} B resident), against {} B for {k} fine-tuned f32 models\n",
        total_bytes,
        backbone.resident_bytes(),
        k * model_params * 4
    );
    Ok(o)
}
