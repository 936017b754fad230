//! Label-free adaptation by re-estimated statistics (`train::adapt`): a known brightness shift of
//! the images is undone exactly, the imported BatchNorm statistics are kept at import, and a
//! backbone without them asks for source images.

use std::sync::Arc;

use edgepatch::data::{self, image::Rgb8, Dataset};
use edgepatch::graph::Op;
use edgepatch::train::adapt::{adapt_stats, Reference};
use edgepatch::train::{TrainConfig, Trainer};
use edgepatch::{Backbone, Tensor};
use edgepatch_tests::onnx_builder::{float, int, ints, tiny_net, OnnxBuilder, TinyNet};
use edgepatch_tests::random_values;

/// 1×1 conv (3→8) → BatchNorm → ReLU6 → depthwise 3×3 → BatchNorm → ReLU6 → pool → 5 classes.
/// The first layer is 1×1, so a brightness shift of the image is a per-channel shift of its
/// BatchNorm's input, border pixels included.
fn net() -> Backbone {
    let mut b = OnnxBuilder::new(13);
    b.f32("zero", &[], vec![0.0]).f32("six", &[], vec![6.0]);
    b.f32("w1", &[8, 3, 1, 1], random_values(24, 1, 0.8));
    b.f32("w2", &[8, 1, 3, 3], random_values(72, 2, 0.5));
    b.f32("fc", &[5, 8], random_values(40, 3, 0.5)).f32("fcb", &[5], random_values(5, 4, 0.1));
    let mut x = "input".to_string();
    for (k, (w, group, kernel)) in [("w1", 1, 1), ("w2", 8, 3)].into_iter().enumerate() {
        let pad = kernel / 2;
        let attrs = vec![ints("kernel_shape", &[kernel, kernel]), ints("pads", &[pad; 4]), int("group", group)];
        b.node("Conv", &[&x, w], &format!("c{k}"), attrs);
        for (s, v) in [("g", random_values(8, 10 + k as u64, 0.5)), ("m", random_values(8, 20 + k as u64, 0.3))] {
            b.f32(&format!("bn{k}.{s}"), &[8], v.iter().map(|x| x + if s == "g" { 1.0 } else { 0.0 }).collect());
        }
        b.f32(&format!("bn{k}.b"), &[8], random_values(8, 30 + k as u64, 0.2));
        b.f32(&format!("bn{k}.v"), &[8], random_values(8, 40 + k as u64, 0.4).iter().map(|v| v + 1.0).collect());
        let ins = [format!("c{k}"), format!("bn{k}.g"), format!("bn{k}.b"), format!("bn{k}.m"), format!("bn{k}.v")];
        let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
        b.node("BatchNormalization", &ins, &format!("bn{k}"), vec![float("epsilon", 1e-5)]);
        b.node("Clip", &[&format!("bn{k}"), "zero", "six"], &format!("r{k}"), vec![]);
        x = format!("r{k}");
    }
    b.node("GlobalAveragePool", &[&x], "pool", vec![]);
    b.node("Flatten", &["pool"], "flat", vec![]);
    b.node("Gemm", &["flat", "fc", "fcb"], "logits", vec![int("transB", 1)]);
    Backbone::from_onnx_bytes(&b.build("input", "logits")).unwrap()
}

/// 40 images of 32 × 32 with values in 0..=200, plus `brighter` (no clipping: exact in 8 bits).
fn images(brighter: u8) -> Arc<dyn Dataset> {
    let images = (0..40)
        .map(|i| {
            let v = random_values(32 * 32 * 3, 100 + i, 1.0);
            let data = v.iter().map(|x| ((x + 1.0) * 100.0).round() as u8 + brighter).collect();
            (Rgb8 { width: 32, height: 32, data }, i as usize % 5)
        })
        .collect();
    Arc::new(data::dataset::Memory::new("shift", images, (0..5).map(|c| c.to_string()).collect()).unwrap())
}

fn logits(b: &Backbone, p: &edgepatch::Patch, ds: &Arc<dyn Dataset>) -> Vec<f32> {
    let t = data::Transform { resolution: 32, augment: false };
    let batch = data::loader::make_batch(ds.as_ref(), &(0..40).collect::<Vec<_>>(), &t, 0).unwrap();
    let graph = b.patched(p).unwrap();
    edgepatch::backend::cpu::CpuEngine::new(&graph)
        .forward(&graph, batch.input)
        .map(|t: Tensor| t.data.clone())
        .unwrap()
}

