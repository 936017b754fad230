//! Import: small graphs built in code against tract-onnx, the shipped model's counts, and
//! malformed or unsupported models rejected with errors (never panics).

use edgepatch::graph::{Op, Weights};
use edgepatch::{Backbone, Error, Tensor};
use edgepatch_tests::onnx_builder::{int, ints, tiny_net, OnnxBuilder, TinyNet};
use edgepatch_tests::{random_values, tract_run, Tolerance};

const PARITY: Tolerance = Tolerance { rel: 1e-4, abs: 1e-5 };

fn variants() -> Vec<TinyNet> {
    let mut v = Vec::new();
    for bits in 0..16 {
        v.push(TinyNet {
            folded: bits & 1 != 0,
            clip_attrs: bits & 2 != 0,
            matmul: bits & 4 != 0,
            quantized: bits & 8 != 0,
            ..TinyNet::default()
        });
    }
    v
}

#[test]
fn tiny_networks_match_tract() {
    for (i, v) in variants().into_iter().enumerate() {
        let model = tiny_net(v, 100 + i as u64);
        let b = Backbone::from_onnx_bytes(&model).unwrap_or_else(|e| panic!("{v:?}: {e}"));
        for shape in [[2, 3, 32, 32], [1, 3, 45, 37]] {
            let x = random_values(shape.iter().product(), 7 + i as u64, 2.0);
            let want = tract_run(&model, shape, &x).expect("tract runs the model");
            let got = b.forward(Tensor::from_vec(shape, x).unwrap()).unwrap();
            if let Some((j, g, w)) = PARITY.check(&got.data, &want) {
                panic!("{v:?} at {shape:?}: logit {j} is {g}, tract says {w}");
            }
        }
    }
}

/// HardSigmoid merged into a convolution's affine and on its own after a residual sum: tract's
/// logits; it exports (as an affine and Clip(0, 1)) and tract agrees with the export.
#[test]
fn hard_sigmoid_matches_tract() {
    for quantized in [false, true] {
        let v = TinyNet { hard_sigmoid: true, quantized, ..TinyNet::default() };
        let model = tiny_net(v, 40);
        let b = Backbone::from_onnx_bytes(&model).unwrap();
        let clips =
            b.graph().nodes.iter().filter(|n| matches!(n.op, Op::Act(edgepatch::ops::Activation::Clip01))).count();
        assert_eq!(clips, 2);
        same_as_tract_and_exported(&format!("{v:?}"), &model, &b, &[[2, 3, 32, 32], [1, 3, 45, 37]], 9);
    }
    let mut bad = OnnxBuilder::new(13);
    bad.node("HardSigmoid", &["input"], "y", vec![edgepatch_tests::onnx_builder::float("alpha", f32::NAN)]);
    assert!(Backbone::from_onnx_bytes(&bad.build("input", "y")).is_err());
}

/// MobileNetV3's parts (HardSwish as Paddle writes it and as the ONNX op, squeeze-excitation
/// with the gate multiplied first, a padded overlapping MaxPool, the Shape/Slice/Concat flatten):
/// tract's logits at even and odd sizes; the export runs in tract with the same logits.
#[test]
fn mobilenet_v3_parts_match_tract() {
    for quantized in [false, true] {
        let v = TinyNet { v3: true, quantized, ..TinyNet::default() };
        let model = tiny_net(v, 41);
        let b = Backbone::from_onnx_bytes(&model).unwrap();
        let count = |f: &dyn Fn(&Op) -> bool| b.graph().nodes.iter().filter(|n| f(&n.op)).count();
        assert_eq!(count(&|op| matches!(op, Op::Mul)), 3, "two HardSwish and the gate");
        assert_eq!(count(&|op| matches!(op, Op::MaxPool(_))), 1);
        assert_eq!(count(&|op| matches!(op, Op::GlobalPool)), 2);
        same_as_tract_and_exported(
            &format!("{v:?}"),
            &model,
            &b,
            &[[2, 3, 32, 32], [1, 3, 45, 37], [1, 3, 33, 64]],
            11,
        );
    }
}

