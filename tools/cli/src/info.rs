//! `edgepatch info`: a model's layers, parameters and patchable counts, or the GPU adapters.

use std::path::Path;

use edgepatch::graph::Op;
use serde_json::json;

use crate::load;

pub fn info(model: Option<&Path>, as_json: bool) -> edgepatch::Result<String> {
    let mut o = String::new();
    let b = load(model)?;
    let g = b.graph();
    let shapes = g.shapes(224, 224)?;
    let p = g.patchable();
    let layers: Vec<_> = g
        .nodes
        .iter()
        .map(|n| {
            let s = shapes[n.output];
            json!({"name": n.name, "kind": n.op.kind(), "params": n.op.params(), "output": [s.c, s.h, s.w]})
        })
        .collect();
    let convs = g.nodes.iter().filter(|n| matches!(n.op, Op::Conv(_) | Op::Depthwise(_))).count();
    let quantized = g
        .nodes
        .iter()
        .any(|n| matches!(&n.op, Op::Conv(c) if matches!(c.weights, edgepatch::graph::Weights::Int8 { .. })));
    if as_json {
        let out = json!({
            "model": model.map_or("embedded:mobilenet_v2_int8".to_string(), |p| p.display().to_string()),
            "fingerprint": b.fingerprint(),
            "input": ["N", g.input_channels, "H", "W"],
            "default_input": [1, g.input_channels, 224, 224],
            "classes": g.num_classes(),
            "params": g.params(),
            "layers": layers,
            "convolutions": convs,
            "weights": if quantized { "int8" } else { "f32" },
            "patchable": {"sb": p.sb, "bias": p.bias, "dw": p.dw, "se": p.se, "logits": p.logits},
            "resident_bytes": b.resident_bytes(),
        });
        outln!(o, "{}", serde_json::to_string_pretty(&out).expect("json"));
        return Ok(o);
    }
    outln!(o, "model        {}", model.map_or("embedded MobileNetV2 (int8)".into(), |p| p.display().to_string()));
    outln!(o, "fingerprint  {}", b.fingerprint());
    outln!(o, "input        [N, {}, H, W] (H, W ≥ 32; default 224)", g.input_channels);
    outln!(o, "classes      {}", g.num_classes());
    outln!(
        o,
        "layers       {} ({} convolutions), weights {}",
        g.nodes.len(),
        convs,
        if quantized { "int8" } else { "f32" }
    );
    outln!(o, "params       {}", g.params());
    outln!(o, "resident     {} bytes", b.resident_bytes());
    outln!(o, "patchable    sb {}  bias {}  dw {}  se {}  logits {}", p.sb, p.bias, p.dw, p.se, p.logits);
    outln!(o);
    outln!(o, "{:<40} {:<12} {:>9}  output (224 px)", "layer", "kind", "params");
    for n in &g.nodes {
        let s = shapes[n.output];
        outln!(o, "{:<40} {:<12} {:>9}  {}×{}×{}", n.name, n.op.kind(), n.op.params(), s.c, s.h, s.w);
    }
    Ok(o)
}

/// The GPU adapters wgpu sees.
pub fn devices(as_json: bool) -> String {
    #[cfg(feature = "gpu")]
    let list: Vec<_> = edgepatch::backend::gpu::adapters()
        .into_iter()
        .map(|a| json!({"name": a.name, "backend": a.backend, "type": a.device_type, "hardware": a.is_hardware()}))
        .collect();
    #[cfg(not(feature = "gpu"))]
    let list: Vec<serde_json::Value> = Vec::new();
    if as_json {
        return format!("{}\n", serde_json::to_string_pretty(&json!({"adapters": list})).expect("json"));
    }
    if list.is_empty() {
        return "no GPU adapters\n".into();
    }
    list.iter()
        .map(|a| {
            format!(
                "{} ({}, {})\n",
                a["name"].as_str().unwrap_or_default(),
                a["backend"].as_str().unwrap_or_default(),
                a["type"].as_str().unwrap_or_default()
            )
        })
        .collect()
}
