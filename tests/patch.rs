//! Patches: zero-step patches reproduce the backbone, the file format round-trips and is pinned
//! by golden bytes, and every corruption or mismatch is refused with an error (never a panic).

use edgepatch::graph::{Graph, Op};
use edgepatch::patch::file::{self, ValueType, PREFIX_LEN};
use edgepatch::patch::{self, Patch, PatchTensor, Role, Slot};
use edgepatch::train::{TrainConfig, Trainer};
use edgepatch::{Backbone, Error, PatchKinds, Tensor};
use edgepatch_tests::onnx_builder::{tiny_net, TinyNet};
use edgepatch_tests::{random_values, Tolerance};

fn tiny_patch() -> Patch {
    Patch {
        kinds: "sb".parse().unwrap(),
        fingerprint: "0123456789abcdef".into(),
        resolution: 64,
        labels: vec!["cat".into(), "dog".into()],
        tensors: vec![
            PatchTensor { node: 1, role: Role::Scale, shape: vec![2], values: vec![1.0, 0.5] },
            PatchTensor { node: 1, role: Role::Bias, shape: vec![2], values: vec![0.0, -2.0] },
        ],
    }
}

/// Format version 2, byte for byte: prefix (magic, version, kinds, value type, fingerprint,
/// resolution, header and body lengths, CRC-32), postcard header, postcard body; `{v}`, `{t}`,
/// `{body_len}`, `{crc}` and `{body}` vary with the version and value type (CRCs computed
/// independently with Python's zlib.crc32).
const GOLDEN: &str = concat!(
    "4544474550544348",
    "{v}00",
    "02",
    "{t}",
    "0123456789abcdef",
    "40000000",
    "12000000",
    "{body_len}00000000000000",
    "{crc}",
    "02",
    "03636174",
    "03646f67",
    "02",
    "01",
    "00",
    "01",
    "02",
    "01",
    "01",
    "01",
    "02",
    "{body}",
);

const BODY_F32: &str = "02020000803f0000003f0200000000000000c0";
const BODY_F16: &str = "0202003c003802000000c0";

