//! Export: a backbone with a patch folded in, written as ONNX, runs in tract-onnx with the
//! logits of our session, and re-imports to the same graph.

use edgepatch::backend::cpu::CpuEngine;
use edgepatch::export::{patched_onnx, to_onnx, ExportWeights};
use edgepatch::graph::Graph;
use edgepatch::patch::Patch;
use edgepatch::train::{TrainConfig, Trainer};
use edgepatch::{Backbone, Tensor};
use edgepatch_tests::onnx_builder::{tiny_net, TinyNet};
use edgepatch_tests::{random_values, tract_run, Tolerance};

const PARITY: Tolerance = Tolerance { rel: 1e-4, abs: 1e-4 };

/// A patch of `kinds` over `b` with values moved away from the backbone's.
fn patch(b: &Backbone, kinds: &str, classes: usize, seed: u64) -> Patch {
    let mut config = TrainConfig::new(kinds.parse().unwrap());
    config.resolution = 64;
    config.seed = seed;
    let labels = (0..classes).map(|i| format!("class {i}")).collect();
    let mut p = Trainer::new(b, config, labels).unwrap().patch().unwrap();
    for (i, t) in p.tensors.iter_mut().enumerate() {
        let noise = random_values(t.values.len(), seed * 1000 + i as u64, 0.05);
        t.values.iter_mut().zip(noise).for_each(|(v, n)| *v *= 1.0 + n);
    }
    p
}

fn logits(g: &Graph, shape: [usize; 4], x: &[f32]) -> Vec<f32> {
    CpuEngine::new(g).forward(g, Tensor::from_vec(shape, x.to_vec()).unwrap()).unwrap().into_data()
}

fn check(b: &Backbone, p: &Patch, shape: [usize; 4]) {
    let patched = p.apply(b.graph()).unwrap();
    let x = random_values(shape.iter().product(), 17, 2.0);
    let ours = logits(&patched, shape, &x);
    for mode in [ExportWeights::Int8, ExportWeights::F32] {
        let onnx = patched_onnx(b.graph(), p, mode).unwrap();
        let tract = tract_run(&onnx, shape, &x).expect("tract runs the exported model");
        assert_eq!(tract.len(), shape[0] * p.labels.len());
        if let Some((i, got, want)) = PARITY.check(&tract, &ours) {
            panic!("{} {mode:?}: tract logit {i} = {got}, ours {want}", p.kinds);
        }
        let again = Backbone::from_onnx_bytes(&onnx).expect("the export re-imports");
        if mode == ExportWeights::Int8 {
            assert_eq!(again.graph().fingerprint(), patched.fingerprint(), "{}: the same graph, bit for bit", p.kinds);
            assert_eq!(logits(again.graph(), shape, &x), ours);
        } else {
            let tol = Tolerance { rel: 1e-5, abs: 1e-5 };
            assert!(tol.check(&logits(again.graph(), shape, &x), &ours).is_none(), "{} f32", p.kinds);
        }
    }
}

#[test]
fn tiny_patched_networks_export_and_run_in_tract() {
    for quantized in [false, true] {
        let b = Backbone::from_onnx_bytes(&tiny_net(TinyNet { quantized, ..TinyNet::default() }, 3)).unwrap();
        let k = b.graph().num_classes();
        for (kinds, classes) in [("sb+logits", 3), ("dw+logits", 4), ("bias", k), ("full", 6), ("sb+dw", k)] {
            check(&b, &patch(&b, kinds, classes, 5), [2, 3, 48, 40]);
        }
        let plain = to_onnx(b.graph(), None, ExportWeights::Int8).unwrap();
        assert_eq!(Backbone::from_onnx_bytes(&plain).unwrap().fingerprint(), b.fingerprint());
    }
}

#[test]
fn mobilenet_v2_with_a_patch_exports_with_the_task_in_its_metadata() {
    use prost::Message;
    let b = Backbone::embedded().unwrap();
    for (kinds, classes) in [("sb+logits", 10), ("dw+logits", 7)] {
        let p = patch(&b, kinds, classes, 9);
        check(&b, &p, [1, 3, 96, 96]);
        let onnx = patched_onnx(b.graph(), &p, ExportWeights::Int8).unwrap();
        let model = tract_onnx::pb::ModelProto::decode(onnx.as_slice()).unwrap();
        let meta = |k: &str| model.metadata_props.iter().find(|e| e.key == k).map(|e| e.value.clone()).unwrap();
        assert_eq!(meta("edgepatch.labels").lines().count(), classes);
        assert_eq!(meta("edgepatch.resolution"), "64");
        assert_eq!(meta("edgepatch.kinds"), kinds);
        assert_eq!(meta("edgepatch.backbone"), b.fingerprint());
        if let Some(dir) = std::env::var_os("EDGEPATCH_EXPORT_DIR") {
            // For tools/check_export.py: the model, an input and our logits, for onnxruntime.
            let dir = std::path::PathBuf::from(dir);
            std::fs::create_dir_all(&dir).unwrap();
            let shape = [2, 3, 64, 64];
            let x = random_values(shape.iter().product(), 23, 2.0);
            let ours = logits(&p.apply(b.graph()).unwrap(), shape, &x);
            let raw = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
            std::fs::write(dir.join(format!("{kinds}.onnx")), &onnx).unwrap();
            std::fs::write(dir.join(format!("{kinds}.input.f32")), raw(&x)).unwrap();
            std::fs::write(dir.join(format!("{kinds}.logits.f32")), raw(&ours)).unwrap();
        }
        let f32_len = patched_onnx(b.graph(), &p, ExportWeights::F32).unwrap().len();
        assert!(onnx.len() * 2 < f32_len, "int8 export {} B vs f32 {f32_len} B", onnx.len());
    }
}
