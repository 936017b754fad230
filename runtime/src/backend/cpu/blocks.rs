//! The CPU engine's inverted residual blocks: their layers, packed weights and epilogues
//! gathered from the graph for [`blocked::fused`], and the packs and epilogues every blocked
//! step reads.

use std::borrow::Cow;

use super::{read_value, CpuEngine};
use crate::graph::{Conv, Depthwise, Graph, Op};
use crate::ops::blocked::{self, Value};
use crate::ops::Epilogue;
use crate::schedule::Block;

/// A 1×1 convolution step of a block: its index, its convolution and its pack.
type Conv1x1<'a> = (usize, &'a Conv, Cow<'a, blocked::PackedConv>);

impl CpuEngine {
    /// Runs `block` ([`blocked::fused`]) on `values` (blocked or not) and returns its output.
    pub(super) fn block(&self, graph: &Graph, values: &[Option<Value>], block: &Block) -> Value {
        let node = |s: usize| &graph.nodes[self.steps[s].head];
        let conv = |s: usize| match &node(s).op {
            Op::Conv(c) => (s, c, self.packed_conv(s, c)),
            _ => unreachable!("planned as a 1×1 convolution"),
        };
        let (expand, project) = (block.expand.map(conv), conv(block.project));
        let Op::Depthwise(dw) = &node(block.depthwise).op else { unreachable!("planned as a depthwise") };
        let dw_packed = self.packed_depthwise(block.depthwise, dw);
        let residual = block.add.map(|a| {
            let add = node(a);
            let other = add.inputs.iter().find(|&&v| v != self.steps[block.project].output).copied();
            read_value(values, other.unwrap_or(add.inputs[0]))
        });
        let fused = blocked::fused::InvertedResidual {
            expand: expand.as_ref().map(|l| self.layer(graph, l)),
            depthwise: blocked::fused::Layer { op: dw, packed: &dw_packed, epi: self.epilogue(graph, block.depthwise) },
            project: self.layer(graph, &project),
            residual,
            // Passes kept on the caller are those under a memory budget.
            lean: !self.on_pool,
        };
        blocked::fused::inverted_residual(&fused, read_value(values, node(block.first()).inputs[0]))
    }

    /// A 1×1 layer of a block from its step, convolution and pack.
    fn layer<'a>(
        &self,
        graph: &'a Graph,
        (s, c, p): &'a Conv1x1<'a>,
    ) -> blocked::fused::Layer<'a, Conv, blocked::PackedConv> {
        blocked::fused::Layer { op: *c, packed: p, epi: self.epilogue(graph, *s) }
    }

    /// Step `s`'s affine and activation as the epilogue of its head.
    pub(super) fn epilogue<'g>(&self, graph: &'g Graph, s: usize) -> Epilogue<'g> {
        let step = &self.steps[s];
        let affine = step.affine.map(|a| match &graph.nodes[a].op {
            Op::Affine(a) => a,
            _ => unreachable!("planned as an affine"),
        });
        Epilogue {
            scale: affine.map(|a| a.scale.as_slice()),
            bias: affine.map(|a| a.bias.as_slice()),
            act: step.activation(),
        }
    }

    /// Step `s`'s convolution `c` packed for the blocked layout: the engine's, or packed now
    /// when `c`'s weights are no longer those.
    pub(super) fn packed_conv(&self, s: usize, c: &Conv) -> Cow<'_, blocked::PackedConv> {
        match self.packed_blocked.get(s).and_then(Option::as_ref) {
            Some(blocked::Pack::Conv(p)) if p.fits(c) => Cow::Borrowed(p),
            _ => Cow::Owned(blocked::PackedConv::new(c)),
        }
    }

    /// Step `s`'s depthwise `d` packed for the blocked layout, as [`CpuEngine::packed_conv`].
    pub(super) fn packed_depthwise(&self, s: usize, d: &Depthwise) -> Cow<'_, blocked::PackedDepthwise> {
        match self.packed_blocked.get(s).and_then(Option::as_ref) {
            Some(blocked::Pack::Depthwise(p)) if p.fits(d) => Cow::Borrowed(p),
            _ => Cow::Owned(blocked::PackedDepthwise::new(d)),
        }
    }
}
