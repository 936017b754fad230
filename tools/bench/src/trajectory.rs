//! `edgepatch-bench trajectory`: a training run written out step by step, for
//! `tools/parity/trajectory.py` to replay in PyTorch on the same network, the same inputs, the
//! same batches in the same order and the same initial patch.
//!
//! ```text
//! edgepatch-bench trajectory --out DIR --train SPEC --indices FILE.json [--test SPEC --test-count N]
//!     [--kinds sb+logits] [--batch 32] [--resolution 64] [--epochs 3] [--steps S] [--lr L] [--seed 0]
//! ```
//! The run is `edgepatch train`'s CPU run without augmentation: each epoch a shuffle of the
//! training images from one generator seeded by `--seed` (as `train::fit` draws it), SGD with
//! momentum 0.9, cosine decay to 0 over all the epochs' steps, no warm-up, no clipping, no weight
//! decay. `--steps` stops it early (the schedule still spans the epochs). Writes into DIR:
//! - the network (`graph.json`, `weights.bin`, as `dump-graph`);
//! - `train.bin`: every training image as the trainer saw it, `[N, 3, R, R]` f32 LE, in
//!   `--indices` order, and `test.bin` likewise for the first `--test-count` test images;
//! - `init.bin` and `final.bin`: the patch's tensors before the first step and after the last, f32
//!   LE, concatenated in the order of `trajectory.json`'s `tensors`;
//! - `states.bin`: after every step, those tensors' values and then SGD's velocity `v` (so a
//!   step's gradient is `v_k − 0.9·v_{k−1}`), f32 LE;
//! - `trajectory.json`: the settings, per step the positions (into `--indices`) of its batch, its
//!   labels, learning rate, loss and gradient norm, the tensors (node, role, shape), and the test
//!   accuracy of the final patch.

use std::io::Write;
use std::path::Path;

use edgepatch::backend::Device;
use edgepatch::data::{self, Rng, Transform};
use edgepatch::train::{evaluate, LrSchedule, OptimizerKind, TrainConfig, Trainer};
use edgepatch::{Backbone, Patch, Tensor};
use serde_json::json;

/// The settings of one trajectory run.
pub struct Settings {
    pub out: std::path::PathBuf,
    pub train: String,
    pub indices: Vec<usize>,
    pub test: Option<(String, usize)>,
    pub kinds: String,
    pub batch: usize,
    pub resolution: u32,
    pub epochs: usize,
    pub steps: Option<usize>,
    pub lr: Option<f32>,
    pub seed: u64,
}

fn write_f32(path: &Path, values: impl IntoIterator<Item = f32>) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for v in values {
        f.write_all(&v.to_le_bytes())?;
    }
    f.flush()
}

fn role(r: edgepatch::patch::Role) -> &'static str {
    match r {
        edgepatch::patch::Role::Scale => "scale",
        edgepatch::patch::Role::Bias => "bias",
        edgepatch::patch::Role::Weights => "weights",
    }
}

fn values(p: &Patch) -> impl Iterator<Item = f32> + '_ {
    p.tensors.iter().flat_map(|t| t.values.iter().copied())
}

/// The preprocessed images `indices` of `ds` at `resolution`, `[N, 3, R, R]`.
fn images(ds: &dyn data::Dataset, indices: &[usize], resolution: u32) -> edgepatch::Result<Vec<f32>> {
    let t = Transform { resolution, augment: false };
    let mut all = Vec::new();
    for chunk in indices.chunks(256) {
        all.extend_from_slice(&data::loader::make_batch(ds, chunk, &t, 0)?.input.data);
    }
    Ok(all)
}

