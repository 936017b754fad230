//! The WGSL kernels, the buffers they bind and one-call wrappers over host tensors (what the
//! parity tests compare with the CPU references of the same name).

use std::num::NonZeroU64;
use std::sync::Arc;

use wgpu::util::DeviceExt;

use super::Gpu;
use crate::graph::{Conv, Depthwise, Linear, Weights, Window};
use crate::ops::Activation;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Invocations per workgroup of the one-dimensional kernels (and of the tiled ones, 16 × 16).
pub const WORKGROUP: u32 = 256;

macro_rules! kernels {
    ($($variant:ident => $file:literal, weights: $w:literal;)*) => {
        /// Every WGSL kernel; `shaders/NAME.wgsl` pairs with the CPU reference it names.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Kernel { $($variant),* }

        impl Kernel {
            /// The shader's file name without extension.
            pub fn name(self) -> &'static str {
                match self { $(Kernel::$variant => $file),* }
            }
            fn body(self) -> &'static str {
                match self { $(Kernel::$variant => include_str!(concat!("shaders/", $file, ".wgsl"))),* }
            }
            /// True when the kernel reads frozen or trained weights through `weight(i)`.
            pub fn reads_weights(self) -> bool {
                match self { $(Kernel::$variant => $w),* }
            }
        }
    };
}

kernels! {
    PointwiseForward => "pointwise_forward", weights: true;
    PointwiseBackwardInput => "pointwise_backward_input", weights: true;
    PointwiseBackwardWeight => "pointwise_backward_weight", weights: false;
    ConvBackwardWeight => "conv_backward_weight", weights: false;
    LinearBackwardWeight => "linear_backward_weight", weights: false;
    ConvForward => "conv_forward", weights: true;
    DepthwiseForward => "depthwise_forward", weights: true;
    DepthwiseBackwardInput => "depthwise_backward_input", weights: true;
    DepthwiseBackwardWeight => "depthwise_backward_weight", weights: false;
    AffineForward => "affine_forward", weights: false;
    AffineBackwardParams => "affine_backward_params", weights: false;
    AffineBackwardInput => "affine_backward_input", weights: false;
    AddForward => "add_forward", weights: false;
    AddBackward => "add_backward", weights: false;
    PoolForward => "pool_forward", weights: false;
    PoolBackward => "pool_backward", weights: false;
    SoftmaxCrossEntropy => "softmax_cross_entropy", weights: false;
    GradNorm => "grad_norm", weights: false;
    Clip => "clip", weights: false;
    SgdUpdate => "sgd_update", weights: false;
    AdamUpdate => "adam_update", weights: false;
    RmspropUpdate => "rmsprop_update", weights: false;
}

/// How a kernel's `w` binding holds weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// Four int8 values per u32, little-endian; the per-row scale comes from `wscale`.
    Int8,
    /// One f32 per u32 (trained weights, or a model imported without quantization).
    F32,
}

const PRELUDE: &str = "fn flat_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid;
}
";

impl Kernel {
    /// The full WGSL source: helpers, the weight reader for `format`, the kernel.
    pub fn source(self, format: WeightFormat) -> String {
        let weight = match (self.reads_weights(), format) {
            (false, _) => "",
            (true, WeightFormat::Int8) => {
                "fn weight(i: u32) -> f32 {\n    return f32(extractBits(bitcast<i32>(w[i >> 2u]), (i & 3u) * 8u, 8u));\n}\n"
            }
            (true, WeightFormat::F32) => "fn weight(i: u32) -> f32 {\n    return bitcast<f32>(w[i]);\n}\n",
        };
        format!("{PRELUDE}{weight}{}", self.body())
    }
}

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
pub(crate) fn bytes_of<T: Copy + Into<Word>>(v: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 * v.len());
    for &x in v {
        out.extend_from_slice(&x.into().0.to_le_bytes());
    }
    out
}

/// One 32-bit word of a buffer or a uniform.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Word(pub u32);

impl From<f32> for Word {
    fn from(v: f32) -> Self {
        Word(v.to_bits())
    }
}
impl From<u32> for Word {
    fn from(v: u32) -> Self {
        Word(v)
    }
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

