//! Small ONNX graphs built in code (no binary fixtures), encoded with tract-onnx's protobuf types.

use prost::Message;
use tract_onnx::pb::{
    attribute_proto, tensor_proto, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    TensorProto, TypeProto, ValueInfoProto,
};

/// Accumulates nodes and initializers of one graph.
#[derive(Default)]
pub struct OnnxBuilder {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    opset: i64,
}

fn tensor(name: &str, dims: &[usize], data_type: tensor_proto::DataType) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: data_type as i32,
        ..Default::default()
    }
}

/// An integer attribute.
pub fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: attribute_proto::AttributeType::Int as i32, i: v, ..Default::default() }
}

/// An integer-list attribute.
pub fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_proto::AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// A string attribute.
pub fn string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_proto::AttributeType::String as i32,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// A float attribute.
pub fn float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_proto::AttributeType::Float as i32,
        f: v,
        ..Default::default()
    }
}

fn value_info(name: &str) -> ValueInfoProto {
    let t = type_proto::Tensor { elem_type: tensor_proto::DataType::Float as i32, shape: None };
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto { value: Some(type_proto::Value::TensorType(t)), ..Default::default() }),
        ..Default::default()
    }
}

impl OnnxBuilder {
    /// A builder for operator set `opset`.
    pub fn new(opset: i64) -> Self {
        OnnxBuilder { opset, ..Default::default() }
    }

    /// Adds an f32 initializer.
    pub fn f32(&mut self, name: &str, dims: &[usize], data: Vec<f32>) -> &mut Self {
        assert_eq!(dims.iter().product::<usize>(), data.len());
        let mut t = tensor(name, dims, tensor_proto::DataType::Float);
        t.raw_data = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.inits.push(t);
        self
    }

    /// Adds an int8 initializer.
    pub fn i8(&mut self, name: &str, dims: &[usize], data: Vec<i8>) -> &mut Self {
        let mut t = tensor(name, dims, tensor_proto::DataType::Int8);
        t.raw_data = data.iter().map(|&v| v as u8).collect();
        self.inits.push(t);
        self
    }

    /// Adds an int64 initializer.
    pub fn i64(&mut self, name: &str, dims: &[usize], data: Vec<i64>) -> &mut Self {
        let mut t = tensor(name, dims, tensor_proto::DataType::Int64);
        t.int64_data = data;
        self.inits.push(t);
        self
    }

    /// Adds a node named after its first output.
    pub fn node(&mut self, op: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>) -> &mut Self {
        self.nodes.push(NodeProto {
            name: output.into(),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute: attrs,
            ..Default::default()
        });
        self
    }

    /// Encodes the model with one input and one output.
    pub fn build(&self, input: &str, output: &str) -> Vec<u8> {
        let graph = GraphProto {
            name: "test".into(),
            node: self.nodes.clone(),
            initializer: self.inits.clone(),
            input: vec![value_info(input)],
            output: vec![value_info(output)],
            ..Default::default()
        };
        let model = ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: self.opset }],
            graph: Some(graph),
            ..Default::default()
        };
        model.encode_to_vec()
    }
}

/// Variants of [`tiny_net`], covering the import paths of the real exports.
#[derive(Debug, Clone, Copy, Default)]
pub struct TinyNet {
    /// Conv with bias and no BatchNormalization (a BN-folded export).
    pub folded: bool,
    /// Opset 6 with Clip bounds as attributes (instead of opset 13 with inputs).
    pub clip_attrs: bool,
    /// MatMul + Add classifier (instead of Gemm with transB).
    pub matmul: bool,
    /// int8 weights behind DequantizeLinear.
    pub quantized: bool,
    /// `auto_pad` (SAME_UPPER, SAME_LOWER) instead of explicit pads on every window larger
    /// than 1×1: the stem and the second depthwise (stride 2) then pad odd and even inputs
    /// differently.
    pub auto_pad: Option<&'static str>,
    /// The second depthwise kernel's size (3 when 0).
    pub dw2_kernel: usize,
    /// HardSigmoid in two places: after the last 1×1 convolution's BatchNorm (default α and β,
    /// merged into that affine) and after the residual sum (α 0.25, β 0.4: an affine of its
    /// own).
    pub hard_sigmoid: bool,
    /// The model's output is `Softmax(logits)` (named `probs`).
    pub softmax: bool,
    /// MobileNetV3's parts (opset 14): the stem's activation HardSwish as Paddle writes it
    /// (`x · Clip(x + 3, 0, 6) / 6`); squeeze-excitation after the block's depthwise (global
    /// pool, 1×1 convolutions with biases, ReLU, HardSigmoid, the gate multiplied first); the
    /// last 1×1 convolution's activation the `HardSwish` op; a 3×3/2 MaxPool (padding 1) before
    /// the pooling; and the flatten as `Shape → Slice → Concat → Reshape`.
    pub v3: bool,
}

