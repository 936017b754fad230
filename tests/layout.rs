//! The CPU engine's two activation layouts (planar `[N, C, H, W]` and channel-blocked,
//! `edgepatch::ops::blocked`) give the same bits: on the shipped int8 model and the f32 model at
//! several batch sizes and resolutions, and on a graph built to reach every path of the blocked
//! kernels (channel counts that are not a multiple of the block, a dense 3×3 convolution inside
//! the network, a 5×5 depthwise at stride 2, standalone affines and activations, f32 and int8
//! weights, a convolution with no epilogue). CI runs this file at every SIMD level.

use std::sync::Arc;

use edgepatch::backend::cpu::{CpuEngine, Layout};
use edgepatch::graph::{Affine, AutoPad, Conv, Depthwise, Graph, Linear, Node, Op, Weights, Window};
use edgepatch::ops::Activation;
use edgepatch::{Backbone, Tensor};
use edgepatch_tests::onnx_builder::{tiny_net, TinyNet};
use edgepatch_tests::{f32_model, random_values};

/// The pass of `graph` on `input` in both layouts, compared bit for bit.
fn same_bits(what: &str, graph: &Graph, input: &Tensor) {
    let planar = CpuEngine::with_layout(graph, Layout::Planar).forward(graph, input.clone()).unwrap();
    let blocked = CpuEngine::with_layout(graph, Layout::Blocked).forward(graph, input.clone()).unwrap();
    assert_eq!(planar.shape, blocked.shape, "{what}");
    for (i, (a, b)) in planar.data.iter().zip(&blocked.data).enumerate() {
        let same = a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        assert!(same, "{what}: output {i}: planar {a}, blocked {b}");
    }
}

fn input(shape: [usize; 4], seed: u64) -> Tensor {
    Tensor::from_vec(shape, random_values(shape.iter().product(), seed, 2.0)).unwrap()
}

#[test]
fn the_shipped_model_gives_the_same_bits_in_both_layouts() {
    let b = Backbone::embedded().unwrap();
    for (n, r) in [(1, 224), (3, 96), (2, 33)] {
        same_bits(&format!("int8, batch {n}, {r} px"), b.graph(), &input([n, 3, r, r], r as u64));
    }
}

#[test]
fn the_f32_model_gives_the_same_bits_in_both_layouts() {
    let b = Backbone::from_path(&f32_model()).unwrap();
    same_bits("f32, batch 2, 160 px", b.graph(), &input([2, 3, 160, 160], 7));
}

fn window(k: usize, s: usize) -> Window {
    Window::new([k, k], [s, s], [k / 2; 4])
}

fn int8(rows: usize, len: usize, seed: u64) -> Weights {
    let v = random_values(rows * len, seed, 1.0);
    let values: Arc<[i8]> = v.iter().map(|x| (x * 127.0).round() as i8).collect();
    Weights::Int8 { values, scales: random_values(rows, seed + 1, 0.02).iter().map(|s| s.abs() + 0.001).collect() }
}

fn f32w(n: usize, seed: u64) -> Weights {
    Weights::F32(random_values(n, seed, 0.3))
}

fn affine(c: usize, seed: u64) -> Op {
    Op::Affine(Affine { scale: random_values(c, seed, 1.0), bias: random_values(c, seed + 9, 0.5), stats: None })
}

/// A graph through every path of the blocked kernels; values are numbered in node order.
fn every_path() -> Graph {
    let nodes: Vec<(Op, Vec<usize>)> = vec![
        // 1: the stem reads the planar input: 3 → 20 channels, 3×3 at stride 2, f32 weights.
        (Op::Conv(Conv { in_channels: 3, out_channels: 20, window: window(3, 2), weights: f32w(20 * 27, 1) }), vec![0]),
        (affine(20, 2), vec![1]),
        (Op::Act(Activation::Relu6), vec![2]),
        // 4: depthwise 3×3 with ReLU.
        (Op::Depthwise(Depthwise { channels: 20, window: window(3, 1), weights: int8(20, 9, 3) }), vec![3]),
        (Op::Act(Activation::Relu), vec![4]),
        // 6: a dense 3×3 inside the network (blocked input through the planar im2col).
        (
            Op::Conv(Conv { in_channels: 20, out_channels: 20, window: window(3, 1), weights: int8(20, 180, 4) }),
            vec![5],
        ),
        (Op::Add, vec![6, 3]),
        // 8: an affine and an activation after the sum (not fused into a convolution).
        (affine(20, 5), vec![7]),
        (Op::Act(Activation::Relu), vec![8]),
        // 10: depthwise 5×5 at stride 2, f32 weights, no epilogue.
        (Op::Depthwise(Depthwise { channels: 20, window: window(5, 2), weights: f32w(20 * 25, 6) }), vec![9]),
        // 11: a 1×1 with no epilogue (the raw product times the int8 scales), 20 → 37 channels.
        (
            Op::Conv(Conv { in_channels: 20, out_channels: 37, window: window(1, 1), weights: int8(37, 20, 7) }),
            vec![10],
        ),
        // 12: a 1×1 with its affine and ReLU6, 37 → 33 channels.
        (
            Op::Conv(Conv { in_channels: 37, out_channels: 33, window: window(1, 1), weights: f32w(33 * 37, 8) }),
            vec![11],
        ),
        (affine(33, 9), vec![12]),
        (Op::Act(Activation::Relu6), vec![13]),
    ];
    graph(nodes, 33, 10)
}

