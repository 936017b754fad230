//! Training within a memory budget: micro-batches give the whole batch's update, the planner
//! picks the largest micro-batch that fits and refuses a budget too small for one sample, and its
//! predicted peak matches the peak resident memory the binary measures.

mod cli_support;

use cli_support::{json, run};
use edgepatch::train::{OptimizerKind, TrainConfig, Trainer};
use edgepatch::{Backbone, Tensor};
use edgepatch_tests::onnx_builder::{tiny_net, TinyNet};
use edgepatch_tests::{largest_relative_difference, random_values, repo_root};

fn tiny() -> Backbone {
    Backbone::from_onnx_bytes(&tiny_net(TinyNet { quantized: true, ..TinyNet::default() }, 7)).unwrap()
}

fn trainer(b: &Backbone, kinds: &str, opt: OptimizerKind, micro: Option<usize>, budget: Option<u64>) -> Trainer {
    let mut config = TrainConfig::new(kinds.parse().unwrap());
    config.optimizer = opt;
    config.resolution = 32;
    config.batch = 7;
    config.micro_batch = micro;
    config.memory_budget = budget;
    config.device = edgepatch::backend::Device::Cpu;
    Trainer::new(b, config, ["a", "b", "c"].map(String::from).to_vec()).unwrap()
}

#[test]
fn micro_batches_give_the_whole_batch_update() {
    let b = tiny();
    let x = Tensor::from_vec([7, 3, 32, 32], random_values(7 * 3 * 32 * 32, 5, 1.0)).unwrap();
    let labels = [0, 1, 2, 0, 1, 2, 0];
    for kinds in ["sb+logits", "bias+logits", "dw+logits", "full"] {
        for opt in [OptimizerKind::Sgd, OptimizerKind::Adam] {
            let lr = if opt == OptimizerKind::Sgd { 0.05 } else { 0.005 };
            let mut whole = trainer(&b, kinds, opt, None, None);
            // 7 samples as passes of 3, 3 and 1.
            let mut split = trainer(&b, kinds, opt, Some(3), None);
            assert_eq!(split.memory_plan(0).unwrap().unwrap().passes, 3);
            for step in 0..3 {
                let a = whole.step(x.clone(), &labels, lr).unwrap();
                let s = split.step(x.clone(), &labels, lr).unwrap();
                assert_eq!(a.correct, s.correct, "{kinds} {opt} step {step}");
                assert!(
                    (a.loss - s.loss).abs() <= 1e-5 * a.loss.abs().max(1.0),
                    "{kinds} {opt}: {} vs {}",
                    a.loss,
                    s.loss
                );
            }
            let worst = largest_relative_difference(&whole.patch().unwrap(), &split.patch().unwrap());
            assert!(worst <= 1e-5, "{kinds} {opt}: largest relative difference {worst}");
        }
    }
}

/// Recomputing each block before its backward gives the pass without recomputation bit for bit,
/// on the shipped model (whose inverted residual blocks are the segments), for every kind.
#[test]
fn recomputation_gives_the_same_patch_bit_for_bit() {
    let b = Backbone::embedded().unwrap();
    let slots = edgepatch::patch::slots(b.graph(), "sb".parse().unwrap()).unwrap();
    let plan = edgepatch::schedule::Schedule::new(b.graph(), &slots);
    let segments = edgepatch::train::recompute::Segments::new(b.graph(), &plan);
    // The stem (with the first block, which does not widen), the 16 widening blocks and the
    // last 1×1 convolution with the head.
    assert_eq!(segments.len(), 18);
    let x = Tensor::from_vec([3, 3, 64, 64], random_values(3 * 3 * 64 * 64, 9, 1.0)).unwrap();
    let labels = [0, 2, 1];
    for kinds in ["sb+logits", "bias+logits", "dw+logits", "sb+dw+logits", "full"] {
        let patches: Vec<_> = [false, true]
            .map(|recompute| {
                let mut config = TrainConfig::new(kinds.parse().unwrap());
                config.resolution = 64;
                config.batch = 3;
                config.recompute = Some(recompute);
                config.device = edgepatch::backend::Device::Cpu;
                let mut t = Trainer::new(&b, config, ["a", "b", "c"].map(String::from).to_vec()).unwrap();
                assert_eq!(t.memory_plan(0).unwrap().unwrap().recompute, recompute);
                for _ in 0..2 {
                    t.step(x.clone(), &labels, 0.01).unwrap();
                }
                t.patch().unwrap()
            })
            .into_iter()
            .collect();
        for (a, r) in patches[0].tensors.iter().zip(&patches[1].tensors) {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a.values), bits(&r.values), "{kinds}: node {} {:?}", a.node, a.role);
        }
    }
}