/// `b` (imported from `model`) gives tract's logits at each of `shapes` (random inputs from
/// `seed`), and so does its ONNX export run by tract.
fn same_as_tract_and_exported(what: &str, model: &[u8], b: &Backbone, shapes: &[[usize; 4]], seed: u64) {
    let exported = edgepatch::export::to_onnx(b.graph(), None, edgepatch::export::ExportWeights::F32).unwrap();
    for &shape in shapes {
        let x = random_values(shape.iter().product(), seed, 2.0);
        let want = tract_run(model, shape, &x).expect("tract runs the model");
        let got = b.forward(Tensor::from_vec(shape, x.clone()).unwrap()).unwrap();
        if let Some((j, g, w)) = PARITY.check(&got.data, &want) {
            panic!("{what} at {shape:?}: logit {j} is {g}, tract says {w}");
        }
        let e = tract_run(&exported, shape, &x).unwrap();
        assert!(PARITY.check(&e, &want).is_none(), "{what} at {shape:?}: the export's logits differ");
    }
}

/// What the MobileNetV3 forms do not cover is refused with the node named: a quotient of two
/// computed values, MaxPool with ceil_mode or with padding as large as its kernel, a Slice of
/// an image, a Reshape of pooled features to a shape that is not `[N, F]`.
#[test]
fn unsupported_forms_of_the_mobilenet_v3_ops_are_refused() {
    let pool = |attrs: Vec<_>| {
        let mut b = OnnxBuilder::new(13);
        b.node("MaxPool", &["input"], "y", attrs);
        b.build("input", "y")
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            {
                let mut b = OnnxBuilder::new(13);
                b.node("Relu", &["input"], "r", vec![]).node("Div", &["input", "r"], "y", vec![]);
                b.build("input", "y")
            },
            "Div of two computed values",
        ),
        (pool(vec![ints("kernel_shape", &[2, 2]), int("ceil_mode", 1)]), "ceil_mode"),
        (pool(vec![ints("kernel_shape", &[2, 2]), ints("pads", &[2, 0, 0, 0])]), "as large as its kernel"),
        (
            {
                let mut b = OnnxBuilder::new(13);
                b.i64("s", &[1], vec![0]).i64("e", &[1], vec![1]);
                b.node("Slice", &["input", "s", "e"], "y", vec![]);
                b.build("input", "y")
            },
            "only of a shape",
        ),
        (
            {
                let mut b = OnnxBuilder::new(13);
                b.i64("f", &[2], vec![4, 3]);
                b.node("GlobalAveragePool", &["input"], "p", vec![]).node("Shape", &["p"], "s", vec![]);
                b.node("Concat", &["s", "f"], "t", vec![int("axis", 0)]).node("Reshape", &["p", "t"], "y", vec![]);
                b.build("input", "y")
            },
            "Reshape of pooled features",
        ),
    ];
    for (model, why) in cases {
        let Err(err) = Backbone::from_onnx_bytes(&model) else { panic!("{why}: accepted") };
        let err = err.to_string();
        assert!(err.contains(why), "{why}: {err}");
    }
}

/// A model whose output is `Softmax(logits)`: the graph outputs the logits, whose softmax is
/// tract's output; a Softmax anywhere else is refused.
#[test]
fn a_final_softmax_leaves_the_logits() {
    let model = tiny_net(TinyNet { softmax: true, ..TinyNet::default() }, 50);
    let b = Backbone::from_onnx_bytes(&model).unwrap();
    let shape = [2, 3, 32, 32];
    let x = random_values(shape.iter().product(), 1, 2.0);
    let want = tract_run(&model, shape, &x).unwrap();
    let logits = b.forward(Tensor::from_vec(shape, x).unwrap()).unwrap();
    let got: Vec<f32> = logits.data.chunks(5).flat_map(edgepatch::session::softmax).collect();
    assert!(PARITY.check(&got, &want).is_none(), "{got:?} vs {want:?}");
    let mut bad = OnnxBuilder::new(13);
    bad.f32("w", &[8, 3, 3, 3], random_values(216, 1, 0.5));
    bad.node("Conv", &["input", "w"], "conv", vec![ints("kernel_shape", &[3, 3])]);
    bad.node("Softmax", &["conv"], "inner", vec![int("axis", 1)]);
    let err = Backbone::from_onnx_bytes(&bad.build("input", "inner")).unwrap_err().to_string();
    assert!(err.contains("inner") && err.contains("Softmax"), "{err}");
}

