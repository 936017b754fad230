//! `edgepatch::quantize` and `edgepatch quantize`: the f32 MobileNetV2 quantized here is the
//! shipped int8 model, and the command reports what quantizing cost.

use edgepatch::export::{to_onnx, ExportWeights};
use edgepatch::Backbone;
use edgepatch_tests::reference_dir;

mod cli_support;
use cli_support::{assert_clean_error, json, run};

/// `edgepatch::quantize` on the f32 MobileNetV2 gives the shipped int8 model's values and scales
/// bit for bit (its build script quantizes the same way with NumPy), so the same graph: the same
/// fingerprint, which patches are bound to. Its export imports back to that graph.
#[test]
fn quantizing_the_f32_model_gives_the_shipped_int8_model() {
    let shipped = Backbone::embedded().unwrap();
    let mut g = Backbone::from_path(&edgepatch_tests::f32_model()).unwrap().graph().clone();
    let done = edgepatch::quantize::quantize_graph(&mut g);
    assert_eq!((done.kernels, done.already_int8), (53, 0), "{done:?}");
    assert!(done.bytes_after * 3 < done.bytes_before, "{done:?}");
    for (i, (a, b)) in g.nodes.iter().zip(&shipped.graph().nodes).enumerate() {
        assert_eq!(a.op, b.op, "node {i} ({}) differs from the shipped model's", a.op.kind());
    }
    assert_eq!(g.fingerprint(), shipped.fingerprint());
    let again = Backbone::from_onnx_bytes(&to_onnx(&g, None, ExportWeights::Int8).unwrap()).unwrap();
    assert_eq!(again.fingerprint(), shipped.fingerprint());
    // Nothing left to quantize the second time.
    let mut g2 = g.clone();
    assert_eq!(edgepatch::quantize::quantize_graph(&mut g2).already_int8, 53);
    assert_eq!(g2.fingerprint(), g.fingerprint());
}

/// `edgepatch quantize`: the written model is the shipped one's graph, agrees with the f32 model
/// on the reference photos, and bad requests fail before anything is written.
#[test]
fn the_quantize_command_writes_the_int8_model_and_its_cost() {
    let f32_path = edgepatch_tests::f32_model();
    let dir = std::env::temp_dir().join(format!("edgepatch-quantize-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("int8.onnx");
    let photos: Vec<String> = ["chelsea.png", "coffee.png", "camera.png"]
        .iter()
        .map(|p| reference_dir().join(p).display().to_string())
        .collect();
    let mut args = vec!["quantize", f32_path.to_str().unwrap(), "--out", out.to_str().unwrap(), "--json", "--images"];
    args.extend(photos.iter().map(String::as_str));
    let v = json(&run(&args));
    assert_eq!((v["kernels"].as_u64(), v["already_int8"].as_u64()), (Some(53), Some(0)));
    assert_eq!(v["agreement"]["images"], 3);
    assert_eq!(v["agreement"]["top1_same"], 3, "{v}");
    let max = v["agreement"]["max_logit_diff"].as_f64().unwrap();
    assert!(max > 0.0 && max < 3.0, "{v}");
    let written = Backbone::from_path(&out).unwrap();
    assert_eq!(written.fingerprint(), Backbone::embedded().unwrap().fingerprint());
    assert_eq!(v["file_bytes"].as_u64(), Some(std::fs::metadata(&out).unwrap().len()));

    // Nothing to quantize in the int8 model; the input is never the output; a device file is
    // never replaced. Each fails before writing.
    let again = dir.join("again.onnx");
    assert_clean_error(&run(&["quantize", out.to_str().unwrap(), "--out", again.to_str().unwrap()]), "no f32 kernels");
    assert!(!again.exists());
    let before = std::fs::read(&out).unwrap();
    assert_clean_error(
        &run(&["quantize", out.to_str().unwrap(), "--out", out.to_str().unwrap()]),
        "is the input model",
    );
    assert_eq!(std::fs::read(&out).unwrap(), before);
    let e = run(&["quantize", f32_path.to_str().unwrap(), "--out", "/dev/null"]);
    assert!(!e.status.success() && !String::from_utf8_lossy(&e.stderr).contains("panicked"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        assert!(std::path::Path::new("/dev/null").metadata().unwrap().file_type().is_char_device());
    }
    std::fs::remove_dir_all(&dir).ok();
}
