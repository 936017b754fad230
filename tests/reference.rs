//! The real model: our engine against tract-onnx on the f32 ONNX, and both shipped and f32
//! models against the reference outputs in `models/mobilenet_v2/reference/expected.json`.

use edgepatch::data::image;
use edgepatch::session::softmax;
use edgepatch::{Backbone, Session, Tensor};
use edgepatch_tests::{cached_model, f32_model, random_values, reference_dir, repo_root, tract_run, Tolerance};

const PARITY: Tolerance = Tolerance { rel: 1e-4, abs: 1e-4 };

#[test]
fn f32_model_matches_tract_at_224_and_96() {
    let path = f32_model();
    let bytes = std::fs::read(&path).unwrap();
    let ours = Backbone::from_onnx_bytes(&bytes).unwrap();
    for (shape, seed) in [([1, 3, 224, 224], 1u64), ([2, 3, 96, 96], 2)] {
        let x = random_values(shape.iter().product(), seed, 2.0);
        let want = tract_run(&bytes, shape, &x).unwrap();
        let got = ours.forward(Tensor::from_vec(shape, x).unwrap()).unwrap();
        let worst = got.data.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!("{shape:?}: max |ours − tract| {worst:.2e} (max |logit| {scale:.2})");
        if let Some((i, g, w)) = PARITY.check(&got.data, &want) {
            panic!("{shape:?}: logit {i} is {g}, tract says {w}");
        }
    }
}

fn check_against_expected(backbone: Backbone, max_prob_diff: f32) {
    check_against(backbone, &reference_dir().join("expected.json"), max_prob_diff)
}

