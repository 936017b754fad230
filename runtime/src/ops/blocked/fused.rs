//! An inverted residual block — `[expand 1×1 →] depthwise → project 1×1 [→ + input]` — run
//! band by band of output rows in the blocked layout, so that the expanded and depthwise values
//! (the largest of a MobileNet pass) live in a per-task buffer that stays in cache instead of
//! whole tensors written to and read back from memory, and the block is one parallel region
//! instead of three or four.
//!
//! Each task takes a range of output rows of one image and walks it in bands: it expands the
//! input rows the band's windows need that it does not hold yet (keeping the rows the previous
//! band shares with this one), runs the depthwise on them, then the projection, then adds the
//! residual. Every value is the same chain of operations as the layer-by-layer pass's (the
//! kernels compute each pixel independently), so the block gives the same bits; the rows on
//! either side of a cut between two tasks are expanded by both.

use rayon::prelude::*;

use super::{group, lanes, PackedConv, PackedDepthwise, Product, Value};
use crate::graph::{Conv, Depthwise};
use crate::ops::Epilogue;
use crate::simd::blocked::{self as kernels, BLOCK};
use crate::tensor::Tensor;

/// A layer of a block: its operation, its packed weights and its epilogue.
pub struct Layer<'a, Op, Packed> {
    pub op: &'a Op,
    pub packed: &'a Packed,
    pub epi: Epilogue<'a>,
}

/// The layers of an inverted residual block and the value added to its output.
pub struct InvertedResidual<'a> {
    pub expand: Option<Layer<'a, Conv, PackedConv>>,
    pub depthwise: Layer<'a, Depthwise, PackedDepthwise>,
    pub project: Layer<'a, Conv, PackedConv>,
    /// Added to the projection (the same shape as the block's output).
    pub residual: Option<&'a Value>,
    /// The band buffers come from the pass's buffer pool (counted by its memory plans, but last
    /// written by other layers) rather than each thread's own, kept buffer: for passes under a
    /// memory budget.
    pub lean: bool,
}

impl<'a> Layer<'a, Conv, PackedConv> {
    fn product(&self) -> Product<'a> {
        Product::new(self.op, self.packed, &self.epi)
    }
}

/// Bytes of a task's band buffers (the expanded rows and the depthwise output): half of a 2 MB
/// L2 cache, leaving room for the weights and the input (256 KB to 4 MB measured; 1 MB fastest
/// on one and two threads).
const BAND_BYTES: usize = 1 << 20;

/// The fewest output rows per task for [`inverted_residual`] to cut an image into bands: below
/// it, the rows the tasks would both expand cost more than the cache saves, and
/// [`by_channels`] runs the block.
const MIN_ROWS: usize = 6;

/// Offsets of `k` channels in a blocked buffer whose planes are `plane` values apart.
fn offsets(k: usize, plane: usize) -> Vec<usize> {
    (0..k).map(|i| (i / BLOCK) * plane + i % BLOCK).collect()
}