/// Runs the trajectory and writes DIR (see the module's documentation).
pub fn run(s: &Settings) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    std::fs::create_dir_all(&s.out)?;
    super::dump_graph(&s.out);
    let backbone = Backbone::embedded()?;
    let ds = data::open(&s.train)?;
    if s.indices.is_empty() || s.indices.iter().any(|&i| i >= ds.len()) {
        return Err("--indices must name images of the training set".into());
    }
    let mut config = TrainConfig::new(s.kinds.parse()?);
    (config.batch, config.resolution, config.epochs, config.seed) = (s.batch, s.resolution, s.epochs, s.seed);
    (config.lr, config.warmup, config.clip_norm, config.augment) = (s.lr, 0.0, None, false);
    (config.optimizer, config.device) = (OptimizerKind::Sgd, Device::Cpu);
    let mut trainer = Trainer::new(&backbone, config.clone(), ds.classes().to_vec())?;
    let init = trainer.patch()?;
    write_f32(&s.out.join("init.bin"), values(&init))?;
    let x = images(ds.as_ref(), &s.indices, s.resolution)?;
    write_f32(&s.out.join("train.bin"), x.iter().copied())?;
    let per = 3 * (s.resolution as usize).pow(2);
    let total = s.indices.len().div_ceil(s.batch) * s.epochs;
    let schedule = LrSchedule { base: config.lr(), warmup: 0, total };
    let steps = s.steps.unwrap_or(total).min(total);
    // Positions into `indices`, shuffled each epoch by one generator, as `train::fit` does.
    let mut rng = Rng::new(s.seed);
    let mut log = Vec::with_capacity(steps);
    // After every step: the trained values and SGD's velocity, each in the tensors' order.
    let mut states = std::io::BufWriter::new(std::fs::File::create(s.out.join("states.bin"))?);
    let (mut step, mut order) = (0, Vec::new());
    while step < steps {
        if order.is_empty() {
            order = (0..s.indices.len()).collect();
            rng.shuffle(&mut order);
            order.reverse();
        }
        let batch: Vec<usize> = (0..s.batch.min(order.len())).filter_map(|_| order.pop()).collect();
        let mut data = Vec::with_capacity(batch.len() * per);
        for &p in &batch {
            data.extend_from_slice(&x[p * per..(p + 1) * per]);
        }
        let r = s.resolution as usize;
        let mut input = Tensor::from_vec([batch.len(), 3, r, r], data).ok_or("batch shape")?;
        if trainer.takes_features() {
            input = trainer.features(input)?;
        }
        let labels: Vec<usize> = batch.iter().map(|&p| ds.label(s.indices[p])).collect();
        let lr = schedule.at(step);
        let stats = trainer.step(input, &labels, lr)?;
        let (values, optimizer) = trainer.save_state()?;
        for v in values.iter().chain(&optimizer.slots[0]).flatten() {
            states.write_all(&v.to_le_bytes())?;
        }
        log.push(json!({"batch": batch, "labels": labels, "lr": lr, "loss": stats.loss, "grad_norm": stats.grad_norm}));
        step += 1;
    }
    states.flush()?;
    let last = trainer.patch()?;
    write_f32(&s.out.join("final.bin"), values(&last))?;
    let mut test_accuracy = None;
    if let Some((spec, count)) = &s.test {
        let test = data::open(spec)?;
        let idx: Vec<usize> = (0..(*count).min(test.len())).collect();
        write_f32(&s.out.join("test.bin"), images(test.as_ref(), &idx, s.resolution)?)?;
        let labels: Vec<usize> = idx.iter().map(|&i| test.label(i)).collect();
        std::fs::write(s.out.join("test_labels.json"), serde_json::to_vec(&labels).expect("json"))?;
        let graph = backbone.patched(&last)?;
        test_accuracy = Some(evaluate(&graph, test, &idx, s.resolution)?.accuracy);
    }
    let tensors: Vec<_> = init
        .tensors
        .iter()
        .map(|t| json!({"node": t.node, "role": role(t.role), "shape": t.shape, "len": t.values.len()}))
        .collect();
    let out = json!({"kinds": s.kinds, "batch": s.batch, "resolution": s.resolution, "epochs": s.epochs,
        "total_steps": total, "steps": log, "lr": config.lr(), "momentum": edgepatch::train::optim::SGD_MOMENTUM,
        "seed": s.seed, "train": s.train, "indices": s.indices, "labels": ds.classes(),
        "train_labels": s.indices.iter().map(|&i| ds.label(i)).collect::<Vec<_>>(),
        "tensors": tensors, "test_accuracy": test_accuracy});
    std::fs::write(s.out.join("trajectory.json"), serde_json::to_vec(&out).expect("json"))?;
    Ok(json!({"out": s.out.display().to_string(), "steps": steps, "test_accuracy": test_accuracy,
        "last_loss": log.last().map(|l| l["loss"].clone())}))
}