#[test]
fn a_brightness_shift_is_undone_exactly_from_the_source_statistics() {
    let b = net();
    let mut config = TrainConfig::new("sb+logits".parse().unwrap());
    (config.resolution, config.device) = (32, edgepatch::backend::Device::Cpu);
    let patch = Trainer::new(&b, config, (0..5).map(|c| c.to_string()).collect()).unwrap().patch().unwrap();
    let (source, shifted) = (images(0), images(40));
    let all: Vec<usize> = (0..40).collect();
    let before = logits(&b, &patch, &source);
    let unadapted = logits(&b, &patch, &shifted);
    let worst = |a: &[f32], c: &[f32]| a.iter().zip(c).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(worst(&before, &unadapted) > 0.05, "the shift changes the logits");
    let (adapted, report) =
        adapt_stats(&b, &patch, shifted.clone(), &all, &Reference::Source(source.clone(), all.clone())).unwrap();
    assert_eq!(report.affines, 2);
    assert_eq!(adapted.kinds.to_string(), "sb+logits");
    let after = logits(&b, &adapted, &shifted);
    assert!(worst(&before, &after) < 1e-4, "adapted logits on the shifted images differ by {}", worst(&before, &after));
    // Adapting to the source images themselves changes nothing.
    let (same, _) = adapt_stats(&b, &patch, source.clone(), &all, &Reference::Source(source, all.clone())).unwrap();
    for (t, u) in same.tensors.iter().zip(&patch.tensors) {
        let d = t.values.iter().zip(&u.values).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(d < 1e-5, "node {}: {d}", t.node);
    }
}

#[test]
fn imported_batchnorm_statistics_are_kept_and_a_folded_backbone_asks_for_source_images() {
    let b = net();
    let affines: Vec<_> =
        b.graph().nodes.iter().filter_map(|n| if let Op::Affine(a) = &n.op { Some(a) } else { None }).collect();
    assert_eq!(affines.len(), 2);
    // The first BatchNorm's initializers (see `net`); its conv has no bias, so the statistics of
    // the affine's input are the BatchNorm's own, and scale·σ = γ, bias + mean·scale = β.
    let gamma: Vec<f32> = random_values(8, 10, 0.5).iter().map(|g| g + 1.0).collect();
    let (beta, mean) = (random_values(8, 30, 0.2), random_values(8, 20, 0.3));
    let var: Vec<f32> = random_values(8, 40, 0.4).iter().map(|v| v + 1.0).collect();
    let s = affines[0].stats.as_ref().expect("BatchNorm statistics kept");
    assert_eq!((&s.mean, &s.var, &s.eps), (&mean, &var, &vec![1e-5; 8]));
    for c in 0..8 {
        let scale = affines[0].scale[c];
        assert!((scale * (var[c] + 1e-5).sqrt() - gamma[c]).abs() < 1e-5, "γ of channel {c}");
        assert!((affines[0].bias[c] + mean[c] * scale - beta[c]).abs() < 1e-5, "β of channel {c}");
    }
    // With the imported statistics as the reference, both affines are rewritten (to these
    // images' statistics) and a `logits` patch gains S/B.
    let mut config = TrainConfig::new("logits".parse().unwrap());
    (config.resolution, config.device) = (32, edgepatch::backend::Device::Cpu);
    let patch = Trainer::new(&b, config, (0..5).map(|c| c.to_string()).collect()).unwrap().patch().unwrap();
    let all: Vec<usize> = (0..40).collect();
    let (adapted, report) = adapt_stats(&b, &patch, images(0), &all, &Reference::Imported).unwrap();
    assert_eq!((report.affines, adapted.kinds.to_string().as_str()), (2, "sb+logits"));

    let folded = Backbone::from_onnx_bytes(&tiny_net(TinyNet { folded: true, ..TinyNet::default() }, 5)).unwrap();
    let mut config = TrainConfig::new("sb+logits".parse().unwrap());
    (config.resolution, config.device) = (32, edgepatch::backend::Device::Cpu);
    let names: Vec<String> = (0..5).map(|c| c.to_string()).collect();
    let p = Trainer::new(&folded, config, names).unwrap().patch().unwrap();
    let e = adapt_stats(&folded, &p, images(0), &all, &Reference::Imported).unwrap_err().to_string();
    assert!(e.contains("give source images"), "{e}");
    assert!(adapt_stats(&folded, &p, images(40), &all, &Reference::Source(images(0), all.clone())).is_ok());
}

#[test]
fn activations_kept_at_cuts_give_the_statistics_of_whole_passes() {
    // MobileNetV2-shaped, with a residual block: values inside it are not cuts.
    let b = Backbone::from_onnx_bytes(&tiny_net(TinyNet::default(), 11)).unwrap();
    let g = b.graph();
    let all: Vec<usize> = (0..40).collect();
    let mut kept = edgepatch::train::activations::Activations::new(images(0), &all, 32, 1 << 30);
    let mut whole = edgepatch::train::activations::Activations::new(images(0), &all, 32, 0);
    let mut checked = 0;
    for n in &g.nodes {
        if matches!(n.op, Op::Affine(_) | Op::Add) {
            let x = n.inputs[0];
            let (m1, v1) = kept.stats(g, x).unwrap();
            let (m2, v2) = whole.stats(g, x).unwrap();
            for (a, b) in m1.iter().chain(&v1).zip(m2.iter().chain(&v2)) {
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "value {x}: {a} vs {b}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 6, "{checked} values");
}