/// Runs `block` on `x` (any layout): the blocked output `[N, Cout, OH, OW]`, the same bits as
/// its layers run one by one.
pub fn inverted_residual(block: &InvertedResidual<'_>, x: &Value) -> Value {
    let (xt, xc) = x.as_blocked();
    let [n, xcp, ih, iw] = xt.shape;
    let dw = block.depthwise.op;
    let (oh, ow) = dw.window.output_size(ih, iw).expect("shape checked by Graph::shapes");
    let (ce, co) = (dw.channels, block.project.op.out_channels);
    let (cbe, cbo) = (ce.div_ceil(BLOCK), co.div_ceil(BLOCK));
    // Output rows per task: every thread busy, a task's rows in bands that fit the buffers.
    let parts = rayon::current_num_threads().div_ceil(n).clamp(1, oh);
    let group_plane = 2 * ih * iw * BLOCK * 4;
    if parts > 1 && oh < MIN_ROWS * parts && group_plane <= BAND_BYTES {
        return by_channels(block, x);
    }
    let residual = block.residual.map(|r| r.as_blocked().0);
    let mut out = Tensor::scratch([n, cbo * BLOCK, oh, ow]);
    let cuts: Vec<usize> = (0..=parts).map(|p| p * oh / parts).collect();
    let [kh, _] = dw.window.kernel;
    let sh = dw.window.stride[0];
    let row_in = iw * cbe * BLOCK * 4 * usize::from(block.expand.is_some());
    let row_out = ow * cbe * BLOCK * 4;
    let band = (1..=oh).take_while(|&r| ((r - 1) * sh + kh) * row_in + r * row_out <= BAND_BYTES).last().unwrap_or(1);

    // Tasks: `parts` row ranges of each image, or, when the images alone keep every thread busy,
    // a run of whole images each.
    let runs = if parts == 1 { rayon::current_num_threads().clamp(1, n) } else { n };
    let mut tasks: Vec<Vec<Rows>> = (0..runs * parts).map(|_| vec![]).collect();
    for (img, planes) in out.data.chunks_mut(cbo * oh * ow * BLOCK).enumerate() {
        let mut rest: Vec<&mut [f32]> = planes.chunks_mut(oh * ow * BLOCK).collect();
        for p in 0..parts {
            let rows = cuts[p]..cuts[p + 1];
            let mut mine = Vec::with_capacity(cbo);
            rest = rest
                .into_iter()
                .map(|plane| {
                    let (head, tail) = plane.split_at_mut(rows.len() * ow * BLOCK);
                    mine.push(head);
                    tail
                })
                .collect();
            tasks[(img * runs / n) * parts + p].push((img, rows, mine));
        }
    }
    let ctx = Task {
        block,
        expand: block.expand.as_ref().map(Layer::product),
        project: block.project.product(),
        dw: lanes(&block.depthwise.epi, &block.depthwise.packed.q, ce),
        x: &xt.data,
        x_off: offsets(xc, ih * iw * BLOCK),
        image: xcp * ih * iw,
        residual: residual.as_deref().map(|r| &r.data[..]),
        shape: [ih, iw, oh, ow, cbe, cbo],
        band,
    };
    for_each_with_buffer(tasks, ctx.buffer_len(), block.lean, |task, buffer| {
        for (img, rows, outs) in task {
            ctx.run(img, rows, outs, buffer);
        }
    });
    Value::Blocked(out, co)
}

/// [`inverted_residual`] for planes too small to cut into bands for every thread: the expansion
/// and depthwise per group of expanded channel blocks (each task expands the whole plane for its
/// blocks alone, so no value is computed twice), then the projection and the residual as one
/// layer, [`super::conv_adding`].
fn by_channels(block: &InvertedResidual<'_>, x: &Value) -> Value {
    let (xt, xc) = x.as_blocked();
    let [n, xcp, ih, iw] = xt.shape;
    let dw = block.depthwise.op;
    let win = &dw.window;
    let (oh, ow) = win.output_size(ih, iw).expect("shape checked by Graph::shapes");
    let [pt, pl, ..] = win.pads_at(ih, iw);
    let (ce, kl) = (dw.channels, win.kernel[0] * win.kernel[1]);
    let cbe = ce.div_ceil(BLOCK);
    let expand = block.expand.as_ref().map(Layer::product);
    let (s, b) = lanes(&block.depthwise.epi, &block.depthwise.packed.q, ce);
    let x_off = offsets(xc, ih * iw * BLOCK);
    let mut mid = Tensor::scratch([n, cbe * BLOCK, oh, ow]);
    let group = group();
    let mut tasks = Vec::new();
    for (img, planes) in mid.data.chunks_mut(cbe * oh * ow * BLOCK).enumerate() {
        for (g, planes) in planes.chunks_mut(group * oh * ow * BLOCK).enumerate() {
            tasks.push((img, g * group, planes));
        }
    }
    let len = if expand.is_some() { group * ih * iw * BLOCK } else { 0 };
    for_each_with_buffer(tasks, len, block.lean, |(img, e0, planes), buf| {
        let xi = &xt.data[img * xcp * ih * iw..(img + 1) * xcp * ih * iw];
        let blocks = e0..e0 + planes.len() / (oh * ow * BLOCK);
        if let Some(expand) = &expand {
            let mut dst: Vec<&mut [f32]> = buf.chunks_mut(ih * iw * BLOCK).take(blocks.len()).collect();
            expand.run(blocks.clone(), xi, &x_off, BLOCK, (0, ih * iw), &mut dst);
        }
        for (e, dst) in blocks.zip(planes.chunks_mut(oh * ow * BLOCK)) {
            let plane = match expand {
                Some(_) => &buf[(e - e0) * ih * iw * BLOCK..(e - e0 + 1) * ih * iw * BLOCK],
                None => &xi[e * ih * iw * BLOCK..(e + 1) * ih * iw * BLOCK],
            };
            let t = kernels::Depthwise {
                x: plane,
                row0: 0,
                ih,
                iw,
                w: &block.depthwise.packed.w[e * kl * BLOCK..(e + 1) * kl * BLOCK],
                kernel: win.kernel,
                stride: win.stride,
                pad: [pt, pl],
                rows: 0..oh,
                ow,
                s: &s[e * BLOCK..(e + 1) * BLOCK],
                b: &b[e * BLOCK..(e + 1) * BLOCK],
                act: block.depthwise.epi.act,
            };
            kernels::depthwise(&t, dst);
        }
    });
    let residual = block.residual.map(|r| r.as_blocked().0);
    let p = &block.project;
    super::conv_adding(p.op, p.packed, &Value::Blocked(mid, ce), &p.epi, residual.as_deref())
}