/// Arithmetic with constants as exporters write it: a convolution without bias plus a reshaped
/// bias, scalar `Mul`, per-channel `Sub`, `Div` of a value read twice (an affine of its own), a
/// constant first in `Mul`: tract's logits, and what the import folds.
#[test]
fn arithmetic_with_constants_matches_tract() {
    let mut b = OnnxBuilder::new(13);
    b.f32("w", &[8, 3, 3, 3], random_values(8 * 27, 1, 0.5))
        .f32("bias", &[8], random_values(8, 2, 0.3))
        .i64("bias_shape", &[4], vec![1, -1, 1, 1])
        .f32("two", &[], vec![2.0])
        .f32("four", &[1], vec![4.0])
        .f32("shift", &[8, 1, 1], random_values(8, 3, 0.2))
        .f32("half", &[1, 1, 1, 1], vec![0.5])
        .f32("w2", &[6, 8, 1, 1], random_values(48, 4, 0.5))
        .f32("fc", &[6, 4], random_values(24, 5, 0.5))
        .f32("fc_b", &[4], random_values(4, 6, 0.1));
    b.node("Conv", &["input", "w"], "conv", vec![ints("kernel_shape", &[3, 3]), ints("pads", &[1; 4])])
        .node("Reshape", &["bias", "bias_shape"], "bias4", vec![])
        .node("Add", &["conv", "bias4"], "biased", vec![])
        .node("Mul", &["biased", "two"], "doubled", vec![])
        .node("Sub", &["doubled", "shift"], "shifted", vec![])
        .node("Relu", &["shifted"], "r", vec![])
        .node("Div", &["r", "four"], "quarter", vec![])
        .node("Add", &["quarter", "r"], "sum", vec![])
        .node("Mul", &["half", "sum"], "halved", vec![])
        .node("Conv", &["halved", "w2"], "conv2", vec![ints("kernel_shape", &[1, 1])])
        .node("GlobalAveragePool", &["conv2"], "pool", vec![])
        .node("Flatten", &["pool"], "flat", vec![])
        .node("MatMul", &["flat", "fc"], "mm", vec![])
        .node("Add", &["mm", "fc_b"], "logits", vec![]);
    let model = b.build("input", "logits");
    let bb = Backbone::from_onnx_bytes(&model).unwrap();
    let kinds: Vec<&str> = bb.graph().nodes.iter().map(|n| n.op.kind()).collect();
    // conv, its affine (bias, ×2, −shift merged), ReLU, the ÷4 affine (ReLU's output is read
    // twice), the sum, the ×0.5 affine, conv2 and its affine, pool, classifier.
    assert_eq!(
        kinds,
        ["conv", "affine", "relu", "affine", "add", "affine", "conv1x1", "affine", "global_pool", "linear"]
    );
    for shape in [[2, 3, 32, 32], [1, 3, 33, 35]] {
        let x = random_values(shape.iter().product(), 8, 2.0);
        let want = tract_run(&model, shape, &x).unwrap();
        let got = bb.forward(Tensor::from_vec(shape, x).unwrap()).unwrap();
        if let Some((j, g, w)) = PARITY.check(&got.data, &want) {
            panic!("{shape:?}: logit {j} is {g}, tract says {w}");
        }
    }
    // Refused with the node named: a constant of another shape, division by zero, two
    // computed operands of Div (two of Mul are a product, `mobilenet_v3_parts_match_tract`).
    for (op, c, dims, want) in [
        ("Add", vec![1.0; 16], vec![16], "shape"),
        ("Div", vec![0.0], vec![1], "is 0"),
        ("Div", vec![], vec![], "two computed values"),
    ] {
        let mut b = OnnxBuilder::new(13);
        b.f32("w", &[8, 3, 3, 3], random_values(216, 1, 0.5));
        b.node("Conv", &["input", "w"], "conv", vec![ints("kernel_shape", &[3, 3])]);
        let other = if c.is_empty() {
            "conv"
        } else {
            b.f32("c", &dims, c);
            "c"
        };
        b.node(op, &["conv", other], "bad", vec![]);
        let err = Backbone::from_onnx_bytes(&b.build("input", "bad")).unwrap_err().to_string();
        assert!(err.contains("bad") && err.contains(want), "{op}: {err}");
    }
}

