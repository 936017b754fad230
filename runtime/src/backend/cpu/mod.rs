//! The CPU inference engine: batch forward over the IR, multithreaded with rayon, with each
//! convolution fused with the affine and activation that follow it.

use crate::graph::{Graph, Node, Op};
use crate::ops;
use crate::ops::blocked::{self, Value};
use crate::schedule::{Block, Schedule, Step};

mod blocks;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::tensor::{Pool, Tensor};
use crate::{Error, Result};

/// A graph prepared for repeated forward passes on the CPU.
///
/// The engine keeps up to [`CpuEngine::POOL_BYTES`] of the activation buffers of its last pass
/// for the next one (a [`Pool`]), so that repeated passes of one shape reuse them instead of
/// allocating, faulting in and zeroing fresh memory.
///
/// It also keeps the int8 weights of each convolution packed for the matrix product
/// ([`ops::conv::Packed`]). A pass on a graph whose weights are no longer those packed (another
/// patch, not yet taken up by [`CpuEngine::update`]) packs them for that pass: slower, never stale.
#[derive(Debug)]
pub struct CpuEngine {
    /// The fused chains of [`Schedule::inference`], run one pass each.
    steps: Vec<Step>,
    /// For each value, the last node that reads it (values are freed after its step).
    last_use: Vec<usize>,
    /// For each step, its convolution's packed weights (planar layout).
    packed: Arc<Vec<Option<ops::conv::Packed>>>,
    /// For each step, its (dense or depthwise) convolution's weights for the blocked layout, when
    /// the engine runs it ([`Layout::Blocked`]).
    packed_blocked: Arc<Vec<Option<blocked::Pack>>>,
    layout: Layout,
    /// For each step, the inverted residual block starting there, run band by band
    /// ([`blocked::fused`]) when the layout is blocked (unless `EDGEPATCH_FUSE=0`).
    blocks: Vec<Option<Block>>,
    /// Whether a pass runs as one job on rayon's pool ([`on_pool`]); see
    /// [`CpuEngine::keep_passes_on_caller`].
    on_pool: bool,
    /// Whether a pass keeps the pool's other workers awake (unless `EDGEPATCH_SPIN=0`).
    spin: bool,
    pool: Mutex<Pool>,
    /// The graph is a piece of a network whose input is an inner activation, of any size
    /// ([`CpuEngine::for_sub_graph`]): the minimum image size does not apply.
    sub_graph: bool,
}

/// How a pass lays out its activations (the values are the same bits either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[N, C, H, W]`, as training's kernels.
    Planar,
    /// Blocks of channels per pixel ([`crate::ops::blocked`]): faster on small planes and at
    /// batch 1. The default, unless `EDGEPATCH_LAYOUT=planar`.
    Blocked,
}

impl Layout {
    /// The layout of new engines: [`Layout::Blocked`] unless `EDGEPATCH_LAYOUT=planar`.
    pub fn default_for_inference() -> Layout {
        match std::env::var("EDGEPATCH_LAYOUT").as_deref() {
            Ok("planar") => Layout::Planar,
            _ => Layout::Blocked,
        }
    }
}

impl Clone for CpuEngine {
    fn clone(&self) -> Self {
        CpuEngine {
            steps: self.steps.clone(),
            last_use: self.last_use.clone(),
            packed: self.packed.clone(),
            packed_blocked: self.packed_blocked.clone(),
            layout: self.layout,
            blocks: self.blocks.clone(),
            on_pool: self.on_pool,
            spin: self.spin,
            pool: CpuEngine::pool(),
            sub_graph: self.sub_graph,
        }
    }
}

impl CpuEngine {
    /// Plans the execution (one pass per fused chain of [`Schedule::inference`]) and packs the convolutions' int8 weights.
    pub fn new(graph: &Graph) -> Self {
        Self::with_layout(graph, Layout::default_for_inference())
    }

