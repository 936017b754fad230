//! The trainer: one patch over a frozen backbone, stepped on batches; and `fit`, the whole
//! loop over a dataset with evaluation.

use std::sync::Arc;
use std::time::Instant;

use super::loss::softmax_cross_entropy;
use super::optim::{clip_global_norm, Optimizer, OptimizerKind, Schedule};
use super::tape::{self, Plan};
use crate::backbone::Backbone;
use crate::backend::cpu::CpuEngine;
use crate::backend::{Device, StepBackend};
use crate::data::{Dataset, Loader, Rng, Transform};
use crate::graph::{Graph, Node, Op};
use crate::patch::{self, Patch, PatchKinds, PatchTensor, Role, Slot};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// How to train a patch.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub kinds: PatchKinds,
    pub epochs: usize,
    pub batch: usize,
    /// Peak learning rate; `None` picks [`TrainConfig::default_lr`].
    pub lr: Option<f32>,
    pub optimizer: OptimizerKind,
    /// L2 weight decay on kernels and classifier weights (not on scales and biases).
    pub weight_decay: f32,
    pub label_smoothing: f32,
    /// Fraction of the steps spent warming the learning rate up from 0.
    pub warmup: f32,
    /// Largest global gradient norm (`None`: no clipping).
    pub clip_norm: Option<f32>,
    /// Input height and width (a multiple of 32, at least 32).
    pub resolution: u32,
    pub augment: bool,
    pub seed: u64,
    /// Where the steps run.
    pub device: Device,
    /// Sequential transfer: start from this patch's values (same kinds, same backbone) instead
    /// of the backbone's; its classifier is kept when its labels equal the task's, else new.
    pub init: Option<Patch>,
}

impl TrainConfig {
    /// Defaults for `kinds`: 3 epochs, batch 32, SGD, warm-up 5%, clipping at norm 5, 224 px, CPU.
    pub fn new(kinds: PatchKinds) -> Self {
        TrainConfig {
            kinds,
            epochs: 3,
            batch: 32,
            lr: None,
            optimizer: OptimizerKind::Sgd,
            weight_decay: 0.0,
            label_smoothing: 0.0,
            warmup: 0.05,
            clip_norm: Some(5.0),
            resolution: 224,
            augment: false,
            seed: 0,
            device: Device::Cpu,
            init: None,
        }
    }

    /// The learning rate used when none is given: for SGD 0.01 when only the classifier trains,
    /// 0.001 for `full`, 0.003 otherwise (the best of a sweep in the reference PyTorch run,
    /// shared/guide/sources.md); a tenth of that for Adam and RMSProp.
    pub fn default_lr(&self) -> f32 {
        let sgd = if self.kinds.head_only() {
            0.01
        } else if self.kinds.full {
            0.001
        } else {
            0.003
        };
        match self.optimizer {
            OptimizerKind::Sgd => sgd,
            _ => sgd / 10.0,
        }
    }

    /// The learning rate in effect.
    pub fn lr(&self) -> f32 {
        self.lr.unwrap_or_else(|| self.default_lr())
    }

    fn check(&self) -> Result<()> {
        let r = self.resolution;
        if r < 32 || !r.is_multiple_of(32) || r > 1024 {
            return Err(Error::Train(format!("resolution {r} is not a multiple of 32 between 32 and 1024")));
        }
        if self.batch == 0 || self.epochs == 0 {
            return Err(Error::Train("batch and epochs must be at least 1".into()));
        }
        let lr = self.lr();
        if !(lr.is_finite() && lr > 0.0) {
            return Err(Error::Train(format!("learning rate {lr} is not positive")));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) || !(0.0..1.0).contains(&self.warmup) {
            return Err(Error::Train("label smoothing and warm-up must be in [0, 1)".into()));
        }
        Ok(())
    }
}

/// One optimisation step's outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    pub loss: f32,
    pub correct: usize,
    pub grad_norm: f32,
}

/// The CPU reference implementation of a training step: the tape's forward and backward,
/// the loss, global-norm clipping and the optimizer update, on the graph's own parameters.
pub struct CpuStep {
    plan: Plan,
    grads: Vec<Vec<f32>>,
    optimizer: Box<dyn Optimizer>,
    label_smoothing: f32,
    clip_norm: Option<f32>,
    weight_decay: f32,
}

impl CpuStep {
    /// Plans steps of `slots` of `graph` under `config`.
    pub fn new(graph: &Graph, slots: &[Slot], config: &TrainConfig) -> Self {
        let lens: Vec<usize> = slots.iter().map(|&s| patch::param(graph, s).len()).collect();
        CpuStep {
            plan: Plan::new(graph, slots),
            grads: lens.iter().map(|&n| vec![0.0; n]).collect(),
            optimizer: config.optimizer.build(&lens),
            label_smoothing: config.label_smoothing,
            clip_norm: config.clip_norm,
            weight_decay: config.weight_decay,
        }
    }
}

