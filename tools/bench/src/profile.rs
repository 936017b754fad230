//! `edgepatch-bench profile`: where a forward pass of the shipped model spends its time, step by
//! step of the CPU engine's schedule (a convolution with its fused affine and activation is one
//! step), with each step's arithmetic rate against the measured peak.

use edgepatch::backend::cpu::CpuEngine;
use edgepatch::graph::Op;
use edgepatch::{Backbone, Tensor};
use serde_json::json;

/// Profiles `reps` passes at `batch` × 224 px after three warm-ups: per step the median time,
/// the multiply-adds (×2 for flops) and the rate; totals per kind of step.
pub fn profile(batch: usize, reps: usize) -> serde_json::Value {
    let backbone = Backbone::embedded().expect("the embedded model");
    let g = backbone.graph();
    let engine = CpuEngine::new(g);
    let shape = [batch, 3, 224, 224];
    let x = super::input(batch);
    let shapes = g.infer_shapes(224, 224).expect("shapes");
    let pass = || engine.profile(g, Tensor::from_vec(shape, x.clone()).expect("shape")).expect("a pass").1;
    for _ in 0..3 {
        pass();
    }
    let runs: Vec<Vec<(usize, std::time::Duration)>> = (0..reps).map(|_| pass()).collect();
    let totals: Vec<f64> = runs.iter().map(|r| r.iter().map(|(_, t)| t.as_secs_f64()).sum()).collect();
    let peak = super::peak_gflops(edgepatch::simd::level()).unwrap_or(f64::NAN);
    let mut steps = Vec::new();
    let mut kinds: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
    let macs_of = |node: &edgepatch::graph::Node| {
        let output = shapes[node.output];
        match &node.op {
            Op::Conv(c) => c.in_channels * c.window.kernel[0] * c.window.kernel[1] * output.c * output.h * output.w,
            Op::Depthwise(d) => d.window.kernel[0] * d.window.kernel[1] * output.c * output.h * output.w,
            _ => 0,
        }
    };
    for (i, &(head, _)) in runs[0].iter().enumerate() {
        let secs = super::median(runs.iter().map(|r| r[i].1.as_secs_f64()).collect());
        let node = &g.nodes[head];
        let (input, mut output) = (shapes[node.inputs[0]], shapes[node.output]);
        let fused = engine.fused_block_at(head);
        let (kind, macs) = match &node.op {
            _ if fused.is_some() => {
                let (heads, out) = fused.clone().expect("a block");
                output = shapes[out];
                ("block (fused)", heads.iter().map(|&h| macs_of(&g.nodes[h])).sum())
            }
            Op::Conv(c) if c.window.is_pointwise() => ("conv 1×1", c.in_channels * output.c * output.h * output.w),
            Op::Conv(c) => {
                let k = c.window.kernel[0] * c.window.kernel[1];
                ("conv k×k", c.in_channels * k * output.c * output.h * output.w)
            }
            Op::Depthwise(d) => ("depthwise", d.window.kernel[0] * d.window.kernel[1] * output.c * output.h * output.w),
            Op::Linear(l) => ("linear", l.in_features * l.out_features),
            Op::Add => ("add", 0),
            Op::GlobalPool => ("pool", 0),
            _ => ("other", 0),
        };
        let flops = 2.0 * (batch * macs) as f64;
        let e = kinds.entry(kind.to_string()).or_default();
        e.0 += secs;
        e.1 += flops;
        steps.push(json!({"step": i, "node": node.name, "kind": kind,
            "in": [input.c, input.h, input.w], "out": [output.c, output.h, output.w],
            "ms": secs * 1e3, "gflops": flops / secs / 1e9, "fraction_of_peak": flops / secs / 1e9 / peak}));
    }
    let kinds: Vec<_> = kinds
        .into_iter()
        .map(|(k, (s, f))| json!({"kind": k, "ms": s * 1e3, "gflops": f / s / 1e9, "fraction_of_peak": f / s / 1e9 / peak}))
        .collect();
    json!({"batch": batch, "median_ms": super::median(totals) * 1e3, "peak_gflops": peak,
        "level": format!("{:?}", edgepatch::simd::level()), "threads": rayon::current_num_threads(),
        "kinds": kinds, "steps": steps})
}
