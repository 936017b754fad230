//! Device buffers and dispatches: byte ranges of buffers, recorded calls, and running them.

use std::num::NonZeroU64;
use std::sync::Arc;

use wgpu::util::DeviceExt;

use super::{Groups, Kernel, Launch};
use crate::backend::gpu::Gpu;
use crate::{Error, Result};

/// Bytes of every kernel's uniform buffer (the largest parameter struct fits).
pub(crate) const UNIFORM_BYTES: usize = 64;

/// A byte range of a device buffer, bound as one storage binding.
#[derive(Debug, Clone)]
pub(crate) struct Range {
    pub buf: Arc<wgpu::Buffer>,
    pub offset: u64,
    pub size: u64,
}

impl Range {
    pub fn whole(buf: Arc<wgpu::Buffer>) -> Self {
        let size = buf.size();
        Range { buf, offset: 0, size }
    }
    /// `len` f32/u32 words starting at word `at` (at a multiple of 64 words).
    pub fn words(buf: &Arc<wgpu::Buffer>, at: usize, len: usize) -> Self {
        Range { buf: buf.clone(), offset: 4 * at as u64, size: 4 * len.max(1) as u64 }
    }
    fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buf,
            offset: self.offset,
            size: NonZeroU64::new(self.size),
        })
    }
}

/// One recorded dispatch: a pipeline, its bind group (whose uniform may be rewritten between
/// steps) and the workgroup grid.
pub(crate) struct Call {
    pub kernel: Kernel,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    pub uniform: wgpu::Buffer,
    pub groups: [u32; 3],
}

/// Words aligned for binding offsets (256 bytes, the portable minimum alignment).
pub(crate) const ALIGN_WORDS: usize = 64;

pub(crate) fn align(n: usize) -> usize {
    n.div_ceil(ALIGN_WORDS) * ALIGN_WORDS
}

/// f32 or u32 values as the little-endian bytes a buffer holds.
pub(crate) fn bytes_of<T: bytemuck::Pod>(v: &[T]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

/// Little-endian f32 values from buffer bytes.
pub(crate) fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytemuck::pod_collect_to_vec(bytes)
}

impl Gpu {
    fn check_size(&self, bytes: u64, what: &str) -> Result<()> {
        let max = self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size);
        if bytes > max {
            return Err(Error::Gpu(format!(
                "{what} needs a buffer of {} MiB and the adapter allows {} MiB: lower the batch size or the resolution",
                bytes >> 20,
                max >> 20
            )));
        }
        Ok(())
    }

    /// A zeroed storage buffer of `words` 32-bit words.
    pub(crate) fn storage(&self, words: usize, what: &str) -> Result<Arc<wgpu::Buffer>> {
        let size = 4 * words.max(1) as u64;
        self.check_size(size, what)?;
        Ok(Arc::new(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })))
    }

    /// A storage buffer holding `bytes` (a multiple of 4).
    pub(crate) fn storage_from(&self, bytes: &[u8], what: &str) -> Result<Arc<wgpu::Buffer>> {
        self.check_size(bytes.len() as u64, what)?;
        let contents = if bytes.is_empty() { &[0u8; 4][..] } else { bytes };
        Ok(Arc::new(self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(what),
            contents,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        })))
    }

    /// The dispatch of `launch`: its pipeline, a bind group of its ranges (in binding order)
    /// and its uniform, and its workgroups, folded into two dimensions when above the
    /// per-dimension limit (the kernels index workgroups as `wid.y · nwg.x + wid.x`).
    pub(crate) fn call(&self, launch: &Launch<Range>) -> Call {
        let kernel = launch.kernel;
        let pipeline = self.pipeline(kernel, launch.format);
        let mut data = [0u8; UNIFORM_BYTES];
        data[..launch.params.len()].copy_from_slice(&launch.params);
        let uniform = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(kernel.name()),
            contents: &data,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        });
        let mut entries: Vec<wgpu::BindGroupEntry> = launch
            .bindings
            .iter()
            .enumerate()
            .map(|(i, r)| wgpu::BindGroupEntry { binding: i as u32, resource: r.binding() })
            .collect();
        entries.push(wgpu::BindGroupEntry {
            binding: launch.bindings.len() as u32,
            resource: uniform.as_entire_binding(),
        });
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.name()),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let max = self.limits.max_compute_workgroups_per_dimension;
        let groups = match launch.groups {
            Groups::Flat(n) if n > max => [max, n.div_ceil(max), 1],
            Groups::Flat(n) => [n.max(1), 1, 1],
            Groups::Grid(g) => g,
        };
        Call { kernel, pipeline, bind_group, uniform, groups }
    }

    /// Records `calls` in one compute pass of `encoder`.
    pub(crate) fn record(&self, encoder: &mut wgpu::CommandEncoder, calls: &[Call]) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
        for c in calls {
            pass.set_pipeline(&c.pipeline);
            pass.set_bind_group(0, &c.bind_group, &[]);
            pass.dispatch_workgroups(c.groups[0], c.groups[1], c.groups[2]);
        }
    }

    pub(crate) fn encoder(&self) -> wgpu::CommandEncoder {
        self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
    }

    /// Copies `src` to a mappable buffer in `encoder` and returns that buffer.
    pub(crate) fn stage(&self, encoder: &mut wgpu::CommandEncoder, src: &Range) -> wgpu::Buffer {
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: src.size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        encoder.copy_buffer_to_buffer(&src.buf, src.offset, &staging, 0, src.size);
        staging
    }

    /// Waits for the queue and reads a staging buffer made by [`Gpu::stage`].
    pub(crate) fn read_staged(&self, staging: &wgpu::Buffer) -> Result<Vec<u8>> {
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|_| Error::Gpu("the read-back was dropped".into()))?
            .map_err(|e| Error::Gpu(format!("reading back: {e}")))?;
        let bytes = staging.get_mapped_range(..).map_err(|e| Error::Gpu(format!("reading back: {e:?}")))?.to_vec();
        staging.unmap();
        Ok(bytes)
    }

    /// Runs `calls` (one submit) and reads `out` back.
    pub(crate) fn run(&self, calls: &[Call], out: &Range) -> Result<Vec<f32>> {
        Ok(self.run_all(calls, &[out])?.remove(0))
    }

    /// Runs `calls` (one submit) and reads every range of `outs` back.
    pub(crate) fn run_all(&self, calls: &[Call], outs: &[&Range]) -> Result<Vec<Vec<f32>>> {
        let mut encoder = self.encoder();
        self.record(&mut encoder, calls);
        let staging: Vec<wgpu::Buffer> = outs.iter().map(|o| self.stage(&mut encoder, o)).collect();
        self.queue.submit([encoder.finish()]);
        staging.iter().map(|s| Ok(f32s(&self.read_staged(s)?))).collect()
    }
}
