//! Side-by-side inference benchmark: edgepatch's CPU engine vs tract-onnx on the same ONNX file,
//! latency at batch 1 and throughput at batch 16 (224 px), and each one's peak resident memory.
//!
//! `cargo run --release -p edgepatch-bench -- compare [--model cache/mobilenet_v2_f32.onnx] [--reps 20]`
//! runs every configuration in a fresh child process (so peak RSS is that engine's alone) and
//! prints a markdown table. `… -- run --engine edgepatch|edgepatch-int8|tract --batch B` is one
//! configuration (what `compare` spawns), printing one JSON line. `… -- train --kinds K --batch B
//! --resolution R [--reps N]` times CPU training steps (one JSON line); `… -- dump-graph --out DIR`
//! writes the shipped model for tools/bench/torch_bench.py; `… -- trajectory` writes a training run
//! step by step for tools/parity/trajectory.py (see [`trajectory`]); `… -- pointwise --batch B --resolution R`
//! measures the 1×1 convolutions' f32 rate against this machine's peak (one JSON line). tools/bench/run.py drives them all
//! beside PyTorch and onnxruntime.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

mod profile;
mod trajectory;

use edgepatch::{Backbone, Tensor};
use serde_json::json;
use tract_onnx::prelude::*;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

/// Peak resident set size of this process (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn input(batch: usize) -> Vec<f32> {
    (0..batch * 3 * 224 * 224).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect()
}

/// Times `reps` runs after two warm-up runs; returns per-run seconds.
fn time(reps: usize, mut f: impl FnMut()) -> Vec<f64> {
    f();
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect()
}

fn run(engine: &str, model: &str, batch: usize, reps: usize) -> serde_json::Value {
    let shape = [batch, 3, 224, 224];
    let x = input(batch);
    let times = match engine {
        "edgepatch" | "edgepatch-int8" => {
            let b = if engine == "edgepatch" { Backbone::from_path(model.as_ref()) } else { Backbone::embedded() }
                .expect("model imports");
            time(reps, || {
                let out = b.forward(Tensor::from_vec(shape, x.clone()).unwrap()).unwrap();
                std::hint::black_box(out);
            })
        }
        "tract" => {
            let plan = tract_onnx::onnx()
                .model_for_path(model)
                .and_then(|m| m.with_input_fact(0, f32::fact(shape).into()))
                .and_then(|m| m.into_optimized())
                .and_then(|m| m.into_runnable())
                .expect("tract loads the model");
            let t: Tensor4 = tract_ndarray::Array4::from_shape_vec(shape, x.clone()).unwrap();
            time(reps, || {
                let out = plan.run(tvec!(tract_onnx::prelude::Tensor::from(t.clone()).into())).unwrap();
                std::hint::black_box(out);
            })
        }
        e => panic!("unknown engine {e}"),
    };
    let ms = median(times) * 1e3;
    json!({"engine": engine, "batch": batch, "median_ms": ms, "images_per_s": batch as f64 / ms * 1e3, "peak_rss_bytes": peak_rss()})
}

type Tensor4 = tract_ndarray::Array4<f32>;

fn cpu_name() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let name = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    format!("{name}, {} logical CPUs", std::thread::available_parallelism().map_or(0, |n| n.get()))
}

