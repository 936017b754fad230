//! The wgpu compute backend: WGSL kernels (one file per operation under `shaders/`, each paired
//! by name with its CPU twin in [`crate::ops`] or [`crate::train`]), a device context, and
//! a training program planned once and replayed every step ([`GpuTrainer`]).
//!
//! All wgpu types stay inside this module. The device is created within
//! `wgpu::Limits::downlevel_defaults()` (what phones give: at most 4 storage buffers and one
//! uniform per kernel, 65,535 workgroups per dispatch dimension) and asks the adapter only for
//! larger buffers.

pub mod kernels;
pub mod train;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

pub use train::GpuTrainer;

use crate::{Error, Result};

/// One adapter wgpu can see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterInfo {
    pub name: String,
    /// `vulkan`, `metal`, `dx12` or `gl`.
    pub backend: String,
    /// `discrete`, `integrated`, `virtual`, `cpu` or `other`.
    pub device_type: String,
}

impl AdapterInfo {
    fn from_wgpu(i: &wgpu::AdapterInfo) -> Self {
        let device_type = match i.device_type {
            wgpu::DeviceType::DiscreteGpu => "discrete",
            wgpu::DeviceType::IntegratedGpu => "integrated",
            wgpu::DeviceType::VirtualGpu => "virtual",
            wgpu::DeviceType::Cpu => "cpu",
            wgpu::DeviceType::Other => "other",
        };
        AdapterInfo { name: i.name.clone(), backend: i.backend.to_string(), device_type: device_type.into() }
    }

    /// True for a hardware GPU (not a software rasteriser such as lavapipe / llvmpipe).
    pub fn is_hardware(&self) -> bool {
        matches!(self.device_type.as_str(), "discrete" | "integrated" | "virtual")
    }
}

/// Keeps Mesa's Vulkan device-selection layer out of this process (sets `NODEVICE_SELECT=1`
/// unless the environment already sets it). The layer only reorders adapters, which wgpu ranks
/// itself, but to do so it connects to a Wayland display and, where there is none, prints
/// `error: XDG_RUNTIME_DIR is invalid or not set in the environment.` on stderr.
///
/// It changes the process environment: call it at the start of `main`, before any thread
/// starts (the CLI does).
pub fn quiet_adapter_probe() {
    if std::env::var_os("NODEVICE_SELECT").is_none() {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

/// Every adapter wgpu sees on this machine (honours `WGPU_BACKEND`).
pub fn adapters() -> Vec<AdapterInfo> {
    let adapters = pollster::block_on(instance().enumerate_adapters(wgpu::Backends::all()));
    adapters.iter().map(|a| AdapterInfo::from_wgpu(&a.get_info())).collect()
}

/// A wgpu device and queue with the compiled kernels.
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: AdapterInfo,
    pub(crate) limits: wgpu::Limits,
    pipelines: Mutex<HashMap<(kernels::Kernel, kernels::WeightFormat), wgpu::ComputePipeline>>,
    fault: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("adapter", &self.info).finish()
    }
}

impl Gpu {
    /// Opens the preferred adapter (high performance first).
    pub fn new() -> Result<Self> {
        let adapter = pollster::block_on(instance().request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        }))
        .map_err(|e| Error::Gpu(format!("no GPU adapter: {e}")))?;
        let offered = adapter.limits();
        let mut limits = wgpu::Limits::downlevel_defaults();
        limits.max_storage_buffer_binding_size = offered.max_storage_buffer_binding_size;
        limits.max_buffer_size = offered.max_buffer_size;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("edgepatch"),
            required_limits: limits.clone(),
            memory_hints: wgpu::MemoryHints::Performance,
            ..Default::default()
        }))
        .map_err(|e| Error::Gpu(format!("the adapter refused a device: {e}")))?;
        let fault = Arc::new(Mutex::new(None::<String>));
        let f = fault.clone();
        device.on_uncaptured_error(Arc::new(move |e| {
            let mut slot = f.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert_with(|| e.to_string());
        }));
        let f = fault.clone();
        device.set_device_lost_callback(move |_, msg| {
            let mut slot = f.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert_with(|| format!("device lost: {msg}"));
        });
        let info = AdapterInfo::from_wgpu(&adapter.get_info());
        log::info!("GPU: {} ({}, {})", info.name, info.backend, info.device_type);
        Ok(Gpu { device, queue, info, limits, pipelines: Mutex::new(HashMap::new()), fault })
    }

    /// One device shared by the whole process (device creation costs 50–250 ms); the error of
    /// the first attempt is kept.
    pub fn shared() -> Result<Arc<Gpu>> {
        static SHARED: OnceLock<std::result::Result<Arc<Gpu>, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| Gpu::new().map(Arc::new).map_err(|e| e.to_string()))
            .clone()
            .map_err(|e| Error::Gpu(e.trim_start_matches("GPU: ").to_string()))
    }

    /// The adapter in use.
    pub fn info(&self) -> &AdapterInfo {
        &self.info
    }

    /// The first validation error, out-of-memory or device loss since the device was made, as
    /// an error (the device is unusable after one).
    pub(crate) fn check(&self) -> Result<()> {
        match self.fault.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(e) => Err(Error::Gpu(e.clone())),
            None => Ok(()),
        }
    }

    pub(crate) fn pipeline(&self, k: kernels::Kernel, f: kernels::WeightFormat) -> wgpu::ComputePipeline {
        let mut cache = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .entry((k, f))
            .or_insert_with(|| {
                let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(k.name()),
                    source: wgpu::ShaderSource::Wgsl(k.source(f).into()),
                });
                self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(k.name()),
                    layout: None,
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: Default::default(),
                    cache: None,
                })
            })
            .clone()
    }

    /// Blocks until the queue is idle.
    pub(crate) fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the device: {e}")))?;
        self.check()
    }
}