    /// A call of `kernel` on `bindings` (in binding order) with a uniform made of `words` and
    /// `groups` workgroups, folded into two dimensions when above the per-dimension limit
    /// (the kernels index workgroups as `wid.y · nwg.x + wid.x`).
    pub(crate) fn call(
        &self,
        kernel: Kernel,
        format: WeightFormat,
        bindings: &[&Range],
        words: &[Word],
        groups: Groups,
    ) -> Call {
        let pipeline = self.pipeline(kernel, format);
        let mut data = [0u8; 64];
        for (i, w) in words.iter().enumerate() {
            data[4 * i..4 * i + 4].copy_from_slice(&w.0.to_le_bytes());
        }
        let uniform = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(kernel.name()),
            contents: &data,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        });
        let mut entries: Vec<wgpu::BindGroupEntry> = bindings
            .iter()
            .enumerate()
            .map(|(i, r)| wgpu::BindGroupEntry { binding: i as u32, resource: r.binding() })
            .collect();
        entries.push(wgpu::BindGroupEntry { binding: bindings.len() as u32, resource: uniform.as_entire_binding() });
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.name()),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let max = self.limits.max_compute_workgroups_per_dimension;
        let groups = match groups {
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

/// A dispatch size: a count of workgroups indexed flat (folded when large), or an explicit grid.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Groups {
    Flat(u32),
    Grid([u32; 3]),
}

/// Workgroups for one invocation per element of `n`.
pub(crate) fn per_element(n: usize) -> Groups {
    Groups::Flat((n as u32).div_ceil(WORKGROUP))
}

/// Frozen or trained weights on the device: the values (`w`) and the per-row scales.
#[derive(Debug, Clone)]
pub(crate) struct DeviceWeights {
    pub w: Range,
    pub scale: Range,
    pub format: WeightFormat,
}

/// `Weights` as the words a `w` binding holds, the per-row scales and the format.
pub(crate) fn pack(weights: &Weights, rows: usize) -> (Vec<u32>, Vec<f32>, WeightFormat) {
    match weights {
        Weights::Int8 { values, scales } => {
            let words = values
                .chunks(4)
                .map(|c| c.iter().enumerate().fold(0u32, |acc, (i, &v)| acc | ((v as u8 as u32) << (8 * i))))
                .collect();
            (words, scales.clone(), WeightFormat::Int8)
        }
        Weights::F32(v) => (v.iter().map(|x| x.to_bits()).collect(), vec![1.0; rows], WeightFormat::F32),
    }
}

/// Uniform words of a windowed layer: `n, c (or ci, co), h, w, oh, ow, kh, kw, sh, sw, pt, pl`.
pub(crate) fn window_words(
    channels: &[usize],
    n: usize,
    hw: (usize, usize),
    ohw: (usize, usize),
    win: &Window,
) -> Vec<Word> {
    let mut v: Vec<u32> = vec![n as u32];
    v.extend(channels.iter().map(|&c| c as u32));
    v.extend(
        [
            hw.0,
            hw.1,
            ohw.0,
            ohw.1,
            win.kernel[0],
            win.kernel[1],
            win.stride[0],
            win.stride[1],
            win.pads[0],
            win.pads[1],
        ]
        .map(|x| x as u32),
    );
    v.into_iter().map(Word).collect()
}

pub(crate) fn act_code(act: Activation) -> u32 {
    match act {
        Activation::Identity => 0,
        Activation::Relu => 1,
        Activation::Relu6 => 2,
    }
}

/// One-call wrappers over host tensors, each running one kernel (or the kernels a layer needs)
/// on fresh buffers: what the parity tests compare with the CPU references.
pub mod host {
    use super::*;

    fn upload(gpu: &Gpu, data: &[f32]) -> Result<Range> {
        Ok(Range::whole(gpu.storage_from(&bytes_of(data), "input")?))
    }

    fn weights(gpu: &Gpu, w: &Weights, rows: usize) -> Result<DeviceWeights> {
        let (words, scales, format) = pack(w, rows);
        Ok(DeviceWeights {
            w: Range::whole(gpu.storage_from(&bytes_of(&words), "weights")?),
            scale: upload(gpu, &scales)?,
            format,
        })
    }

