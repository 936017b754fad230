//! `fit`, the whole loop over a dataset with evaluation, and `fit_multi`, K tasks over one
//! backbone.

use super::{TrainConfig, Trainer};
use std::sync::Arc;
use std::time::Instant;

use super::checkpoint;
use super::evaluate::evaluate_within;
use super::memory::MemoryPlan;
use super::optim::LrSchedule;
use super::stream::Stream;
use crate::backbone::Backbone;
use crate::backend::Device;
use crate::data::{Dataset, Loader, Rng, Transform};
use crate::patch::Patch;
use crate::{Error, Result};

/// Where a training run is, reported after every step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// 0-based epoch of the task that stepped, and the run's steps done and in all.
    pub epoch: usize,
    pub step: usize,
    pub total_steps: usize,
    /// The step's loss, the task's training accuracy so far in this epoch, the learning rate.
    pub loss: f32,
    pub accuracy: f32,
    pub lr: f32,
    pub images_per_second: f32,
    /// Estimated training seconds left (from the steps' pace so far).
    pub seconds_left: f64,
}

/// The outcome of [`fit`].
#[derive(Debug, Clone, PartialEq)]
pub struct FitReport {
    pub train_images: usize,
    pub steps: usize,
    /// Mean loss over the last epoch.
    pub final_loss: f32,
    /// Training accuracy over the last epoch (on the batches as trained).
    pub train_accuracy: f32,
    /// Wall time of the training loop (feature caching included, evaluation excluded).
    pub seconds: f64,
    pub images_per_second: f64,
    /// Where the steps ran (`cpu` or `gpu (adapter)`).
    pub device: String,
    /// Bytes of GPU buffers the trainer held (`None` on the CPU).
    pub gpu_buffer_bytes: Option<u64>,
    /// How the CPU steps used memory (`None` on a GPU and for a head-only trainer, whose
    /// memory is the feature extraction's).
    pub memory: Option<super::memory::MemoryPlan>,
    /// One entry per epoch, in order.
    pub history: Vec<EpochStats>,
}

/// One epoch of a training run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochStats {
    /// 1-based.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches (as trained).
    pub loss: f32,
    /// Training accuracy over the epoch's batches (as trained).
    pub train_accuracy: f32,
    /// Accuracy of the patch at the epoch's end on the task's validation images (`None`
    /// without them; scored on the CPU, outside the training time).
    pub validation_accuracy: Option<f32>,
    /// Training time since the start at the epoch's end.
    pub seconds: f64,
}

/// Trains a patch on `indices` of `train` for `config.epochs` epochs (reshuffled each epoch from
/// the seed). Head-only patches without augmentation compute each image's features once.
pub fn fit(
    backbone: &Backbone,
    train: Arc<dyn Dataset>,
    indices: &[usize],
    config: TrainConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Patch, FitReport)> {
    fit_validated(backbone, train, indices, &[], config, progress)
}

/// [`fit`], scoring the patch on `validation` (held-out indices of `train`) at every epoch's
/// end into [`FitReport::history`].
pub fn fit_validated(
    backbone: &Backbone,
    train: Arc<dyn Dataset>,
    indices: &[usize],
    validation: &[usize],
    config: TrainConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Patch, FitReport)> {
    let task = TaskSpec {
        name: "task".into(),
        train,
        indices: indices.to_vec(),
        validation: validation.to_vec(),
        config,
        group: None,
    };
    let mut out = fit_multi(backbone, vec![task], &mut |_, p| progress(p))?;
    let r = out.pop().expect("one result per task");
    Ok((r.patch, r.report))
}

/// One task of a multi-task run ([`fit_multi`]).
pub struct TaskSpec {
    pub name: String,
    pub train: Arc<dyn Dataset>,
    /// The training images (indices into `train`).
    pub indices: Vec<usize>,
    /// Held-out images (indices into `train`, none of them in `indices`) scored at every
    /// epoch's end; may be empty.
    pub validation: Vec<usize>,
    pub config: TrainConfig,
    /// Tasks naming the same group train one patch together (the first task's kinds, optimizer
    /// and learning rate; the same classes; each task its own data and resolution). `None`: the
    /// task trains a patch of its own.
    pub group: Option<String>,
}