/// A MobileNetV2-shaped network with random weights: stem 3×3/2 → inverted residual block
/// (expand 1×1, depthwise 3×3, project 1×1, residual add) → depthwise 3×3/2 → 1×1 → global
/// average pool → flatten → 5 classes. Input `[N, 3, H, W]` named `input`, output `logits`.
pub fn tiny_net(v: TinyNet, seed: u64) -> Vec<u8> {
    let mut b = OnnxBuilder::new(if v.clip_attrs {
        6
    } else if v.v3 {
        14
    } else {
        13
    });
    let counter = std::cell::Cell::new(seed);
    let rnd = |n: usize, scale: f32| {
        counter.set(counter.get() + 1);
        crate::random_values(n, counter.get(), scale)
    };
    if !v.clip_attrs {
        b.f32("zero", &[], vec![0.0]).f32("six", &[], vec![6.0]);
    }
    let weight = |b: &mut OnnxBuilder, name: &str, dims: &[usize]| -> String {
        let n: usize = dims.iter().product();
        let fan_in: usize = dims[1..].iter().product();
        let w = rnd(n, 1.5 / (fan_in as f32).sqrt());
        if !v.quantized {
            b.f32(name, dims, w);
            return name.to_string();
        }
        let rows = dims[0];
        let per = n / rows;
        let scales: Vec<f32> = w.chunks(per).map(|r| r.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0).collect();
        let q: Vec<i8> = w.iter().enumerate().map(|(i, x)| (x / scales[i / per]).round() as i8).collect();
        b.i8(&format!("{name}_q"), dims, q).f32(&format!("{name}_s"), &[rows], scales);
        b.node("DequantizeLinear", &[&format!("{name}_q"), &format!("{name}_s")], name, vec![int("axis", 0)]);
        name.to_string()
    };
    let params = |n: usize, lo: f32, hi: f32| -> Vec<f32> {
        rnd(n, 1.0).iter().map(|x| lo + (x + 1.0) / 2.0 * (hi - lo)).collect()
    };
    let conv = |b: &mut OnnxBuilder,
                x: &str,
                name: &str,
                co: usize,
                ci: usize,
                k: usize,
                stride: i64,
                group: usize,
                act: bool|
     -> String {
        let w = weight(b, &format!("{name}.w"), &[co, ci / group, k, k]);
        let pad = (k / 2) as i64;
        let padding = match v.auto_pad {
            Some(mode) if k > 1 => string("auto_pad", mode),
            _ => ints("pads", &[pad; 4]),
        };
        let attrs = vec![
            ints("kernel_shape", &[k as i64, k as i64]),
            ints("strides", &[stride, stride]),
            padding,
            int("group", group as i64),
        ];
        let out = if v.folded {
            let bias = params(co, -0.2, 0.2);
            b.f32(&format!("{name}.b"), &[co], bias);
            b.node("Conv", &[x, &w, &format!("{name}.b")], name, attrs);
            name.to_string()
        } else {
            b.node("Conv", &[x, &w], name, attrs);
            let bn = format!("{name}.bn");
            let (g, be, m, var) =
                (params(co, 0.5, 1.5), params(co, -0.2, 0.2), params(co, -0.3, 0.3), params(co, 0.5, 2.0));
            for (suffix, vals) in [("g", g), ("be", be), ("m", m), ("v", var)] {
                b.f32(&format!("{bn}.{suffix}"), &[co], vals);
            }
            let ins = [name.to_string(), format!("{bn}.g"), format!("{bn}.be"), format!("{bn}.m"), format!("{bn}.v")];
            let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
            b.node("BatchNormalization", &ins, &bn, vec![float("epsilon", 1e-5)]);
            bn
        };
        if !act {
            return out;
        }
        let r = format!("{name}.relu6");
        if v.clip_attrs {
            b.node("Clip", &[&out], &r, vec![float("min", 0.0), float("max", 6.0)]);
        } else {
            b.node("Clip", &[&out, "zero", "six"], &r, vec![]);
        }
        r
    };
    let stem = if v.v3 {
        // HardSwish as Paddle exports it.
        let x = conv(&mut b, "input", "stem", 8, 3, 3, 2, 1, false);
        b.f32("three", &[], vec![3.0]);
        b.node("Add", &[&x, "three"], "stem.plus3", vec![]);
        b.node("Clip", &["stem.plus3", "zero", "six"], "stem.clip", vec![]);
        b.node("Mul", &[&x, "stem.clip"], "stem.mul", vec![]);
        b.node("Div", &["stem.mul", "six"], "stem.hswish", vec![]);
        "stem.hswish".to_string()
    } else {
        conv(&mut b, "input", "stem", 8, 3, 3, 2, 1, true)
    };
    let e = conv(&mut b, &stem, "expand", 16, 8, 1, 1, 1, true);
    let mut d = conv(&mut b, &e, "dw", 16, 16, 3, 1, 16, true);
    if v.v3 {
        // Squeeze-excitation: 16 → 4 → 16 channels on the pooled values, the gate first.
        b.node("GlobalAveragePool", &[&d], "se.pool", vec![]);
        let one = |b: &mut OnnxBuilder, x: &str, name: &str, co: usize, ci: usize| {
            let w = weight(b, &format!("{name}.w"), &[co, ci, 1, 1]);
            b.f32(&format!("{name}.b"), &[co], params(co, -0.3, 0.3));
            let attrs = vec![ints("kernel_shape", &[1, 1]), ints("strides", &[1, 1]), ints("pads", &[0; 4])];
            b.node("Conv", &[x, &w, &format!("{name}.b")], name, attrs);
        };
        one(&mut b, "se.pool", "se.reduce", 4, 16);
        b.node("Relu", &["se.reduce"], "se.relu", vec![]);
        one(&mut b, "se.relu", "se.expand", 16, 4);
        b.node("HardSigmoid", &["se.expand"], "se.gate", vec![]);
        b.node("Mul", &["se.gate", &d], "se.out", vec![]);
        d = "se.out".to_string();
    }
    let p = conv(&mut b, &d, "project", 8, 16, 1, 1, 1, false);
    b.node("Add", &[&stem, &p], "residual", vec![]);
    let residual = if v.hard_sigmoid {
        b.node("HardSigmoid", &["residual"], "residual.hs", vec![float("alpha", 0.25), float("beta", 0.4)]);
        "residual.hs"
    } else {
        "residual"
    };
    let k2 = if v.dw2_kernel == 0 { 3 } else { v.dw2_kernel };
    let d2 = conv(&mut b, residual, "dw2", 8, 8, k2, 2, 8, true);
    let last = if v.v3 {
        let pre = conv(&mut b, &d2, "last", 12, 8, 1, 1, 1, false);
        b.node("HardSwish", &[&pre], "last.hswish", vec![]);
        let attrs = vec![ints("kernel_shape", &[3, 3]), ints("strides", &[2, 2]), ints("pads", &[1; 4])];
        b.node("MaxPool", &["last.hswish"], "last.max", attrs);
        "last.max".to_string()
    } else if v.hard_sigmoid {
        let pre = conv(&mut b, &d2, "last", 12, 8, 1, 1, 1, false);
        b.node("HardSigmoid", &[&pre], "last.hs", vec![]);
        "last.hs".to_string()
    } else {
        conv(&mut b, &d2, "last", 12, 8, 1, 1, 1, true)
    };
    b.node("GlobalAveragePool", &[&last], "pool", vec![]);
    if v.v3 {
        b.i64("slice.start", &[1], vec![0]).i64("slice.end", &[1], vec![1]).i64("features", &[1], vec![12]);
        b.node("Shape", &["pool"], "pool.shape", vec![]);
        b.node("Slice", &["pool.shape", "slice.start", "slice.end"], "pool.batch", vec![]);
        b.node("Concat", &["pool.batch", "features"], "flat.shape", vec![int("axis", 0)]);
        b.node("Reshape", &["pool", "flat.shape"], "flat", vec![]);
    } else {
        b.node("Flatten", &["pool"], "flat", vec![int("axis", 1)]);
    }
    let bias = params(5, -0.5, 0.5);
    if v.matmul {
        let w = weight(&mut b, "fc.w", &[12, 5]);
        b.f32("fc.b", &[5], bias);
        b.node("MatMul", &["flat", &w], "fc", vec![]);
        b.node("Add", &["fc", "fc.b"], "logits", vec![]);
    } else {
        let w = weight(&mut b, "fc.w", &[5, 12]);
        b.f32("fc.b", &[5], bias);
        b.node("Gemm", &["flat", &w, "fc.b"], "logits", vec![int("transB", 1)]);
    }
    if v.softmax {
        b.node("Softmax", &["logits"], "probs", vec![int("axis", 1)]);
        return b.build("input", "probs");
    }
    b.build("input", "logits")
}