fn compare(model: &str, reps: usize) {
    let exe = std::env::current_exe().expect("own path");
    let rows = [
        ("tract", "1", "tract-onnx 0.23.9, f32 ONNX"),
        ("edgepatch", "1", "edgepatch, f32 ONNX, 1 thread"),
        ("edgepatch", "0", "edgepatch, f32 ONNX, all threads"),
        ("edgepatch-int8", "0", "edgepatch, shipped int8 model, all threads"),
    ];
    println!("Machine: {}", cpu_name());
    println!("Model: {model}, input 224×224, median of {reps} runs after 2 warm-ups; each row a fresh process.\n");
    println!(
        "| engine | batch 1 latency (ms) | batch 16 (ms) | batch 16 images/s | peak RSS b1 (MB) | peak RSS b16 (MB) |"
    );
    println!("|---|---|---|---|---|---|");
    let mut base = None;
    for (engine, threads, label) in rows {
        let mut res = Vec::new();
        for batch in [1, 16] {
            let mut cmd = Command::new(&exe);
            cmd.args(["run", "--engine", engine, "--model", model, "--batch", &batch.to_string()]);
            cmd.args(["--reps", &(if batch == 1 { reps } else { reps.div_ceil(4).max(3) }).to_string()]);
            if threads != "0" {
                cmd.env("RAYON_NUM_THREADS", threads);
            }
            let out = cmd.output().expect("child runs");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            res.push(serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("child JSON"));
        }
        let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap();
        let (b1, b16) = (f(&res[0], "median_ms"), f(&res[1], "median_ms"));
        let base_b1 = *base.get_or_insert(b1);
        println!(
            "| {label} | {b1:.1} ({:.2}× tract) | {b16:.1} | {:.1} | {:.0} | {:.0} |",
            base_b1 / b1,
            f(&res[1], "images_per_s"),
            f(&res[0], "peak_rss_bytes") / 1e6,
            f(&res[1], "peak_rss_bytes") / 1e6
        );
    }
}

/// One training configuration on the CPU: `steps` timed steps (each: the frozen features for a
/// head-only patch, then forward, backward and the update) after two warm-up steps, on fixed
/// random batches of 10 classes. One JSON line.
fn train(kinds: &str, batch: usize, resolution: usize, steps: usize) -> serde_json::Value {
    let backbone = Backbone::embedded().expect("the embedded model");
    let mut config = edgepatch::train::TrainConfig::new(kinds.parse().expect("patch kinds"));
    config.batch = batch;
    config.resolution = resolution as u32;
    config.lr = Some(0.001);
    config.device = edgepatch::backend::Device::Cpu;
    let labels: Vec<String> = (0..10).map(|i| format!("class {i}")).collect();
    let mut trainer = edgepatch::train::Trainer::new(&backbone, config, labels).expect("a trainer");
    let x = Tensor::from_vec(
        [batch, 3, resolution, resolution],
        (0..batch * 3 * resolution * resolution).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect(),
    )
    .expect("shape");
    let y: Vec<usize> = (0..batch).map(|i| i % 10).collect();
    let mut losses = Vec::new();
    let times = time(steps, || {
        let input = if trainer.takes_features() { trainer.features(x.clone()).expect("features") } else { x.clone() };
        losses.push(trainer.step(input, &y, 0.001).expect("a step").loss);
    });
    let ms = median(times) * 1e3;
    json!({"engine": "edgepatch", "kinds": kinds, "batch": batch, "resolution": resolution,
        "median_step_ms": ms, "images_per_s": batch as f64 / ms * 1e3, "peak_rss_bytes": peak_rss(),
        "first_loss": losses[0], "threads": rayon::current_num_threads()})
}

/// Writes the shipped model for tools/bench/torch_bench.py: `graph.json` (the nodes in order:
/// op, input and output value ids, shapes, offsets into the weights) and `weights.bin` (f32 LE;
/// int8 kernels dequantized), so that PyTorch runs the same network with the same values.
fn dump_graph(out: &std::path::Path) {
    use edgepatch::graph::Op;
    let backbone = Backbone::embedded().expect("the embedded model");
    let g = backbone.graph();
    let mut weights: Vec<f32> = Vec::new();
    let mut put = |v: &[f32]| {
        let at = weights.len();
        weights.extend_from_slice(v);
        json!([at, v.len()])
    };
    let nodes: Vec<serde_json::Value> = g
        .nodes
        .iter()
        .map(|n| {
            let mut o = json!({"op": n.op.kind(), "inputs": n.inputs, "output": n.output});
            match &n.op {
                Op::Conv(c) => {
                    o["in"] = json!(c.in_channels);
                    o["out"] = json!(c.out_channels);
                    o["kernel"] = json!(c.window.kernel);
                    o["stride"] = json!(c.window.stride);
                    o["pads"] = json!(c.window.pads);
                    o["weight"] = put(&c.weights.to_f32());
                }
                Op::Depthwise(d) => {
                    o["channels"] = json!(d.channels);
                    o["kernel"] = json!(d.window.kernel);
                    o["stride"] = json!(d.window.stride);
                    o["pads"] = json!(d.window.pads);
                    o["weight"] = put(&d.weights.to_f32());
                }
                Op::Affine(a) => {
                    o["scale"] = put(&a.scale);
                    o["bias"] = put(&a.bias);
                }
                Op::Linear(l) => {
                    o["in"] = json!(l.in_features);
                    o["out"] = json!(l.out_features);
                    o["weight"] = put(&l.weights.to_f32());
                    o["bias"] = put(&l.bias);
                }
                _ => {}
            }
            o
        })
        .collect();
    std::fs::create_dir_all(out).expect("output directory");
    let graph = json!({"fingerprint": backbone.fingerprint(), "input_channels": g.input_channels,
        "output": g.output, "nodes": nodes});
    std::fs::write(out.join("graph.json"), serde_json::to_vec(&graph).expect("json")).expect("write graph.json");
    let bytes: Vec<u8> = weights.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(out.join("weights.bin"), bytes).expect("write weights.bin");
    let logits = backbone.forward(Tensor::from_vec([1, 3, 224, 224], input(1)).expect("shape")).expect("forward");
    let bytes: Vec<u8> = logits.data.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(out.join("logits.bin"), bytes).expect("write logits.bin");
    println!("{}", json!({"nodes": g.nodes.len(), "weights": weights.len(), "out": out.display().to_string()}));
}

