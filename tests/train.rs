//! Training end to end on small tasks: the loss goes down for every patch kind and optimizer,
//! runs are reproducible from the seed, the optimizers and schedule follow their definitions,
//! and bad datasets are refused with clear errors.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use edgepatch::data::{self, Dataset};
use edgepatch::patch::Role;
use edgepatch::train::optim::{clip_global_norm, LrSchedule};
use edgepatch::train::{self, OptimizerKind, TrainConfig, Trainer};
use edgepatch::{Backbone, Error, Tensor};
use edgepatch_tests::onnx_builder::{tiny_net, TinyNet};
use edgepatch_tests::random_values;

fn backbone() -> Backbone {
    Backbone::from_onnx_bytes(&tiny_net(TinyNet { quantized: true, ..TinyNet::default() }, 7)).unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edgepatch-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_loss_goes_down_for_every_kind_and_optimizer() {
    let b = backbone();
    let plane = 32 * 32;
    let noise = random_values(6 * 3 * plane, 3, 1.0);
    // Each image gets its own colour so that even pooled features tell them apart.
    let data = noise
        .iter()
        .enumerate()
        .map(|(i, n)| n + [-1.5f32, 0.0, 1.5][(i / plane) % 3] * ((i / (3 * plane)) as f32 - 2.5) / 2.5)
        .collect();
    let x = Tensor::from_vec([6, 3, 32, 32], data).unwrap();
    let labels = [0, 0, 1, 1, 2, 2];
    let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    for (kinds, opt, lr) in [
        ("logits", OptimizerKind::Sgd, 4.0),
        ("logits", OptimizerKind::Adam, 0.2),
        ("sb+logits", OptimizerKind::Sgd, 0.5),
        ("sb+logits", OptimizerKind::Adam, 0.05),
        ("bias+logits", OptimizerKind::Adam, 0.05),
        ("dw+logits", OptimizerKind::RmsProp, 0.01),
        ("dw+logits", OptimizerKind::Sgd, 0.5),
        ("sb+dw+logits", OptimizerKind::Adam, 0.01),
        ("full", OptimizerKind::Sgd, 0.2),
        ("full", OptimizerKind::Adam, 0.01),
    ] {
        let mut config = TrainConfig::new(kinds.parse().unwrap());
        config.optimizer = opt;
        config.resolution = 32;
        let mut t = Trainer::new(&b, config, names.clone()).unwrap();
        let input = if t.takes_features() { t.features(x.clone()).unwrap() } else { x.clone() };
        let first = t.step(input.clone(), &labels, lr).unwrap().loss;
        let mut last = first;
        for _ in 0..40 {
            last = t.step(input.clone(), &labels, lr).unwrap().loss;
        }
        assert!(last < 0.5 * first, "{kinds} with {opt}: loss {first} → {last}");
    }
}

#[test]
fn optimizers_and_schedule_follow_their_definitions() {
    let g = [0.5f32, -1.0];
    let mut sgd = OptimizerKind::Sgd.build(&[2]);
    let mut p = [1.0f32, 2.0];
    sgd.update(0, &mut p, &g, 0.1, 0.0);
    sgd.update(0, &mut p, &g, 0.1, 0.0);
    // v1 = g, v2 = 0.9·g + g = 1.9·g: p = p0 − 0.1·(1 + 1.9)·g.
    assert!((p[0] - (1.0 - 0.29 * 0.5)).abs() < 1e-6 && (p[1] - (2.0 + 0.29)).abs() < 1e-6, "{p:?}");
    let mut adam = OptimizerKind::Adam.build(&[2]);
    let mut p = [1.0f32, 2.0];
    adam.update(0, &mut p, &g, 0.1, 0.0);
    // The first bias-corrected Adam step moves each value by lr·sign(g).
    assert!((p[0] - 0.9).abs() < 1e-5 && (p[1] - 2.1).abs() < 1e-5, "{p:?}");
    let mut rms = OptimizerKind::RmsProp.build(&[2]);
    let mut p = [1.0f32, 2.0];
    rms.update(0, &mut p, &g, 0.1, 0.0);
    // s = 0.01·g², step = lr·g/√s = lr·10·sign(g).
    assert!((p[0] - 0.0).abs() < 1e-4 && (p[1] - 3.0).abs() < 1e-4, "{p:?}");
    let mut wd = OptimizerKind::Sgd.build(&[1]);
    let mut p = [2.0f32];
    wd.update(0, &mut p, &[0.0], 0.1, 0.5);
    assert!((p[0] - 1.9).abs() < 1e-6);

    let s = LrSchedule { base: 1.0, warmup: 4, total: 104 };
    assert_eq!(s.at(0), 0.25);
    assert_eq!(s.at(3), 1.0);
    assert!((s.at(54) - 0.5).abs() < 1e-6);
    assert!(s.at(103) < 1e-3 && s.at(500) == 0.0);

    let mut grads = vec![vec![3.0f32], vec![4.0]];
    assert_eq!(clip_global_norm(&mut grads, 1.0), 5.0);
    assert!((grads[0][0] - 0.6).abs() < 1e-6 && (grads[1][0] - 0.8).abs() < 1e-6);
}

/// Writes an image folder dataset: `classes` subfolders of `per` PNGs, each class a different
/// colour with noise.
fn write_folder(dir: &Path, classes: usize, per: usize) {
    for c in 0..classes {
        let d = dir.join(format!("class{c}"));
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..per {
            let noise = random_values(40 * 30 * 3, (c * 100 + i) as u64, 40.0);
            let base = [[200.0, 40.0, 40.0], [40.0, 200.0, 40.0], [40.0, 40.0, 200.0]][c % 3];
            let px: Vec<u8> =
                noise.iter().enumerate().map(|(k, n)| (base[k % 3] + n).clamp(0.0, 255.0) as u8).collect();
            image::RgbImage::from_raw(40, 30, px).unwrap().save(d.join(format!("{i}.png"))).unwrap();
        }
    }
}

#[test]
fn fit_on_an_image_folder_is_reproducible_and_learns() {
    let dir = temp_dir("folder");
    write_folder(&dir, 3, 8);
    let ds = data::open(&format!("folder:{}", dir.display())).unwrap();
    assert_eq!(ds.classes(), ["class0", "class1", "class2"]);
    let b = backbone();
    let idx: Vec<usize> = (0..ds.len()).collect();
    let run = |kinds: &str, augment: bool| {
        let mut config = TrainConfig::new(kinds.parse().unwrap());
        config.resolution = 32;
        config.batch = 8;
        config.epochs = 20;
        config.lr = Some(if kinds == "logits" { 0.5 } else { 0.05 });
        config.augment = augment;
        config.seed = 11;
        train::fit(&b, ds.clone(), &idx, config, &mut |_| {}).unwrap()
    };
    for (kinds, augment) in [("logits", false), ("logits", true), ("sb+logits", true)] {
        let (p1, r1) = run(kinds, augment);
        let (p2, _) = run(kinds, augment);
        assert_eq!(p1, p2, "{kinds}: the same seed must give the same patch");
        let graph = p1.apply(b.graph()).unwrap();
        let e = train::evaluate(&graph, ds.clone(), &idx, 32).unwrap();
        assert!(e.accuracy > 0.9, "{kinds} augment {augment}: training-set accuracy {} ({r1:?})", e.accuracy);
        assert_eq!(e.confusion.iter().flatten().sum::<usize>(), ds.len());
    }
    std::fs::remove_dir_all(&dir).ok();
}

fn idx_file(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn dataset_error(spec: &str) -> String {
    match data::open(spec) {
        Err(e @ Error::Dataset { .. }) => e.to_string(),
        Err(e) => panic!("{spec}: wrong error kind: {e}"),
        Ok(_) => panic!("{spec}: accepted"),
    }
}

#[test]
fn bad_datasets_are_refused_with_clear_errors() {
    let dir = temp_dir("baddata");
    let write = |name: &str, images: Vec<u8>, labels: Vec<u8>| {
        std::fs::write(dir.join(format!("{name}-images-idx3-ubyte")), images).unwrap();
        std::fs::write(dir.join(format!("{name}-labels-idx1-ubyte")), labels).unwrap();
        format!("idx:{}/{name}", dir.display())
    };
    let ok = write("ok", idx_file(&[3, 2, 2], &[0; 12]), idx_file(&[3], &[0, 1, 1]));
    assert_eq!(data::open(&ok).unwrap().len(), 3);
    let counts = write("counts", idx_file(&[3, 2, 2], &[0; 12]), idx_file(&[4], &[0, 1, 1, 0]));
    assert!(dataset_error(&counts).contains("3 images but 4 labels"));
    let short = write("short", idx_file(&[3, 2, 2], &[0; 11]), idx_file(&[3], &[0, 1, 1]));
    assert!(dataset_error(&short).contains("promises 12 bytes"));
    let missing = write("missing", idx_file(&[3, 2, 2], &[0; 12]), idx_file(&[3], &[0, 2, 2]));
    assert!(dataset_error(&missing).contains("class 1"));
    let magic = write("magic", vec![7; 28], idx_file(&[3], &[0, 1, 1]));
    assert!(dataset_error(&magic).contains("not an IDX file"));
    assert!(dataset_error(&format!("idx:{}/absent", dir.display())).contains("cannot open"));
    let gz = dir.join("gz-images-idx3-ubyte.gz");
    std::fs::write(&gz, [0x1f, 0x8b, 8, 0, 1, 2, 3]).unwrap();
    std::fs::write(dir.join("gz-labels-idx1-ubyte"), idx_file(&[1], &[0])).unwrap();
    assert!(dataset_error(&format!("idx:{}/gz", dir.display())).contains("gzip"));
    assert!(dataset_error("csv:whatever").contains("expected"));

    let folder = dir.join("folder");
    write_folder(&folder, 2, 2);
    std::fs::create_dir_all(folder.join("empty")).unwrap();
    assert!(dataset_error(&format!("folder:{}", folder.display())).contains("'empty' has no JPEG or PNG"));
    std::fs::remove_dir_all(folder.join("empty")).unwrap();
    std::fs::write(folder.join("class1/broken.png"), b"not a png").unwrap();
    let ds: Arc<dyn Dataset> = data::open(&format!("folder:{}", folder.display())).unwrap();
    let mut config = TrainConfig::new("sb+logits".parse().unwrap());
    config.resolution = 32;
    let idx: Vec<usize> = (0..ds.len()).collect();
    match train::fit(&backbone(), ds, &idx, config, &mut |_| {}) {
        Err(e @ Error::Image { .. }) => assert!(e.to_string().contains("broken.png"), "{e}"),
        other => panic!("expected an image error, got {other:?}"),
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_configurations_are_refused() {
    let b = backbone();
    let names = vec!["a".to_string(), "b".to_string()];
    let mut c = TrainConfig::new("sb+logits".parse().unwrap());
    c.resolution = 48;
    assert!(matches!(Trainer::new(&b, c, names.clone()), Err(Error::Train(_))));
    let c = TrainConfig::new("sb".parse().unwrap());
    let e = Trainer::new(&b, c, names.clone()).err().expect("a 2-class task needs a new head").to_string();
    assert!(e.contains("add `logits`"), "{e}");
    let mut c = TrainConfig::new("logits".parse().unwrap());
    c.lr = Some(-1.0);
    assert!(Trainer::new(&b, c, names.clone()).is_err());
    let mut c = TrainConfig::new("sb+logits".parse().unwrap());
    c.resolution = 32;
    let mut t = Trainer::new(&b, c, names).unwrap();
    let x = Tensor::from_vec([1, 3, 32, 32], vec![0.0; 3 * 32 * 32]).unwrap();
    assert!(t.step(x.clone(), &[5], 0.1).is_err(), "label out of range");
    assert!(t.step(x, &[0, 1], 0.1).is_err(), "label count");
    let blowup = Tensor::from_vec([1, 3, 32, 32], vec![f32::NAN; 3 * 32 * 32]).unwrap();
    assert!(matches!(t.step(blowup, &[0], 0.1), Err(Error::Train(_))));
}

/// An in-memory dataset of `classes` colours with noise, `per` images each.
fn colours(spec: &str, classes: usize, per: usize, seed: u64) -> Arc<dyn Dataset> {
    let mut images = Vec::new();
    for c in 0..classes {
        for i in 0..per {
            let noise = random_values(36 * 36 * 3, seed * 1000 + (c * 100 + i) as u64, 50.0);
            let base = [[200.0, 40.0, 40.0], [40.0, 200.0, 40.0], [40.0, 40.0, 200.0], [200.0, 200.0, 40.0]][c % 4];
            let data = noise.iter().enumerate().map(|(k, n)| (base[k % 3] + n).clamp(0.0, 255.0) as u8).collect();
            images.push((edgepatch::data::image::Rgb8 { width: 36, height: 36, data }, c));
        }
    }
    let names = (0..classes).map(|c| format!("{spec} {c}")).collect();
    Arc::new(data::dataset::Memory::new(spec, images, names).unwrap())
}

#[test]
fn multi_task_training_equals_training_each_task_alone_and_groups_share_a_patch() {
    let b = backbone();
    let config = |kinds: &str, resolution: u32, seed: u64, epochs: usize| {
        let mut c = TrainConfig::new(kinds.parse().unwrap());
        (c.resolution, c.seed, c.epochs, c.batch, c.lr) = (resolution, seed, epochs, 5, Some(0.05));
        c
    };
    let (a, d, e) = (colours("a", 3, 6, 1), colours("d", 4, 5, 2), colours("e", 3, 7, 3));
    let all = |ds: &Arc<dyn Dataset>| (0..ds.len()).collect::<Vec<_>>();
    let tasks = vec![
        train::TaskSpec {
            name: "a".into(),
            train: a.clone(),
            indices: all(&a),
            validation: Vec::new(),
            config: config("sb+logits", 32, 1, 3),
            group: None,
        },
        train::TaskSpec {
            name: "d".into(),
            train: d.clone(),
            indices: all(&d),
            validation: Vec::new(),
            config: config("logits", 64, 2, 2),
            group: None,
        },
        train::TaskSpec {
            name: "e".into(),
            train: e.clone(),
            indices: all(&e),
            validation: Vec::new(),
            config: config("dw+logits", 32, 3, 2),
            group: None,
        },
    ];
    let mut order = Vec::new();
    let multi = train::fit_multi(&b, tasks, &mut |k, _| order.push(k)).unwrap();
    assert_eq!(order.len(), 3 * 4 + 2 * 4 + 2 * 5, "every step of every task, once");
    assert!(order[..6].contains(&0) && order[..6].contains(&1) && order[..6].contains(&2), "interleaved: {order:?}");
    for (r, (ds, c)) in multi.iter().zip([
        (a.clone(), config("sb+logits", 32, 1, 3)),
        (d.clone(), config("logits", 64, 2, 2)),
        (e.clone(), config("dw+logits", 32, 3, 2)),
    ]) {
        let (alone, report) = train::fit(&b, ds.clone(), &all(&ds), c, &mut |_| {}).unwrap();
        assert_eq!(r.patch, alone, "task {}: the multi-task patch differs from the one trained alone", r.name);
        assert_eq!((r.report.steps, r.report.final_loss), (report.steps, report.final_loss), "task {}", r.name);
    }

    // One patch shared by two resolutions of one task (the multi-resolution experiment).
    let shared = |name: &str, res: u32| train::TaskSpec {
        name: name.into(),
        train: a.clone(),
        indices: all(&a),
        validation: Vec::new(),
        config: config("sb+logits", res, 1, 2),
        group: Some("a-any".into()),
    };
    let r = train::fit_multi(&b, vec![shared("a32", 32), shared("a64", 64)], &mut |_, _| {}).unwrap();
    assert_eq!((r[0].patch.resolution, r[1].patch.resolution), (32, 64));
    assert_eq!(r[0].patch.tensors, r[1].patch.tensors, "one patch for the group");
    assert_eq!(r[0].report.steps + r[1].report.steps, 2 * 2 * 4);
    let alone = train::fit(&b, a.clone(), &all(&a), config("sb+logits", 32, 1, 2), &mut |_| {}).unwrap().0;
    assert_ne!(r[0].patch.tensors, alone.tensors, "the shared patch also saw 64 px batches");
    for p in [&r[0].patch, &r[1].patch] {
        let acc = train::evaluate(&p.apply(b.graph()).unwrap(), a.clone(), &all(&a), p.resolution).unwrap().accuracy;
        assert!(acc > 0.6, "shared patch at {} px: accuracy {acc}", p.resolution);
    }

    let bad = |tasks: Vec<train::TaskSpec>| match train::fit_multi(&b, tasks, &mut |_, _| {}) {
        Err(err) => err.to_string(),
        Ok(_) => panic!("accepted"),
    };
    assert!(bad(vec![shared("x", 32), shared("x", 64)]).contains("given twice"));
    let mut other = shared("y", 32);
    other.train = d.clone();
    other.indices = all(&d);
    assert!(bad(vec![shared("x", 32), other]).contains("classes differ"));
    assert!(bad(vec![]).contains("no tasks"));
}

/// Adding classes later: a patch trained on three classes, continued with a fourth, starts with
/// the three classes' classifier rows (and the rest of the patch) and a new row for the fourth.
#[test]
fn new_classes_keep_the_known_classes_rows() {
    let b = backbone();
    let three = colours("c", 3, 4, 1);
    let mut config = TrainConfig::new("sb+logits".parse().unwrap());
    (config.resolution, config.epochs, config.batch) = (32, 3, 6);
    let idx: Vec<usize> = (0..three.len()).collect();
    let (first, _) = train::fit(&b, three.clone(), &idx, config.clone(), &mut |_| {}).unwrap();
    // The fourth class comes first in the new task's order: rows move with their names.
    let mut labels: Vec<String> = vec!["c 3".into()];
    labels.extend(three.classes().iter().cloned());
    config.init = Some(first.clone());
    let mut t = Trainer::new(&b, config, labels.clone()).unwrap();
    let start = t.patch().unwrap();
    // sb+logits trains one kernel: the classifier's.
    let classifier = |p: &edgepatch::Patch| p.tensors.iter().find(|x| x.role == Role::Weights).unwrap().clone();
    let (w0, w1) = (classifier(&first).values, classifier(&start).values);
    let f = w0.len() / 3;
    for (old, new) in [(0, 1), (1, 2), (2, 3)] {
        assert_eq!(w0[old * f..(old + 1) * f], w1[new * f..(new + 1) * f], "class {old}'s row");
    }
    assert_ne!(w1[..f], w0[..f], "the new class has a row of its own");
    // The rest of the patch is the first patch's.
    let head = classifier(&first).node;
    for t0 in first.tensors.iter().filter(|x| x.node != head) {
        let t1 = start.tensors.iter().find(|x| x.node == t0.node && x.role == t0.role).unwrap();
        assert_eq!(t0.values, t1.values);
    }
}