/// ONNX SAME padding at strides 1 and 2 (odd and even inputs pad differently at stride 2) and
/// depthwise kernels of 3, 5 and 7: the logits of tract, at input sizes that reach both parities.
#[test]
fn same_padding_and_larger_depthwise_kernels_match_tract() {
    for (i, (auto_pad, dw2_kernel, quantized)) in [
        (Some("SAME_UPPER"), 3, false),
        (Some("SAME_LOWER"), 3, true),
        (Some("SAME_UPPER"), 5, true),
        (Some("SAME_LOWER"), 7, false),
        (None, 5, false),
        (None, 7, true),
    ]
    .into_iter()
    .enumerate()
    {
        let v = TinyNet { auto_pad, dw2_kernel, quantized, ..TinyNet::default() };
        let model = tiny_net(v, 300 + i as u64);
        let b = Backbone::from_onnx_bytes(&model).unwrap_or_else(|e| panic!("{v:?}: {e}"));
        for shape in [[2, 3, 32, 32], [1, 3, 45, 37], [1, 3, 34, 35]] {
            let x = random_values(shape.iter().product(), 17 + i as u64, 2.0);
            let want = tract_run(&model, shape, &x).expect("tract runs the model");
            let got = b.forward(Tensor::from_vec(shape, x).unwrap()).unwrap();
            if let Some((j, g, w)) = PARITY.check(&got.data, &want) {
                panic!("{v:?} at {shape:?}: logit {j} is {g}, tract says {w}");
            }
        }
        // It exports as it came in (auto_pad kept) and tract agrees with the export too.
        let exported = edgepatch::export::to_onnx(b.graph(), None, edgepatch::export::ExportWeights::F32).unwrap();
        let shape = [1, 3, 45, 37];
        let x = random_values(shape.iter().product(), 5, 2.0);
        let (a, e) = (tract_run(&model, shape, &x).unwrap(), tract_run(&exported, shape, &x).unwrap());
        assert!(PARITY.check(&e, &a).is_none(), "{v:?}: the export's logits differ from the model's");
        assert_eq!(Backbone::from_onnx_bytes(&exported).unwrap().graph().nodes.len(), b.graph().nodes.len());
    }
}

#[test]
fn folded_conv_bias_becomes_an_affine_with_unit_scale() {
    let b = Backbone::from_onnx_bytes(&tiny_net(TinyNet { folded: true, ..Default::default() }, 1)).unwrap();
    let g = b.graph();
    let affines: Vec<_> =
        g.nodes.iter().filter_map(|n| if let Op::Affine(a) = &n.op { Some(a) } else { None }).collect();
    assert_eq!(affines.len(), 6, "one affine per conv");
    assert!(affines.iter().all(|a| a.scale.iter().all(|&s| s == 1.0)));
    assert!(affines.iter().all(|a| a.bias.iter().any(|&b| b != 0.0)));
    let unfolded = Backbone::from_onnx_bytes(&tiny_net(TinyNet::default(), 1)).unwrap();
    assert_eq!(unfolded.graph().patchable().sb, g.patchable().sb);
}

#[test]
fn quantized_weights_stay_int8() {
    let b = Backbone::from_onnx_bytes(&tiny_net(TinyNet { quantized: true, ..Default::default() }, 3)).unwrap();
    for n in &b.graph().nodes {
        match &n.op {
            Op::Conv(c) => assert!(matches!(c.weights, Weights::Int8 { .. }), "{}", n.name),
            Op::Depthwise(d) => assert!(matches!(d.weights, Weights::Int8 { .. }), "{}", n.name),
            Op::Linear(l) => assert!(matches!(l.weights, Weights::Int8 { .. }), "{}", n.name),
            _ => {}
        }
    }
}

#[test]
fn shipped_model_counts() {
    let b = Backbone::embedded().unwrap();
    let g = b.graph();
    assert_eq!(g.params(), 3_504_872);
    let p = g.patchable();
    assert_eq!((p.sb, p.bias, p.dw, p.logits), (34_112, 17_056, 64_224, 1_281_000));
    assert_eq!(g.num_classes(), 1000);
    assert_eq!(b.labels()[285], "Egyptian cat");
    assert!(b.resident_bytes() < 3_800_000, "int8 resident bytes {}", b.resident_bytes());
    assert_eq!(b.fingerprint(), Backbone::embedded().unwrap().fingerprint());
    assert_eq!(b.fingerprint().len(), 16);
    for n in &g.nodes {
        if let Op::Conv(c) = &n.op {
            assert!(matches!(c.weights, Weights::Int8 { .. }), "{} is not int8", n.name);
        }
    }
}