    /// [`CpuEngine::new`] running its passes in `layout`.
    pub fn with_layout(graph: &Graph, layout: Layout) -> Self {
        let mut engine = CpuEngine::unpacked(graph);
        engine.layout = layout;
        engine.update(graph);
        engine
    }

    /// [`CpuEngine::new`] without packed weights (every pass packs its own), for an engine that
    /// stands by while a GPU runs the passes.
    pub(crate) fn unpacked(graph: &Graph) -> Self {
        let schedule = Schedule::inference(graph);
        let mut blocks = vec![None; schedule.steps.len()];
        if std::env::var("EDGEPATCH_FUSE").as_deref() != Ok("0") {
            for b in schedule.blocks(graph) {
                blocks[b.first()] = Some(b);
            }
        }
        let Schedule { steps, last_use, .. } = schedule;
        CpuEngine {
            steps,
            last_use,
            blocks,
            packed: Arc::default(),
            packed_blocked: Arc::default(),
            layout: Layout::default_for_inference(),
            on_pool: true,
            spin: std::env::var("EDGEPATCH_SPIN").as_deref() != Ok("0"),
            pool: CpuEngine::pool(),
            sub_graph: false,
        }
    }

    /// [`CpuEngine::new`] for a piece of a network that starts at an inner activation
    /// (`graph.input_channels` its channels): its input may be smaller than an image may be.
    pub fn for_sub_graph(graph: &Graph) -> Self {
        CpuEngine { sub_graph: true, ..Self::new(graph) }
    }

    /// Takes up new parameter values of the planned graph (another patch): packs the weights of
    /// the convolutions whose weights changed.
    pub fn update(&mut self, graph: &Graph) {
        if self.layout == Layout::Blocked {
            self.packed_blocked =
                Arc::new(self.repack(graph, &self.packed_blocked, blocked::Pack::fits, blocked::Pack::new));
        } else {
            let conv = |op: &Op| match op {
                Op::Conv(c) => ops::conv::Packed::new(c),
                _ => None,
            };
            let fits = |p: &ops::conv::Packed, op: &Op| matches!(op, Op::Conv(c) if p.fits(c));
            self.packed = Arc::new(self.repack(graph, &self.packed, fits, conv));
        }
    }

    /// Each step's weights packed for `graph`: kept from `old` where they still `fit` the step's
    /// operation, packed anew otherwise.
    fn repack<P: Clone>(
        &self,
        graph: &Graph,
        old: &[Option<P>],
        fits: impl Fn(&P, &Op) -> bool,
        new: impl Fn(&Op) -> Option<P>,
    ) -> Vec<Option<P>> {
        self.steps
            .iter()
            .enumerate()
            .map(|(s, step)| {
                let op = &graph.nodes.get(step.head)?.op;
                match old.get(s) {
                    Some(Some(p)) if fits(p, op) => Some(p.clone()),
                    _ => new(op),
                }
            })
            .collect()
    }

    /// The most bytes of activation buffers a forward pass on `input` holds at once (measured
    /// by running it as [`CpuEngine::forward`] does, input copy included, with a fresh buffer
    /// pool; the engine's own pool is left alone), with the band buffer each thread keeps for the
    /// fused blocks.
    pub fn pass_bytes(&self, graph: &Graph, input: Tensor) -> Result<u64> {
        let mut pool = Pool::default();
        pool.scope(|| self.run(graph, pooled_copy(input.shape, &input.data)))?;
        // The fused blocks' band buffers, one per thread, kept outside the pool.
        let bands = rayon::current_num_threads() * blocked::fused::band_buffer_bytes();
        Ok((pool.bytes() + bands) as u64)
    }

    /// Runs each pass on the calling thread (its parallel loops then each wake the pool) instead
    /// of as one job on a pool thread: for passes under a memory budget, whose allocations then
    /// stay in the calling thread's heap (on a pool thread, glibc's per-thread heap held about
    /// 14 MB more at the peak of a `logits` training under 80 MB).
    pub fn keep_passes_on_caller(&mut self) {
        self.on_pool = false;
    }