fn golden(version: u8, value_type: u8, crc: &str, body: &str) -> String {
    GOLDEN
        .replace("{v}", &format!("{version:02x}"))
        .replace("{t}", &format!("{value_type:02x}"))
        .replace("{body_len}", &format!("{:02x}", body.len() / 2))
        .replace("{crc}", crc)
        .replace("{body}", body)
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn golden_bytes_and_round_trip() {
    let p = tiny_patch();
    let bytes = file::to_bytes(&p).unwrap();
    assert_eq!(hex(&bytes), golden(2, 0, "efa6e498", BODY_F32));
    assert_eq!(file::from_bytes_typed(&bytes).unwrap(), (p.clone(), ValueType::F32));
    let half = file::to_bytes_as(&p, ValueType::F16).unwrap();
    assert_eq!(hex(&half), golden(2, 1, "633e207e", BODY_F16));
    assert_eq!(file::from_bytes_typed(&half).unwrap(), (p.clone(), ValueType::F16));
}

#[test]
fn version_1_files_still_read() {
    let v1 = unhex(&golden(1, 0, "8457abc2", BODY_F32));
    assert_eq!(file::from_bytes_typed(&v1).unwrap(), (tiny_patch(), ValueType::F32));
    let mut v1_with_type = v1.clone();
    v1_with_type[11] = 1;
    assert!(patch_err(&v1_with_type).contains("reserved"));
}

#[test]
fn f16_storage_rounds_to_nearest_and_refuses_what_it_cannot_hold() {
    let mut p = tiny_patch();
    p.tensors[0].values = vec![0.1, 1.0 / 3.0];
    let back = file::from_bytes(&file::to_bytes_as(&p, ValueType::F16).unwrap()).unwrap();
    assert_eq!(back, p.stored_as(ValueType::F16));
    for (a, b) in back.tensors[0].values.iter().zip(&p.tensors[0].values) {
        assert!((a - b).abs() <= b.abs() * 2f32.powi(-11), "{a} vs {b}");
        assert_ne!(a, b);
    }
    p.tensors[0].values[0] = 70_000.0;
    match file::to_bytes_as(&p, ValueType::F16) {
        Err(Error::Patch(m)) => assert!(m.contains("non-finite"), "{m}"),
        other => panic!("f16 overflow was not refused: {other:?}"),
    }
    assert!(file::to_bytes(&p).is_ok());
}

fn patch_err(bytes: &[u8]) -> String {
    match file::from_bytes(bytes) {
        Err(Error::Patch(m)) => m,
        Err(e) => panic!("wrong error kind: {e}"),
        Ok(_) => panic!("accepted a bad patch"),
    }
}

#[test]
fn every_truncation_and_every_byte_change_is_refused() {
    for value_type in [ValueType::F32, ValueType::F16] {
        every_truncation_and_every_byte_flip_is_refused_for(value_type);
    }
}

fn every_truncation_and_every_byte_flip_is_refused_for(value_type: ValueType) {
    let bytes = file::to_bytes_as(&tiny_patch(), value_type).unwrap();
    for n in 0..bytes.len() {
        patch_err(&bytes[..n]);
    }
    for i in 0..bytes.len() {
        for bit in 1..=255u8 {
            let mut b = bytes.clone();
            b[i] ^= bit;
            patch_err(&b);
        }
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(patch_err(&longer).contains("trailing"));
}

#[test]
fn header_fields_are_checked_with_clear_messages() {
    let bytes = file::to_bytes(&tiny_patch()).unwrap();
    let with = |i: usize, v: &[u8]| {
        let mut b = bytes.clone();
        b[i..i + v.len()].copy_from_slice(v);
        b
    };
    assert!(patch_err(&with(0, b"NOTPATCH")).contains("magic"));
    assert!(patch_err(&with(8, &[3, 0])).contains("version 3"));
    assert!(patch_err(&with(11, &[2])).contains("value type 2"));
    assert!(patch_err(&with(10, &[0x40])).contains("kinds"));
    assert!(patch_err(&with(24, &u32::MAX.to_le_bytes())).contains("limits"));
    assert!(patch_err(&with(28, &(u64::MAX).to_le_bytes())).contains("limits"));
    assert!(patch_err(&with(28, &20u64.to_le_bytes())).contains("does not match"));
    assert!(patch_err(&with(36, &[0, 0, 0, 0])).contains("checksum"));
    assert!(patch_err(&[]).contains("truncated"));
    assert_eq!(PREFIX_LEN, 40);
}

#[test]
fn non_finite_values_are_refused() {
    let mut p = tiny_patch();
    p.tensors[0].values[1] = f32::NAN;
    match file::to_bytes(&p) {
        Err(Error::Patch(m)) => assert!(m.contains("non-finite"), "{m}"),
        other => panic!("a NaN was encoded: {other:?}"),
    }
    for (bad, body) in [("0000c07f", BODY_F32), ("0000807f", BODY_F32), ("007c", BODY_F16)] {
        let (good, t) = if body == BODY_F16 { ("0038", 1) } else { ("0000003f", 0) };
        let mut bytes = unhex(&golden(2, t, "00000000", &body.replacen(good, bad, 1)));
        let crc = crc32fast::hash(&[&bytes[..36], &bytes[PREFIX_LEN..]].concat());
        bytes[36..40].copy_from_slice(&crc.to_le_bytes());
        assert!(patch_err(&bytes).contains("non-finite"), "{bad}");
    }
}

#[test]
fn patch_kinds_parse_and_print() {
    let k: PatchKinds = "logits+sb".parse().unwrap();
    assert_eq!(k.to_string(), "sb+logits");
    assert_eq!(PatchKinds::from_bits(k.bits()).unwrap(), k);
    let k: PatchKinds = "logits+se+sb".parse().unwrap();
    assert_eq!(k.to_string(), "sb+se+logits");
    assert_eq!(PatchKinds::from_bits(k.bits()).unwrap(), k);
    assert!(PatchKinds::from_bits(1 << 6).is_err());
    assert!("sb+wings".parse::<PatchKinds>().is_err());
    assert!("".parse::<PatchKinds>().is_err());
}

fn backbone(quantized: bool) -> Backbone {
    Backbone::from_onnx_bytes(&tiny_net(TinyNet { quantized, ..TinyNet::default() }, 42)).unwrap()
}

fn logits(g: &Graph, x: &[f32]) -> Vec<f32> {
    let engine = edgepatch::backend::cpu::CpuEngine::new(g);
    engine.forward(g, Tensor::from_vec([2, 3, 40, 40], x.to_vec()).unwrap()).unwrap().into_data()
}

#[test]
fn a_patch_with_zero_steps_reproduces_the_backbone() {
    let x = random_values(2 * 3 * 40 * 40, 5, 2.0);
    for quantized in [false, true] {
        let b = backbone(quantized);
        let want = logits(b.graph(), &x);
        let labels: Vec<String> = (0..5).map(|i| i.to_string()).collect();
        for kinds in ["sb", "bias", "dw", "sb+dw", "full"] {
            let mut config = TrainConfig::new(kinds.parse().unwrap());
            config.resolution = 64;
            let patch = Trainer::new(&b, config, labels.clone()).unwrap().patch().unwrap();
            let patch = file::from_bytes(&file::to_bytes(&patch).unwrap()).unwrap();
            let got = logits(&patch.apply(b.graph()).unwrap(), &x);
            let want = if patch.kinds.new_head() {
                let head = edgepatch::patch::head_index(b.graph()).unwrap() as u32;
                let only_head = Patch {
                    kinds: "logits".parse().unwrap(),
                    tensors: patch.tensors.iter().filter(|t| t.node == head).cloned().collect(),
                    ..patch.clone()
                };
                logits(&only_head.apply(b.graph()).unwrap(), &x)
            } else {
                want.clone()
            };
            if kinds == "sb" || kinds == "bias" || !quantized {
                assert_eq!(got, want, "{kinds} (int8 {quantized}) must be exact");
            } else {
                let tol = Tolerance { rel: 1e-5, abs: 1e-6 };
                assert!(tol.check(&got, &want).is_none(), "{kinds} (int8 {quantized})");
            }
        }
    }
}

#[test]
fn a_patch_for_another_backbone_is_refused() {
    let (a, b) = (backbone(false), backbone(true));
    let mut config = TrainConfig::new("sb+logits".parse().unwrap());
    config.resolution = 64;
    let patch = Trainer::new(&a, config, vec!["x".into(), "y".into()]).unwrap().patch().unwrap();
    assert!(patch.apply(a.graph()).is_ok());
    match patch.apply(b.graph()) {
        Err(Error::Patch(m)) => assert!(m.contains("made for backbone"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let mut bad = patch.clone();
    bad.tensors[0].values.pop();
    assert!(bad.apply(a.graph()).is_err());
    let mut bad = patch.clone();
    bad.tensors[0].node = 9999;
    assert!(bad.apply(a.graph()).is_err());
    let mut bad = patch;
    bad.labels.pop();
    assert!(bad.apply(a.graph()).is_err());
}

#[test]
fn save_is_atomic_and_load_names_the_file() {
    let dir = std::env::temp_dir().join(format!("edgepatch-patch-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.patch");
    file::save(&tiny_patch(), &path).unwrap();
    assert_eq!(file::load(&path).unwrap(), tiny_patch());
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "temporary files left: {leftovers:?}");
    std::fs::write(&path, b"EDGEPTCH").unwrap();
    let e = file::load(&path).unwrap_err().to_string();
    assert!(e.contains("t.patch") && e.contains("truncated"), "{e}");
    assert!(file::save(&tiny_patch(), &dir.join("missing-dir/x.patch")).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

/// Every conv's int8 values replaced by other values (a new shared allocation, as any change
/// makes while an engine holds the old one).
fn with_other_conv_weights(g: &Graph) -> Graph {
    let mut g = g.clone();
    for n in &mut g.nodes {
        if let edgepatch::graph::Op::Conv(c) = &mut n.op {
            if let edgepatch::graph::Weights::Int8 { values, .. } = &mut c.weights {
                let v = std::sync::Arc::make_mut(values);
                v.iter_mut().for_each(|q| *q = q.saturating_neg() / 2 + 1);
            }
        }
    }
    g
}

#[test]
fn an_engine_never_runs_on_stale_packed_weights() {
    use edgepatch::backend::cpu::CpuEngine;
    let x = Tensor::from_vec([2, 3, 40, 40], random_values(2 * 3 * 40 * 40, 5, 2.0)).unwrap();
    let run = |e: &CpuEngine, g: &Graph| e.forward(g, x.clone()).unwrap().into_data();
    assert_eq!(CpuEngine::new(backbone(false).graph()).packed_bytes(), 0, "f32 weights are packed per call");
    let g = backbone(true).graph().clone();
    let mut engine = CpuEngine::new(&g);
    assert!(engine.packed_bytes() > 0);
    let before = run(&engine, &g);
    let other = with_other_conv_weights(&g);
    let want = run(&CpuEngine::new(&other), &other);
    assert_ne!(want, before, "the weights changed the output");
    assert_eq!(run(&engine, &other), want, "changed weights, not yet taken up");
    engine.update(&other);
    assert_eq!(run(&engine, &other), want, "changed weights, taken up");
    assert_eq!(run(&engine, &g), before, "the first weights again, not taken up");
    engine.update(&g);
    assert_eq!(run(&engine, &g), before, "the first weights again, taken up");
}

/// `se` trains the squeeze-excitation convolutions (those reading one pixel per channel) and their
/// biases: MobileNetV3's parts have two; a model without squeeze-excitation refuses the kind.
#[test]
fn se_patches_the_squeeze_excitation_convolutions() {
    let v3 = Backbone::from_onnx_bytes(&tiny_net(TinyNet { v3: true, ..TinyNet::default() }, 43)).unwrap();
    let g = v3.graph();
    let slots = patch::slots(g, "se".parse().unwrap()).unwrap();
    let convs: Vec<_> = slots.iter().filter(|s| s.role == Role::Weights).map(|s| s.node).collect();
    assert_eq!(convs.len(), 2);
    for &c in &convs {
        assert!(matches!(&g.nodes[c].op, Op::Conv(k) if k.window.is_pointwise()));
        assert!(slots.contains(&Slot { node: c + 1, role: Role::Bias }), "the bias of node {c}");
    }
    assert_eq!(slots.len(), 4);
    assert_eq!(g.patchable().se, 4 * 16 + 4 + 16 * 4 + 16);
    let err = patch::slots(backbone(false).graph(), "se+logits".parse().unwrap()).unwrap_err().to_string();
    assert!(err.contains("no squeeze-excitation"), "{err}");
    // An `se` patch goes through the file format and, untrained, reproduces the backbone.
    let mut config = TrainConfig::new("se".parse().unwrap());
    config.resolution = 64;
    let patch = Trainer::new(&v3, config, (0..5).map(|i| i.to_string()).collect()).unwrap().patch().unwrap();
    let back = file::from_bytes(&file::to_bytes(&patch).unwrap()).unwrap();
    assert_eq!(back, patch);
    let x = random_values(2 * 3 * 40 * 40, 6, 2.0);
    assert_eq!(logits(&back.apply(g).unwrap(), &x), logits(g, &x));
}
