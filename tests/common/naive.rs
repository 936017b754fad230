//! Plain f64 definitions of every layer of the IR and a whole-graph evaluator built from them:
//! the references that gradient checks differentiate numerically.

use edgepatch::graph::{AutoPad, Graph, Op, Window};
use edgepatch::ops::Activation;
use edgepatch::patch::Role;

/// An NCHW f64 tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct T64 {
    pub shape: [usize; 4],
    pub data: Vec<f64>,
}

impl T64 {
    pub fn new(shape: [usize; 4], data: Vec<f64>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len());
        T64 { shape, data }
    }
    pub fn from_f32(shape: [usize; 4], data: &[f32]) -> Self {
        T64::new(shape, data.iter().map(|&v| v as f64).collect())
    }
}

/// `y[n, o, oy, ox] = Σ w[o, c, ky, kx] · x[n, g(o, c), oy·s + ky − p, ox·s + kx − p]`, where
/// `g(o, c)` is `o` for a depthwise layer (one input channel per output) and `c` otherwise.
pub fn conv(x: &T64, w: &[f64], co: usize, depthwise: bool, win: &Window) -> T64 {
    let [n, ci, ih, iw] = x.shape;
    let per = if depthwise { 1 } else { ci };
    let [kh, kw] = win.kernel;
    // ONNX's SAME padding, from its definition: ceil(size / stride) outputs, the total padding
    // that needs split evenly, the odd pixel after (SAME_UPPER) or before (SAME_LOWER).
    let (pt, pl, oh, ow) = match win.auto {
        None => {
            let (oh, ow) = win.output_size(ih, iw).expect("window fits");
            (win.pads[0], win.pads[1], oh, ow)
        }
        Some(mode) => {
            let begin = |size: usize, k: usize, s: usize| {
                let out = size.div_ceil(s);
                let total = ((out - 1) * s + k).saturating_sub(size);
                let before = if mode == AutoPad::SameUpper { total / 2 } else { total.div_ceil(2) };
                (before, out)
            };
            let ((pt, oh), (pl, ow)) = (begin(ih, kh, win.stride[0]), begin(iw, kw, win.stride[1]));
            (pt, pl, oh, ow)
        }
    };
    let mut y = vec![0f64; n * co * oh * ow];
    for b in 0..n {
        for o in 0..co {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0.0;
                    for c in 0..per {
                        let xc = if depthwise { o } else { c };
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * win.stride[0] + ky) as isize - pt as isize;
                                let ix = (ox * win.stride[1] + kx) as isize - pl as isize;
                                if iy < 0 || ix < 0 || iy >= ih as isize || ix >= iw as isize {
                                    continue;
                                }
                                let xi = ((b * ci + xc) * ih + iy as usize) * iw + ix as usize;
                                acc += w[((o * per + c) * kh + ky) * kw + kx] * x.data[xi];
                            }
                        }
                    }
                    y[((b * co + o) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
    T64::new([n, co, oh, ow], y)
}

/// `y[n, c] = s[c]·x[n, c] + b[c]`.
pub fn affine(x: &T64, s: &[f64], b: &[f64]) -> T64 {
    let [_, c, h, w] = x.shape;
    let data = x.data.iter().enumerate().map(|(i, v)| s[i / (h * w) % c] * v + b[i / (h * w) % c]).collect();
    T64::new(x.shape, data)
}

/// `act` on every value: identity, `max(v, 0)` for ReLU, `clamp(v, 0, 6)` for ReLU6,
/// `clamp(v, 0, 1)` for clip01.
pub fn activation(x: &T64, act: Activation) -> T64 {
    let f = |v: f64| match act {
        Activation::Identity => v,
        Activation::Relu => v.max(0.0),
        Activation::Relu6 => v.clamp(0.0, 6.0),
        Activation::Clip01 => v.clamp(0.0, 1.0),
    };
    T64::new(x.shape, x.data.iter().map(|&v| f(v)).collect())
}

/// Mean over each plane.
pub fn pool(x: &T64) -> T64 {
    let [n, c, h, w] = x.shape;
    T64::new([n, c, 1, 1], x.data.chunks(h * w).map(|p| p.iter().sum::<f64>() / (h * w) as f64).collect())
}

/// `y = a·b` elementwise, or `a·g` with `b = g: [N, C, 1, 1]` repeated over each plane of `a`.
pub fn product(a: &T64, b: &T64) -> T64 {
    let per = a.data.len() / b.data.len();
    T64::new(a.shape, a.data.iter().enumerate().map(|(i, x)| x * b.data[i / per]).collect())
}

/// The largest value in each window of `win` (padding never counts).
pub fn max_pool(x: &T64, win: &Window) -> T64 {
    let [n, c, h, w] = x.shape;
    let (oh, ow) = win.output_size(h, w).expect("window fits");
    let mut y = Vec::with_capacity(n * c * oh * ow);
    for plane in x.data.chunks(h * w) {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best = f64::NEG_INFINITY;
                for ky in 0..win.kernel[0] {
                    for kx in 0..win.kernel[1] {
                        let iy = (oy * win.stride[0] + ky) as isize - win.pads[0] as isize;
                        let ix = (ox * win.stride[1] + kx) as isize - win.pads[1] as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            best = best.max(plane[iy as usize * w + ix as usize]);
                        }
                    }
                }
                y.push(best);
            }
        }
    }
    T64::new([n, c, oh, ow], y)
}