    /// The inverted residual block a pass runs fused from the step whose head is node `head`
    /// (see [`CpuEngine::profile`]): its steps' heads and its output value.
    pub fn fused_block_at(&self, head: usize) -> Option<(Vec<usize>, usize)> {
        let s = self.steps.iter().position(|st| st.head == head)?;
        let b = self.block_at(s)?;
        Some((self.steps[b.first()..=b.last()].iter().map(|st| st.head).collect(), self.steps[b.last()].output))
    }

    /// The block a pass runs fused from step `s` (blocks run fused in the blocked layout only).
    fn block_at(&self, s: usize) -> Option<Block> {
        self.blocks[s].filter(|_| self.layout == Layout::Blocked)
    }

    /// Bytes of the weights the engine keeps packed.
    pub fn packed_bytes(&self) -> usize {
        self.packed.iter().flatten().map(|p| p.bytes()).sum::<usize>()
            + self.packed_blocked.iter().flatten().map(|p| p.bytes()).sum::<usize>()
    }

    /// The most bytes of free activation buffers an engine keeps between passes.
    pub const POOL_BYTES: usize = 256 << 20;

    fn pool() -> Mutex<Pool> {
        Mutex::new(Pool::with_limit(CpuEngine::POOL_BYTES))
    }

    /// The first input of `node` (the head of step `step`) for in-place use: moved out when
    /// the step is its last reader (and it is not read twice by this node), cloned otherwise.
    fn take(&self, values: &mut [Option<Value>], node: &Node, step: &Step) -> Value {
        let v = node.inputs[0];
        let once = node.inputs.iter().filter(|&&u| u == v).count() == 1;
        if self.last_use[v] == step.head && once {
            values[v].take().expect("computed before use")
        } else {
            values[v].clone().expect("computed before use")
        }
    }

    /// Forward pass: `input: [N, C, H, W]` → the graph output `[N, classes, 1, 1]`. Concurrent
    /// passes are allowed; one of them at a time uses the buffer pool.
    pub fn forward(&self, graph: &Graph, input: Tensor) -> Result<Tensor> {
        self.forward_from(graph, input.shape, &input.data)
    }

    /// [`CpuEngine::forward`] of the values `data` of shape `shape` (`data.len()` is its
    /// product), copied into a buffer of the pool: the caller's buffer is never added to the pool
    /// (where a buffer of a size no pass asks for would stay), and a slice of a larger batch is
    /// copied once.
    pub fn forward_from(&self, graph: &Graph, shape: [usize; 4], data: &[f32]) -> Result<Tensor> {
        if data.len() != shape.iter().product::<usize>() {
            return Err(Error::Input(format!("{} values for a tensor of shape {shape:?}", data.len())));
        }
        let copy = || pooled_copy(shape, data);
        match self.pool.try_lock() {
            Ok(mut pool) => {
                let pool = &mut *pool;
                on_pool(self.on_pool, self.spin, || pool.scope(|| self.run(graph, copy())))
            }
            Err(_) => on_pool(self.on_pool, self.spin, || self.run(graph, copy())),
        }
    }

    fn run(&self, graph: &Graph, input: Tensor) -> Result<Tensor> {
        self.run_timed(graph, input, None)
    }

    /// A forward pass (as [`CpuEngine::forward`]) that also returns the wall time of each step of
    /// [`Schedule::inference`], in order, with the step's head node: what a per-layer profile
    /// reads. A fused block is one entry, under its first step's head
    /// ([`CpuEngine::fused_block_at`]). The pass runs with a fresh buffer pool, so allocation is in the times.
    pub fn profile(&self, graph: &Graph, input: Tensor) -> Result<(Tensor, Vec<(usize, std::time::Duration)>)> {
        let mut times = Vec::with_capacity(self.steps.len());
        let out = match self.pool.try_lock() {
            Ok(mut pool) => {
                let pool = &mut *pool;
                on_pool(self.on_pool, self.spin, || pool.scope(|| self.run_timed(graph, input, Some(&mut times))))
            }
            Err(_) => on_pool(self.on_pool, self.spin, || self.run_timed(graph, input, Some(&mut times))),
        }?;
        Ok((out, times))
    }

