//! Patches: zero-step patches reproduce the backbone, the file format round-trips and is pinned
//! by golden bytes, and every corruption or mismatch is refused with an error (never a panic).

use edgepatch::graph::Graph;
use edgepatch::patch::file::{self, PREFIX_LEN};
use edgepatch::patch::{Patch, PatchTensor, Role};
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

/// The format, byte for byte: prefix (magic, version 1, kinds, reserved, fingerprint,
/// resolution, header and body lengths, CRC-32), postcard header, postcard body.
const GOLDEN: &str = concat!(
    "4544474550544348",
    "0100",
    "02",
    "00",
    "0123456789abcdef",
    "40000000",
    "12000000",
    "1300000000000000",
    "8457abc2",
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
    "02",
    "02",
    "0000803f",
    "0000003f",
    "02",
    "00000000",
    "000000c0",
);

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn golden_bytes_and_round_trip() {
    let p = tiny_patch();
    let bytes = file::to_bytes(&p).unwrap();
    assert_eq!(hex(&bytes), GOLDEN);
    assert_eq!(file::from_bytes(&bytes).unwrap(), p);
}

fn patch_err(bytes: &[u8]) -> String {
    match file::from_bytes(bytes) {
        Err(Error::Patch(m)) => m,
        Err(e) => panic!("wrong error kind: {e}"),
        Ok(_) => panic!("accepted a bad patch"),
    }
}

#[test]
fn every_truncation_and_every_byte_flip_is_refused() {
    let bytes = file::to_bytes(&tiny_patch()).unwrap();
    for n in 0..bytes.len() {
        patch_err(&bytes[..n]);
    }
    for i in 0..bytes.len() {
        for bit in [0x01, 0x80, 0xff] {
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
    assert!(patch_err(&with(8, &[2, 0])).contains("version 2"));
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
    assert!(patch_err(&file::to_bytes(&p).unwrap()).contains("non-finite"));
}

#[test]
fn patch_kinds_parse_and_print() {
    let k: PatchKinds = "logits+sb".parse().unwrap();
    assert_eq!(k.to_string(), "sb+logits");
    assert_eq!(PatchKinds::from_bits(k.bits()).unwrap(), k);
    assert!("sb+wings".parse::<PatchKinds>().is_err());
    assert!("".parse::<PatchKinds>().is_err());
}

fn backbone(quantized: bool) -> Backbone {
    Backbone::from_onnx_bytes(&tiny_net(TinyNet { quantized, ..TinyNet::default() }, 42)).unwrap()
}

fn logits(g: &Graph, x: &[f32]) -> Vec<f32> {
    let engine = edgepatch::backend::cpu::CpuEngine::new(g);
    engine.forward(g, Tensor::from_vec([2, 3, 40, 40], x.to_vec()).unwrap()).unwrap().data
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
