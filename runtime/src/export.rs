//! Graph → ONNX: a backbone with a task patch folded in, written as a standard ONNX model that
//! any ONNX runtime runs (opset 13, protobuf types from tract-onnx, encoded with prost).
//!
//! ```text
//! Conv / Depthwise   Conv (group = C for depthwise), no bias; int8 kernels behind a per-output-
//!                    channel DequantizeLinear (axis 0, zero point 0) when exporting int8;
//!                    explicit pads, or the auto_pad SAME mode the window was imported with
//! Affine             BatchNormalization(scale = s, B = b, mean = 0, var = 1, epsilon = 0) = s·x + b
//! Relu / Relu6       Relu / Clip(0, 6)
//! Clip01             Clip(0, 1) (an imported HardSigmoid is its affine, then this)
//! Add, GlobalPool    Add, GlobalAveragePool
//! Linear             Flatten(axis 1) → Gemm(transB = 1)
//! ```
//!
//! Input `input: [N, C, H, W]` (N, H and W symbolic), output `logits: [N, classes]`. The model's
//! metadata carries the task: `edgepatch.labels` (one per line), `edgepatch.resolution`,
//! `edgepatch.kinds` and `edgepatch.backbone` (the fingerprint the patch was made for).
//! Re-importing the file gives back the same graph: kernels, scales and biases bit for bit.

use crate::ops::Activation;
use prost::Message;
use tract_onnx::pb::{
    attribute_proto, tensor_proto, tensor_shape_proto, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

use crate::graph::{Graph, Op, Weights, Window};
use crate::patch::Patch;
use crate::{Error, Result};

/// How kernels are stored in the exported model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExportWeights {
    /// Kernels that are int8 in the graph stay int8 behind DequantizeLinear (weight-only QDQ);
    /// kernels the patch trained are f32.
    #[default]
    Int8,
    /// Every kernel dequantized to f32.
    F32,
}

impl std::str::FromStr for ExportWeights {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "int8" => Ok(ExportWeights::Int8),
            "f32" => Ok(ExportWeights::F32),
            _ => Err(Error::InvalidModel(format!("unknown export weights '{s}' (expected int8 or f32)"))),
        }
    }
}

const OPSET: i64 = 13;

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: attribute_proto::AttributeType::Int as i32, i: v, ..Default::default() }
}

fn attr_ints(name: &str, v: &[usize]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_proto::AttributeType::Ints as i32,
        ints: v.iter().map(|&x| x as i64).collect(),
        ..Default::default()
    }
}

fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_proto::AttributeType::Float as i32,
        f: v,
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[&str]) -> ValueInfoProto {
    let dim = |d: &str| tensor_shape_proto::Dimension {
        value: Some(match d.parse::<i64>() {
            Ok(v) => tensor_shape_proto::dimension::Value::DimValue(v),
            Err(_) => tensor_shape_proto::dimension::Value::DimParam(d.into()),
        }),
        ..Default::default()
    };
    let shape = TensorShapeProto { dim: dims.iter().map(|d| dim(d)).collect() };
    let t = type_proto::Tensor { elem_type: tensor_proto::DataType::Float as i32, shape: Some(shape) };
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto { value: Some(type_proto::Value::TensorType(t)), ..Default::default() }),
        ..Default::default()
    }
}

/// Nodes and initializers being written.
#[derive(Default)]
struct Writer {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
}

impl Writer {
    fn f32(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        self.inits.push(TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: tensor_proto::DataType::Float as i32,
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name.into()
    }

    fn i8(&mut self, name: &str, dims: &[usize], data: &[i8]) -> String {
        self.inits.push(TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: tensor_proto::DataType::Int8 as i32,
            raw_data: data.iter().map(|&v| v as u8).collect(),
            ..Default::default()
        });
        name.into()
    }

    fn node(&mut self, op: &str, name: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) {
        self.nodes.push(NodeProto {
            name: name.into(),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute,
            ..Default::default()
        });
    }

    /// A kernel of shape `dims` (rows along axis 0), int8 behind DequantizeLinear or f32.
    fn kernel(&mut self, name: &str, dims: &[usize], w: &Weights, mode: ExportWeights) -> String {
        match (w, mode) {
            (Weights::Int8 { values, scales }, ExportWeights::Int8) => {
                let q = self.i8(&format!("{name}.q"), dims, values);
                let s = self.f32(&format!("{name}.scale"), &[scales.len()], scales);
                let z = self.i8(&format!("{name}.zero"), &[scales.len()], &vec![0; scales.len()]);
                self.node(
                    "DequantizeLinear",
                    &format!("{name}.dequantize"),
                    &[&q, &s, &z],
                    name,
                    vec![attr_int("axis", 0)],
                );
                name.into()
            }
            _ => self.f32(name, dims, &w.to_f32()),
        }
    }

    fn conv(&mut self, name: &str, x: &str, y: &str, w: &str, window: &Window, group: usize) {
        let mut attrs = window_attrs(window);
        attrs.extend([attr_ints("dilations", &[1, 1]), attr_int("group", group as i64)]);
        self.node("Conv", name, &[x, w], y, attrs);
    }
}