#[test]
fn any_input_size_from_32() {
    let b = Backbone::from_onnx_bytes(&tiny_net(TinyNet::default(), 4)).unwrap();
    for (h, w) in [(32, 32), (33, 61), (64, 40)] {
        let x = Tensor::zeros([1, 3, h, w]);
        assert_eq!(b.forward(x).unwrap().shape, [1, 5, 1, 1]);
    }
    assert!(matches!(b.forward(Tensor::zeros([1, 3, 31, 64])), Err(Error::Input(_))));
    assert!(matches!(b.forward(Tensor::zeros([1, 4, 64, 64])), Err(Error::Input(_))));
    assert!(matches!(b.forward(Tensor::zeros([0, 3, 64, 64])), Err(Error::Input(_))));
}

#[test]
fn unsupported_op_names_node_and_op() {
    let mut b = OnnxBuilder::new(13);
    b.f32("w", &[4, 3, 1, 1], random_values(12, 1, 1.0));
    b.node("Conv", &["input", "w"], "conv", vec![]);
    b.node("LeakyRelu", &["conv"], "leaky", vec![]);
    let err = Backbone::from_onnx_bytes(&b.build("input", "leaky")).unwrap_err();
    match &err {
        Error::UnsupportedOp { node, op } => assert_eq!((node.as_str(), op.as_str()), ("leaky", "LeakyRelu")),
        e => panic!("unexpected error {e}"),
    }
    assert!(err.to_string().contains("LeakyRelu") && err.to_string().contains("leaky"));
}

#[test]
fn grouped_conv_is_refused() {
    let mut b = OnnxBuilder::new(13);
    b.f32("w", &[4, 2, 3, 3], random_values(72, 1, 1.0));
    b.node("Conv", &["input", "w"], "grouped", vec![int("group", 2)]);
    let err = Backbone::from_onnx_bytes(&b.build("input", "grouped")).unwrap_err();
    assert!(matches!(&err, Error::InvalidNode { node, .. } if node == "grouped"), "{err}");
}

#[test]
fn model_without_classifier_is_refused() {
    let mut b = OnnxBuilder::new(13);
    b.f32("w", &[4, 3, 1, 1], random_values(12, 1, 1.0));
    b.node("Conv", &["input", "w"], "conv", vec![]);
    assert!(matches!(Backbone::from_onnx_bytes(&b.build("input", "conv")), Err(Error::InvalidModel(_))));
}

#[test]
fn every_truncation_of_a_small_model_is_an_error() {
    let model = tiny_net(TinyNet { quantized: true, ..Default::default() }, 9);
    for len in 0..model.len() {
        assert!(Backbone::from_onnx_bytes(&model[..len]).is_err(), "a {len}-byte prefix was accepted");
    }
}

#[test]
fn truncated_and_random_shipped_model_is_an_error() {
    let model = edgepatch::backbone::EMBEDDED_MODEL;
    for len in [0, 1, 10, 1000, model.len() / 2, model.len() - 1] {
        assert!(Backbone::from_onnx_bytes(&model[..len]).is_err(), "{len}-byte prefix accepted");
    }
    for seed in 0..50u64 {
        let bytes: Vec<u8> = random_values(4096, seed, 1.0).iter().map(|v| (v * 127.0 + 128.0) as u8).collect();
        assert!(Backbone::from_onnx_bytes(&bytes).is_err());
    }
}

/// Found by the ONNX fuzzer: a graph whose output is an inner value (here the stem's or a
/// depthwise layer's) imported, then `predict` indexed labels past the end. The output must be
/// what the classifier computes.
#[test]
fn an_output_other_than_the_classifier_is_refused() {
    use prost::Message;
    for inner in ["stem", "dw2"] {
        let mut m = tract_onnx::pb::ModelProto::decode(tiny_net(TinyNet::default(), 1).as_slice()).unwrap();
        let g = m.graph.as_mut().unwrap();
        assert!(g.node.iter().any(|n| n.output.iter().any(|o| o == inner)), "tiny_net has no value {inner}");
        g.output[0].name = inner.into();
        let e = Backbone::from_onnx_bytes(&m.encode_to_vec()).expect_err("refused").to_string();
        assert!(e.contains("not computed by the classifier"), "{inner}: {e}");
    }
}