    fn out(gpu: &Gpu, n: usize) -> Result<Range> {
        let buf = gpu.storage(n, "output")?;
        Ok(Range { size: 4 * n.max(1) as u64, ..Range::whole(buf) })
    }

    fn tensor(shape: [usize; 4], mut data: Vec<f32>) -> Tensor {
        data.truncate(shape.iter().product());
        Tensor { shape, data }
    }

    /// `conv` (any window) on `x: [N, Ci, H, W]`: the tiled kernel for 1×1, the direct one otherwise.
    pub fn conv_forward(gpu: &Gpu, conv: &Conv, x: &Tensor) -> Result<Tensor> {
        let [n, ci, h, w] = x.shape;
        let (oh, ow) = conv.window.output_size(h, w).ok_or_else(|| Error::Input("window does not fit".into()))?;
        let shape = [n, conv.out_channels, oh, ow];
        let (xb, wb, y) =
            (upload(gpu, &x.data)?, weights(gpu, &conv.weights, conv.out_channels)?, out(gpu, shape.iter().product())?);
        let call = if conv.window.is_pointwise() {
            pointwise_forward_call(gpu, &xb, &wb, &y, n, ci, conv.out_channels, h * w)
        } else {
            let words = window_words(&[ci, conv.out_channels], n, (h, w), (oh, ow), &conv.window);
            gpu.call(
                Kernel::ConvForward,
                wb.format,
                &[&xb, &wb.w, &wb.scale, &y],
                &words,
                per_element(shape.iter().product()),
            )
        };
        Ok(tensor(shape, gpu.run(&[call], &y)?))
    }

    /// The input gradient of a 1×1 `conv`: `dy: [N, Co, H, W]` → `[N, Ci, H, W]`.
    pub fn pointwise_backward_input(gpu: &Gpu, conv: &Conv, dy: &Tensor) -> Result<Tensor> {
        let [n, co, h, w] = dy.shape;
        let shape = [n, conv.in_channels, h, w];
        let (g, wb, dx) = (upload(gpu, &dy.data)?, weights(gpu, &conv.weights, co)?, out(gpu, shape.iter().product())?);
        let call = pointwise_backward_input_call(gpu, &g, &wb, &dx, n, conv.in_channels, co, h * w, false);
        Ok(tensor(shape, gpu.run(&[call], &dx)?))
    }

    /// The kernel gradient of `conv` (raw weights) `[Co·Ci·KH·KW]`: the tiled kernel for 1×1,
    /// one workgroup per weight otherwise.
    pub fn conv_backward_weight(gpu: &Gpu, conv: &Conv, x: &Tensor, dy: &Tensor) -> Result<Vec<f32>> {
        let [n, ci, h, w] = x.shape;
        let (co, oh, ow) = (dy.shape[1], dy.shape[2], dy.shape[3]);
        let len = co * ci * conv.window.kernel[0] * conv.window.kernel[1];
        let (xb, g, d) = (upload(gpu, &x.data)?, upload(gpu, &dy.data)?, out(gpu, len)?);
        let call = if conv.window.is_pointwise() {
            pointwise_backward_weight_call(gpu, &xb, &g, &d, n, ci, co, h * w)
        } else {
            let words = window_words(&[ci, co], n, (h, w), (oh, ow), &conv.window);
            gpu.call(Kernel::ConvBackwardWeight, WeightFormat::F32, &[&xb, &g, &d], &words, Groups::Flat(len as u32))
        };
        let mut v = gpu.run(&[call], &d)?;
        v.truncate(len);
        Ok(v)
    }

    /// `dw` on `x: [N, C, H, W]`.
    pub fn depthwise_forward(gpu: &Gpu, dw: &Depthwise, x: &Tensor) -> Result<Tensor> {
        let [n, c, h, w] = x.shape;
        let (oh, ow) = dw.window.output_size(h, w).ok_or_else(|| Error::Input("window does not fit".into()))?;
        let shape = [n, c, oh, ow];
        let (xb, wb, y) = (upload(gpu, &x.data)?, weights(gpu, &dw.weights, c)?, out(gpu, shape.iter().product())?);
        let words = window_words(&[c], n, (h, w), (oh, ow), &dw.window);
        let call = gpu.call(
            Kernel::DepthwiseForward,
            wb.format,
            &[&xb, &wb.w, &wb.scale, &y],
            &words,
            per_element(shape.iter().product()),
        );
        Ok(tensor(shape, gpu.run(&[call], &y)?))
    }