/// Under a budget too small for one sample per pass without it, the planner recomputes; a budget
/// that fits one without it does not recompute.
#[test]
fn the_budget_recomputes_only_when_nothing_fits_without() {
    let b = Backbone::embedded().unwrap();
    let plan = |budget: Option<u64>, recompute: Option<bool>, micro: Option<usize>| {
        let mut config = TrainConfig::new("sb+logits".parse().unwrap());
        config.resolution = 128;
        config.batch = 8;
        config.memory_budget = budget;
        config.recompute = recompute;
        config.micro_batch = micro;
        config.device = edgepatch::backend::Device::Cpu;
        let t = Trainer::new(&b, config, ["a", "b"].map(String::from).to_vec());
        t.and_then(|mut t| t.memory_plan(0)).map(|p| p.unwrap())
    };
    // Plans by hand under a budget that does not bind (the loader depth of a budget's plan).
    let by_hand = |recompute, micro| plan(Some(1 << 40), Some(recompute), Some(micro)).unwrap();
    let (plain, recomputed) = (by_hand(false, 1), by_hand(true, 1));
    assert!(
        recomputed.activation_bytes * 4 < plain.activation_bytes * 3,
        "recomputation holds at most three quarters: {} against {} bytes per sample",
        recomputed.activation_bytes,
        plain.activation_bytes
    );
    let needs = edgepatch::train::memory::needs;
    // Room for one sample without recomputation: no recomputation.
    let p = plan(Some(needs(&plain)), None, None).unwrap();
    assert!(!p.recompute && p.micro_batch == 1, "{p:?}");
    // Less: the planner recomputes.
    let p = plan(Some(needs(&plain) - 1), None, None).unwrap();
    assert!(p.recompute, "{p:?}");
    // Less than one recomputing sample needs is refused, naming what that needs.
    let err = plan(Some(needs(&recomputed) - 1), None, None).expect_err("refused");
    assert!(err.to_string().contains("training needs at least"), "{err}");
}

#[test]
fn the_budget_picks_the_largest_micro_batch_that_fits_and_refuses_less_than_one_sample() {
    let b = tiny();
    let free = trainer(&b, "sb+logits", OptimizerKind::Sgd, None, None).memory_plan(0).unwrap().unwrap();
    assert_eq!((free.micro_batch, free.passes, free.budget_bytes), (7, 1, None));
    // Plans by hand under a budget that does not bind: the same loader depth as a budget's.
    let by_hand = |m: usize| {
        trainer(&b, "sb+logits", OptimizerKind::Sgd, Some(m), Some(1 << 40)).memory_plan(0).unwrap().unwrap()
    };
    let one = by_hand(1);
    assert_eq!(one.micro_batch, 1);
    assert!(one.activation_bytes * 7 == free.activation_bytes, "activations scale with the samples");
    // A budget between the plans of 3 and 4 samples per pass gets 3.
    let three = by_hand(3);
    let budget = edgepatch::train::memory::needs(&three) + 1;
    let planned = trainer(&b, "sb+logits", OptimizerKind::Sgd, None, Some(budget)).memory_plan(0).unwrap().unwrap();
    assert_eq!((planned.micro_batch, planned.passes, planned.budget_bytes), (3, 3, Some(budget)));
    assert!(edgepatch::train::memory::needs(&planned) <= budget);
    // Less than one sample needs is refused when the trainer is made, naming what it needs.
    let mut config = TrainConfig::new("sb+logits".parse().unwrap());
    config.resolution = 32;
    config.device = edgepatch::backend::Device::Cpu;
    config.memory_budget = Some(edgepatch::train::memory::needs(&one) - 1);
    let err = Trainer::new(&b, config, vec!["a".into(), "b".into()]).err().expect("refused").to_string();
    assert!(err.contains("training needs at least") && err.contains("memory budget"), "{err}");
}

