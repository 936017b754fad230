//! The trainer: one patch over a frozen backbone, stepped on batches.

use super::memory::{self, MemoryPlan, PassCost};
use super::{CpuStep, StepStats, TrainConfig};

use crate::backbone::Backbone;
use crate::backend::cpu::CpuEngine;
use crate::backend::StepBackend;
use crate::graph::{Graph, Node, Op};
use crate::patch::{self, Patch, PatchTensor, Slot};
use crate::tensor::Tensor;
use crate::{Error, Result};

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
    /// For a head-only trainer on the CPU: the activation bytes of feature passes (measured on
    /// one and two images), and the plan of the feature passes.
    feature_probe: Option<PassCost>,
    feature_plan: Option<MemoryPlan>,
}

/// Images per feature pass of a head-only trainer without a memory budget. Measured with the
/// shipped model at 224 px (`train --patch logits --micro-batch N`): 2, 8 and 64 images per pass
/// extracted 97, 91 and 81 images/s at 79, 166 and 376 MB peak, so small passes cost nothing.
const FEATURE_CHUNK: usize = 8;

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
                // Classes the initial patch knows keep their classifier rows; new ones start as a
                // new classifier's rows.
                let head = patch::head_index(&graph)?;
                let (rows, others): (Vec<_>, Vec<_>) = init.tensors.into_iter().partition(|t| t.node as usize == head);
                init.tensors = others;
                init.write_into(&mut graph);
                let kept = patch::keep_rows(&mut graph, head, &rows, &init.labels, &labels);
                log::info!(
                    "starting from the initial patch: classifier rows kept for {kept} of {} classes, new for the rest",
                    labels.len()
                );
            } else {
                init.write_into(&mut graph);
            }
        }
        let mut node_offset = 0;
        let mut features = None;
        if kinds.head_only() && gpu.is_none() {
            let head = patch::head_index(&graph)?;
            let node = graph.nodes[head].clone();
            let feature_graph = patch::feature_graph(&graph)?;
            let Op::Linear(l) = &node.op else { unreachable!("head_index checks the op") };
            graph = Graph {
                nodes: vec![Node { inputs: vec![0], output: 1, ..node.clone() }],
                input_channels: l.in_features,
                num_values: 2,
                output: 1,
            };
            node_offset = head;
            let mut engine = CpuEngine::new(&feature_graph);
            if config.memory_budget.is_some() {
                engine.keep_passes_on_caller();
            }
            features = Some((engine, feature_graph));
        }
        let slots = patch::slots(&graph, kinds)?;
        patch::make_trainable(&mut graph, &slots);
        let params = slots.iter().map(|&s| patch::param(&graph, s).len()).sum();
        let backend: Box<dyn StepBackend> = match gpu {
            #[cfg(feature = "gpu")]
            #[cfg(feature = "gpu")]
            Some(_) if config.recompute == Some(true) => {
                return Err(Error::Train(
                    "recomputation runs on the CPU (on a GPU, --memory-budget fits the step by micro-batches)".into(),
                ))
            }
            Some(gpu) => {
                let settings = crate::backend::gpu::train::GpuSettings {
                    optimizer: config.optimizer,
                    weight_decay: config.weight_decay,
                    label_smoothing: config.label_smoothing,
                    clip_norm: config.clip_norm,
                    resolution: config.resolution as usize,
                    batch: config.batch,
                    micro_batch: config.micro_batch,
                    memory_budget: config.memory_budget,
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
        let mut trainer = Trainer {
            config,
            fingerprint: backbone.fingerprint().to_string(),
            labels,
            graph,
            node_offset,
            features,
            slots,
            params,
            backend,
            feature_probe: None,
            feature_plan: None,
        };
        // A budget or micro-batch is planned for at once, so that one that cannot fit is an
        // error here (a head-only plan is made again when the number of images is known).
        let c = &trainer.config;
        if c.memory_budget.is_some() || c.micro_batch.is_some() || c.recompute.is_some() {
            trainer.memory_plan(0)?;
        }
        Ok(trainer)
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Number of trained values.
    pub fn params(&self) -> usize {
        self.params
    }

    /// The trained values and optimizer state (for a checkpoint).
    pub fn save_state(&self) -> Result<(Vec<Vec<f32>>, super::checkpoint::OptimizerState)> {
        self.backend.save_state(&self.graph, &self.slots)
    }

    /// Takes up trained values and optimizer state saved by [`Trainer::save_state`] in the same
    /// run; values of another patch are refused.
    pub fn load_state(&mut self, params: Vec<Vec<f32>>, state: super::checkpoint::OptimizerState) -> Result<()> {
        self.backend.load_state(&mut self.graph, &self.slots, params, state)
    }

    /// Makes the next [`Trainer::memory_plan`] for `budget` (for a trainer that shares a
    /// budget with others, [`super::fit_multi`]).
    pub fn set_memory_budget(&mut self, budget: Option<u64>) {
        if let (Some(_), Some((engine, _))) = (budget, self.features.as_mut()) {
            engine.keep_passes_on_caller();
        }
        self.config.memory_budget = budget;
        self.feature_plan = None;
        self.backend.set_memory_budget(budget);
    }

    /// Frees the working memory the steps keep between them (the next step allocates it again).
    pub fn release_buffers(&mut self) {
        self.backend.release();
    }

    /// Where the steps run (`cpu`, or `gpu (adapter name)`).
    pub fn device(&self) -> String {
        self.backend.device()
    }

    /// Bytes of GPU buffers held (`None` on the CPU).
    pub fn gpu_buffer_bytes(&self) -> Option<u64> {
        self.backend.device_bytes()
    }

    /// How training uses memory on the CPU (`None` on a GPU), for a task of `images` training
    /// images: samples per pass and the predicted peak. The passes are measured once by a
    /// one-sample probe ([`super::memory`]). For a head-only trainer the passes are the feature
    /// extraction's, whose features of all `images` are kept ([`Trainer::features`] then runs
    /// in chunks of the plan's micro-batch); otherwise they are the training steps'.
    pub fn memory_plan(&mut self, images: usize) -> Result<Option<MemoryPlan>> {
        let Some((engine, graph)) = &self.features else { return self.backend.memory_plan(&self.graph) };
        let r = self.config.resolution as usize;
        let probe = |m: usize| engine.pass_bytes(graph, Tensor::zeros([m, graph.input_channels, r, r]));
        let probed = match self.feature_probe {
            Some(p) => p,
            None => {
                let (a, b) = PassCost::engine_probes();
                PassCost::from_probes_at((a, probe(a)?), (b, probe(b)?))
            }
        };
        self.feature_probe = Some(probed);
        // Each sample of a chunk is also an image of each batch the loader and the trainer hold.
        let held = memory::batches_held_ahead(memory::loader_depth(self.config.memory_budget.is_some()));
        let image = (held * 4 * graph.input_channels * r * r) as u64;
        let cost = PassCost { per_sample: probed.per_sample + image, ..probed };
        // The engine's packed weights were made with the trainer, so they count as training's.
        let state = memory::state_bytes(self.params, self.config.optimizer) + engine.packed_bytes() as u64;
        let cache = 4 * (images * self.graph.input_channels) as u64;
        let fixed = memory::Fixed { state, overhead: cache };
        let chunk = self.config.micro_batch.unwrap_or(FEATURE_CHUNK);
        let plan = match self.config.micro_batch {
            Some(_) => memory::plan(cost, fixed, chunk, None)?,
            None => memory::plan(cost, fixed, FEATURE_CHUNK, self.config.memory_budget)?,
        };
        let plan = MemoryPlan { budget_bytes: self.config.memory_budget, ..plan };
        if let Some(budget) = plan.budget_bytes.filter(|&b| memory::needs(&plan) > b) {
            return Err(Error::Train(format!(
                "feature chunks of {chunk} need {:.0} MB and the memory budget leaves {:.0} MB: leave the micro-batch to the budget",
                memory::needs(&plan) as f64 / 1e6,
                budget as f64 / 1e6
            )));
        }
        self.feature_plan = Some(plan);
        Ok(Some(plan))
    }

    /// Images per feature pass of a head-only trainer: the plan's micro-batch, or 8.
    pub fn feature_chunk(&self) -> usize {
        self.feature_plan.map_or(FEATURE_CHUNK, |p| p.micro_batch)
    }

    /// True when the trainer takes pooled features instead of images.
    pub fn takes_features(&self) -> bool {
        self.features.is_some()
    }

    /// Pooled backbone features `[N, F, 1, 1]` for images `[N, 3, R, R]` (only when
    /// [`Trainer::takes_features`]).
    pub fn features(&self, images: Tensor) -> Result<Tensor> {
        let (engine, graph) = self.features.as_ref().ok_or_else(|| Error::Train("not a head-only trainer".into()))?;
        let (n, chunk) = (images.shape[0], self.feature_chunk());
        if n <= chunk {
            return engine.forward(graph, images);
        }
        let [_, c, h, w] = images.shape;
        let per = c * h * w;
        let mut out: Vec<f32> = Vec::new();
        let mut f = 0;
        for from in (0..n).step_by(chunk) {
            let m = chunk.min(n - from);
            let y = engine.forward_from(graph, [m, c, h, w], &images.data[from * per..(from + m) * per])?;
            f = y.shape[1];
            out.extend_from_slice(&y.data);
        }
        Ok(Tensor { shape: [n, f, 1, 1], data: out })
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