    /// The input gradient of `dw` for an input of `hw`.
    pub fn depthwise_backward_input(gpu: &Gpu, dw: &Depthwise, dy: &Tensor, hw: (usize, usize)) -> Result<Tensor> {
        let [n, c, oh, ow] = dy.shape;
        let shape = [n, c, hw.0, hw.1];
        let (g, wb, dx) = (upload(gpu, &dy.data)?, weights(gpu, &dw.weights, c)?, out(gpu, shape.iter().product())?);
        let mut words = window_words(&[c], n, hw, (oh, ow), &dw.window);
        words.push(Word(0));
        let call = gpu.call(
            Kernel::DepthwiseBackwardInput,
            wb.format,
            &[&g, &wb.w, &wb.scale, &dx],
            &words,
            per_element(shape.iter().product()),
        );
        Ok(tensor(shape, gpu.run(&[call], &dx)?))
    }

    /// The kernel gradient of `dw` (raw weights, before any quantization scale) `[C·KH·KW]`.
    pub fn depthwise_backward_weight(gpu: &Gpu, dw: &Depthwise, x: &Tensor, dy: &Tensor) -> Result<Vec<f32>> {
        let [n, c, h, w] = x.shape;
        let (oh, ow) = (dy.shape[2], dy.shape[3]);
        let len = c * dw.window.kernel[0] * dw.window.kernel[1];
        let (xb, g, d) = (upload(gpu, &x.data)?, upload(gpu, &dy.data)?, out(gpu, len)?);
        let words = window_words(&[c], n, (h, w), (oh, ow), &dw.window);
        let call = gpu.call(
            Kernel::DepthwiseBackwardWeight,
            WeightFormat::F32,
            &[&xb, &g, &d],
            &words,
            Groups::Flat(len as u32),
        );
        let mut v = gpu.run(&[call], &d)?;
        v.truncate(len);
        Ok(v)
    }

    /// `act(scale·x + bias)` per channel on `[N, C, H, W]`.
    pub fn affine_forward(gpu: &Gpu, scale: &[f32], bias: &[f32], x: &Tensor, act: Activation) -> Result<Tensor> {
        let (xb, s, b, y) = (upload(gpu, &x.data)?, upload(gpu, scale)?, upload(gpu, bias)?, out(gpu, x.data.len())?);
        let words = [x.data.len() as u32, x.shape[1] as u32, x.plane() as u32, act_code(act)].map(Word);
        let call =
            gpu.call(Kernel::AffineForward, WeightFormat::F32, &[&xb, &s, &b, &y], &words, per_element(x.data.len()));
        Ok(tensor(x.shape, gpu.run(&[call], &y)?))
    }

    /// `dx = dy · act'(y) · scale` per channel.
    pub fn affine_backward_input(gpu: &Gpu, scale: &[f32], dy: &Tensor, y: &Tensor, act: Activation) -> Result<Tensor> {
        let (g, yb, s, dx) =
            (upload(gpu, &dy.data)?, upload(gpu, &y.data)?, upload(gpu, scale)?, out(gpu, dy.data.len())?);
        let words = [dy.data.len() as u32, dy.shape[1] as u32, dy.plane() as u32, act_code(act), 0].map(Word);
        let call = gpu.call(
            Kernel::AffineBackwardInput,
            WeightFormat::F32,
            &[&g, &yb, &s, &dx],
            &words,
            per_element(dy.data.len()),
        );
        Ok(tensor(dy.shape, gpu.run(&[call], &dx)?))
    }

