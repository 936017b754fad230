//! The CPU inference engine: batch forward over the IR, multithreaded with rayon, with each
//! convolution fused with the affine and activation that follow it.

use crate::graph::{Graph, Node, Op};
use crate::ops::{self, Epilogue};
use crate::schedule::{Schedule, Step};
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
    /// For each step, its convolution's packed weights.
    packed: Arc<Vec<Option<ops::conv::Packed>>>,
    pool: Mutex<Pool>,
}

impl Clone for CpuEngine {
    fn clone(&self) -> Self {
        CpuEngine {
            steps: self.steps.clone(),
            last_use: self.last_use.clone(),
            packed: self.packed.clone(),
            pool: CpuEngine::pool(),
        }
    }
}

impl CpuEngine {
    /// Plans the execution (one pass per fused chain of [`Schedule::inference`]) and packs the convolutions' int8 weights.
    pub fn new(graph: &Graph) -> Self {
        let mut engine = CpuEngine::unpacked(graph);
        engine.update(graph);
        engine
    }

    /// [`CpuEngine::new`] without packed weights (every pass packs its own), for an engine that
    /// stands by while a GPU runs the passes.
    pub(crate) fn unpacked(graph: &Graph) -> Self {
        let Schedule { steps, last_use, .. } = Schedule::inference(graph);
        CpuEngine { steps, last_use, packed: Arc::default(), pool: CpuEngine::pool() }
    }

    /// Takes up new parameter values of the planned graph (another patch): packs the weights of
    /// the convolutions whose weights changed.
    pub fn update(&mut self, graph: &Graph) {
        let old = std::mem::take(&mut self.packed);
        let packed = self
            .steps
            .iter()
            .enumerate()
            .map(|(s, step)| match &graph.nodes.get(step.head)?.op {
                Op::Conv(conv) => match old.get(s) {
                    Some(Some(p)) if p.fits(conv) => Some(p.clone()),
                    _ => ops::conv::Packed::new(conv),
                },
                _ => None,
            })
            .collect();
        self.packed = Arc::new(packed);
    }

    /// The most bytes of activation buffers a forward pass on `input` holds at once (measured
    /// by running it with a fresh buffer pool; the engine's own pool is left alone).
    pub fn pass_bytes(&self, graph: &Graph, input: Tensor) -> Result<u64> {
        let mut pool = Pool::default();
        pool.scope(|| self.run(graph, input))?;
        Ok(pool.bytes() as u64)
    }

    /// Bytes of the weights the engine keeps packed.
    pub fn packed_bytes(&self) -> usize {
        self.packed.iter().flatten().map(|p| p.bytes()).sum()
    }

    /// The most bytes of free activation buffers an engine keeps between passes.
    pub const POOL_BYTES: usize = 256 << 20;

    fn pool() -> Mutex<Pool> {
        Mutex::new(Pool::with_limit(CpuEngine::POOL_BYTES))
    }

    /// The first input of `node` (the head of step `step`) for in-place use: moved out when
    /// the step is its last reader (and it is not read twice by this node), cloned otherwise.
    fn take(&self, values: &mut [Option<Tensor>], node: &Node, step: &Step) -> Tensor {
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
        let copy = || {
            let mut x = Tensor::scratch(shape);
            x.data.copy_from_slice(data);
            x
        };
        match self.pool.try_lock() {
            Ok(mut pool) => pool.scope(|| self.run(graph, copy())),
            Err(_) => self.run(graph, copy()),
        }
    }

    fn run(&self, graph: &Graph, input: Tensor) -> Result<Tensor> {
        let [n, c, h, w] = input.shape;
        if n == 0 || c != graph.input_channels {
            return Err(Error::Input(format!(
                "input of shape {:?}, the model takes [N ≥ 1, {}, H, W]",
                input.shape, graph.input_channels
            )));
        }
        graph.shapes(h, w)?;
        let mut values: Vec<Option<Tensor>> = vec![None; graph.num_values];
        values[0] = Some(input);
        for (s, step) in self.steps.iter().enumerate() {
            let node = &graph.nodes[step.head];
            let affine = step.affine.map(|a| match &graph.nodes[a].op {
                Op::Affine(a) => a,
                _ => unreachable!("planned as an affine"),
            });
            let epi = Epilogue {
                scale: affine.map(|a| a.scale.as_slice()),
                bias: affine.map(|a| a.bias.as_slice()),
                act: step.activation(),
            };
            let out = match &node.op {
                Op::Conv(conv) => {
                    let packed = self.packed.get(s).and_then(Option::as_ref);
                    ops::conv::forward_packed(conv, packed, read(&values, node, 0), &epi)
                }
                Op::Depthwise(dw) => ops::depthwise::forward(dw, read(&values, node, 0), &epi),
                Op::Affine(a) => {
                    let mut t = self.take(&mut values, node, step);
                    ops::affine::forward(a, &mut t, step.activation());
                    t
                }
                Op::Act(act) => {
                    let mut t = self.take(&mut values, node, step);
                    ops::activation::forward(*act, &mut t);
                    t
                }
                Op::Add => {
                    let mut t = self.take(&mut values, node, step);
                    ops::add::forward(&mut t, read(&values, node, 1));
                    t
                }
                Op::GlobalPool => ops::pool::forward(read(&values, node, 0)),
                Op::Linear(l) => ops::linear::forward(l, read(&values, node, 0)),
            };
            for &v in &node.inputs {
                if self.last_use[v] == step.head {
                    values[v] = None;
                }
            }
            values[step.output] = Some(out);
        }
        values[graph.output].take().ok_or_else(|| Error::InvalidModel("output not computed".into()))
    }
}

fn read<'a>(values: &'a [Option<Tensor>], node: &Node, i: usize) -> &'a Tensor {
    values[node.inputs[i]].as_ref().expect("computed before use")
}