/// What `train --json` measured: the plan's predicted bytes, the peak increase while training,
/// the peak while training and the peak of the whole process.
struct Measured {
    predicted: u64,
    increase: u64,
    training_peak: u64,
    peak: u64,
}

/// `train --json` on the shipped model with `extra` arguments.
fn measured(
    kinds: &str,
    resolution: u32,
    batch: usize,
    micro: Option<usize>,
    budget: Option<&str>,
    extra: &[&str],
) -> Measured {
    let data = format!("idx:{}", repo_root().join("models/datasets/fashion-mnist-mini/train").display());
    let out = std::env::temp_dir().join(format!("edgepatch-memory-{}.patch", std::process::id()));
    // Six steps: the loader's waiting batches are all there from the third.
    let (r, b, limit) = (resolution.to_string(), batch.to_string(), (6 * batch).to_string());
    let mut args = vec!["train", "--train", &data, "--patch", kinds, "--out", out.to_str().unwrap()];
    args.extend(["--resolution", &r, "--batch", &b, "--limit", &limit, "--epochs", "1", "--device", "cpu", "--json"]);
    let m = micro.map(|m| m.to_string());
    if let Some(m) = &m {
        args.extend(["--micro-batch", m]);
    }
    if let Some(budget) = budget {
        args.extend(["--memory-budget", budget]);
    }
    args.extend(extra);
    let v = json(&run(&args));
    std::fs::remove_file(&out).ok();
    let (before, peak) = (v["rss_before_training_bytes"].as_u64(), v["training_peak_rss_bytes"].as_u64());
    let predicted = v["memory_plan"]["predicted_bytes"].as_u64().expect("a plan");
    Measured {
        predicted,
        increase: peak.expect("a peak") - before.expect("a baseline"),
        training_peak: peak.unwrap(),
        peak: v["peak_rss_bytes"].as_u64().expect("the whole peak"),
    }
}