    /// `(Σ dz·x, Σ dz)` per channel with `dz = dy · act'(y)`.
    pub fn affine_backward_params(
        gpu: &Gpu,
        dy: &Tensor,
        y: &Tensor,
        x: &Tensor,
        act: Activation,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let [n, c, ..] = dy.shape;
        let at = align(c);
        let (g, yb, xb, d) = (upload(gpu, &dy.data)?, upload(gpu, &y.data)?, upload(gpu, &x.data)?, out(gpu, 2 * at)?);
        let words = [n, c, dy.plane(), act_code(act) as usize, 1, 1, 0, at].map(|v| Word(v as u32));
        let call = gpu.call(
            Kernel::AffineBackwardParams,
            WeightFormat::F32,
            &[&g, &yb, &xb, &d],
            &words,
            Groups::Flat(c as u32),
        );
        let v = gpu.run(&[call], &d)?;
        Ok((v[..c].to_vec(), v[at..at + c].to_vec()))
    }

    /// The classifier `l` on `x: [N, F, 1, 1]` (product, then the bias as an identity affine).
    pub fn linear_forward(gpu: &Gpu, l: &Linear, x: &Tensor) -> Result<Tensor> {
        let n = x.shape[0];
        let (xb, wb) = (upload(gpu, &x.data)?, weights(gpu, &l.weights, l.out_features)?);
        let (tmp, y) = (out(gpu, n * l.out_features)?, out(gpu, n * l.out_features)?);
        let ones = upload(gpu, &vec![1.0; l.out_features])?;
        let bias = upload(gpu, &l.bias)?;
        let calls = [
            pointwise_forward_call(gpu, &xb, &wb, &tmp, n, l.in_features, l.out_features, 1),
            gpu.call(
                Kernel::AffineForward,
                WeightFormat::F32,
                &[&tmp, &ones, &bias, &y],
                &[n * l.out_features, l.out_features, 1, 0].map(|v| Word(v as u32)),
                per_element(n * l.out_features),
            ),
        ];
        Ok(tensor([n, l.out_features, 1, 1], gpu.run(&calls, &y)?))
    }

    /// `dw[o, f] = Σ_n dy[n, o]·x[n, f]`.
    pub fn linear_backward_weight(gpu: &Gpu, x: &Tensor, dy: &Tensor) -> Result<Vec<f32>> {
        let (n, f, o) = (x.shape[0], x.sample_len(), dy.sample_len());
        let (g, xb, d) = (upload(gpu, &dy.data)?, upload(gpu, &x.data)?, out(gpu, o * f)?);
        let call = gpu.call(
            Kernel::LinearBackwardWeight,
            WeightFormat::F32,
            &[&g, &xb, &d],
            &[n, o, f].map(|v| Word(v as u32)),
            per_element(o * f),
        );
        gpu.run(&[call], &d)
    }

    /// `a + b`.
    pub fn add_forward(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (ab, bb, y) = (upload(gpu, &a.data)?, upload(gpu, &b.data)?, out(gpu, a.data.len())?);
        let call = gpu.call(
            Kernel::AddForward,
            WeightFormat::F32,
            &[&ab, &bb, &y],
            &[Word(a.data.len() as u32)],
            per_element(a.data.len()),
        );
        Ok(tensor(a.shape, gpu.run(&[call], &y)?))
    }

    /// Mean over H, W: `[N, C, H, W]` → `[N, C, 1, 1]`.
    pub fn pool_forward(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        let nc = x.shape[0] * x.shape[1];
        let (xb, y) = (upload(gpu, &x.data)?, out(gpu, nc)?);
        let call = gpu.call(
            Kernel::PoolForward,
            WeightFormat::F32,
            &[&xb, &y],
            &[Word(nc as u32), Word(x.plane() as u32)],
            per_element(nc),
        );
        Ok(tensor([x.shape[0], x.shape[1], 1, 1], gpu.run(&[call], &y)?))
    }

    /// The input gradient of the pool for an input of `hw`.
    pub fn pool_backward(gpu: &Gpu, dy: &Tensor, hw: (usize, usize)) -> Result<Tensor> {
        let shape = [dy.shape[0], dy.shape[1], hw.0, hw.1];
        let total = shape.iter().product();
        let (g, dx) = (upload(gpu, &dy.data)?, out(gpu, total)?);
        let call = gpu.call(
            Kernel::PoolBackward,
            WeightFormat::F32,
            &[&g, &dx],
            &[total, hw.0 * hw.1, 0].map(|v| Word(v as u32)),
            per_element(total),
        );
        Ok(tensor(shape, gpu.run(&[call], &dx)?))
    }