/// Output rows of one image, and each output block's slice of them.
type Rows<'a> = (usize, std::ops::Range<usize>, Vec<&'a mut [f32]>);

/// What every task of one block reads.
struct Task<'a> {
    block: &'a InvertedResidual<'a>,
    expand: Option<Product<'a>>,
    project: Product<'a>,
    /// The depthwise epilogue per lane.
    dw: (Vec<f32>, Vec<f32>),
    x: &'a [f32],
    x_off: Vec<usize>,
    /// Values per image of `x`.
    image: usize,
    residual: Option<&'a [f32]>,
    /// `[ih, iw, oh, ow, expanded blocks, output blocks]`.
    shape: [usize; 6],
    /// Output rows per band.
    band: usize,
}

impl Task<'_> {
    /// Values of a task's band buffer.
    fn buffer_len(&self) -> usize {
        let [ih, iw, _, ow, cbe, _] = self.shape;
        let win = &self.block.depthwise.op.window;
        let cap = ((self.band - 1) * win.stride[0] + win.kernel[0]).min(ih);
        let expanded = if self.expand.is_some() { cbe * cap * iw * BLOCK } else { 0 };
        expanded + cbe * self.band * ow * BLOCK
    }

    /// Output rows `rows` of image `img` into `outs` (per output block, those rows), with the
    /// band buffer `buffer` ([`Task::buffer_len`] values, any contents).
    fn run(&self, img: usize, rows: std::ops::Range<usize>, mut outs: Vec<&mut [f32]>, buffer: &mut [f32]) {
        let [ih, iw, _, ow, cbe, cbo] = self.shape;
        let win = &self.block.depthwise.op.window;
        let ([kh, kw], [sh, _], [pt, pl, ..]) = (win.kernel, win.stride, win.pads_at(ih, iw));
        let x = &self.x[img * self.image..(img + 1) * self.image];
        // Expanded rows held: `held.start..held.end` of the input plane, from row 0 of `ebuf`.
        let cap = ((self.band - 1) * sh + kh).min(ih);
        let elen = if self.expand.is_some() { cbe * cap * iw * BLOCK } else { 0 };
        let dlen = cbe * self.band * ow * BLOCK;
        let (ebuf, dbuf) = buffer.split_at_mut(elen);
        let mut held = 0..0;
        let d_off = offsets(self.block.project.op.in_channels, self.band * ow * BLOCK);
        let kl = kh * kw;
        let mut a = rows.start;
        while a < rows.end {
            let b = (a + self.band).min(rows.end);
            let lo = (a * sh).saturating_sub(pt);
            let hi = ((b - 1) * sh + kh).saturating_sub(pt).min(ih);
            if let Some(expand) = &self.expand {
                // Keep the held rows this band reads, at the front of each plane.
                let keep = lo.max(held.start)..held.end.max(lo);
                for e in (0..cbe).filter(|_| keep.start > held.start && !keep.is_empty()) {
                    let plane = &mut ebuf[e * cap * iw * BLOCK..(e + 1) * cap * iw * BLOCK];
                    let from = (keep.start - held.start) * iw * BLOCK;
                    plane.copy_within(from..from + keep.len() * iw * BLOCK, 0);
                }
                let new = keep.end..hi;
                let mut dst: Vec<&mut [f32]> = ebuf
                    .chunks_mut(cap * iw * BLOCK)
                    .map(|p| &mut p[(new.start - lo) * iw * BLOCK..(new.end - lo) * iw * BLOCK])
                    .collect();
                expand.run(0..cbe, x, &self.x_off, BLOCK, (new.start * iw, new.len() * iw), &mut dst);
                held = lo..hi;
            }
            let (s, bias) = &self.dw;
            for (e, dst) in dbuf[..dlen].chunks_mut(self.band * ow * BLOCK).enumerate() {
                let (plane, row0) = match self.expand {
                    Some(_) => (&ebuf[e * cap * iw * BLOCK..(e * cap + hi - lo) * iw * BLOCK], lo),
                    None => (&x[e * ih * iw * BLOCK..(e + 1) * ih * iw * BLOCK], 0),
                };
                let t = kernels::Depthwise {
                    x: plane,
                    row0,
                    ih,
                    iw,
                    w: &self.block.depthwise.packed.w[e * kl * BLOCK..(e + 1) * kl * BLOCK],
                    kernel: win.kernel,
                    stride: win.stride,
                    pad: [pt, pl],
                    rows: a..b,
                    ow,
                    s: &s[e * BLOCK..(e + 1) * BLOCK],
                    b: &bias[e * BLOCK..(e + 1) * BLOCK],
                    act: self.block.depthwise.epi.act,
                };
                kernels::depthwise(&t, &mut dst[..(b - a) * ow * BLOCK]);
            }
            let at = (a - rows.start) * ow * BLOCK..(b - rows.start) * ow * BLOCK;
            let mut dst: Vec<&mut [f32]> = outs.iter_mut().map(|o| &mut o[at.clone()]).collect();
            self.project.run(0..cbo, &dbuf[..dlen], &d_off, BLOCK, (0, (b - a) * ow), &mut dst);
            if let Some(r) = self.residual {
                let plane = self.shape[2] * ow * BLOCK;
                for (o, d) in dst.iter_mut().enumerate() {
                    let src = &r[(img * cbo + o) * plane + a * ow * BLOCK..][..d.len()];
                    d.iter_mut().zip(src).for_each(|(d, s)| *d += s);
                }
            }
            a = b;
        }
    }
}

