//! ONNX → [`Graph`]. tract-onnx parses the protobuf; this module reads the nodes and
//! initializers and builds the runtime's IR. It is the only module that names tract types.
//!
//! Supported: Conv (groups 1 and depthwise), BatchNormalization, Relu, Clip (ReLU6, 0–1; bounds
//! as inputs or attributes), HardSigmoid, HardSwish, Add (residual, or with a constant),
//! Sub/Mul/Div with a constant, Mul of two computed values, GlobalAveragePool, ReduceMean over
//! H and W, MaxPool, Flatten/Reshape/Squeeze after pooling (and the Shape/Cast/Slice/Concat
//! that compute a flatten's shape), Gemm, MatMul, a final Softmax, DequantizeLinear on weights,
//! Constant, Identity, Dropout. Every Conv is followed by an affine in the IR: its BatchNorm
//! folded, or its bias (scale 1), or the identity.

mod activation;
mod classifier;
mod elementwise;
mod shape;
mod tensor;

use crate::ops::Activation;
use std::collections::HashMap;

use tract_onnx::pb::{AttributeProto, NodeProto};
use tract_onnx::prelude::Framework;

use crate::graph::{Affine, AutoPad, Conv, Depthwise, Graph, Node, Op, ValueId, Window};
use crate::{Error, Result};
use tensor::Const;

/// What an ONNX name refers to while importing.
#[derive(Debug, Clone)]
enum Value {
    Const(Const),
    /// A runtime value; `flat` when it is `[N, C, 1, 1]` (after pooling or a linear layer).
    Runtime {
        id: ValueId,
        flat: bool,
    },
    /// The shape of a runtime value, or part of one ([`shape::Dim`]).
    Dims(Vec<shape::Dim>),
}

struct Importer {
    values: HashMap<String, Value>,
    uses: HashMap<String, usize>,
    nodes: Vec<Node>,
    num_values: usize,
    input_channels: Option<usize>,
    opset: i64,
    /// The graph's output names.
    outputs: Vec<String>,
    /// For each name an `Identity` node reads, that node's output.
    identities: HashMap<String, String>,
}

/// Parses ONNX bytes and builds the graph. Errors name the offending node and op.
pub fn from_bytes(bytes: &[u8]) -> Result<Graph> {
    let proto =
        tract_onnx::onnx().proto_model_for_read(&mut &bytes[..]).map_err(|e| Error::OnnxParse(format!("{e:#}")))?;
    let graph = proto.graph.as_ref().ok_or_else(|| Error::OnnxParse("no graph in the model".into()))?;
    let opset = proto
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .unwrap_or(1);

    let mut im = Importer {
        values: HashMap::new(),
        uses: HashMap::new(),
        nodes: Vec::new(),
        num_values: 1,
        input_channels: None,
        opset,
        outputs: graph.output.iter().map(|o| o.name.clone()).collect(),
        identities: graph
            .node
            .iter()
            .filter(|n| n.op_type == "Identity" && n.input.len() == 1 && n.output.len() == 1)
            .map(|n| (n.input[0].clone(), n.output[0].clone()))
            .collect(),
    };
    for init in &graph.initializer {
        im.values.insert(init.name.clone(), Value::Const(tensor::decode(init, &init.name)?));
    }
    let inputs: Vec<&str> =
        graph.input.iter().map(|i| i.name.as_str()).filter(|n| !im.values.contains_key(*n)).collect();
    if inputs.len() != 1 {
        return Err(Error::InvalidModel(format!("expected one image input, found {}", inputs.len())));
    }
    im.values.insert(inputs[0].to_string(), Value::Runtime { id: 0, flat: false });
    for node in &graph.node {
        for i in node.input.iter().filter(|i| !i.is_empty()) {
            *im.uses.entry(i.clone()).or_default() += 1;
        }
    }
    for o in &graph.output {
        *im.uses.entry(o.name.clone()).or_default() += 1;
    }
    for node in &graph.node {
        im.node(node)?;
    }
    if graph.output.len() != 1 {
        return Err(Error::InvalidModel(format!("expected one output, found {}", graph.output.len())));
    }
    let output = match im.values.get(&graph.output[0].name) {
        Some(Value::Runtime { id, .. }) if *id != 0 => *id,
        _ => return Err(Error::InvalidModel(format!("output '{}' is not computed", graph.output[0].name))),
    };
    let input_channels =
        im.input_channels.ok_or_else(|| Error::InvalidModel("the input does not feed a convolution".into()))?;
    let g = Graph { nodes: im.nodes, input_channels, num_values: im.num_values, output };
    if !g.nodes.iter().any(|n| matches!(n.op, Op::Linear(_))) {
        return Err(Error::InvalidModel("no classifier (Gemm or MatMul) found".into()));
    }
    if g.input_channels == 0 {
        return Err(Error::InvalidModel("the input has zero channels".into()));
    }
    for n in &g.nodes {
        if let Some(what) = zero_sized(&n.op) {
            return Err(Error::node(&n.name, format!("zero-sized layer: {what} is 0")));
        }
    }
    // The output must be the classifier's logits: what the last linear layer computes.
    let last_linear = g.nodes.iter().rev().find(|n| matches!(n.op, Op::Linear(_))).expect("checked above");
    if last_linear.output != g.output {
        return Err(Error::InvalidModel(format!(
            "the output '{}' is not computed by the classifier (the last Gemm or MatMul, '{}')",
            graph.output[0].name, last_linear.name
        )));
    }
    g.shapes(224, 224)?;
    Ok(g)
}

