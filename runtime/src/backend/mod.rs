//! Execution backends: the CPU backend and, with the `gpu` feature, a wgpu compute backend.
//! Training steps run through [`StepBackend`], which both implement.

pub mod cpu;
#[cfg(feature = "gpu")]
pub mod gpu;

use std::fmt;
use std::str::FromStr;

use crate::graph::Graph;
use crate::patch::Slot;
use crate::tensor::Tensor;
use crate::train::StepStats;
use crate::{Error, Result};

/// Where to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// A hardware GPU when one is present, else the CPU (with one logged line saying why); the
    /// default, as in the CLI.
    #[default]
    Auto,
    /// The CPU backend.
    Cpu,
    /// A GPU adapter (any, software ones such as lavapipe included); an error when there is none.
    Gpu,
}

impl FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "gpu" => Ok(Device::Gpu),
            _ => Err(Error::Input(format!("unknown device '{s}' (auto, gpu or cpu)"))),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Auto => "auto",
            Device::Cpu => "cpu",
            Device::Gpu => "gpu",
        })
    }
}

/// The GPU to use for `device`, or `None` for the CPU. `Auto` takes only a hardware adapter
/// (a software rasteriser is slower than the CPU backend) and logs why it falls back.
#[cfg(feature = "gpu")]
pub fn resolve(device: Device) -> Result<Option<std::sync::Arc<gpu::Gpu>>> {
    match device {
        Device::Cpu => Ok(None),
        Device::Gpu => gpu::Gpu::shared().map(Some),
        Device::Auto => {
            static AUTO: std::sync::OnceLock<Option<std::sync::Arc<gpu::Gpu>>> = std::sync::OnceLock::new();
            Ok(AUTO.get_or_init(choose_auto).clone())
        }
    }
}

/// The decision of `Device::Auto`, made once per process (enumerating adapters loads the
/// drivers): a hardware GPU, or `None` with one logged line saying why.
#[cfg(feature = "gpu")]
fn choose_auto() -> Option<std::sync::Arc<gpu::Gpu>> {
    let seen = gpu::adapters();
    if !seen.iter().any(gpu::AdapterInfo::is_hardware) {
        match seen.first() {
            Some(a) => log::debug!("using the CPU: the only GPU adapters are software ones ({})", a.name),
            None => log::debug!("using the CPU: no GPU adapter"),
        }
        return None;
    }
    match gpu::Gpu::shared() {
        Ok(g) if g.info().is_hardware() => Some(g),
        Ok(g) => {
            log::debug!("using the CPU: the preferred GPU adapter is a software one ({})", g.info().name);
            None
        }
        Err(e) => {
            log::debug!("using the CPU: {e}");
            None
        }
    }
}

/// Without the `gpu` feature: the CPU, and an error when a GPU is asked for.
#[cfg(not(feature = "gpu"))]
pub fn resolve(device: Device) -> Result<Option<std::convert::Infallible>> {
    match device {
        Device::Gpu => Err(Error::Gpu("this build has no GPU backend (the `gpu` feature is off)".into())),
        Device::Auto => {
            log::debug!("using the CPU: this build has no GPU backend");
            Ok(None)
        }
        Device::Cpu => Ok(None),
    }
}

/// Runs the optimisation steps of one patch: the CPU backend ([`crate::train::CpuStep`]) and the
/// GPU (`gpu::GpuTrainer`) give the same results within floating-point tolerance.
pub trait StepBackend: Send {
    /// One step on `input` (images `[N, 3, R, R]`, or features for a head-only CPU trainer)
    /// with `labels`, at learning rate `lr`, on `graph`'s trained `slots`.
    fn step(
        &mut self,
        graph: &mut Graph,
        slots: &[Slot],
        input: Tensor,
        labels: &[usize],
        lr: f32,
    ) -> Result<StepStats>;
    /// Brings the trained values into `graph` (a no-op where they live there already).
    fn sync(&self, graph: &mut Graph) -> Result<()>;
    /// Where the steps run, for messages.
    fn device(&self) -> String;
    /// Bytes of device buffers held, for a GPU.
    fn device_bytes(&self) -> Option<u64> {
        None
    }
    /// The memory plan of the steps (`None` where the backend makes none), made once on the
    /// trained `graph` and applied to the steps that follow.
    fn memory_plan(&mut self, _graph: &Graph) -> Result<Option<crate::train::memory::MemoryPlan>> {
        Ok(None)
    }
    /// Frees the working memory kept between steps (before work that needs it, such as scoring
    /// validation images under a memory budget); the next step allocates it again.
    fn release(&mut self) {}
    /// Plans the steps again under `budget` ([`crate::train::TrainConfig::memory_budget`]) when
    /// the plan is next asked for.
    fn set_memory_budget(&mut self, _budget: Option<u64>) {}
    /// The trained values of `slots` (one vector each) and the optimizer's state, for a
    /// checkpoint ([`crate::train::checkpoint`]).
    fn save_state(
        &self,
        _graph: &Graph,
        _slots: &[Slot],
    ) -> Result<(Vec<Vec<f32>>, crate::train::checkpoint::OptimizerState)> {
        Err(Error::Train(format!("checkpoints of training on the {} are not supported", self.device())))
    }
    /// Takes up trained values and optimizer state from [`StepBackend::save_state`] of the same
    /// run.
    fn load_state(
        &mut self,
        _graph: &mut Graph,
        _slots: &[Slot],
        _params: Vec<Vec<f32>>,
        _state: crate::train::checkpoint::OptimizerState,
    ) -> Result<()> {
        Err(Error::Train(format!("checkpoints of training on the {} are not supported", self.device())))
    }
}