/// `nodes` (value `i` is node `i − 1`'s output) closed by a global pool and a classifier of
/// `features` inputs (int8 weights from `seed`).
fn graph(mut nodes: Vec<(Op, Vec<usize>)>, features: usize, seed: u64) -> Graph {
    let last = nodes.len();
    nodes.push((Op::GlobalPool, vec![last]));
    let weights = int8(4, features, seed);
    nodes.push((
        Op::Linear(Linear { in_features: features, out_features: 4, weights, bias: vec![0.1; 4] }),
        vec![last + 1],
    ));
    let nodes: Vec<Node> = nodes
        .into_iter()
        .enumerate()
        .map(|(i, (op, inputs))| Node { name: format!("n{i}"), op, inputs, output: i + 1 })
        .collect();
    let n = nodes.len();
    Graph { nodes, input_channels: 3, num_values: n + 1, output: n }
}

#[test]
fn every_path_of_the_blocked_kernels_gives_the_planar_bits() {
    let g = every_path();
    for (n, r) in [(1, 64), (3, 37), (2, 45)] {
        same_bits(&format!("every path, batch {n}, {r} px"), &g, &input([n, 3, r, r], n as u64 * 100 + r as u64));
    }
}

/// Non-finite and signed-zero inputs take the same paths through both layouts' activations
/// (ReLU6 keeps NaN and −0 as `f32::clamp` does): NaN where the planar pass has NaN, the same
/// bits elsewhere.
#[test]
fn nan_infinity_and_negative_zero_inputs_give_the_same_outputs() {
    let g = every_path();
    let mut x = input([1, 3, 40, 40], 5);
    for (i, v) in x.data.iter_mut().enumerate() {
        match i % 97 {
            0 => *v = -0.0,
            1 => *v = 0.0,
            2 if i < 2000 => *v = f32::INFINITY,
            3 if i > 4000 => *v = f32::NAN,
            _ => {}
        }
    }
    same_bits("non-finite inputs", &g, &x);
    let b = Backbone::embedded().unwrap();
    same_bits("non-finite inputs, shipped model", b.graph(), &{
        let mut x = input([1, 3, 64, 64], 6);
        x.data[100] = f32::NAN;
        x.data[5000] = -0.0;
        x
    });
}

fn conv(cin: usize, cout: usize, k: usize, s: usize, weights: Weights) -> Op {
    Op::Conv(Conv { in_channels: cin, out_channels: cout, window: window(k, s), weights })
}

fn dw(c: usize, k: usize, s: usize, weights: Weights) -> Op {
    Op::Depthwise(Depthwise { channels: c, window: window(k, s), weights })
}

/// Inverted residual blocks, which the blocked engine runs fused (band by band, or per channel
/// group on small planes): channel counts off the block size, int8 and f32 weights, a 5×5
/// depthwise at stride 2, a projection with no epilogue, a block without expansion, and the
/// residual as either input of the sum. Value `i` is node `i − 1`'s output.
fn blocks() -> Graph {
    let relu6 = || Op::Act(Activation::Relu6);
    let nodes: Vec<(Op, Vec<usize>)> = vec![
        (conv(3, 24, 3, 2, f32w(24 * 27, 1)), vec![0]),
        (affine(24, 2), vec![1]),
        (relu6(), vec![2]),
        // 4–12: expand 24 → 88, depthwise 3×3, project 88 → 24, + input.
        (conv(24, 88, 1, 1, int8(88, 24, 3)), vec![3]),
        (affine(88, 4), vec![4]),
        (relu6(), vec![5]),
        (dw(88, 3, 1, int8(88, 9, 5)), vec![6]),
        (affine(88, 6), vec![7]),
        (relu6(), vec![8]),
        (conv(88, 24, 1, 1, f32w(24 * 88, 7)), vec![9]),
        (affine(24, 8), vec![10]),
        (Op::Add, vec![11, 3]),
        // 13–19: expand 24 → 72 (f32), depthwise 5×5 at stride 2 (f32), project 72 → 40 raw.
        (conv(24, 72, 1, 1, f32w(72 * 24, 9)), vec![12]),
        (affine(72, 10), vec![13]),
        (relu6(), vec![14]),
        (dw(72, 5, 2, f32w(72 * 25, 11)), vec![15]),
        (affine(72, 12), vec![16]),
        (relu6(), vec![17]),
        (conv(72, 40, 1, 1, int8(40, 72, 13)), vec![18]),
        // 20–25: no expansion: depthwise on the projection, project 40 → 40, + (residual first).
        (dw(40, 3, 1, int8(40, 9, 14)), vec![19]),
        (affine(40, 15), vec![20]),
        (relu6(), vec![21]),
        (conv(40, 40, 1, 1, int8(40, 40, 16)), vec![22]),
        (affine(40, 17), vec![23]),
        (Op::Add, vec![19, 24]),
    ];
    graph(nodes, 40, 18)
}