#[test]
fn the_predicted_peak_is_within_15_percent_of_the_measured_one() {
    if !std::path::Path::new("/proc/self/clear_refs").exists() {
        eprintln!("skipped: no /proc/self/clear_refs to measure the peak of training alone");
        return;
    }
    // Plans of 80 MB and more (below that, memory the process freed before training and reuses
    // moves the measured increase by up to 10 MB).
    for (kinds, resolution, batch, micro) in [
        ("sb+logits", 224, 16, 2),
        ("bias+logits", 224, 16, 8),
        ("dw+logits", 224, 16, 4),
        ("sb+dw+logits", 192, 8, 3),
        ("full", 224, 16, 4),
        ("full", 160, 32, 4),
        ("sb+logits", 128, 32, 16),
        ("bias+logits", 160, 32, 16),
    ] {
        let Measured { predicted, increase, .. } = measured(kinds, resolution, batch, Some(micro), None, &[]);
        let ratio = predicted as f64 / increase as f64;
        assert!(
            (0.85..=1.15).contains(&ratio),
            "{kinds} {resolution} px batch {batch} micro {micro}: predicted {predicted}, measured {increase}"
        );
    }
    // Feature passes (`logits`): a plan under 80 MB (passes of 8 images, 47 MB since the fused
    // inverted residual blocks; 112 MB before) and one of 16 images (102 MB). Their measured
    // increase moves by up to 10 MB beyond the 15% between runs (96–122 MB at 16 images over
    // eight runs on 2026-11-30, two cores, half of them beside two busy processes). The plan
    // is extrapolated from probes at 2 and 3 images whose bytes depend on which worker frees a
    // buffer: on a loaded machine a probe came out up to 2 MB over, and the plan up to 30% high
    // (132 MB in one CI run against 106 MB measured). That errs on the safe side (smaller
    // feature chunks), so the plan may be up to 35% over here but never more than 15% and
    // 10 MB under.
    for micro in [8, 16] {
        let m = measured("logits", 224, 16, Some(micro), None, &[]);
        let (p, inc) = (m.predicted as f64, m.increase as f64);
        assert!(
            (p / 1.35..=1.15 * p + 10e6).contains(&inc),
            "logits micro {micro}: predicted {}, measured {}",
            m.predicted,
            m.increase
        );
    }
    // Recomputing passes: their plans err on the safe side. Measured 2026-11-29 (predicted /
    // measured): 1.02, 1.15 and 1.16 with the blocked inference engine, 1.09 for `full` before it;
    // the backbone's smaller packed weights change what the allocator reuses before training by
    // about 6 MB, while the plan is the same to the byte.
    for (kinds, resolution, batch, micro) in [("sb+logits", 224, 16, 4), ("full", 224, 16, 2), ("dw+logits", 192, 8, 4)]
    {
        let m = measured(kinds, resolution, batch, Some(micro), None, &["--recompute"]);
        let ratio = m.predicted as f64 / m.increase as f64;
        assert!(
            (0.85..=1.20).contains(&ratio),
            "{kinds} {resolution} px micro {micro}, recomputing: predicted {}, measured {}",
            m.predicted,
            m.increase
        );
    }
    // Whole-process budgets at 224 px, batch 16.
    for (kinds, budget) in [("sb+logits", 150), ("dw+logits", 150), ("bias+logits", 90), ("logits", 80)] {
        let m = measured(kinds, 224, 16, None, Some(&budget.to_string()), &[]);
        assert!(
            m.training_peak <= budget * 1_000_000,
            "{kinds}: peak {} bytes over a {budget} MB budget",
            m.training_peak
        );
    }
    // The whole run within the budget: loading the data, scoring validation images after each
    // epoch and the test images at the end.
    let test = format!("idx:{}", repo_root().join("models/datasets/fashion-mnist-mini/t10k").display());
    let extra = ["--validate", "48", "--test", &test, "--test-limit", "96"];
    let m = measured("sb+logits", 224, 16, None, Some("150"), &extra);
    assert!(m.peak <= 150_000_000, "peak {} bytes of the whole run over a 150 MB budget", m.peak);
}

/// `train-multi` with two task groups under one budget: they plan against it together (each
/// against the budget less what the other holds), and the whole run stays within it.
#[test]
fn train_multi_groups_share_one_budget() {
    let data = format!("idx:{}", repo_root().join("models/datasets/fashion-mnist-mini/train").display());
    let dir = std::env::temp_dir().join(format!("edgepatch-memory-multi-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    let (a, b) = (format!("a={data},patch=sb+logits,limit=32"), format!("b={data},patch=bias+logits,limit=32"));
    let args = [
        "train-multi",
        "--task",
        &a,
        "--task",
        &b,
        "--out-dir",
        dir.to_str().unwrap(),
        "--resolution",
        "224",
        "--batch",
        "16",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--memory-budget",
        "150",
        "--json",
    ];
    let v = json(&run(&args));
    std::fs::remove_dir_all(&dir).ok();
    let peak = v["peak_rss_bytes"].as_u64().expect("the peak");
    assert!(peak <= 150_000_000, "peak {peak} bytes over a 150 MB budget");
    let tasks = v["tasks"].as_array().expect("tasks");
    let budgets: Vec<u64> = tasks.iter().map(|t| t["memory_plan"]["budget_bytes"].as_u64().expect("a plan")).collect();
    assert_eq!(budgets.len(), 2);
    // Each group's share is the budget less what the other holds throughout.
    let held = |t: &serde_json::Value| {
        t["memory_plan"]["state_bytes"].as_u64().unwrap() + t["memory_plan"]["overhead_bytes"].as_u64().unwrap()
    };
    assert_eq!(budgets[0] + held(&tasks[1]), budgets[1] + held(&tasks[0]), "{budgets:?}");
}