impl StepBackend for CpuStep {
    fn step(
        &mut self,
        graph: &mut Graph,
        slots: &[Slot],
        input: Tensor,
        labels: &[usize],
        lr: f32,
    ) -> Result<StepStats> {
        let (logits, tape) = tape::forward(graph, &self.plan, input)?;
        let loss = softmax_cross_entropy(&logits, labels, self.label_smoothing);
        if !loss.value.is_finite() {
            return Err(Error::Train(format!("the loss is {}: lower the learning rate (now {lr})", loss.value)));
        }
        self.grads.iter_mut().for_each(|g| g.fill(0.0));
        tape::backward(graph, &self.plan, tape, loss.grad, &mut self.grads);
        let grad_norm = clip_global_norm(&mut self.grads, self.clip_norm.unwrap_or(f32::INFINITY));
        for (i, &slot) in slots.iter().enumerate() {
            let wd = if slot.role == Role::Weights { self.weight_decay } else { 0.0 };
            self.optimizer.update(i, patch::param_mut(graph, slot), &self.grads[i], lr, wd);
        }
        self.optimizer.finish_step();
        Ok(StepStats { loss: loss.value, correct: loss.correct, grad_norm })
    }

    fn sync(&self, _graph: &mut Graph) -> Result<()> {
        Ok(())
    }

    fn device(&self) -> String {
        "cpu".into()
    }
}

#[cfg(feature = "gpu")]
impl StepBackend for crate::backend::gpu::GpuTrainer {
    fn step(
        &mut self,
        _graph: &mut Graph,
        _slots: &[Slot],
        input: Tensor,
        labels: &[usize],
        lr: f32,
    ) -> Result<StepStats> {
        crate::backend::gpu::GpuTrainer::step(self, &input, labels, lr)
    }

    fn sync(&self, graph: &mut Graph) -> Result<()> {
        crate::backend::gpu::GpuTrainer::sync(self, graph)
    }

    fn device(&self) -> String {
        format!("gpu ({})", self.device_name())
    }

    fn device_bytes(&self) -> Option<u64> {
        Some(self.buffer_bytes())
    }
}

/// A patch being trained over a frozen backbone, on the CPU or the GPU.
///
/// When only the classifier trains on the CPU, the trainer holds the classifier alone and
/// takes pooled features `[N, F, 1, 1]` (see [`Trainer::features`]); otherwise it takes images
/// `[N, 3, R, R]` and keeps a working copy of the graph whose trained parameters are f32.
pub struct Trainer {
    config: TrainConfig,
    fingerprint: String,
    labels: Vec<String>,
    graph: Graph,
    /// Node index in the backbone of node 0 of `graph` (non-zero when only the head trains).
    node_offset: usize,
    features: Option<(CpuEngine, Graph)>,
    slots: Vec<Slot>,
    params: usize,
    backend: Box<dyn StepBackend>,
}