thread_local! {
    /// This thread's band buffer, kept between blocks and passes so that it stays in the core's
    /// cache (a buffer of the pass's pool was last written by another layer, or core: the 14×14
    /// blocks ran 20–40% slower on them). Its values are always written before they are read.
    static BAND: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The most bytes a thread's band buffer has held (see [`band_buffer_bytes`]).
static LARGEST_BAND: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The most bytes one thread's band buffer has held in this process: what the fused blocks hold
/// per thread beyond the pass's pool (at most about [`BAND_BYTES`] unless a row alone needs more).
pub fn band_buffer_bytes() -> usize {
    LARGEST_BAND.load(std::sync::atomic::Ordering::Relaxed)
}

/// Runs `f` on each task with a band buffer of `len` values (any contents): this thread's own,
/// or when `pooled`, one per task from the pass's pool, lent to the tasks so that they go back to
/// it (on this thread) at the end.
fn for_each_with_buffer<T: Send>(tasks: Vec<T>, len: usize, pooled: bool, f: impl Fn(T, &mut [f32]) + Sync) {
    if pooled {
        let mut buffers: Vec<Tensor> = tasks.iter().map(|_| Tensor::scratch([1, 1, 1, len])).collect();
        tasks.into_par_iter().zip(buffers.par_iter_mut()).for_each(|(t, b)| f(t, &mut b.data));
    } else {
        tasks.into_par_iter().for_each(|t| with_buffer(len, |b| f(t, b)));
    }
}

/// Runs `f` on this thread's band buffer, grown to at least `len` values.
fn with_buffer<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buffer = BAND.with_borrow_mut(std::mem::take);
    if buffer.len() < len {
        buffer.resize(len, 0.0);
        LARGEST_BAND.fetch_max(4 * buffer.capacity(), std::sync::atomic::Ordering::Relaxed);
    }
    let r = f(&mut buffer[..len]);
    BAND.with_borrow_mut(|b| *b = buffer);
    r
}