    /// Per-sample losses, correct flags and the gradient of the mean loss.
    pub fn softmax_cross_entropy(
        gpu: &Gpu,
        logits: &Tensor,
        labels: &[usize],
        smoothing: f32,
    ) -> Result<(Vec<f32>, Vec<f32>, Tensor)> {
        let (n, k) = (logits.shape[0], logits.sample_len());
        let lab: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
        let (z, lb) = (upload(gpu, &logits.data)?, Range::whole(gpu.storage_from(&bytes_of(&lab), "labels")?));
        let (dz, stats) = (out(gpu, n * k)?, out(gpu, 2 * n)?);
        let words = [Word(n as u32), Word(k as u32), Word::from(smoothing)];
        let call = gpu.call(
            Kernel::SoftmaxCrossEntropy,
            WeightFormat::F32,
            &[&z, &lb, &dz, &stats],
            &words,
            Groups::Flat((n as u32).div_ceil(64)),
        );
        let [s, g] = <[Vec<f32>; 2]>::try_from(gpu.run_all(&[call], &[&stats, &dz])?).expect("two outputs");
        let (loss, correct) = (s.iter().step_by(2).copied().collect(), s.iter().skip(1).step_by(2).copied().collect());
        Ok((loss, correct, tensor(logits.shape, g)))
    }

    /// The dispatch shape of a one-dimensional kernel over `n` elements, as recorded (for
    /// checking the folding of large dispatches).
    pub fn groups_for(gpu: &Gpu, n: usize) -> [u32; 3] {
        let r = Range::whole(gpu.storage(1, "probe").expect("one word"));
        gpu.call(Kernel::AddBackward, WeightFormat::F32, &[&r, &r], &[Word(0)], per_element(n)).groups
    }

    /// `a + b` through the add kernel for large inputs (exercises folded dispatches).
    pub fn add_large(gpu: &Gpu, a: &[f32], b: &[f32]) -> Result<Vec<f32>> {
        let (ab, bb, y) = (upload(gpu, a)?, upload(gpu, b)?, out(gpu, a.len())?);
        let call = gpu.call(
            Kernel::AddForward,
            WeightFormat::F32,
            &[&ab, &bb, &y],
            &[Word(a.len() as u32)],
            per_element(a.len()),
        );
        gpu.run(&[call], &y)
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn pointwise_forward_call(
    gpu: &Gpu,
    x: &Range,
    w: &DeviceWeights,
    y: &Range,
    n: usize,
    ci: usize,
    co: usize,
    p: usize,
) -> Call {
    let grid = [(p as u32).div_ceil(64), (co as u32).div_ceil(64), n as u32];
    gpu.call(
        Kernel::PointwiseForward,
        w.format,
        &[x, &w.w, &w.scale, y],
        &[n, ci, co, p].map(|v| Word(v as u32)),
        Groups::Grid(grid),
    )
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn pointwise_backward_input_call(
    gpu: &Gpu,
    dy: &Range,
    w: &DeviceWeights,
    dx: &Range,
    n: usize,
    ci: usize,
    co: usize,
    p: usize,
    accumulate: bool,
) -> Call {
    let grid = [(p as u32).div_ceil(64), (ci as u32).div_ceil(64), n as u32];
    let words = [n, ci, co, p, accumulate as usize].map(|v| Word(v as u32));
    gpu.call(Kernel::PointwiseBackwardInput, w.format, &[dy, &w.w, &w.scale, dx], &words, Groups::Grid(grid))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn pointwise_backward_weight_call(
    gpu: &Gpu,
    x: &Range,
    dy: &Range,
    dw: &Range,
    n: usize,
    ci: usize,
    co: usize,
    p: usize,
) -> Call {
    let grid = [(ci as u32).div_ceil(64), (co as u32).div_ceil(64), 1];
    gpu.call(
        Kernel::PointwiseBackwardWeight,
        WeightFormat::F32,
        &[x, dy, dw],
        &[n, ci, co, p].map(|v| Word(v as u32)),
        Groups::Grid(grid),
    )
}
