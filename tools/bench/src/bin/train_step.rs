//! One training step of a patch on the shipped MobileNetV2, CPU against GPU, side by side.
//!
//! `cargo run --release -p edgepatch-bench --bin train_step -- [--kinds sb+logits,bias+logits,…]
//! [--batch 16] [--resolutions 224,96] [--reps 10] [--devices cpu,gpu] [--json]`
//!
//! Per device and resolution: two warm-up steps (the GPU plans its program in the first), then
//! `reps` timed steps; each step includes the upload of the batch and, on the GPU, waiting for
//! the device and reading the loss back (the timer stops after the device is done). Prints the
//! median and the fastest step, images per second, the GPU's buffer bytes and the first-step
//! loss of each device (equal within 1e-3 when both run the same computation).

use std::time::Instant;

use edgepatch::backend::Device;
use edgepatch::train::{TrainConfig, Trainer};
use edgepatch::{Backbone, Tensor};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn batch(n: usize, res: usize, seed: u64) -> (Tensor, Vec<usize>) {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let data = (0..n * 3 * res * res)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    (Tensor::from_vec([n, 3, res, res], data).expect("shape"), (0..n).map(|i| i % 10).collect())
}

fn main() {
    env_logger_init();
    let args: Vec<String> = std::env::args().collect();
    let kind_list = arg(&args, "--kinds").unwrap_or_else(|| "sb+logits".into());
    let n: usize = arg(&args, "--batch").and_then(|v| v.parse().ok()).unwrap_or(16);
    let reps: usize = arg(&args, "--reps").and_then(|v| v.parse().ok()).unwrap_or(10);
    let resolutions: Vec<usize> = arg(&args, "--resolutions")
        .unwrap_or_else(|| "224,96".into())
        .split(',')
        .map(|r| r.parse().expect("a resolution"))
        .collect();
    let devices: Vec<Device> = arg(&args, "--devices")
        .unwrap_or_else(|| "cpu,gpu".into())
        .split(',')
        .map(|d| d.parse().expect("cpu or gpu"))
        .collect();
    let json = args.iter().any(|a| a == "--json");
    let backbone = Backbone::embedded().expect("the embedded model");
    let labels: Vec<String> = (0..10).map(|i| format!("class{i}")).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("# batch {n}, {reps} timed steps after 2 warm-up steps; {threads} CPU threads\n");
    println!("| patch | device | px | median step (ms) | fastest (ms) | images/s | GPU buffers (MiB) | first loss |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for kinds in kind_list.split(',') {
        for &res in &resolutions {
            for &device in &devices {
                let mut config = TrainConfig::new(kinds.parse().expect("patch kinds"));
                config.batch = n;
                config.resolution = res as u32;
                config.device = device;
                config.lr = Some(0.001);
                let mut trainer = match Trainer::new(&backbone, config, labels.clone()) {
                    Ok(t) => t,
                    Err(e) => {
                        println!("| {kinds} | {device} | {res} | {e} | | | | |");
                        continue;
                    }
                };
                let name = trainer.device();
                let mut first = f32::NAN;
                let mut times = Vec::new();
                for i in 0..reps + 2 {
                    let (x, y) = batch(n, res, i as u64);
                    let x = if trainer.takes_features() { trainer.features(x).expect("features") } else { x };
                    let t = Instant::now();
                    let s = trainer.step(x, &y, 0.001).expect("a step");
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    if i == 0 {
                        first = s.loss;
                    }
                    if i >= 2 {
                        times.push(ms);
                    }
                }
                times.sort_by(f64::total_cmp);
                let median = times[times.len() / 2];
                let bytes =
                    trainer.gpu_buffer_bytes().map_or("–".into(), |b| format!("{:.0}", b as f64 / (1 << 20) as f64));
                println!(
                    "| {kinds} | {name} | {res} | {median:.1} | {:.1} | {:.1} | {bytes} | {first:.5} |",
                    times[0],
                    n as f64 / median * 1e3
                );
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"device": name, "resolution": res, "batch": n, "kinds": kinds,
                        "median_ms": median, "fastest_ms": times[0], "first_loss": first})
                    );
                }
            }
            if args.iter().any(|a| a == "--profile") {
                if let Err(e) = profile(&backbone, kinds, n, res) {
                    println!("profile: {e}");
                }
            }
        }
    }
}

/// Per-kernel wall times of one GPU step (`--profile`).
fn profile(backbone: &Backbone, kinds: &str, n: usize, res: usize) -> edgepatch::Result<()> {
    use edgepatch::backend::gpu::{train::GpuSettings, Gpu, GpuTrainer};
    use edgepatch::patch;
    let mut graph = backbone.graph().clone();
    let kinds: edgepatch::PatchKinds = kinds.parse()?;
    if kinds.new_head() {
        patch::new_head(&mut graph, 10, 0)?;
    }
    let slots = patch::slots(&graph, kinds)?;
    patch::make_trainable(&mut graph, &slots);
    let settings = GpuSettings {
        optimizer: edgepatch::train::OptimizerKind::Sgd,
        weight_decay: 0.0,
        label_smoothing: 0.0,
        clip_norm: Some(5.0),
        resolution: res,
        batch: n,
        micro_batch: None,
        memory_budget: None,
    };
    let mut t = GpuTrainer::new(Gpu::shared()?, &graph, &slots, settings)?;
    let (x, y) = batch(n, res, 0);
    t.step(&x, &y, 0.001)?;
    let rows = t.profile(&x, &y, 0.001)?;
    let total: f64 = rows.iter().map(|r| r.2).sum();
    println!("\n# GPU kernels, one step at {res} px, each call submitted alone ({total:.1} ms in all)\n");
    println!("| kernel | calls | ms |\n| --- | --- | --- |");
    for (k, c, ms) in rows {
        println!("| {k} | {c} | {ms:.2} |");
    }
    Ok(())
}

fn env_logger_init() {
    if std::env::var_os("RUST_LOG").is_some() {
        env_logger::init();
    }
}