    fn run_timed(
        &self,
        graph: &Graph,
        input: Tensor,
        mut times: Option<&mut Vec<(usize, std::time::Duration)>>,
    ) -> Result<Tensor> {
        let [n, c, h, w] = input.shape;
        if n == 0 || c != graph.input_channels {
            return Err(Error::Input(format!(
                "input of shape {:?}, the model takes [N ≥ 1, {}, H, W]",
                input.shape, graph.input_channels
            )));
        }
        if self.sub_graph {
            graph.infer_shapes(h, w)?;
        } else {
            graph.shapes(h, w)?;
        }
        let mut values: Vec<Option<Value>> = vec![None; graph.num_values];
        values[0] = Some(Value::Planar(input));
        let mut s = 0;
        while s < self.steps.len() {
            let started = times.is_some().then(std::time::Instant::now);
            let (out, last) = match self.block_at(s) {
                Some(block) => (self.block(graph, &values, &block), block.last()),
                None => (self.step(graph, &mut values, s), s),
            };
            for step in &self.steps[s..=last] {
                for &v in &graph.nodes[step.head].inputs {
                    if self.last_use[v] == step.head {
                        values[v] = None;
                    }
                }
            }
            values[self.steps[last].output] = Some(out);
            if let (Some(t), Some(started)) = (times.as_mut(), started) {
                t.push((self.steps[s].head, started.elapsed()));
            }
            s = last + 1;
        }
        let out = values[graph.output].take().ok_or_else(|| Error::InvalidModel("output not computed".into()))?;
        Ok(out.planar())
    }

    /// Runs step `s` on `values` and returns its output.
    fn step(&self, graph: &Graph, values: &mut [Option<Value>], s: usize) -> Value {
        let step = &self.steps[s];
        let node = &graph.nodes[step.head];
        let epi = self.epilogue(graph, s);
        let blocked = self.layout == Layout::Blocked;
        match &node.op {
            Op::Conv(conv) if blocked => blocked::conv(conv, &self.packed_conv(s, conv), read(values, node, 0), &epi),
            Op::Conv(conv) => {
                let packed = self.packed.get(s).and_then(Option::as_ref);
                Value::Planar(ops::conv::forward_packed(conv, packed, &read(values, node, 0).as_planar(), &epi))
            }
            Op::Depthwise(dw) if blocked => {
                blocked::depthwise(dw, &self.packed_depthwise(s, dw), read(values, node, 0), &epi)
            }
            Op::Depthwise(dw) => Value::Planar(ops::depthwise::forward(dw, &read(values, node, 0).as_planar(), &epi)),
            Op::Affine(a) => blocked::affine(a, self.take(values, node, step), step.activation()),
            Op::Act(act) => match self.take(values, node, step) {
                Value::Planar(mut t) => {
                    ops::activation::forward(*act, &mut t);
                    Value::Planar(t)
                }
                Value::Blocked(mut t, c) => {
                    ops::activation::forward(*act, &mut t);
                    Value::Blocked(t, c)
                }
            },
            Op::Add => match (self.take(values, node, step), read(values, node, 1)) {
                (Value::Planar(mut t), Value::Planar(b)) => {
                    ops::add::forward(&mut t, b);
                    Value::Planar(t)
                }
                (Value::Blocked(mut t, c), Value::Blocked(b, _)) => {
                    ops::add::forward(&mut t, b);
                    Value::Blocked(t, c)
                }
                (a, b) => {
                    let mut t = a.planar();
                    ops::add::forward(&mut t, &b.as_planar());
                    Value::Planar(t)
                }
            },
            Op::Mul => match (self.take(values, node, step), read(values, node, 1)) {
                (Value::Blocked(mut t, c), Value::Blocked(b, _)) if t.shape == b.shape => {
                    ops::mul::forward(&mut t, b);
                    Value::Blocked(t, c)
                }
                // A per-channel gate on a blocked value (squeeze-excitation) keeps it blocked.
                (Value::Blocked(mut t, c), b) => {
                    let g = b.as_planar();
                    if g.shape == [t.shape[0], c, 1, 1] {
                        blocked::gate(&mut t, &g, c);
                        Value::Blocked(t, c)
                    } else {
                        let mut p = blocked::unblock(&t, c);
                        ops::mul::forward(&mut p, &g);
                        Value::Planar(p)
                    }
                }
                (a, b) => {
                    let mut t = a.planar();
                    ops::mul::forward(&mut t, &b.as_planar());
                    Value::Planar(t)
                }
            },
            Op::MaxPool(w) => Value::Planar(ops::maxpool::forward(w, &read(values, node, 0).as_planar())),
            Op::GlobalPool => Value::Planar(ops::pool::forward(&read(values, node, 0).as_planar())),
            Op::Linear(l) => Value::Planar(ops::linear::forward(l, &read(values, node, 0).as_planar())),
        }
    }
}

