//! The `edgepatch` binary end to end: `info`, `predict`, and bad input giving one clear line on
//! stderr and a non-zero exit, never a panic.

use std::path::PathBuf;
use std::process::{Command, Output};

use edgepatch_tests::onnx_builder::{tiny_net, OnnxBuilder, TinyNet};
use edgepatch_tests::{random_values, reference_dir, repo_root};

/// The binary Cargo built for this test.
fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_edgepatch"))
}

fn run(args: &[&str]) -> Output {
    Command::new(binary()).args(args).output().expect("the binary starts")
}

fn tmp(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("edgepatch-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

/// A failure: non-zero exit, exactly one line on stderr mentioning `needle`, no panic.
fn assert_clean_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit status 0 for bad input; stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "stderr is not one line: {err}");
    assert!(err.contains(needle), "stderr {err:?} does not mention {needle:?}");
}

#[test]
fn info_json_reports_the_shipped_model() {
    let v = json(&run(&["info", "--json"]));
    assert_eq!(v["params"], 3_504_872);
    assert_eq!(v["patchable"]["sb"], 34_112);
    assert_eq!(v["patchable"]["bias"], 17_056);
    assert_eq!(v["patchable"]["dw"], 64_224);
    assert_eq!(v["patchable"]["logits"], 1_281_000);
    assert!(v["resident_bytes"].as_u64().unwrap() < 3_800_000);
    assert_eq!(v["layers"].as_array().unwrap().len(), 151);
    assert_eq!(v["weights"], "int8");
}

#[test]
fn info_reads_a_model_file() {
    let p = tmp("tiny.onnx", &tiny_net(TinyNet::default(), 5));
    let v = json(&run(&["info", "--json", "--model", p.to_str().unwrap()]));
    assert_eq!(v["classes"], 5);
    assert_eq!(v["weights"], "f32");
}

#[test]
fn predict_json_on_reference_images() {
    let dir = reference_dir();
    let (a, b) = (dir.join("chelsea.png"), dir.join("coffee.png"));
    let v = json(&run(&["predict", a.to_str().unwrap(), b.to_str().unwrap(), "--top", "3", "--json"]));
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    assert_eq!(arr[0]["image"], a.to_str().unwrap());
    assert_eq!(arr[0]["top"].as_array().unwrap().len(), 3);
    assert_eq!(arr[0]["top"][0]["class"], 285);
    assert_eq!(arr[0]["top"][0]["label"], "Egyptian cat");
    assert_eq!(arr[1]["top"][0]["class"], 967);
    let p = arr[1]["top"][0]["prob"].as_f64().unwrap();
    assert!((0.95..=1.0).contains(&p), "espresso probability {p}");
}

#[test]
fn predict_accepts_grayscale_rgba_and_jpeg() {
    let src = edgepatch::data::image::load(&reference_dir().join("coffee.png")).unwrap();
    let rgb = image_rgb(&src);
    let dir = std::env::temp_dir().join(format!("edgepatch-img-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let gray = dir.join("gray.png");
    let rgba = dir.join("rgba.png");
    let jpeg = dir.join("coffee.jpg");
    image::DynamicImage::ImageRgb8(rgb.clone()).to_luma8().save(&gray).unwrap();
    image::DynamicImage::ImageRgb8(rgb.clone()).to_rgba8().save(&rgba).unwrap();
    rgb.save(&jpeg).unwrap();
    let v = json(&run(&["predict", "--json", gray.to_str().unwrap(), rgba.to_str().unwrap(), jpeg.to_str().unwrap()]));
    let arr = v.as_array().unwrap();
    assert_eq!(arr[1]["top"][0]["class"], 967, "RGBA keeps the colour prediction");
    assert_eq!(arr[2]["top"][0]["class"], 967, "JPEG keeps the prediction");
    assert!(arr[0]["top"][0]["prob"].as_f64().unwrap() > 0.0);
}

fn image_rgb(src: &edgepatch::data::image::Rgb8) -> image::RgbImage {
    image::RgbImage::from_raw(src.width, src.height, src.data.clone()).unwrap()
}

#[test]
fn missing_and_non_image_files_are_clean_errors() {
    assert_clean_error(&run(&["predict", "/nonexistent/cat.png"]), "/nonexistent/cat.png");
    let text = tmp("notes.png", b"this is not an image");
    assert_clean_error(&run(&["predict", text.to_str().unwrap()]), "not a readable image");
    let png = std::fs::read(reference_dir().join("camera.png")).unwrap();
    let cut = tmp("cut.png", &png[..png.len() / 3]);
    assert_clean_error(&run(&["predict", cut.to_str().unwrap()]), "cut.png");
}

#[test]
fn bad_models_are_clean_errors() {
    let img = reference_dir().join("chelsea.png");
    let shipped = std::fs::read(repo_root().join("models/mobilenet_v2/mobilenet_v2_int8.onnx")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated.onnx", shipped[..shipped.len() / 2].to_vec(), "not a valid ONNX model"),
        ("random.onnx", random_values(10_000, 3, 1.0).iter().map(|v| (v * 127.0 + 128.0) as u8).collect(), "ONNX"),
        ("empty.onnx", Vec::new(), "ONNX"),
        ("unsupported.onnx", unsupported_op_model(), "unsupported ONNX operator Softmax at node 'probs'"),
    ];
    for (name, bytes, needle) in cases {
        let p = tmp(name, &bytes);
        assert_clean_error(&run(&["info", "--model", p.to_str().unwrap()]), needle);
        assert_clean_error(&run(&["predict", img.to_str().unwrap(), "--model", p.to_str().unwrap()]), needle);
    }
    assert_clean_error(&run(&["info", "--model", "/nonexistent/model.onnx"]), "/nonexistent/model.onnx");
}

fn unsupported_op_model() -> Vec<u8> {
    let mut b = OnnxBuilder::new(13);
    b.f32("w", &[4, 3, 1, 1], random_values(12, 1, 1.0));
    b.node("Conv", &["input", "w"], "conv", vec![]);
    b.node("Softmax", &["conv"], "probs", vec![]);
    b.build("input", "probs")
}
