//! The `edgepatch` binary end to end: `info`, `predict`, and bad input giving one clear line on
//! stderr and a non-zero exit, never a panic.

use std::path::PathBuf;
use std::process::Command;

use edgepatch_tests::onnx_builder::{tiny_net, OnnxBuilder, TinyNet};
use edgepatch_tests::{random_values, reference_dir, repo_root};

mod cli_support;
use cli_support::{assert_clean_error, assert_failed_run, binary, json, run, tmp};

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
        ("unsupported.onnx", unsupported_op_model(), "unsupported ONNX operator LpNormalization at node 'probs'"),
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
    b.node("LpNormalization", &["conv"], "probs", vec![]);
    b.build("input", "probs")
}

fn mini(split: &str) -> String {
    format!("idx:{}/models/datasets/fashion-mnist-mini/{split}", repo_root().display())
}

/// A training failure: non-zero exit, no panic, the last stderr line is the error naming `needle`.

#[test]
fn train_eval_inspect_and_predict_with_a_patch() {
    let out = tmp("cli-sb.patch", b"");
    std::fs::remove_file(&out).unwrap();
    let o = out.to_str().unwrap();
    let (train, test) = (mini("train"), mini("t10k"));
    let args = [
        "train",
        "--train",
        &train,
        "--test",
        &test,
        "--patch",
        "sb+logits",
        "--out",
        o,
        "--limit",
        "96",
        "--test-limit",
        "64",
        "--resolution",
        "32",
        "--epochs",
        "1",
        "--batch",
        "16",
        // A training seed other than the test subset's: `eval` below, without it, must score
        // the same images.
        "--seed",
        "7",
        "--json",
    ];
    let r = json(&run(&args));
    assert_eq!(r["patch"], "sb+logits");
    assert_eq!(r["train_images"], 96);
    assert_eq!(r["test_images"], 64);
    assert_eq!(r["patch_params"], 34_112 + 1280 * 10 + 10);
    assert_eq!(r["patch_bytes"].as_u64().unwrap(), std::fs::metadata(&out).unwrap().len());
    let acc = r["test_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    for key in ["seconds", "images_per_second", "peak_rss_bytes"] {
        assert!(r[key].as_f64().unwrap() > 0.0, "{key}");
    }

    let e = json(&run(&["eval", "--test", &test, "--patch", o, "--test-limit", "64", "--json"]));
    assert_eq!(e["images"], 64);
    assert!((e["accuracy"].as_f64().unwrap() - acc).abs() < 1e-6, "eval and train disagree");
    assert_eq!(e["confusion"].as_array().unwrap().len(), 10);
    assert_eq!(e["per_class"].as_object().unwrap().len(), 10);

    let i = json(&run(&["patch", "inspect", o, "--json"]));
    assert_eq!(i["kinds"], "sb+logits");
    assert_eq!(i["resolution"], 32);
    assert_eq!(i["embedded_backbone"], true);
    assert_eq!(i["labels"][9], "Ankle boot");

    let cat = reference_dir().join("chelsea.png");
    let p = json(&run(&["predict", cat.to_str().unwrap(), "--patch", o, "--top", "3", "--json"]));
    let top = p[0]["top"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    let labels: Vec<&str> = i["labels"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(labels.contains(&top[0]["label"].as_str().unwrap()), "a Fashion-MNIST label: {top:?}");

    let mut bytes = std::fs::read(&out).unwrap();
    bytes.truncate(bytes.len() / 2);
    let cut = tmp("cli-cut.patch", &bytes);
    assert_clean_error(&run(&["eval", "--test", &test, "--patch", cut.to_str().unwrap()]), "truncated");
    assert_clean_error(&run(&["patch", "inspect", cut.to_str().unwrap()]), "truncated");
    let model = tmp("cli-tiny.onnx", &tiny_net(TinyNet::default(), 3));
    let other = run(&["predict", cat.to_str().unwrap(), "--patch", o, "--model", model.to_str().unwrap()]);
    assert_clean_error(&other, "made for backbone");
}

#[test]
fn a_failed_training_leaves_the_old_patch_in_place() {
    let dir = std::env::temp_dir().join(format!("edgepatch-cli-fail-{}", std::process::id()));
    for c in ["a", "b"] {
        std::fs::create_dir_all(dir.join(c)).unwrap();
        for i in 0..3 {
            let px = random_values(36 * 36 * 3, i + 1, 1.0).iter().map(|v| ((v + 1.0) * 120.0) as u8).collect();
            image::RgbImage::from_raw(36, 36, px).unwrap().save(dir.join(c).join(format!("{i}.png"))).unwrap();
        }
    }
    std::fs::write(dir.join("b/zz-broken.jpg"), b"\xff\xd8\xff not really a jpeg").unwrap();
    let out = dir.join("task.patch");
    std::fs::write(&out, b"the old patch").unwrap();
    let folder = format!("folder:{}", dir.display());
    let args =
        ["train", "--train", &folder, "--patch", "bias+logits", "--out", out.to_str().unwrap(), "--resolution", "32"];
    assert_failed_run(&run(&args), "zz-broken.jpg");
    assert_eq!(std::fs::read(&out).unwrap(), b"the old patch");
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names.len(), 3, "left behind: {names:?}");

    std::fs::remove_file(dir.join("b/zz-broken.jpg")).unwrap();
    std::fs::create_dir_all(dir.join("c")).unwrap();
    assert_failed_run(&run(&args), "'c' has no JPEG or PNG");
    std::fs::remove_dir_all(dir.join("c")).unwrap();
    let bad_res = ["train", "--train", &folder, "--patch", "sb+logits", "--out", "x.patch", "--resolution", "50"];
    assert_failed_run(&run(&bad_res), "multiple of 32");
    let kinds = run(&["train", "--train", &folder, "--patch", "sb+wings", "--out", "x.patch"]);
    let err = String::from_utf8_lossy(&kinds.stderr);
    assert!(!kinds.status.success() && err.contains("unknown patch kind 'wings'"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn demo_runs_from_the_binary_alone() {
    let dir = std::env::temp_dir().join(format!("edgepatch-cli-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(binary())
        .args(["demo", "--epochs", "1", "--resolution", "32", "--json"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let d = json(&out);
    let runs = d["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["patch"], "logits");
    assert_eq!(runs[1]["patch"], "sb+logits");
    assert_eq!(runs[1]["train_images"], 2000);
    assert_eq!(runs[1]["test_images"], 1000);
    assert_eq!(d["predictions"].as_array().unwrap().len(), 8);
    assert!(dir.join("edgepatch-demo.patch").exists());
    std::fs::remove_dir_all(&dir).ok();
}

/// `train --device gpu` (lavapipe in CI) gives a patch that the CPU scores as it scores the same
/// training run on the CPU; `info --devices` lists the adapter. Skipped without an adapter
/// unless `EDGEPATCH_REQUIRE_GPU=1`.
#[test]
fn a_patch_trained_on_the_gpu_scores_like_one_trained_on_the_cpu() {
    let adapters = json(&run(&["info", "--devices", "--json"]));
    if adapters["adapters"].as_array().unwrap().is_empty() {
        assert_ne!(
            std::env::var("EDGEPATCH_REQUIRE_GPU").as_deref(),
            Ok("1"),
            "EDGEPATCH_REQUIRE_GPU=1 but no adapter"
        );
        eprintln!("skipping: no GPU adapter");
        return;
    }
    let (train, test) = (mini("train"), mini("t10k"));
    let mut acc = Vec::new();
    for device in ["cpu", "gpu"] {
        let out = tmp(&format!("cli-{device}.patch"), b"");
        let o = out.to_str().unwrap();
        let args = [
            "train",
            "--train",
            &train,
            "--patch",
            "sb+logits",
            "--out",
            o,
            "--limit",
            "64",
            "--resolution",
            "32",
            "--epochs",
            "1",
            "--batch",
            "16",
            "--device",
            device,
            "--json",
        ];
        let r = json(&run(&args));
        assert!(r["device"].as_str().unwrap().starts_with(device), "{}", r["device"]);
        assert_eq!(r["gpu_buffer_bytes"].is_null(), device == "cpu");
        let e =
            json(&run(&["eval", "--test", &test, "--patch", o, "--test-limit", "200", "--device", "cpu", "--json"]));
        let g =
            json(&run(&["eval", "--test", &test, "--patch", o, "--test-limit", "200", "--device", "gpu", "--json"]));
        assert_eq!(e["accuracy"], g["accuracy"], "the same patch scored on the CPU and the GPU");
        acc.push(e["accuracy"].as_f64().unwrap());
    }
    assert!((acc[0] - acc[1]).abs() <= 0.01, "CPU-trained {} vs GPU-trained {}", acc[0], acc[1]);
}

#[test]
fn sequential_transfer_f16_patches_and_a_store_that_survives_kills() {
    let dir = std::env::temp_dir().join(format!("edgepatch-cli-store-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    let (first, second) = (dir.join("first.patch"), dir.join("second.patch"));
    let train = mini("train");
    let test = mini("t10k");
    let base = |out: &PathBuf, seed: &'static str| -> Vec<String> {
        [
            "train",
            "--train",
            &train,
            "--test",
            &test,
            "--test-limit",
            "50",
            "--patch",
            "sb+logits",
            "--limit",
            "48",
            "--resolution",
            "32",
            "--epochs",
            "1",
            "--batch",
            "16",
            "--device",
            "cpu",
            "--json",
            "--seed",
            seed,
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let run_owned = |args: &[String]| run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let a = json(&run_owned(&base(&first, "1")));
    assert_eq!(a["patch_dtype"], "f32");
    let mut args = base(&second, "2");
    args.extend(["--init-from", first.to_str().unwrap(), "--patch-dtype", "f16"].map(String::from));
    let b = json(&run_owned(&args));
    assert_eq!(b["patch_dtype"], "f16");
    assert_eq!(b["init_from"], first.to_str().unwrap());
    let (bytes_a, bytes_b) = (a["patch_bytes"].as_u64().unwrap(), b["patch_bytes"].as_u64().unwrap());
    assert!(bytes_b * 2 < bytes_a + 2000 && bytes_b * 2 > bytes_a - 2000, "f16 {bytes_b} B vs f32 {bytes_a} B");
    let e = json(&run(&["eval", "--test", &test, "--patch", second.to_str().unwrap(), "--test-limit", "50", "--json"]));
    // The same 50 test images as the training run's (seed 2), without its seed.
    assert_eq!(e["accuracy"], b["test_accuracy"], "the reported accuracy is the stored f16 patch's");
    let mut wrong = base(&dir.join("x.patch"), "3");
    wrong[8] = "dw+logits".into();
    wrong.extend(["--init-from".into(), first.to_str().unwrap().into()]);
    assert_failed_run(&run_owned(&wrong), "the kinds must be the same");

    let store = dir.join("store");
    let s = store.to_str().unwrap();
    let (fa, fb) = (first.to_str().unwrap(), second.to_str().unwrap());
    json(&run(&["store", "add", s, "task", fa, "--json"]));
    let crcs: Vec<u64> = [fa, fb]
        .iter()
        .map(|f| {
            let bytes = std::fs::read(f).unwrap();
            u32::from_le_bytes(bytes[36..40].try_into().unwrap()) as u64
        })
        .collect();
    // The quickest of three adds: one measured while other tests load the cores would make the
    // random kill times too long to land inside most runs.
    let full = (0..3)
        .map(|_| {
            let start = std::time::Instant::now();
            json(&run(&["store", "add", s, "task", fb, "--json"]));
            start.elapsed().as_micros() as u64
        })
        .min()
        .unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let (mut killed, mut finished, mut leftovers) = (0, 0, 0);
    for i in 0..60 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut child = Command::new(binary())
            .args(["store", "add", s, "task", if i % 2 == 0 { fa } else { fb }])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_micros(state % (2 * full + 1)));
        match child.try_wait().unwrap() {
            Some(_) => finished += 1,
            None => {
                child.kill().unwrap();
                killed += 1;
            }
        }
        child.wait().unwrap();
        let v = json(&run(&["store", "verify", s, "--json"]));
        assert_eq!(v["tasks"], 1, "after run {i}");
        leftovers += !v["unreferenced"].as_array().unwrap().is_empty() as usize;
        let l = json(&run(&["store", "list", s, "--json"]));
        assert!(crcs.contains(&l["tasks"][0]["crc32"].as_u64().unwrap()), "after run {i}: {l}");
    }
    eprintln!(
        "store add: {killed} killed before exiting ({leftovers} left unreferenced files), {finished} finished (a full add took {full} µs)"
    );
    assert!(killed >= 10, "only {killed} of 60 runs were killed mid-way");

    json(&run(&["store", "add", s, "task", fb, "--json"]));
    let cat = reference_dir().join("chelsea.png");
    let c = cat.to_str().unwrap();
    let by_task = json(&run(&["predict", c, "--store", s, "--task", "task", "--json", "--device", "cpu"]));
    let by_file = json(&run(&["predict", c, "--patch", fb, "--json", "--device", "cpu"]));
    assert_eq!(by_task[0]["top"], by_file[0]["top"]);
    assert_clean_error(&run(&["predict", c, "--store", s, "--task", "nope"]), "no task 'nope'");
    assert_clean_error(&run(&["store", "remove", s, "nope"]), "no task 'nope'");
    std::fs::write(store.join("index.json"), b"{ not json").unwrap();
    assert_clean_error(&run(&["store", "verify", s]), "not a valid store index");
    std::fs::remove_dir_all(&dir).ok();
}

/// The CPU kernels compute every value by the same sequence of f32 operations at each vector
/// level, so a patch trained at any level (`EDGEPATCH_SIMD`) is byte-identical.
#[test]
fn patches_are_identical_at_every_vector_level() {
    let (train, test) = (mini("train"), mini("t10k"));
    let mut files = Vec::new();
    for level in ["portable", "avx2", "avx512"] {
        let out = tmp(&format!("level-{level}.patch"), b"");
        std::fs::remove_file(&out).unwrap();
        let args = [
            "train",
            "--train",
            &train,
            "--test",
            &test,
            "--patch",
            "sb+dw+logits",
            "--out",
            out.to_str().unwrap(),
            "--limit",
            "64",
            "--test-limit",
            "16",
            "--resolution",
            "32",
            "--epochs",
            "1",
            "--batch",
            "16",
            "--json",
        ];
        let o = Command::new(binary()).args(args).env("EDGEPATCH_SIMD", level).output().expect("the binary starts");
        json(&o);
        files.push((level, std::fs::read(&out).unwrap()));
    }
    for (level, bytes) in &files[1..] {
        assert!(bytes == &files[0].1, "the patch trained at {level} differs from the portable one");
    }
}