/// `y[n, o] = Σ W[o, i]·x[n, i] + b[o]`.
pub fn linear(x: &T64, w: &[f64], b: &[f64]) -> T64 {
    let n = x.shape[0];
    let fi = x.data.len() / n;
    let fo = b.len();
    let mut y = vec![0f64; n * fo];
    for i in 0..n {
        for o in 0..fo {
            y[i * fo + o] = b[o] + (0..fi).map(|k| w[o * fi + k] * x.data[i * fi + k]).sum::<f64>();
        }
    }
    T64::new([n, fo, 1, 1], y)
}

/// Mean softmax cross-entropy of `logits: [N, K]` with label smoothing `eps`.
pub fn cross_entropy(logits: &T64, labels: &[usize], eps: f64) -> f64 {
    let n = logits.shape[0];
    let k = logits.data.len() / n;
    let mut total = 0.0;
    for (i, &l) in labels.iter().enumerate() {
        let z = &logits.data[i * k..(i + 1) * k];
        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        for (c, &v) in z.iter().enumerate() {
            let t = eps / k as f64 + if c == l { 1.0 - eps } else { 0.0 };
            total -= t * (v - lse);
        }
    }
    total / n as f64
}

/// One layer with f64 parameters.
#[derive(Debug, Clone)]
enum Layer {
    Conv { w: Vec<f64>, co: usize, depthwise: bool, win: Window },
    Affine { s: Vec<f64>, b: Vec<f64> },
    Act(Activation),
    Add,
    Mul,
    MaxPool(Window),
    Pool,
    Linear { w: Vec<f64>, b: Vec<f64> },
}

/// A graph with its parameters in f64 (int8 weights dequantized exactly).
#[derive(Debug, Clone)]
pub struct Net64 {
    layers: Vec<(Layer, Vec<usize>, usize)>,
    num_values: usize,
    output: usize,
}

impl Net64 {
    pub fn new(g: &Graph) -> Self {
        let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        let layers = g
            .nodes
            .iter()
            .map(|n| {
                let l = match &n.op {
                    Op::Conv(c) => Layer::Conv {
                        w: f64s(&c.weights.to_f32()),
                        co: c.out_channels,
                        depthwise: false,
                        win: c.window,
                    },
                    Op::Depthwise(d) => {
                        Layer::Conv { w: f64s(&d.weights.to_f32()), co: d.channels, depthwise: true, win: d.window }
                    }
                    Op::Affine(a) => Layer::Affine { s: f64s(&a.scale), b: f64s(&a.bias) },
                    Op::Act(act) => Layer::Act(*act),
                    Op::Add => Layer::Add,
                    Op::Mul => Layer::Mul,
                    Op::MaxPool(w) => Layer::MaxPool(*w),
                    Op::GlobalPool => Layer::Pool,
                    Op::Linear(l) => Layer::Linear { w: f64s(&l.weights.to_f32()), b: f64s(&l.bias) },
                };
                (l, n.inputs.clone(), n.output)
            })
            .collect();
        Net64 { layers, num_values: g.num_values, output: g.output }
    }

    /// The f64 values of `role` at node `node`.
    pub fn param(&mut self, node: usize, role: Role) -> &mut Vec<f64> {
        match (&mut self.layers[node].0, role) {
            (Layer::Conv { w, .. } | Layer::Linear { w, .. }, Role::Weights) => w,
            (Layer::Affine { s, .. }, Role::Scale) => s,
            (Layer::Affine { b, .. } | Layer::Linear { b, .. }, Role::Bias) => b,
            _ => panic!("node {node} has no {role:?}"),
        }
    }

    /// Logits for `x`.
    pub fn forward(&self, x: &T64) -> T64 {
        let mut v: Vec<Option<T64>> = vec![None; self.num_values];
        v[0] = Some(x.clone());
        for (l, ins, out) in &self.layers {
            let a = v[ins[0]].as_ref().expect("computed");
            let y = match l {
                Layer::Conv { w, co, depthwise, win } => conv(a, w, *co, *depthwise, win),
                Layer::Affine { s, b } => affine(a, s, b),
                Layer::Act(act) => activation(a, *act),
                Layer::Add => {
                    let b = v[ins[1]].as_ref().expect("computed");
                    T64::new(a.shape, a.data.iter().zip(&b.data).map(|(x, y)| x + y).collect())
                }
                Layer::Mul => product(a, v[ins[1]].as_ref().expect("computed")),
                Layer::MaxPool(win) => max_pool(a, win),
                Layer::Pool => pool(a),
                Layer::Linear { w, b } => linear(a, w, b),
            };
            v[*out] = Some(y);
        }
        v[self.output].take().expect("output computed")
    }
}

/// Central finite difference of `f` at `x` along coordinate `i`, with step `h`.
pub fn central_difference(f: &mut dyn FnMut(&[f64]) -> f64, x: &[f64], i: usize, h: f64) -> f64 {
    let mut p = x.to_vec();
    p[i] = x[i] + h;
    let up = f(&p);
    p[i] = x[i] - h;
    let down = f(&p);
    (up - down) / (2.0 * h)
}

/// Up to `count` indices spread over `0..n` (all when `n ≤ count`).
pub fn sample_indices(n: usize, count: usize, seed: u64) -> Vec<usize> {
    if n <= count {
        return (0..n).collect();
    }
    let r = crate::random_values(count, seed, 1.0);
    let mut v: Vec<usize> = r.iter().map(|x| (((x + 1.0) / 2.0 * n as f32) as usize).min(n - 1)).collect();
    v.sort_unstable();
    v.dedup();
    v
}