impl Trainer {
    /// A trainer for a task with `labels` (its class names) over `backbone`, on
    /// `config.device`.
    pub fn new(backbone: &Backbone, config: TrainConfig, labels: Vec<String>) -> Result<Self> {
        config.check()?;
        let kinds = config.kinds;
        #[cfg_attr(not(feature = "gpu"), allow(unused_variables))]
        let gpu = crate::backend::resolve(config.device)?;
        let mut graph = backbone.graph().clone();
        if kinds.new_head() {
            patch::new_head(&mut graph, labels.len(), config.seed)?;
        } else if labels.len() != graph.num_classes() {
            return Err(Error::Train(format!(
                "the task has {} classes and the backbone's classifier {}: add `logits` to the patch kinds",
                labels.len(),
                graph.num_classes()
            )));
        }
        if let Some(init) = &config.init {
            if init.kinds != kinds {
                return Err(Error::Train(format!(
                    "the initial patch is {}, this run trains {kinds}: the kinds must be the same",
                    init.kinds
                )));
            }
            init.check(backbone.graph(), backbone.fingerprint())?;
            let mut init = init.clone();
            if kinds.new_head() && init.labels != labels {
                let head = patch::head_index(&graph)?;
                init.tensors.retain(|t| t.node as usize != head);
                init.labels = labels.clone();
                log::info!("starting from the initial patch with a new classifier (its classes differ)");
            }
            init.write_into(&mut graph);
        }
        let mut node_offset = 0;
        let mut features = None;
        if kinds.head_only() && gpu.is_none() {
            let head = patch::head_index(&graph)?;
            let node = graph.nodes[head].clone();
            let feature_graph = Graph {
                nodes: graph.nodes[..head].to_vec(),
                input_channels: graph.input_channels,
                num_values: graph.num_values,
                output: node.inputs[0],
            };
            let Op::Linear(l) = &node.op else { unreachable!("head_index checks the op") };
            graph = Graph {
                nodes: vec![Node { inputs: vec![0], output: 1, ..node.clone() }],
                input_channels: l.in_features,
                num_values: 2,
                output: 1,
            };
            node_offset = head;
            features = Some((CpuEngine::new(&feature_graph), feature_graph));
        }
        let slots = patch::slots(&graph, kinds)?;
        patch::make_trainable(&mut graph, &slots);
        let params = slots.iter().map(|&s| patch::param(&graph, s).len()).sum();
        let backend: Box<dyn StepBackend> = match gpu {
            #[cfg(feature = "gpu")]
            Some(gpu) => {
                let settings = crate::backend::gpu::train::GpuSettings {
                    optimizer: config.optimizer,
                    weight_decay: config.weight_decay,
                    label_smoothing: config.label_smoothing,
                    clip_norm: config.clip_norm,
                    resolution: config.resolution as usize,
                };
                Box::new(crate::backend::gpu::GpuTrainer::new(gpu, &graph, &slots, settings)?)
            }
            _ => Box::new(CpuStep::new(&graph, &slots, &config)),
        };
        log::info!(
            "training {} ({} values in {} tensors) with {} at lr {} on the {}",
            kinds,
            params,
            slots.len(),
            config.optimizer,
            config.lr(),
            backend.device()
        );
        Ok(Trainer {
            config,
            fingerprint: backbone.fingerprint().to_string(),
            labels,
            graph,
            node_offset,
            features,
            slots,
            params,
            backend,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Number of trained values.
    pub fn params(&self) -> usize {
        self.params
    }

    /// Where the steps run (`cpu`, or `gpu (adapter name)`).
    pub fn device(&self) -> String {
        self.backend.device()
    }

    /// Bytes of GPU buffers held (`None` on the CPU).
    pub fn gpu_buffer_bytes(&self) -> Option<u64> {
        self.backend.device_bytes()
    }

    /// True when the trainer takes pooled features instead of images.
    pub fn takes_features(&self) -> bool {
        self.features.is_some()
    }

    /// Pooled backbone features `[N, F, 1, 1]` for images `[N, 3, R, R]` (only when
    /// [`Trainer::takes_features`]).
    pub fn features(&self, images: Tensor) -> Result<Tensor> {
        let (engine, graph) = self.features.as_ref().ok_or_else(|| Error::Train("not a head-only trainer".into()))?;
        engine.forward(graph, images)
    }

    /// One step on a batch (images, or features for a head-only trainer) at learning rate `lr`.
    pub fn step(&mut self, input: Tensor, labels: &[usize], lr: f32) -> Result<StepStats> {
        if labels.len() != input.shape[0] || labels.iter().any(|&l| l >= self.labels.len()) {
            return Err(Error::Train("labels do not match the batch or the task's classes".into()));
        }
        self.backend.step(&mut self.graph, &self.slots, input, labels, lr)
    }

    /// The patch as trained so far (read back from the device when training on a GPU).
    pub fn patch(&mut self) -> Result<Patch> {
        self.backend.sync(&mut self.graph)?;
        let tensors = self
            .slots
            .iter()
            .map(|&s| PatchTensor {
                node: (s.node + self.node_offset) as u32,
                role: s.role,
                shape: patch::slot_shape(&self.graph, s),
                values: patch::param(&self.graph, s).to_vec(),
            })
            .collect();
        Ok(Patch {
            kinds: self.config.kinds,
            fingerprint: self.fingerprint.clone(),
            resolution: self.config.resolution,
            labels: self.labels.clone(),
            tensors,
        })
    }
}

/// Where a training run is, reported after every step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub epoch: usize,
    pub step: usize,
    pub total_steps: usize,
    pub loss: f32,
    pub lr: f32,
    pub images_per_second: f32,
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
    if indices.is_empty() {
        return Err(Error::dataset(train.spec(), "no training images"));
    }
    let mut trainer = Trainer::new(backbone, config.clone(), train.classes().to_vec())?;
    let transform = Transform { resolution: config.resolution, augment: config.augment };
    let steps_per_epoch = indices.len().div_ceil(config.batch);
    let total = steps_per_epoch * config.epochs;
    let schedule = Schedule { base: config.lr(), warmup: (total as f32 * config.warmup).round() as usize, total };
    let start = Instant::now();
    let cached = if trainer.takes_features() && !config.augment {
        let mut feats = Vec::with_capacity(indices.len());
        for b in Loader::new(train.clone(), indices.to_vec(), 64, transform, config.seed) {
            feats.push(trainer.features(b?.input)?);
        }
        let f = feats[0].shape[1];
        log::info!("cached the features of {} images in {:.1} s", indices.len(), start.elapsed().as_secs_f64());
        Some((f, feats.into_iter().flat_map(|t| t.data).collect::<Vec<f32>>()))
    } else {
        None
    };
    let position: std::collections::HashMap<usize, usize> = indices.iter().enumerate().map(|(p, &i)| (i, p)).collect();
    let mut rng = Rng::new(config.seed);
    let (mut step, mut seen) = (0, 0usize);
    let (mut loss_sum, mut correct) = (0f64, 0usize);
    for epoch in 0..config.epochs {
        let mut order = indices.to_vec();
        rng.shuffle(&mut order);
        let epoch_seed = config.seed ^ ((epoch as u64 + 1) << 32);
        (loss_sum, correct) = (0.0, 0);
        let mut run = |input: Tensor, labels: &[usize], trainer: &mut Trainer| -> Result<()> {
            let lr = schedule.at(step);
            let s = trainer.step(input, labels, lr)?;
            loss_sum += s.loss as f64 * labels.len() as f64;
            correct += s.correct;
            step += 1;
            seen += labels.len();
            let ips = seen as f32 / start.elapsed().as_secs_f32().max(1e-9);
            progress(Progress { epoch, step, total_steps: total, loss: s.loss, lr, images_per_second: ips });
            Ok(())
        };
        if let Some((f, feats)) = &cached {
            for chunk in order.chunks(config.batch) {
                let mut data = Vec::with_capacity(chunk.len() * f);
                for i in chunk {
                    let p = position[i];
                    data.extend_from_slice(&feats[p * f..(p + 1) * f]);
                }
                let labels: Vec<usize> = chunk.iter().map(|&i| train.label(i)).collect();
                run(Tensor { shape: [chunk.len(), *f, 1, 1], data }, &labels, &mut trainer)?;
            }
        } else {
            for b in Loader::new(train.clone(), order, config.batch, transform, epoch_seed) {
                let b = b?;
                let input = if trainer.takes_features() { trainer.features(b.input)? } else { b.input };
                run(input, &b.labels, &mut trainer)?;
            }
        }
        log::info!(
            "epoch {}: loss {:.4}, train accuracy {:.4}",
            epoch + 1,
            loss_sum / indices.len() as f64,
            correct as f64 / indices.len() as f64
        );
    }
    let seconds = start.elapsed().as_secs_f64();
    let report = FitReport {
        train_images: indices.len(),
        steps: step,
        final_loss: (loss_sum / indices.len() as f64) as f32,
        train_accuracy: (correct as f64 / indices.len() as f64) as f32,
        seconds,
        images_per_second: seen as f64 / seconds.max(1e-9),
        device: trainer.device(),
        gpu_buffer_bytes: trainer.gpu_buffer_bytes(),
    };
    Ok((trainer.patch()?, report))
}

/// Scores of a patch (or the backbone) on a labelled set.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub images: usize,
    pub accuracy: f32,
    /// Accuracy per class (NaN where a class has no images in the set).
    pub per_class: Vec<f32>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
}

/// Evaluates `graph` (a backbone with a patch applied) on `indices` of `ds` at `resolution`,
/// on the CPU.
pub fn evaluate(graph: &Graph, ds: Arc<dyn Dataset>, indices: &[usize], resolution: u32) -> Result<Evaluation> {
    evaluate_on(graph, ds, indices, resolution, Device::Cpu)
}

/// [`evaluate`] computing on `device`.
pub fn evaluate_on(
    graph: &Graph,
    ds: Arc<dyn Dataset>,
    indices: &[usize],
    resolution: u32,
    device: Device,
) -> Result<Evaluation> {
    let k = graph.num_classes();
    if ds.classes().len() != k {
        return Err(Error::dataset(ds.spec(), format!("has {} classes, the model {k}", ds.classes().len())));
    }
    let engine = crate::backend::Engine::new(graph, device)?;
    let t = Transform { resolution, augment: false };
    let mut confusion = vec![vec![0usize; k]; k];
    let batch = 32;
    let mut loader = Loader::new(ds.clone(), indices.to_vec(), batch, t, 0);
    for b in &mut loader {
        let b = b?;
        let logits = engine.forward(graph, b.input)?;
        for (i, &label) in b.labels.iter().enumerate() {
            let z = logits.sample(i);
            let pred = (0..k).fold(0, |best, c| if z[c] > z[best] { c } else { best });
            confusion[label][pred] += 1;
        }
    }
    let images: usize = confusion.iter().flatten().sum();
    let right: usize = (0..k).map(|c| confusion[c][c]).sum();
    let per_class =
        confusion.iter().enumerate().map(|(c, row)| row[c] as f32 / row.iter().sum::<usize>() as f32).collect();
    Ok(Evaluation { images, accuracy: right as f32 / images.max(1) as f32, per_class, confusion })
}