/// `backbone` on the three reference photos against onnxruntime's outputs in `expected`.
fn check_against(backbone: Backbone, expected: &std::path::Path, max_prob_diff: f32) {
    let dir = reference_dir();
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(expected).unwrap()).unwrap();
    let session = Session::new(backbone);
    for name in ["chelsea.png", "coffee.png", "camera.png"] {
        let img = image::load(&dir.join(name)).unwrap();
        let logits = session.logits(&[img]).unwrap();
        let p = softmax(&logits.data);
        let exp_logits: Vec<f32> =
            expected[name]["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let ep = softmax(&exp_logits);
        let top1 = (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
        let want_top1 = expected[name]["top5"][0]["class"].as_u64().unwrap() as usize;
        let worst = p.iter().zip(&ep).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        eprintln!(
            "{name}: top-1 {top1} p={:.4} (expected {want_top1} p={:.4}); max |Δprob| {worst:.4}",
            p[top1], ep[want_top1]
        );
        assert_eq!(top1, want_top1, "{name}: top-1");
        assert!(worst <= max_prob_diff, "{name}: probabilities differ by {worst} > {max_prob_diff}");
    }
}

#[test]
fn shipped_int8_model_matches_reference_outputs() {
    check_against_expected(Backbone::embedded().unwrap(), 0.03);
}

#[test]
fn f32_model_matches_reference_outputs() {
    check_against_expected(Backbone::from_path(&f32_model()).unwrap(), 0.005);
}

/// EfficientNet-Lite0 (`bash models/efficientnet_lite0/build.sh`): 5×5 depthwise kernels, SAME
/// padding at stride 2 and a normalisation of the input itself. Its f32 model against tract and
/// onnxruntime's outputs; its int8 model (quantized by the build script with NumPy) is what
/// `edgepatch::quantize` makes of the f32 one, and agrees with onnxruntime's top-1.
#[test]
fn efficientnet_lite0_matches_tract_and_onnxruntime() {
    let f32_path = cached_model("efficientnet_lite0_f32.onnx", "efficientnet_lite0");
    let bytes = std::fs::read(&f32_path).unwrap();
    let ours = Backbone::from_onnx_bytes(&bytes).unwrap();
    for (shape, seed) in [([1, 3, 224, 224], 3u64), ([2, 3, 97, 96], 4)] {
        let x = random_values(shape.iter().product(), seed, 2.0);
        let want = tract_run(&bytes, shape, &x).unwrap();
        let got = ours.forward(Tensor::from_vec(shape, x).unwrap()).unwrap();
        if let Some((i, g, w)) = PARITY.check(&got.data, &want) {
            panic!("EfficientNet-Lite0 {shape:?}: logit {i} is {g}, tract says {w}");
        }
    }
    let expected = repo_root().join("models/efficientnet_lite0/reference/expected.json");
    let mut quantized = ours.graph().clone();
    assert_eq!(edgepatch::quantize::quantize_graph(&mut quantized).kernels, 50);
    check_against(ours, &expected, 0.005);
    let int8 = Backbone::from_path(&cached_model("efficientnet_lite0_int8.onnx", "efficientnet_lite0")).unwrap();
    assert_eq!(quantized.fingerprint(), int8.fingerprint(), "the build's int8 model is edgepatch's quantization");
    check_against(int8, &expected, 0.05);
}

/// MobileNetV3 (`bash models/mobilenet_v3/build.sh`: PaddleOCR's text-direction classifier from
/// rapidocr-onnxruntime): HardSwish written as `x · Clip(x + 3, 0, 6) / 6`, squeeze-excitation
/// (global pooling inside the network, 1×1 convolutions, HardSigmoid, a per-channel product),
/// depthwise strides of 2×1, a MaxPool, a Shape/Slice/Concat flatten and a final Softmax. Its
/// logits (the Softmax's input) against onnxruntime's within 1e-4, and its probabilities against
/// tract's (which runs the Softmax) on the same inputs.
#[test]
fn mobilenet_v3_matches_onnxruntime_and_tract() {
    let path = cached_model("mobilenet_v3_ppocr_cls.onnx", "mobilenet_v3");
    let bytes = std::fs::read(&path).unwrap();
    let ours = Backbone::from_onnx_bytes(&bytes).unwrap();
    let expected = repo_root().join("models/mobilenet_v3/reference/expected.json");
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(expected).unwrap()).unwrap();
    let floats = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
    };
    for (shape, seed) in [([1, 3, 48, 192], 0), ([2, 3, 64, 64], 1), ([1, 3, 224, 224], 2)] {
        // The build script's inputs: x[i] = 2·sin(0.01·i + seed).
        let x: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|i| (2.0 * (0.01 * i as f64 + seed as f64).sin()) as f32)
            .collect();
        let key = format!("{}x{}x{}x{} seed {seed}", shape[0], shape[1], shape[2], shape[3]);
        let got = ours.forward(Tensor::from_vec(shape, x.clone()).unwrap()).unwrap();
        let want = floats(&expected[&key]["logits"]);
        if let Some((i, g, w)) = PARITY.check(&got.data, &want) {
            panic!("{key}: logit {i} is {g}, onnxruntime says {w}");
        }
        let probs: Vec<f32> = got.data.chunks(2).flat_map(softmax).collect();
        let tract = tract_run(&bytes, shape, &x).unwrap();
        for (what, want) in [("onnxruntime", floats(&expected[&key]["probs"])), ("tract", tract)] {
            if let Some((i, g, w)) = PARITY.check(&probs, &want) {
                panic!("{key}: probability {i} is {g}, {what} says {w}");
            }
        }
        eprintln!("{key}: logits {:?}, onnxruntime {want:?}", got.data);
    }
}

/// The feature extractor of face-api's SSD-MobileNetV1 face detector (`bash
/// models/face_detector/build.sh`: TF.js uint8 weights converted to ONNX, checked there against a
/// NumPy forward of face-api's own layers): its pooled features against onnxruntime's.
#[test]
fn face_detector_backbone_matches_onnxruntime() {
    let path = cached_model("face_detector_mobilenet_v1.onnx", "face_detector");
    let ours = Backbone::from_path(&path).unwrap();
    let features = edgepatch::patch::feature_graph(ours.graph()).unwrap();
    let engine = edgepatch::backend::cpu::CpuEngine::new(&features);
    let expected = repo_root().join("models/face_detector/reference/expected.json");
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(expected).unwrap()).unwrap();
    for (shape, seed) in [([1, 3, 64, 64], 0), ([2, 3, 45, 37], 1)] {
        let x: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|i| (2.0 * (0.01 * i as f64 + seed as f64).sin()) as f32)
            .collect();
        let key = format!("{}x{}x{}x{} seed {seed}", shape[0], shape[1], shape[2], shape[3]);
        let got = engine.forward(&features, Tensor::from_vec(shape, x).unwrap()).unwrap();
        let want: Vec<f32> =
            expected[&key]["features"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        // The reference keeps five decimals.
        let tol = Tolerance { rel: 1e-4, abs: 2e-5 };
        if let Some((i, g, w)) = tol.check(&got.data, &want) {
            panic!("{key}: feature {i} is {g}, onnxruntime says {w}");
        }
    }
}