/// The first size of `op` that is zero (channels, features, kernel sides), if any: such a layer
/// computes nothing and would divide by zero downstream.
fn zero_sized(op: &Op) -> Option<&'static str> {
    let sizes: Vec<(&'static str, usize)> = match op {
        Op::Conv(c) => vec![
            ("output channels", c.out_channels),
            ("input channels", c.in_channels),
            ("kernel height", c.window.kernel[0]),
            ("kernel width", c.window.kernel[1]),
        ],
        Op::Depthwise(d) => {
            vec![("channels", d.channels), ("kernel height", d.window.kernel[0]), ("kernel width", d.window.kernel[1])]
        }
        Op::Linear(l) => vec![("output features", l.out_features), ("input features", l.in_features)],
        Op::Affine(a) => vec![("channels", a.scale.len())],
        _ => vec![],
    };
    sizes.into_iter().find(|&(_, v)| v == 0).map(|(what, _)| what)
}

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn attr_i(node: &NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).map(|a| a.i).unwrap_or(default)
}

fn attr_f(node: &NodeProto, name: &str) -> Option<f32> {
    attr(node, name).map(|a| a.f)
}

fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

fn positive(node: &str, what: &str, v: &[i64], n: usize) -> Result<Vec<usize>> {
    if v.len() != n || v.iter().any(|x| !(0..=1 << 16).contains(x)) {
        return Err(Error::node(node, format!("{what} {v:?} unsupported")));
    }
    Ok(v.iter().map(|&x| x as usize).collect())
}