/// A window's `kernel_shape`, `strides` and padding; padding that depends on the input's size
/// goes out as the `auto_pad` it came in as.
fn window_attrs(window: &Window) -> Vec<AttributeProto> {
    let padding = match window.auto {
        Some(a) => AttributeProto {
            name: "auto_pad".into(),
            r#type: attribute_proto::AttributeType::String as i32,
            s: a.onnx_name().as_bytes().to_vec(),
            ..Default::default()
        },
        None => attr_ints("pads", &window.pads),
    };
    vec![attr_ints("kernel_shape", &window.kernel), attr_ints("strides", &window.stride), padding]
}

/// Encodes `graph` (a backbone, with or without a patch applied) as an ONNX model. `task`, when
/// given, names the patch whose labels, resolution and kinds go into the metadata.
pub fn to_onnx(graph: &Graph, task: Option<&Patch>, mode: ExportWeights) -> Result<Vec<u8>> {
    let mut w = Writer::default();
    let name = |id: usize| {
        if id == 0 {
            "input".to_string()
        } else if id == graph.output {
            "logits".into()
        } else {
            format!("v{id}")
        }
    };
    for (i, n) in graph.nodes.iter().enumerate() {
        let p = format!("n{i}_{}", n.op.kind());
        let x =
            n.inputs.first().map(|&v| name(v)).ok_or_else(|| Error::InvalidModel(format!("node {i} has no input")))?;
        let y = name(n.output);
        match &n.op {
            Op::Conv(c) => {
                let dims = [c.out_channels, c.in_channels, c.window.kernel[0], c.window.kernel[1]];
                let k = w.kernel(&format!("{p}.weight"), &dims, &c.weights, mode);
                w.conv(&p, &x, &y, &k, &c.window, 1);
            }
            Op::Depthwise(d) => {
                let dims = [d.channels, 1, d.window.kernel[0], d.window.kernel[1]];
                let k = w.kernel(&format!("{p}.weight"), &dims, &d.weights, mode);
                w.conv(&p, &x, &y, &k, &d.window, d.channels);
            }
            Op::Affine(a) => {
                let c = a.scale.len();
                let s = w.f32(&format!("{p}.scale"), &[c], &a.scale);
                let b = w.f32(&format!("{p}.bias"), &[c], &a.bias);
                let m = w.f32(&format!("{p}.mean"), &[c], &vec![0.0; c]);
                let v = w.f32(&format!("{p}.var"), &[c], &vec![1.0; c]);
                w.node("BatchNormalization", &p, &[&x, &s, &b, &m, &v], &y, vec![attr_float("epsilon", 0.0)]);
            }
            Op::Act(Activation::Identity) => w.node("Identity", &p, &[&x], &y, vec![]),
            Op::Act(Activation::Relu) => w.node("Relu", &p, &[&x], &y, vec![]),
            Op::Act(act @ (Activation::Relu6 | Activation::Clip01)) => {
                let lo = w.f32(&format!("{p}.min"), &[], &[0.0]);
                let hi = w.f32(&format!("{p}.max"), &[], &[act.apply(f32::INFINITY)]);
                w.node("Clip", &p, &[&x, &lo, &hi], &y, vec![]);
            }
            Op::Add => {
                let b = n
                    .inputs
                    .get(1)
                    .map(|&v| name(v))
                    .ok_or_else(|| Error::InvalidModel("Add with one input".into()))?;
                w.node("Add", &p, &[&x, &b], &y, vec![]);
            }
            Op::Mul => {
                let b = n
                    .inputs
                    .get(1)
                    .map(|&v| name(v))
                    .ok_or_else(|| Error::InvalidModel("Mul with one input".into()))?;
                w.node("Mul", &p, &[&x, &b], &y, vec![]);
            }
            Op::MaxPool(window) => w.node("MaxPool", &p, &[&x], &y, window_attrs(window)),
            Op::GlobalPool => w.node("GlobalAveragePool", &p, &[&x], &y, vec![]),
            Op::Linear(l) => {
                let flat = format!("{p}.flat");
                w.node("Flatten", &format!("{p}.flatten"), &[&x], &flat, vec![attr_int("axis", 1)]);
                let k = w.kernel(&format!("{p}.weight"), &[l.out_features, l.in_features], &l.weights, mode);
                let b = w.f32(&format!("{p}.bias"), &[l.out_features], &l.bias);
                w.node("Gemm", &p, &[&flat, &k, &b], &y, vec![attr_int("transB", 1)]);
            }
        }
    }
    let meta = |k: &str, v: String| StringStringEntryProto { key: k.into(), value: v };
    let metadata_props = match task {
        Some(t) => vec![
            meta("edgepatch.labels", t.labels.join("\n")),
            meta("edgepatch.resolution", t.resolution.to_string()),
            meta("edgepatch.kinds", t.kinds.to_string()),
            meta("edgepatch.backbone", t.fingerprint.clone()),
        ],
        None => Vec::new(),
    };
    let channels = graph.input_channels.to_string();
    let classes = graph.num_classes().to_string();
    let model = ModelProto {
        ir_version: 8,
        producer_name: "edgepatch".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
        metadata_props,
        graph: Some(GraphProto {
            name: "edgepatch".into(),
            node: w.nodes,
            initializer: w.inits,
            input: vec![value_info("input", &["N", &channels, "H", "W"])],
            output: vec![value_info("logits", &["N", &classes])],
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(model.encode_to_vec())
}

/// `patch` folded into `base` (see [`Patch::apply`]) and encoded as ONNX.
pub fn patched_onnx(base: &Graph, patch: &Patch, mode: ExportWeights) -> Result<Vec<u8>> {
    to_onnx(&patch.apply(base)?, Some(patch), mode)
}