/// Forward passes of one graph on the CPU, or on a GPU when one was chosen.
#[derive(Debug, Clone)]
pub struct Engine {
    cpu: cpu::CpuEngine,
    #[cfg(feature = "gpu")]
    gpu: Option<std::sync::Arc<std::sync::Mutex<gpu::GpuTrainer>>>,
}

impl Engine {
    /// An engine for `graph` on `device` (see [`resolve`]).
    pub fn new(graph: &Graph, device: Device) -> Result<Self> {
        let chosen = resolve(device)?;
        Ok(Engine {
            cpu: match chosen {
                Some(_) => cpu::CpuEngine::unpacked(graph),
                None => cpu::CpuEngine::new(graph),
            },
            #[cfg(feature = "gpu")]
            gpu: match chosen {
                Some(g) => Some(std::sync::Arc::new(std::sync::Mutex::new(gpu::GpuTrainer::forward_only(g, graph)?))),
                None => None,
            },
        })
    }

    /// An engine for `graph` on `device` that keeps as little as it can: on the CPU no packed
    /// weights (each pass packs its own, for passes under a memory budget).
    pub fn lean(graph: &Graph, device: Device) -> Result<Self> {
        let mut engine = Engine::new(graph, device)?;
        #[cfg(feature = "gpu")]
        let on_gpu = engine.gpu.is_some();
        #[cfg(not(feature = "gpu"))]
        let on_gpu = false;
        if !on_gpu {
            engine.cpu = cpu::CpuEngine::unpacked(graph);
            engine.cpu.keep_passes_on_caller();
        }
        Ok(engine)
    }

    /// The most images up to `most` per forward pass at `r`×`r` whose working memory fits
    /// `budget` bytes (at least 1): on the CPU the pass's activations (measured on one and two
    /// images) and `per_image` more bytes per image, with a tenth more; on a GPU the buffers of
    /// the pass's program (planned without allocating, exact).
    pub fn batch_within(&self, graph: &Graph, r: usize, most: usize, per_image: u64, budget: u64) -> Result<usize> {
        #[cfg(feature = "gpu")]
        if let Some(g) = &self.gpu {
            let g = g.lock().unwrap_or_else(|p| p.into_inner());
            for m in (1..=most).rev() {
                if g.forward_bytes(m, (r, r))? <= budget {
                    return Ok(m);
                }
            }
            return Ok(1);
        }
        let probe = |m: usize| self.cpu.pass_bytes(graph, Tensor::zeros([m, graph.input_channels, r, r]));
        let (a, b) = crate::train::memory::PassCost::engine_probes();
        let cost = crate::train::memory::PassCost::from_probes_at((a, probe(a)?), (b, probe(b)?));
        // A tenth more, as a training plan needs ([`crate::train::memory::needs`]).
        let fits = |m: usize| {
            let bytes = cost.bytes(m) + per_image * m as u64;
            bytes + bytes / 10 <= budget
        };
        Ok((1..=most).rev().find(|&m| fits(m)).unwrap_or(1))
    }

    /// Logits `[N, classes, 1, 1]` for `input: [N, C, H, W]`; `graph` must be the graph the
    /// engine was made for.
    pub fn forward(&self, graph: &Graph, input: Tensor) -> Result<Tensor> {
        #[cfg(feature = "gpu")]
        if let Some(g) = &self.gpu {
            return g.lock().unwrap_or_else(|p| p.into_inner()).forward(&input);
        }
        self.cpu.forward(graph, input)
    }

    /// Takes up `graph`, which has the structure of the graph the engine was made for and new
    /// parameter values (another patch): on the CPU, the changed convolution weights packed
    /// again; on a GPU, a re-upload.
    pub fn update(&mut self, graph: &Graph) -> Result<()> {
        #[cfg(feature = "gpu")]
        if let Some(g) = &mut self.gpu {
            let gpu = g.lock().unwrap_or_else(|p| p.into_inner()).gpu();
            *g = std::sync::Arc::new(std::sync::Mutex::new(gpu::GpuTrainer::forward_only(gpu, graph)?));
            return Ok(());
        }
        self.cpu.update(graph);
        Ok(())
    }

    /// `cpu`, or `gpu (adapter name)`.
    pub fn device(&self) -> String {
        #[cfg(feature = "gpu")]
        if let Some(g) = &self.gpu {
            return format!("gpu ({})", g.lock().unwrap_or_else(|p| p.into_inner()).device_name());
        }
        "cpu".into()
    }
}