/// Runs `f` on a thread of rayon's pool when `pooled` (at once when called from one): a pass's
/// many parallel loops then start from a worker instead of each waking the pool from outside
/// and waiting for it, which at batch 1 cost more than some layers. With `spin`, the pool's other
/// workers are kept from sleeping while `f` runs ([`keep_awake`]): otherwise each of a pass's
/// parallel regions had to wake them again (about 50 context switches per batch-1 pass; keeping
/// them awake took the pass from 4.2–4.4 to 3.6–3.9 ms on two threads).
fn on_pool<R: Send>(pooled: bool, spin: bool, f: impl FnOnce() -> R + Send) -> R {
    if !pooled {
        return f();
    }
    let mut out = None;
    let (done, started) = (AtomicBool::new(false), AtomicUsize::new(0));
    let helpers = if spin { rayon::current_num_threads() - 1 } else { 0 };
    rayon::scope(|s| {
        for _ in 0..helpers {
            s.spawn(|_| keep_awake(&done, &started));
        }
        // Until the helpers run on the other workers (not on this one, which is about to run the
        // pass), or for at most 50 µs.
        let wait = std::time::Instant::now();
        while started.load(Ordering::Acquire) < helpers && wait.elapsed() < std::time::Duration::from_micros(50) {
            std::hint::spin_loop();
        }
        out = Some(f());
        done.store(true, Ordering::Release);
    });
    out.expect("the scope ran its closure")
}

/// A pass's helper on another worker of the pool: runs the pass's parallel tasks as they come
/// ([`rayon::yield_now`]) instead of letting the worker fall asleep between them, until the pass
/// is done or nothing came for 200 µs.
fn keep_awake(done: &AtomicBool, started: &AtomicUsize) {
    started.fetch_add(1, Ordering::AcqRel);
    let mut idle = std::time::Instant::now();
    while !done.load(Ordering::Acquire) && idle.elapsed() < std::time::Duration::from_micros(200) {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => idle = std::time::Instant::now(),
            _ => std::hint::spin_loop(),
        }
    }
}

fn read<'a>(values: &'a [Option<Value>], node: &Node, i: usize) -> &'a Value {
    read_value(values, node.inputs[i])
}

pub(super) fn read_value(values: &[Option<Value>], v: usize) -> &Value {
    values[v].as_ref().expect("computed before use")
}

/// `data` of shape `shape` copied into a buffer of the current pool (what a pass takes as input).
fn pooled_copy(shape: [usize; 4], data: &[f32]) -> Tensor {
    let mut x = Tensor::scratch(shape);
    x.data.copy_from_slice(data);
    x
}