/// This machine's peak f32 rate at `level` on every thread of rayon's pool at once (GFLOP/s): the
/// best of 5 runs of `simd::fma_burst` on all threads together.
fn peak_gflops(level: edgepatch::simd::Level) -> Option<f64> {
    let mut best: f64 = 0.0;
    for _ in 0..5 {
        let start = Instant::now();
        let runs = rayon::broadcast(|_| edgepatch::simd::fma_burst(level, 20_000_000));
        let secs = start.elapsed().as_secs_f64();
        let mut ops = 0u64;
        for r in runs {
            let (value, n) = r?;
            std::hint::black_box(value);
            ops += n;
        }
        best = best.max(ops as f64 / secs / 1e9);
    }
    Some(best)
}

/// The 1×1 convolutions of the shipped model at `batch` × `resolution`: each layer's forward and
/// input gradient (what a step of an S/B patch runs for it), on all threads, timed as a whole
/// (median of `reps` after a warm-up); their f32 rate against the measured peaks.
fn pointwise(batch: usize, resolution: usize, reps: usize) -> serde_json::Value {
    use edgepatch::graph::Op;
    use edgepatch::ops;
    let backbone = Backbone::embedded().expect("the embedded model");
    let g = backbone.graph();
    let shapes = g.infer_shapes(resolution, resolution).expect("shapes");
    let mut layers = Vec::new();
    for n in &g.nodes {
        if let Op::Conv(c) = &n.op {
            if c.window.is_pointwise() {
                let s = shapes[n.inputs[0]];
                let len = batch * s.c * s.h * s.w;
                let x = Tensor::from_vec(
                    [batch, s.c, s.h, s.w],
                    (0..len).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect(),
                )
                .expect("shape");
                let dy =
                    Tensor::from_vec([batch, c.out_channels, s.h, s.w], vec![0.5; batch * c.out_channels * s.h * s.w])
                        .expect("shape");
                layers.push((c, x, dy, (s.h, s.w)));
            }
        }
    }
    let flops: f64 = layers.iter().map(|(c, x, ..)| 2.0 * 2.0 * (c.out_channels * x.data.len()) as f64).sum();
    let mut pool = edgepatch::tensor::Pool::default();
    let times = time(reps, || {
        pool.scope(|| {
            for (c, x, dy, hw) in &layers {
                std::hint::black_box(ops::conv::forward(c, x, &ops::Epilogue::NONE));
                std::hint::black_box(ops::conv::backward_input(c, dy, *hw));
            }
        })
    });
    let secs = median(times);
    let rate = flops / secs / 1e9;
    let per_layer: Vec<_> = layers
        .iter()
        .map(|(c, x, dy, hw)| {
            let f = median(time(reps, || pool.scope(|| drop(ops::conv::forward(c, x, &ops::Epilogue::NONE)))));
            let b = median(time(reps, || pool.scope(|| drop(ops::conv::backward_input(c, dy, *hw)))));
            let gflop = 2.0 * (c.out_channels * x.data.len()) as f64 / 1e9;
            json!({"cin": c.in_channels, "cout": c.out_channels, "hw": hw.0 * hw.1,
                "forward_gflops": gflop / f, "backward_gflops": gflop / b})
        })
        .collect();
    let avx512 = peak_gflops(edgepatch::simd::Level::Avx512);
    let avx2 = peak_gflops(edgepatch::simd::Level::Avx2);
    json!({"batch": batch, "resolution": resolution, "layers": layers.len(), "gflop": flops / 1e9,
        "median_ms": secs * 1e3, "gflops": rate, "threads": rayon::current_num_threads(),
        "level": format!("{:?}", edgepatch::simd::level()),
        "peak_avx512_gflops": avx512, "peak_avx2_gflops": avx2, "per_layer": per_layer,
        "fraction_of_avx512_peak": avx512.map(|p| rate / p), "fraction_of_avx2_peak": avx2.map(|p| rate / p)})
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let default_model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../cache/mobilenet_v2_f32.onnx");
    let model = arg(&args, "--model").unwrap_or(default_model.display().to_string());
    let reps: usize = arg(&args, "--reps").and_then(|r| r.parse().ok()).unwrap_or(20);
    match args.get(1).map(String::as_str) {
        Some("run") => {
            let engine = arg(&args, "--engine").expect("--engine");
            let batch: usize = arg(&args, "--batch").and_then(|b| b.parse().ok()).unwrap_or(1);
            println!("{}", run(&engine, &model, batch, reps));
        }
        Some("train") => {
            let kinds = arg(&args, "--kinds").unwrap_or_else(|| "sb+logits".into());
            let batch: usize = arg(&args, "--batch").and_then(|b| b.parse().ok()).unwrap_or(16);
            let res: usize = arg(&args, "--resolution").and_then(|b| b.parse().ok()).unwrap_or(224);
            println!("{}", train(&kinds, batch, res, reps));
        }
        Some("pointwise") => {
            let batch: usize = arg(&args, "--batch").and_then(|b| b.parse().ok()).unwrap_or(16);
            let res: usize = arg(&args, "--resolution").and_then(|b| b.parse().ok()).unwrap_or(224);
            println!("{}", pointwise(batch, res, reps));
        }
        Some("profile") => {
            let batch: usize = arg(&args, "--batch").and_then(|b| b.parse().ok()).unwrap_or(1);
            println!("{}", profile::profile(batch, reps));
        }
        Some("dump-graph") => dump_graph(std::path::Path::new(&arg(&args, "--out").expect("--out DIR"))),
        Some("trajectory") => {
            let num = |name: &str, default: usize| arg(&args, name).map_or(default, |v| v.parse().expect(name));
            let indices = arg(&args, "--indices").expect("--indices FILE.json (positions in the training set)");
            let indices: Vec<usize> =
                serde_json::from_slice(&std::fs::read(&indices).expect("--indices file")).expect("a JSON list");
            let settings = trajectory::Settings {
                out: arg(&args, "--out").expect("--out DIR").into(),
                train: arg(&args, "--train").expect("--train SPEC"),
                indices,
                test: arg(&args, "--test").map(|t| (t, num("--test-count", 2000))),
                kinds: arg(&args, "--kinds").unwrap_or_else(|| "sb+logits".into()),
                batch: num("--batch", 32),
                resolution: num("--resolution", 64) as u32,
                epochs: num("--epochs", 3),
                steps: arg(&args, "--steps").map(|v| v.parse().expect("--steps")),
                lr: arg(&args, "--lr").map(|v| v.parse().expect("--lr")),
                seed: num("--seed", 0) as u64,
            };
            match trajectory::run(&settings) {
                Ok(v) => println!("{v}"),
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(1);
                }
            }
        }
        Some("compare") | None => compare(&model, reps),
        Some(other) => {
            eprintln!("unknown command {other}; use `compare`, `run`, `train`, `pointwise`, `profile`, `dump-graph` or `trajectory`");
            std::process::exit(2);
        }
    }
}