/// A task's outcome: its patch (shared within a group, with the task's resolution) and report.
pub struct TaskResult {
    pub name: String,
    pub patch: Patch,
    pub report: FitReport,
}

/// Trains K tasks over one backbone, interleaving their batches: at every step the task
/// furthest behind (by the fraction of its steps done) goes next, so all finish together. Each
/// group (a task alone, or the tasks sharing a group name) has its own trainer, patch, optimizer
/// state and warm-up + cosine schedule over the group's steps. A task alone trains exactly as
/// [`fit`] trains it (same batches, same order, same values). `progress` gets the task index.
pub fn fit_multi(
    backbone: &Backbone,
    mut tasks: Vec<TaskSpec>,
    progress: &mut dyn FnMut(usize, Progress),
) -> Result<Vec<TaskResult>> {
    if tasks.is_empty() {
        return Err(Error::Train("no tasks".into()));
    }
    let mut names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::Train(format!("task '{}' is given twice", w[0])));
    }
    let mut group_of = Vec::new();
    let mut leaders: Vec<usize> = Vec::new();
    for (k, t) in tasks.iter().enumerate() {
        if t.indices.is_empty() {
            return Err(Error::dataset(t.train.spec(), format!("task '{}' has no training images", t.name)));
        }
        if t.indices.iter().chain(&t.validation).any(|&i| i >= t.train.len()) {
            return Err(Error::dataset(t.train.spec(), format!("task '{}': an image index is out of range", t.name)));
        }
        let joined = t.group.as_ref().and_then(|g| leaders.iter().position(|&l| tasks[l].group.as_ref() == Some(g)));
        match joined {
            Some(g) => {
                let lead = &tasks[leaders[g]];
                if lead.config.kinds != t.config.kinds || lead.train.classes() != t.train.classes() {
                    return Err(Error::Train(format!(
                        "task '{}' shares a patch with '{}' but its patch kinds or classes differ",
                        t.name, lead.name
                    )));
                }
                group_of.push(g);
            }
            None => {
                group_of.push(leaders.len());
                leaders.push(k);
            }
        }
    }
    let start = Instant::now();
    for &l in &leaders {
        super::prototype::start_from_prototypes(backbone, &mut tasks[l])?;
    }
    // Time spent scoring validation images, which is not training time.
    let mut paused = std::time::Duration::ZERO;
    let mut trainers = leaders
        .iter()
        .map(|&l| Trainer::new(backbone, tasks[l].config.clone(), tasks[l].train.classes().to_vec()))
        .collect::<Result<Vec<_>>>()?;
    // A head-only group caches the features of each of its tasks' images.
    let caches = |t: &TaskSpec, trainer: &Trainer| trainer.takes_features() && !t.config.augment;
    let mut cached_images = vec![0; trainers.len()];
    for (k, t) in tasks.iter().enumerate() {
        if caches(t, &trainers[group_of[k]]) {
            cached_images[group_of[k]] += t.indices.len();
        }
    }
    let plans = plan_memory(&mut trainers, &cached_images)?;
    let shared_budget = trainers.len() > 1 && plans.iter().any(|p| p.is_some_and(|p| p.budget_bytes.is_some()));
    let mut streams = Vec::with_capacity(tasks.len());
    for (k, t) in tasks.iter().enumerate() {
        let c = &t.config;
        let transform = Transform { resolution: c.resolution, augment: c.augment };
        let trainer = &mut trainers[group_of[k]];
        let cached = if caches(t, trainer) {
            let (mut feats, mut f) = (Vec::new(), 0);
            let chunk = trainer.feature_chunk();
            let depth = super::memory::loader_depth(c.memory_budget.is_some());
            for b in Loader::with_depth(t.train.clone(), t.indices.clone(), chunk, transform, c.seed, depth) {
                let x = trainer.features(b?.input)?;
                f = x.shape[1];
                feats.extend_from_slice(&x.data);
            }
            log::info!("{}: cached the features of {} images", t.name, t.indices.len());
            let position = t.indices.iter().enumerate().map(|(p, &i)| (i, p)).collect();
            Some((f, feats, position))
        } else {
            None
        };
        streams.push(Stream {
            group: group_of[k],
            train: t.train.clone(),
            indices: t.indices.clone(),
            batch: c.batch,
            depth: super::memory::loader_depth(c.memory_budget.is_some()),
            transform,
            seed: c.seed,
            epochs: c.epochs,
            rng: Rng::new(c.seed),
            epoch: 0,
            loader: None,
            cached,
            order: Vec::new(),
            at: 0,
            steps: 0,
            total: t.indices.len().div_ceil(c.batch) * c.epochs,
            loss_sum: 0.0,
            correct: 0,
            last_epoch: (0.0, 0),
            history: Vec::new(),
        });
    }
    let schedules: Vec<LrSchedule> = leaders
        .iter()
        .enumerate()
        .map(|(g, &l)| {
            let total: usize = streams.iter().filter(|s| s.group == g).map(|s| s.total).sum();
            let c = &tasks[l].config;
            LrSchedule { base: c.lr(), warmup: (total as f32 * c.warmup).round() as usize, total }
        })
        .collect();
    let mut group_steps = vec![0usize; leaders.len()];
    let total: usize = streams.iter().map(|s| s.total).sum();
    let (mut step, mut seen) = (0usize, 0usize);
    // Training seconds of the run before it was resumed.
    let mut before = 0.0;
    let saving = tasks[0].config.checkpoint.clone();
    let run = checkpoint::run_digest(&checkpoint::describe(backbone, &tasks));
    if let Some(c) = saving.as_ref().filter(|c| c.resume) {
        if let Some(saved) = checkpoint::Checkpoint::load(&c.path)? {
            (step, seen, before) = checkpoint::restore(saved, run, &mut trainers, &mut streams, &mut group_steps)?;
            log::info!("resumed from {} at step {step} of {total}", c.path.display());
        }
    }
    let (cancel, first_step) = (tasks[0].config.cancel.clone(), step);
    let time_budget = tasks[0].config.time_budget;
    let elapsed = |paused: std::time::Duration| (start.elapsed() - paused).as_secs_f64() + before;
    while let Some(k) = (0..streams.len()).filter(|&k| !streams[k].done()).min_by(|&a, &b| {
        let f = |s: &Stream| (s.steps + 1) as f64 / s.total as f64;
        f(&streams[a]).total_cmp(&f(&streams[b])).then(a.cmp(&b))
    }) {
        let s = &mut streams[k];
        let g = s.group;
        let (input, labels, epoch_end) = s.next(&trainers[g])?;
        let lr = schedules[g].at(group_steps[g]);
        let stats = trainers[g].step(input, &labels, lr)?;
        if shared_budget {
            // Groups sharing a budget take turns with its room for activations.
            trainers[g].release_buffers();
        }
        group_steps[g] += 1;
        step += 1;
        seen += labels.len();
        s.steps += 1;
        s.loss_sum += stats.loss as f64 * labels.len() as f64;
        s.correct += stats.correct;
        let epoch = s.epoch - epoch_end as usize;
        if epoch_end {
            let n = s.indices.len();
            log::info!(
                "{}: epoch {}/{}: loss {:.4}, train accuracy {:.4}",
                tasks[k].name,
                epoch + 1,
                s.epochs,
                s.loss_sum / n as f64,
                s.correct as f64 / n as f64
            );
            s.last_epoch = (s.loss_sum, s.correct);
            let validation_accuracy = if tasks[k].validation.is_empty() {
                None
            } else {
                let scoring = Instant::now();
                let mut p = trainers[g].patch()?;
                p.resolution = tasks[k].config.resolution;
                let graph = backbone.patched(&p)?;
                // Under a budget the steps' activations are freed for the scoring to use.
                let budget = plans[g].and_then(|m| m.budget_bytes.map(|_| m.activation_bytes));
                if budget.is_some() {
                    trainers[g].release_buffers();
                }
                let validation = &tasks[k].validation;
                let e = evaluate_within(&graph, s.train.clone(), validation, p.resolution, Device::Cpu, budget)?;
                paused += scoring.elapsed();
                Some(e.accuracy)
            };
            s.history.push(EpochStats {
                epoch: epoch + 1,
                loss: (s.loss_sum / n as f64) as f32,
                train_accuracy: (s.correct as f64 / n as f64) as f32,
                validation_accuracy,
                seconds: elapsed(paused),
            });
            (s.loss_sum, s.correct) = (0.0, 0);
        }
        let now = elapsed(paused);
        let ips = (seen as f64 / now.max(1e-9)) as f32;
        let in_epoch = if epoch_end {
            s.last_epoch.1 as f32 / s.indices.len() as f32
        } else {
            s.correct as f32 / s.at.max(1) as f32
        };
        let left = (now - before) / (step - first_step).max(1) as f64 * (total - step) as f64;
        progress(
            k,
            Progress {
                epoch,
                step,
                total_steps: total,
                loss: stats.loss,
                accuracy: in_epoch,
                lr,
                images_per_second: ips,
                seconds_left: left,
            },
        );
        // The time budget counts this session's training, not the time before a resume.
        let out_of_time = time_budget.is_some_and(|b| elapsed(paused) - before >= b);
        let cancelled = (cancel.is_cancelled() || out_of_time) && step < total;
        if let Some(c) = saving.as_ref().filter(|c| (step % c.every.max(1) == 0 || cancelled) && step < total) {
            let at = checkpoint::Position { run, step, seen, seconds: elapsed(paused) };
            checkpoint::capture(at, &trainers, &streams, &group_steps)?.save(&c.path)?;
        }
        if cancelled {
            let resumable = if saving.is_some() { "; its checkpoint resumes it" } else { "" };
            let why = if out_of_time && !cancel.is_cancelled() { "the time budget ran out: " } else { "" };
            return Err(Error::Cancelled(format!("{why}stopped after step {step} of {total}{resumable}")));
        }
    }
    let seconds = elapsed(paused);
    if let Some(c) = &saving {
        let at = checkpoint::Position { run, step, seen, seconds };
        checkpoint::capture(at, &trainers, &streams, &group_steps)?.save(&c.path)?;
    }
    let mut patches = trainers.iter_mut().map(|t| t.patch().map(Some)).collect::<Result<Vec<_>>>()?;
    // The last task of a group takes its patch; the others get copies.
    let last_of = |g: usize| group_of.iter().rposition(|&h| h == g);
    let mut out = Vec::with_capacity(tasks.len());
    for (k, (t, s)) in tasks.into_iter().zip(&streams).enumerate() {
        let g = group_of[k];
        let mut patch = if last_of(g) == Some(k) { patches[g].take() } else { patches[g].clone() }
            .expect("a group's patch is taken by its last task");
        patch.resolution = t.config.resolution;
        let n = s.indices.len() as f64;
        let report = FitReport {
            train_images: s.indices.len(),
            steps: s.steps,
            final_loss: (s.last_epoch.0 / n) as f32,
            train_accuracy: (s.last_epoch.1 as f64 / n) as f32,
            seconds,
            images_per_second: seen as f64 / seconds.max(1e-9),
            device: trainers[g].device(),
            gpu_buffer_bytes: trainers[g].gpu_buffer_bytes(),
            memory: plans[g],
            history: s.history.clone(),
        };
        out.push(TaskResult { name: t.name, patch, report });
    }
    Ok(out)
}

/// The memory plans of the trainers of several groups that train in turns, the features of
/// `cached_images[g]` images cached for group `g`. Each holds its trained state and other working
/// memory (loader batches, cached features) throughout and its step's activations only during
/// its steps (freed after each when several groups share a budget), so each plans against its
/// budget less the other groups' state and working memory.
fn plan_memory(trainers: &mut [Trainer], cached_images: &[usize]) -> Result<Vec<Option<MemoryPlan>>> {
    let mut plans = Vec::with_capacity(trainers.len());
    for (t, &images) in trainers.iter_mut().zip(cached_images) {
        plans.push(t.memory_plan(images)?);
    }
    if trainers.len() < 2 {
        return Ok(plans);
    }
    let held: Vec<u64> = plans.iter().map(|p| p.map_or(0, |p| p.state_bytes + p.overhead_bytes)).collect();
    let all: u64 = held.iter().sum();
    for (g, t) in trainers.iter_mut().enumerate() {
        if let Some(budget) = t.config().memory_budget {
            t.set_memory_budget(Some(budget.saturating_sub(all - held[g])));
            plans[g] = t.memory_plan(cached_images[g])?;
        }
    }
    Ok(plans)
}