impl Importer {
    fn get(&self, node: &NodeProto, i: usize) -> Result<&Value> {
        let name = node
            .input
            .get(i)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Error::node(&node.name, format!("{} is missing input {i}", node.op_type)))?;
        self.values
            .get(name)
            .ok_or_else(|| Error::node(&node.name, format!("input '{name}' is used before it is produced")))
    }

    fn get_opt(&self, node: &NodeProto, i: usize) -> Result<Option<&Value>> {
        match node.input.get(i) {
            Some(n) if !n.is_empty() => self.get(node, i).map(Some),
            _ => Ok(None),
        }
    }

    fn runtime(&self, node: &NodeProto, i: usize) -> Result<(ValueId, bool)> {
        match self.get(node, i)? {
            Value::Runtime { id, flat } => Ok((*id, *flat)),
            Value::Const(_) | Value::Dims(_) => {
                Err(Error::node(&node.name, format!("input {i} must not be a constant")))
            }
        }
    }

    fn constant(&self, node: &NodeProto, i: usize) -> Result<&Const> {
        match self.get(node, i)? {
            Value::Const(c) => Ok(c),
            Value::Runtime { .. } | Value::Dims(_) => {
                Err(Error::node(&node.name, format!("input {i} must be a constant (weights)")))
            }
        }
    }

    fn output(&self, node: &NodeProto) -> Result<String> {
        match node.output.as_slice() {
            [o] => Ok(o.clone()),
            [o, rest @ ..] if rest.iter().all(|r| !self.uses.contains_key(r)) => Ok(o.clone()),
            _ => Err(Error::node(&node.name, format!("{} with several used outputs", node.op_type))),
        }
    }

    fn push(&mut self, node: &NodeProto, op: Op, inputs: Vec<ValueId>, flat: bool) -> Result<()> {
        let id = self.num_values;
        self.num_values += 1;
        let name =
            if node.name.is_empty() { node.output.first().cloned().unwrap_or_default() } else { node.name.clone() };
        self.nodes.push(Node { name, op, inputs, output: id });
        self.values.insert(self.output(node)?, Value::Runtime { id, flat });
        Ok(())
    }

    fn alias(&mut self, node: &NodeProto, v: Value) -> Result<()> {
        self.values.insert(self.output(node)?, v);
        Ok(())
    }

    /// The node producing runtime value `id` when it is an affine used only once.
    fn sole_affine(&mut self, id: ValueId, onnx_name: &str) -> Option<&mut Affine> {
        if self.uses.get(onnx_name).copied().unwrap_or(0) != 1 {
            return None;
        }
        match self.nodes.last_mut() {
            Some(Node { op: Op::Affine(a), output, .. }) if *output == id => Some(a),
            _ => None,
        }
    }

    fn node(&mut self, node: &NodeProto) -> Result<()> {
        if !node.domain.is_empty() && node.domain != "ai.onnx" {
            return Err(Error::UnsupportedOp {
                node: node.name.clone(),
                op: format!("{}::{}", node.domain, node.op_type),
            });
        }
        match node.op_type.as_str() {
            "Constant" => {
                let t = attr(node, "value")
                    .and_then(|a| a.t.as_ref())
                    .ok_or_else(|| Error::node(&node.name, "Constant without a tensor 'value'"))?;
                let c = tensor::decode(t, &node.name)?;
                self.alias(node, Value::Const(c))
            }
            "DequantizeLinear" => {
                let x = self.constant(node, 0)?;
                let s = self.constant(node, 1)?;
                let z = match self.get_opt(node, 2)? {
                    Some(Value::Const(c)) => Some(c),
                    Some(_) => return Err(Error::node(&node.name, "zero point must be a constant")),
                    None => None,
                };
                let c = tensor::dequantize(&node.name, x, s, z, attr_i(node, "axis", 1))?;
                self.alias(node, Value::Const(c))
            }
            "Identity" | "Dropout" => {
                let v = self.get(node, 0)?.clone();
                self.alias(node, v)
            }
            "Conv" => self.conv(node),
            "BatchNormalization" => self.batch_norm(node),
            "Relu" => {
                let (x, flat) = self.runtime(node, 0)?;
                self.push(node, Op::Act(Activation::Relu), vec![x], flat)
            }
            "Clip" => self.clip(node),
            "HardSigmoid" => self.hard_sigmoid(node),
            "Softmax" => self.final_softmax(node),
            "Add" => self.add(node),
            "GlobalAveragePool" => {
                let (x, _) = self.runtime(node, 0)?;
                self.push(node, Op::GlobalPool, vec![x], true)
            }
            "ReduceMean" => {
                let axes = match attr_ints(node, "axes") {
                    Some(a) => a,
                    None => self.constant(node, 1)?.to_i64().unwrap_or_default(),
                };
                let mut axes: Vec<i64> = axes.iter().map(|&a| if a < 0 { a + 4 } else { a }).collect();
                axes.sort();
                if axes != [2, 3] || attr_i(node, "keepdims", 1) != 1 {
                    return Err(Error::node(&node.name, "ReduceMean only over H and W with keepdims"));
                }
                let (x, _) = self.runtime(node, 0)?;
                self.push(node, Op::GlobalPool, vec![x], true)
            }
            "Reshape" if matches!(self.get(node, 0)?, Value::Const(_)) => {
                let Value::Const(c) = self.get(node, 0)?.clone() else { unreachable!("matched a constant") };
                self.reshape_constant(node, c)
            }
            "Sub" | "Mul" | "Div" => self.with_constant(node),
            "Flatten" | "Reshape" | "Squeeze" => self.flatten(node),
            "Shape" => self.shape_of(node),
            "Cast" => self.cast(node),
            "Slice" => self.slice(node),
            "Concat" => self.concat(node),
            "MaxPool" => self.max_pool(node),
            "HardSwish" => self.hard_swish(node),
            "Gemm" => self.gemm(node),
            "MatMul" => self.matmul(node),
            op => Err(Error::UnsupportedOp { node: node.name.clone(), op: op.to_string() }),
        }
    }

    fn conv(&mut self, node: &NodeProto) -> Result<()> {
        let (x, _) = self.runtime(node, 0)?;
        let w = self.constant(node, 1)?;
        if w.shape.len() != 4 {
            return Err(Error::node(&node.name, format!("Conv weight of shape {:?}; only 2-D convolutions", w.shape)));
        }
        let (co, ci_g, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
        let group = attr_i(node, "group", 1);
        let stride = positive(&node.name, "strides", &attr_ints(node, "strides").unwrap_or(vec![1, 1]), 2)?;
        if let Some(d) = attr_ints(node, "dilations") {
            if d.iter().any(|&d| d != 1) {
                return Err(Error::node(&node.name, format!("dilations {d:?} unsupported")));
            }
        }
        if stride.contains(&0) {
            return Err(Error::node(&node.name, "zero stride"));
        }
        let auto_pad = attr(node, "auto_pad").map(|a| String::from_utf8_lossy(&a.s).to_string());
        let (kernel, stride) = ([kh, kw], [stride[0], stride[1]]);
        let window = match auto_pad.as_deref() {
            None | Some("NOTSET") => {
                let p = positive(&node.name, "pads", &attr_ints(node, "pads").unwrap_or(vec![0; 4]), 4)?;
                Window::new(kernel, stride, [p[0], p[1], p[2], p[3]])
            }
            Some("VALID") => Window::new(kernel, stride, [0; 4]),
            Some(p @ ("SAME_UPPER" | "SAME_LOWER")) => {
                let auto = if p == "SAME_UPPER" { AutoPad::SameUpper } else { AutoPad::SameLower };
                let same = Window { kernel, stride, pads: [0; 4], auto: Some(auto) };
                if stride == [1, 1] {
                    // At stride 1 the padding does not depend on the input's size.
                    same.at(kh.max(kw), kh.max(kw))
                } else {
                    same
                }
            }
            Some(p) => return Err(Error::node(&node.name, format!("auto_pad {p} unsupported"))),
        };
        let bias = match self.get_opt(node, 2)? {
            Some(Value::Const(b)) if b.len() == co => b.to_f32(),
            Some(_) => {
                return Err(Error::node(&node.name, "Conv bias must be a constant of one value per output channel"))
            }
            None => vec![0.0; co],
        };
        let weights = tensor::to_weights(w, 0);
        let op = if group == 1 {
            Op::Conv(Conv { in_channels: ci_g, out_channels: co, window, weights })
        } else if group as usize == co && ci_g == 1 {
            Op::Depthwise(Depthwise { channels: co, window, weights })
        } else {
            return Err(Error::node(&node.name, format!("group {group} unsupported (only 1 or depthwise)")));
        };
        if x == 0 {
            let ci = ci_g * group as usize;
            match self.input_channels {
                Some(c) if c != ci => return Err(Error::node(&node.name, "input used with different channel counts")),
                _ => self.input_channels = Some(ci),
            }
        }
        let id = self.num_values;
        self.num_values += 1;
        self.nodes.push(Node { name: node.name.clone(), op, inputs: vec![x], output: id });
        self.push(node, Op::Affine(Affine { scale: vec![1.0; co], bias, stats: None }), vec![id], false)
    }
}
