//! The CPU engine's inverted residual blocks: their layers, packed weights and epilogues
//! gathered from the graph for [`blocked::fused`].

use super::{read_value, CpuEngine};
use crate::graph::{Graph, Op};
use crate::ops::blocked::{self, Value};
use crate::ops::Epilogue;
use crate::schedule::Block;

impl CpuEngine {
    /// Runs `block` ([`blocked::fused`]) on `values` (blocked or not) and returns its output.
    pub(super) fn block<'a>(&'a self, graph: &'a Graph, values: &[Option<Value>], block: &Block) -> Value {
        let epilogue = |s: usize| {
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
        };
        let node = |s: usize| &graph.nodes[self.steps[s].head];
        let conv = |s: usize| match &node(s).op {
            Op::Conv(c) => (c, self.packed_conv(s, c)),
            _ => unreachable!("planned as a 1×1 convolution"),
        };
        let expand = block.expand.map(|s| (s, conv(s)));
        let project = (block.project, conv(block.project));
        let Op::Depthwise(dw) = &node(block.depthwise).op else { unreachable!("planned as a depthwise") };
        let dw_packed = match self.packed_blocked.get(block.depthwise).and_then(Option::as_ref) {
            Some(blocked::Pack::Depthwise(p)) if p.fits(dw) => std::borrow::Cow::Borrowed(p),
            _ => std::borrow::Cow::Owned(blocked::PackedDepthwise::new(dw)),
        };
        let residual = block.add.map(|a| {
            let add = node(a);
            let other = add.inputs.iter().find(|&&v| v != self.steps[block.project].output).copied();
            read_value(values, other.unwrap_or(add.inputs[0]))
        });
        let fused = blocked::fused::InvertedResidual {
            expand: expand.as_ref().map(|(s, (c, p))| blocked::fused::Layer {
                op: *c,
                packed: p.as_ref(),
                epi: epilogue(*s),
            }),
            depthwise: blocked::fused::Layer { op: dw, packed: &dw_packed, epi: epilogue(block.depthwise) },
            project: blocked::fused::Layer {
                op: project.1 .0,
                packed: project.1 .1.as_ref(),
                epi: epilogue(project.0),
            },
            residual,
            // Passes kept on the caller are those under a memory budget.
            lean: !self.on_pool,
        };
        blocked::fused::inverted_residual(&fused, read_value(values, node(block.first()).inputs[0]))
    }

    /// Step `s`'s convolution `c` packed for the blocked layout: the engine's, or packed now
    /// when `c`'s weights are no longer those.
    pub(super) fn packed_conv<'a>(
        &'a self,
        s: usize,
        c: &crate::graph::Conv,
    ) -> std::borrow::Cow<'a, blocked::PackedConv> {
        match self.packed_blocked.get(s).and_then(Option::as_ref) {
            Some(blocked::Pack::Conv(p)) if p.fits(c) => std::borrow::Cow::Borrowed(p),
            _ => std::borrow::Cow::Owned(blocked::PackedConv::new(c)),
        }
    }
}