/// The fused blocks give the planar pass's bits on 1, 2 and 3 threads (so one image is cut into
/// 1, 2 or 3 row ranges, or run per channel group where the plane is too small), at batch 1 and
/// at batches that give every thread its own images.
#[test]
fn fused_inverted_residual_blocks_give_the_planar_bits() {
    let g = blocks();
    assert_eq!(edgepatch::schedule::Schedule::inference(&g).blocks(&g).len(), 3, "the blocks are found");
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            for (n, r) in [(1, 64), (1, 36), (1, 33), (2, 50), (4, 40)] {
                let what = format!("blocks, {threads} threads, batch {n}, {r} px");
                same_bits(&what, &g, &input([n, 3, r, r], (threads * 1000 + n * 100 + r) as u64));
            }
        });
    }
    let b = Backbone::embedded().unwrap();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    pool.install(|| same_bits("int8, 3 threads, batch 1, 224 px", b.graph(), &input([1, 3, 224, 224], 3)));
}

/// Passes from several threads at once through one engine (each keeping the pool's other
/// workers awake while it runs) all finish, with the bits of a pass alone.
#[test]
fn concurrent_passes_finish_with_the_same_bits() {
    let g = blocks();
    let engine = CpuEngine::with_layout(&g, Layout::Blocked);
    let x = input([1, 3, 40, 40], 77);
    let alone = engine.forward(&g, x.clone()).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..5 {
                    let y = engine.forward(&g, x.clone()).unwrap();
                    assert!(y.data.iter().zip(&alone.data).all(|(a, b)| a.to_bits() == b.to_bits()));
                }
            });
        }
    });
}

/// `g` with ONNX SAME padding on every strided window (SAME_UPPER on dense convolutions,
/// SAME_LOWER on depthwise ones) and its 5×5 depthwise kernels made 7×7 (weights cycled).
fn same_padded(mut g: Graph) -> Graph {
    for node in &mut g.nodes {
        match &mut node.op {
            Op::Conv(c) if c.window.stride[0] > 1 => c.window.auto = Some(AutoPad::SameUpper),
            Op::Depthwise(d) => {
                if d.window.kernel == [5, 5] {
                    let w = d.weights.to_f32();
                    let w: Vec<f32> = (0..d.channels * 49).map(|i| w[(i * 25 / 49) % w.len()]).collect();
                    (d.window.kernel, d.window.pads, d.weights) = ([7, 7], [3; 4], Weights::F32(w));
                }
                if d.window.stride[0] > 1 {
                    d.window.auto = Some(AutoPad::SameLower);
                }
            }
            _ => {}
        }
    }
    g
}

/// SAME padding (which differs for odd and even inputs at stride 2) and 7×7 depthwise kernels:
/// the blocked kernels and the fused blocks give the planar bits.
#[test]
fn same_padding_and_7x7_depthwise_give_the_planar_bits() {
    let g = same_padded(every_path());
    for (n, r) in [(1, 64), (3, 37), (2, 45)] {
        same_bits(&format!("SAME every path, batch {n}, {r} px"), &g, &input([n, 3, r, r], n as u64 * 10 + r as u64));
    }
    // HardSigmoid (clip01 after affines) through the blocked epilogues.
    let hard = TinyNet { hard_sigmoid: true, quantized: true, ..TinyNet::default() };
    let b = Backbone::from_onnx_bytes(&tiny_net(hard, 3)).unwrap();
    same_bits("HardSigmoid, batch 2, 45 px", b.graph(), &input([2, 3, 45, 45], 12));
    // MobileNetV3's parts: products of blocked values and of a value and a per-channel gate,
    // max pooling.
    let v3 = TinyNet { v3: true, quantized: true, ..TinyNet::default() };
    let b = Backbone::from_onnx_bytes(&tiny_net(v3, 4)).unwrap();
    same_bits("MobileNetV3 parts, batch 2, 45 px", b.graph(), &input([2, 3, 45, 45], 13));
    same_bits("MobileNetV3 parts, batch 1, 64 px", b.graph(), &input([1, 3, 64, 64], 14));
    let g = same_padded(blocks());
    assert_eq!(edgepatch::schedule::Schedule::inference(&g).blocks(&g).len(), 3, "the blocks are found");
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            for (n, r) in [(1, 64), (1, 33), (2, 50)] {
                let what = format!("SAME blocks, {threads} threads, batch {n}, {r} px");
                same_bits(&what, &g, &input([n, 3, r, r], (threads * 100 + n * 10 + r) as u64));
            }
        });
    }
}
