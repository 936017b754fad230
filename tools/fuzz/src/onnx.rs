//! The ONNX importer's target: seeds are the test networks in every import variant (BatchNorm
//! or folded, Clip by attributes or inputs, Gemm or MatMul, f32 or int8 behind
//! DequantizeLinear) and the shipped int8 MobileNetV2. Mutations decode the model and change its
//! structure — an operator type, a dropped or doubled node, a rewired input, an attribute value,
//! a tensor's shape, data type or bytes, the graph output — or its bytes. An imported model must
//! also classify an image without a panic: an import that accepts what inference cannot run is a
//! crash.

use edgepatch::data::image::Rgb8;
use edgepatch::{Backbone, Session};
use edgepatch_tests::onnx_builder::{tiny_net, TinyNet};
use prost::Message;
use tract_onnx::pb::ModelProto;

use crate::{blank_numbers, mutate_bytes, Rng};

const OPS: [&str; 22] = [
    "Conv",
    "Gemm",
    "MatMul",
    "Add",
    "Clip",
    "Relu",
    "BatchNormalization",
    "GlobalAveragePool",
    "Flatten",
    "Reshape",
    "ReduceMean",
    "DequantizeLinear",
    "Mul",
    "HardSwish",
    "Identity",
    "Squeeze",
    "MaxPool",
    "Shape",
    "Slice",
    "Concat",
    "Cast",
    "HardSigmoid",
];

const INTERESTING: [i64; 10] = [0, -1, 1, 2, 3, 7, 64, 1 << 20, i64::MAX, i64::MIN];

pub fn seeds(_rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (i, (folded, clip_attrs, matmul, quantized)) in [
        (false, false, false, false),
        (true, true, true, false),
        (false, false, true, true),
        (true, false, false, true),
    ]
    .into_iter()
    .enumerate()
    {
        out.push(tiny_net(TinyNet { folded, clip_attrs, matmul, quantized, ..TinyNet::default() }, i as u64));
    }
    // SAME padding at stride 2 (size-dependent pads) with a 5×5 depthwise.
    let same = TinyNet { auto_pad: Some("SAME_UPPER"), dw2_kernel: 5, ..TinyNet::default() };
    out.push(tiny_net(same, 9));
    // HardSigmoid: merged into an affine and one of its own.
    out.push(tiny_net(TinyNet { hard_sigmoid: true, ..TinyNet::default() }, 10));
    // MobileNetV3's parts: products of two values, squeeze-excitation, MaxPool, HardSwish, the
    // Shape/Slice/Concat flatten.
    out.push(tiny_net(TinyNet { v3: true, quantized: true, ..TinyNet::default() }, 11));
    out.push(include_bytes!("../../../models/mobilenet_v2/mobilenet_v2_int8.onnx").to_vec());
    out
}

/// Every value name of the graph (inputs, initializers, node outputs), and the empty name.
fn names(m: &ModelProto) -> Vec<String> {
    let g = m.graph.as_ref().expect("checked by the caller");
    let mut n: Vec<String> = g.input.iter().map(|v| v.name.clone()).collect();
    n.extend(g.initializer.iter().map(|t| t.name.clone()));
    n.extend(g.node.iter().flat_map(|x| x.output.iter().cloned()));
    n.push(String::new());
    n
}

fn mutate_structure(m: &mut ModelProto, rng: &mut Rng) {
    let names = names(m);
    let g = m.graph.as_mut().expect("checked by the caller");
    let nodes = g.node.len();
    match rng.below(8) {
        0 if nodes > 0 => {
            let i = rng.below(nodes);
            g.node[i].op_type = OPS[rng.below(OPS.len())].to_string();
        }
        1 if nodes > 1 => {
            g.node.remove(rng.below(nodes));
        }
        2 if nodes > 0 => {
            let i = rng.below(nodes);
            let copy = g.node[i].clone();
            g.node.insert(rng.below(nodes + 1), copy);
        }
        3 if nodes > 0 => {
            let n = &mut g.node[rng.below(nodes)];
            let name = names[rng.below(names.len())].clone();
            match n.input.len() {
                0 => n.input.push(name),
                k => n.input[rng.below(k)] = name,
            }
        }
        4 if nodes > 0 => {
            let n = &mut g.node[rng.below(nodes)];
            if n.attribute.is_empty() {
                return;
            }
            let k = rng.below(n.attribute.len());
            let a = &mut n.attribute[k];
            let v = INTERESTING[rng.below(INTERESTING.len())];
            if a.ints.is_empty() || rng.below(4) == 0 {
                a.i = v;
                a.f = [0.0, -1.0, f32::NAN, f32::INFINITY, 1e30][rng.below(5)];
            } else {
                let j = rng.below(a.ints.len());
                a.ints[j] = v;
            }
        }
        5 if !g.initializer.is_empty() => {
            let k = rng.below(g.initializer.len());
            let t = &mut g.initializer[k];
            match rng.below(3) {
                0 if !t.dims.is_empty() => {
                    let j = rng.below(t.dims.len());
                    t.dims[j] = INTERESTING[rng.below(INTERESTING.len())];
                }
                1 => t.dims.push(1 + rng.below(3) as i64),
                _ => {
                    t.dims.pop();
                }
            }
        }
        6 if !g.initializer.is_empty() => {
            let k = rng.below(g.initializer.len());
            let t = &mut g.initializer[k];
            match rng.below(3) {
                0 => t.raw_data.truncate(rng.below(t.raw_data.len() + 1)),
                1 => t.data_type = rng.below(18) as i32,
                _ => {
                    let extra = 4 * (1 + rng.below(8));
                    t.raw_data.extend((0..extra).map(|_| rng.next_u64() as u8));
                }
            }
        }
        _ => {
            if let Some(o) = g.output.first_mut() {
                o.name = names[rng.below(names.len())].clone();
            }
        }
    }
}

pub fn mutate(input: &[u8], corpus: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let parsed = ModelProto::decode(input).ok().filter(|m| m.graph.is_some());
    match parsed {
        Some(mut m) if rng.below(4) != 0 => {
            for _ in 0..1 + rng.below(3) {
                mutate_structure(&mut m, rng);
            }
            m.encode_to_vec()
        }
        _ => {
            let mut b = input.to_vec();
            mutate_bytes(&mut b, corpus, rng);
            b
        }
    }
}

/// Imports `input`; an accepted model then classifies a 40 × 40 image.
pub fn execute(input: &[u8]) -> String {
    match Backbone::from_onnx_bytes(input) {
        Err(e) => blank_numbers(&format!("import: {e}")),
        Ok(b) => {
            let img = Rgb8 { width: 40, height: 40, data: (0..40 * 40 * 3).map(|i| (i * 7 % 256) as u8).collect() };
            match Session::new(b).classify(&[img], 3) {
                Ok(_) => "accepted".into(),
                Err(e) => blank_numbers(&format!("predict: {e}")),
            }
        }
    }
}
