//! The WGSL kernels against their CPU references on random problems (odd sizes, stride 2,
//! channel counts that are not multiples of the workgroup tile, int8 and f32 weights, a
//! dispatch above 65,535 workgroups), and whole training runs on the GPU against the CPU.
//!
//! Without an adapter these tests print a message and pass; with `EDGEPATCH_REQUIRE_GPU=1`
//! (set by CI, which installs lavapipe) a missing adapter fails them.

#![cfg(feature = "gpu")]

use std::sync::Arc;

use edgepatch::backend::gpu::{kernels::host, Gpu};
use edgepatch::backend::Device;
use edgepatch::graph::{AutoPad, Conv, Depthwise, Linear, Weights, Window};
use edgepatch::ops::{self, Activation, Epilogue};
use edgepatch::train::{loss, OptimizerKind, TrainConfig, Trainer};
use edgepatch::{Backbone, Tensor};
use edgepatch_tests::onnx_builder::{tiny_net, TinyNet};
use edgepatch_tests::{random_values, Tolerance};

/// Elementwise results (one rounding per operation).
const ELEMENTWISE: Tolerance = Tolerance { rel: 1e-6, abs: 1e-6 };
/// Sums of products (the GPU sums in another order).
const REDUCTION: Tolerance = Tolerance { rel: 1e-4, abs: 1e-5 };

fn gpu() -> Option<Arc<Gpu>> {
    match Gpu::shared() {
        Ok(g) => Some(g),
        Err(e) if std::env::var("EDGEPATCH_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("EDGEPATCH_REQUIRE_GPU=1 but no GPU adapter: {e}")
        }
        Err(e) => {
            eprintln!("skipping the GPU tests: {e}");
            None
        }
    }
}

fn close(what: &str, tol: Tolerance, got: &[f32], want: &[f32]) {
    if let Some((i, x, y)) = tol.check(got, want) {
        panic!("{what}: element {i}: GPU {x}, CPU {y} (tolerance {tol:?})");
    }
}

fn tensor(shape: [usize; 4], seed: u64) -> Tensor {
    Tensor::from_vec(shape, random_values(shape.iter().product(), seed, 1.0)).unwrap()
}

fn quantize(w: &[f32], rows: usize) -> Weights {
    let per = w.len() / rows;
    let scales: Vec<f32> = w.chunks(per).map(|r| r.iter().fold(1e-6f32, |m, x| m.max(x.abs())) / 127.0).collect();
    let values = w.iter().enumerate().map(|(i, x)| (x / scales[i / per]).round() as i8).collect();
    Weights::Int8 { values, scales }
}

fn weights(n: usize, rows: usize, seed: u64, int8: bool) -> Weights {
    let w = random_values(n, seed, 0.5);
    if int8 {
        quantize(&w, rows)
    } else {
        Weights::F32(w)
    }
}

#[test]
fn convolutions_match_the_cpu() {
    let Some(g) = gpu() else { return };
    let windows = [
        Window::new([1, 1], [1, 1], [0; 4]),
        Window::new([3, 3], [2, 2], [1; 4]),
        Window::new([3, 3], [2, 2], [0, 0, 1, 1]),
        Window::new([3, 2], [1, 2], [2, 1, 0, 0]),
        Window { auto: Some(AutoPad::SameUpper), ..Window::new([3, 3], [2, 2], [0; 4]) },
        Window { auto: Some(AutoPad::SameLower), ..Window::new([5, 5], [2, 2], [0; 4]) },
    ];
    for (k, win) in windows.iter().enumerate() {
        for (n, ci, co, h, w) in [(2, 3, 5, 9, 7), (1, 70, 67, 11, 13), (3, 17, 130, 5, 5)] {
            for int8 in [false, true] {
                let seed = (k * 100 + ci) as u64;
                let conv = Conv {
                    in_channels: ci,
                    out_channels: co,
                    window: *win,
                    weights: weights(co * ci * win.kernel[0] * win.kernel[1], co, seed, int8),
                };
                let x = tensor([n, ci, h, w], seed + 1);
                let what = format!("conv {win:?} {n}×{ci}→{co} {h}×{w} int8 {int8}");
                let want = ops::conv::forward(&conv, &x, &Epilogue::NONE);
                let got = host::conv_forward(&g, &conv, &x).unwrap();
                assert_eq!(got.shape, want.shape, "{what}");
                close(&what, REDUCTION, &got.data, &want.data);
                let dy = tensor(want.shape, seed + 2);
                if !int8 {
                    let mut want_dw = vec![0.0; conv.weights.len()];
                    ops::conv::backward_weight(&conv, &x, &dy, &mut want_dw);
                    let got_dw = host::conv_backward_weight(&g, &conv, &x, &dy).unwrap();
                    close(&format!("{what} backward_weight"), REDUCTION, &got_dw, &want_dw);
                }
                if win.is_pointwise() {
                    let want = ops::conv::backward_input(&conv, &dy, (h, w));
                    let got = host::pointwise_backward_input(&g, &conv, &dy).unwrap();
                    close(&format!("{what} backward_input"), REDUCTION, &got.data, &want.data);
                }
            }
        }
    }
}

#[test]
fn depthwise_matches_the_cpu() {
    let Some(g) = gpu() else { return };
    let same = |k: usize, s: usize, a: AutoPad| Window { auto: Some(a), ..Window::new([k, k], [s, s], [0; 4]) };
    let windows = [
        Window::new([3, 3], [1, 1], [1; 4]),
        Window::new([3, 3], [2, 2], [1; 4]),
        Window::new([3, 3], [2, 2], [0, 0, 1, 1]),
        Window::new([3, 3], [1, 2], [0, 1, 2, 0]),
        Window::new([5, 5], [1, 1], [2; 4]),
        Window::new([7, 7], [2, 2], [3; 4]),
        // ONNX SAME padding: odd and even inputs pad differently at stride 2.
        same(3, 2, AutoPad::SameUpper),
        same(5, 2, AutoPad::SameLower),
        same(7, 2, AutoPad::SameUpper),
    ];
    for (k, win) in windows.into_iter().enumerate() {
        let taps = win.kernel[0] * win.kernel[1];
        for (n, c, h, w) in [(2, 5, 9, 7), (1, 67, 14, 15), (3, 3, 5, 4)] {
            for int8 in [false, true] {
                let seed = (k * 1000 + c * 10 + h) as u64;
                let dw = Depthwise { channels: c, window: win, weights: weights(taps * c, c, seed, int8) };
                let what = format!("depthwise {win:?} {n}×{c}×{h}×{w} int8 {int8}");
                let x = tensor([n, c, h, w], seed + 1);
                let want = ops::depthwise::forward(&dw, &x, &Epilogue::NONE);
                let got = host::depthwise_forward(&g, &dw, &x).unwrap();
                assert_eq!(got.shape, want.shape, "{what}");
                close(&what, REDUCTION, &got.data, &want.data);
                let dy = tensor(want.shape, seed + 2);
                let want_dx = ops::depthwise::backward_input(&dw, &dy, (h, w));
                let got_dx = host::depthwise_backward_input(&g, &dw, &dy, (h, w)).unwrap();
                close(&format!("{what} backward_input"), REDUCTION, &got_dx.data, &want_dx.data);
                if !int8 {
                    let mut want_dw = vec![0.0; taps * c];
                    ops::depthwise::backward_weight(&dw, &x, &dy, &mut want_dw);
                    let got_dw = host::depthwise_backward_weight(&g, &dw, &x, &dy).unwrap();
                    close(&format!("{what} backward_weight"), REDUCTION, &got_dw, &want_dw);
                }
            }
        }
    }
}

#[test]
fn affine_activation_pool_add_match_the_cpu() {
    let Some(g) = gpu() else { return };
    for (n, c, h, w) in [(2, 5, 9, 7), (3, 300, 4, 3)] {
        let x = Tensor::from_vec([n, c, h, w], random_values(n * c * h * w, 11, 8.0)).unwrap();
        let scale = random_values(c, 12, 1.5);
        let bias = random_values(c, 13, 2.0);
        let a = edgepatch::graph::Affine { scale: scale.clone(), bias: bias.clone(), stats: None };
        for act in Activation::ALL {
            let what = format!("affine {act:?} {n}×{c}×{h}×{w}");
            let mut want = x.clone();
            ops::affine::forward(&a, &mut want, act);
            let y = host::affine_forward(&g, &scale, &bias, &x, act).unwrap();
            close(&what, ELEMENTWISE, &y.data, &want.data);

            let dy = tensor(x.shape, 14);
            let mut pre = x.clone();
            ops::affine::forward(&a, &mut pre, Activation::Identity);
            let mut dz = dy.clone();
            ops::activation::backward(&ops::activation::mask(act, &pre), &mut dz);
            let mut want_dx = dz.clone();
            ops::affine::backward_input(&a, &mut want_dx);
            let got_dx = host::affine_backward_input(&g, &scale, &dy, &y, act).unwrap();
            close(&format!("{what} backward_input"), ELEMENTWISE, &got_dx.data, &want_dx.data);
            let (mut ds, mut db) = (vec![0.0; c], vec![0.0; c]);
            ops::affine::backward_params(&dz, Some(&x), Some(&mut ds), Some(&mut db));
            let (gs, gb) = host::affine_backward_params(&g, &dy, &y, &x, act).unwrap();
            close(&format!("{what} dscale"), REDUCTION, &gs, &ds);
            close(&format!("{what} dbias"), REDUCTION, &gb, &db);
        }
        let p = host::pool_forward(&g, &x).unwrap();
        close("pool", REDUCTION, &p.data, &ops::pool::forward(&x).data);
        let dy = tensor([n, c, 1, 1], 15);
        let dx = host::pool_backward(&g, &dy, (h, w)).unwrap();
        close("pool backward", ELEMENTWISE, &dx.data, &ops::pool::backward(&dy, (h, w)).data);
        let b = tensor(x.shape, 16);
        let mut want = x.clone();
        ops::add::forward(&mut want, &b);
        close("add", ELEMENTWISE, &host::add_forward(&g, &x, &b).unwrap().data, &want.data);
    }
}

/// The product (elementwise and with a per-channel gate) and max pooling, forward and backward,
/// against their CPU twins, on odd sizes and with padded overlapping windows.
#[test]
fn product_and_max_pool_kernels_match_the_cpu() {
    let Some(g) = gpu() else { return };
    for (n, c, h, w) in [(2, 3, 7, 5), (1, 37, 16, 16), (3, 8, 33, 31)] {
        let a = tensor([n, c, h, w], 21);
        for gate in [false, true] {
            let b = tensor(if gate { [n, c, 1, 1] } else { a.shape }, 22);
            let mut want = a.clone();
            ops::mul::forward(&mut want, &b);
            let what = format!("mul {:?} · {:?}", a.shape, b.shape);
            close(&what, ELEMENTWISE, &host::mul_forward(&g, &a, &b).unwrap().data, &want.data);
            let dy = tensor(a.shape, 23);
            let (da, db) = ops::mul::backward(&a, &b, &dy, (true, true));
            let (gda, gdb) = host::mul_backward(&g, &a, &b, &dy).unwrap();
            close(&format!("{what} da"), ELEMENTWISE, &gda.data, &da.unwrap().data);
            close(&format!("{what} db"), REDUCTION, &gdb.data, &db.unwrap().data);
        }
        for win in [
            Window::new([2, 2], [2, 2], [0; 4]),
            Window::new([3, 3], [2, 2], [1; 4]),
            Window::new([3, 2], [1, 2], [1, 0, 0, 1]),
        ] {
            let y = ops::maxpool::forward(&win, &a);
            close(
                &format!("max pool {win:?}"),
                ELEMENTWISE,
                &host::max_pool_forward(&g, &win, &a).unwrap().data,
                &y.data,
            );
            let dy = tensor(y.shape, 24);
            let dx = ops::maxpool::backward(&win, &a, &dy);
            let got = host::max_pool_backward(&g, &win, &a, &dy).unwrap();
            close(&format!("max pool {win:?} backward"), REDUCTION, &got.data, &dx.data);
        }
    }
}

#[test]
fn classifier_and_loss_match_the_cpu() {
    let Some(g) = gpu() else { return };
    for (n, f, o, int8) in [(3, 70, 10, false), (5, 129, 67, true), (1, 1280, 1000, true)] {
        let l = Linear {
            in_features: f,
            out_features: o,
            weights: weights(o * f, o, 21, int8),
            bias: random_values(o, 22, 0.3),
        };
        let x = tensor([n, f, 1, 1], 23);
        let what = format!("linear {n}×{f}→{o} int8 {int8}");
        close(&what, REDUCTION, &host::linear_forward(&g, &l, &x).unwrap().data, &ops::linear::forward(&l, &x).data);
        let dy = tensor([n, o, 1, 1], 24);
        let (mut dw, mut db) = (vec![0.0; o * f], vec![0.0; o]);
        ops::linear::backward_params(&x, &dy, Some(&mut dw), Some(&mut db));
        close(&format!("{what} dW"), REDUCTION, &host::linear_backward_weight(&g, &x, &dy).unwrap(), &dw);
        let conv = Conv {
            in_channels: f,
            out_channels: o,
            window: Window::new([1, 1], [1, 1], [0; 4]),
            weights: l.weights.clone(),
        };
        let got = host::pointwise_backward_input(&g, &conv, &dy).unwrap();
        close(&format!("{what} dx"), REDUCTION, &got.data, &ops::linear::backward_input(&l, &dy).data);
    }
    for (n, k, smoothing) in [(4, 10, 0.0), (7, 1000, 0.1), (1, 3, 0.2)] {
        let z = Tensor::from_vec([n, k, 1, 1], random_values(n * k, 31, 6.0)).unwrap();
        let labels: Vec<usize> = (0..n).map(|i| (i * 7) % k).collect();
        let want = loss::softmax_cross_entropy(&z, &labels, smoothing);
        let (losses, correct, grad) = host::softmax_cross_entropy(&g, &z, &labels, smoothing).unwrap();
        let mean = losses.iter().sum::<f32>() / n as f32;
        close("loss", REDUCTION, &[mean], &[want.value]);
        assert_eq!(correct.iter().sum::<f32>() as usize, want.correct);
        close("loss gradient", REDUCTION, &grad.data, &want.grad.data);
    }
}

#[test]
fn dispatches_above_65535_workgroups_are_folded() {
    let Some(g) = gpu() else { return };
    let n = 65_535 * 256 + 1000;
    let groups = host::groups_for(&g, n);
    assert!(groups[1] > 1, "{groups:?} for {n} elements");
    let a: Vec<f32> = (0..n).map(|i| (i % 1013) as f32).collect();
    let b: Vec<f32> = (0..n).map(|i| (i % 17) as f32 * 0.5).collect();
    let y = host::add_large(&g, &a, &b).unwrap();
    for i in [0, 1, 65_535 * 256 - 1, 65_535 * 256, n - 1] {
        assert_eq!(y[i], a[i] + b[i], "element {i}");
    }
    assert!(y.iter().zip(a.iter().zip(&b)).all(|(y, (a, b))| *y == a + b));
}

fn batch(n: usize, res: usize, seed: u64) -> (Tensor, Vec<usize>) {
    let plane = res * res;
    let noise = random_values(n * 3 * plane, seed, 1.0);
    let data = noise
        .iter()
        .enumerate()
        .map(|(i, v)| v + [-1.0f32, 0.0, 1.0][(i / plane) % 3] * ((i / (3 * plane)) % 3) as f32)
        .collect();
    (Tensor::from_vec([n, 3, res, res], data).unwrap(), (0..n).map(|i| i % 3).collect())
}

/// The same steps on the CPU and the GPU give the same patch (1e-3 relative) and losses.
#[test]
fn training_on_the_gpu_matches_the_cpu() {
    let Some(_) = gpu() else { return };
    let plain = Backbone::from_onnx_bytes(&tiny_net(TinyNet { quantized: true, ..TinyNet::default() }, 7)).unwrap();
    // SAME_UPPER padding (at 32 px every strided input is even: one pixel after, none before)
    // with a 5×5 depthwise at stride 2.
    let same = TinyNet { quantized: true, auto_pad: Some("SAME_UPPER"), dw2_kernel: 5, ..TinyNet::default() };
    let same = Backbone::from_onnx_bytes(&tiny_net(same, 8)).unwrap();
    // HardSigmoid: clip01 after an affine merged into a convolution's and after one of its own.
    let hard = TinyNet { quantized: true, hard_sigmoid: true, ..TinyNet::default() };
    let hard = Backbone::from_onnx_bytes(&tiny_net(hard, 9)).unwrap();
    // MobileNetV3's parts: HardSwish (products of a value and its clamp), squeeze-excitation (a
    // per-channel gate), a padded 3×3/2 MaxPool.
    let v3 =
        Backbone::from_onnx_bytes(&tiny_net(TinyNet { quantized: true, v3: true, ..TinyNet::default() }, 10)).unwrap();
    let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    for (kinds, opt, lr, wd, smoothing, b, res) in [
        ("sb+logits", OptimizerKind::Sgd, 0.1, 0.0, 0.0, &plain, 32),
        ("sb+dw+logits", OptimizerKind::Sgd, 0.05, 1e-3, 0.0, &same, 32),
        ("full", OptimizerKind::Adam, 0.001, 0.0, 0.0, &same, 32),
        ("sb+logits", OptimizerKind::Sgd, 0.1, 0.0, 0.0, &hard, 32),
        ("full", OptimizerKind::Sgd, 0.02, 1e-3, 0.0, &hard, 32),
        ("sb+logits", OptimizerKind::Sgd, 0.1, 0.0, 0.0, &v3, 32),
        ("full", OptimizerKind::Adam, 0.001, 1e-3, 0.0, &v3, 64),
        ("sb+se+logits", OptimizerKind::Sgd, 0.1, 0.0, 0.0, &v3, 32),
    ]
    .into_iter()
    .chain(
        [
            ("bias+logits", OptimizerKind::Adam, 0.01, 0.0, 0.1),
            ("dw+logits", OptimizerKind::RmsProp, 0.003, 1e-3, 0.0),
            ("sb+dw+logits", OptimizerKind::Sgd, 0.05, 1e-3, 0.0),
            ("logits", OptimizerKind::Adam, 0.05, 1e-3, 0.0),
            ("sb", OptimizerKind::Sgd, 0.05, 0.0, 0.0),
            ("full", OptimizerKind::Sgd, 0.02, 1e-3, 0.0),
            ("full", OptimizerKind::Adam, 0.001, 0.0, 0.0),
        ]
        .map(|(k, o, lr, wd, ls)| (k, o, lr, wd, ls, &plain, 32)),
    ) {
        let mut patches = Vec::new();
        let mut losses = Vec::new();
        for device in [Device::Cpu, Device::Gpu] {
            let mut config = TrainConfig::new(kinds.parse().unwrap());
            config.optimizer = opt;
            config.resolution = res as u32;
            config.weight_decay = wd;
            config.label_smoothing = smoothing;
            config.clip_norm = Some(2.0);
            config.device = device;
            let names = if kinds == "sb" { (0..5).map(|i| i.to_string()).collect() } else { names.clone() };
            let mut t = Trainer::new(b, config, names).unwrap();
            let mut l = Vec::new();
            for step in 0..6 {
                let (x, labels) = batch(if step == 5 { 3 } else { 6 }, res, step as u64);
                let input = if t.takes_features() { t.features(x).unwrap() } else { x };
                l.push(t.step(input, &labels, lr).unwrap().loss);
            }
            patches.push(t.patch().unwrap());
            losses.push(l);
        }
        close(&format!("{kinds} losses"), Tolerance { rel: 1e-3, abs: 1e-5 }, &losses[1], &losses[0]);
        for (g, c) in patches[1].tensors.iter().zip(&patches[0].tensors) {
            assert_eq!((g.node, g.role), (c.node, c.role));
            let what = format!("{kinds} with {opt}: node {} {:?}", c.node, c.role);
            close(&what, Tolerance { rel: 1e-3, abs: 1e-5 }, &g.values, &c.values);
        }
    }
}

#[test]
fn a_gpu_session_switches_patches_like_a_cpu_session() {
    if gpu().is_none() {
        return;
    }
    use edgepatch::data::image::Rgb8;
    use edgepatch::Session;
    let b = Backbone::from_onnx_bytes(&tiny_net(TinyNet { quantized: true, ..TinyNet::default() }, 4)).unwrap();
    let patch = |kinds: &str, classes: usize, seed: u64| {
        let mut config = TrainConfig::new(kinds.parse().unwrap());
        config.resolution = 64;
        config.seed = seed;
        let labels = (0..classes).map(|i| i.to_string()).collect();
        let mut p = Trainer::new(&b, config, labels).unwrap().patch().unwrap();
        for (i, t) in p.tensors.iter_mut().enumerate() {
            let noise = random_values(t.values.len(), seed * 50 + i as u64, 0.2);
            t.values.iter_mut().zip(noise).for_each(|(v, n)| *v += n);
        }
        p
    };
    let images: Vec<Rgb8> = (0..2u64)
        .map(|i| Rgb8 {
            width: 70,
            height: 64,
            data: random_values(70 * 64 * 3, i + 8, 1.0).iter().map(|v| ((v + 1.0) * 127.0) as u8).collect(),
        })
        .collect();
    let (p, q) = (patch("sb+logits", 3, 1), patch("dw+logits", 6, 2));
    let mut on_gpu = Session::with_patch_on(b.clone(), &p, Device::Gpu).unwrap();
    assert!(on_gpu.device().starts_with("gpu"), "{}", on_gpu.device());
    for which in [&q, &p, &q] {
        on_gpu.set_patch(which).unwrap();
        let want = Session::with_patch(b.clone(), which).unwrap().logits(&images).unwrap().into_data();
        close("logits after a switch", REDUCTION, &on_gpu.logits(&images).unwrap().data, &want);
    }
    on_gpu.clear_patch().unwrap();
    assert!(on_gpu.device().starts_with("gpu"));
}

/// A GPU trainer's values and optimizer state, saved and loaded into a new trainer, continue the
/// run exactly (what a checkpoint of GPU training holds).
#[test]
fn a_gpu_trainer_continues_from_its_saved_state() {
    let Some(_) = gpu() else { return };
    let b = Backbone::from_onnx_bytes(&tiny_net(TinyNet { quantized: true, ..TinyNet::default() }, 7)).unwrap();
    let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    for opt in [OptimizerKind::Adam, OptimizerKind::Sgd] {
        let make = || {
            let mut config = TrainConfig::new("sb+logits".parse().unwrap());
            (config.optimizer, config.resolution, config.device) = (opt, 32, Device::Gpu);
            Trainer::new(&b, config, names.clone()).unwrap()
        };
        let (mut a, mut c) = (make(), make());
        for step in 0..2 {
            let (x, labels) = batch(6, 32, step);
            a.step(x, &labels, 0.01).unwrap();
        }
        let (params, state) = a.save_state().unwrap();
        c.load_state(params.clone(), state.clone()).unwrap();
        for step in 2..4 {
            let (x, labels) = batch(6, 32, step);
            a.step(x.clone(), &labels, 0.01).unwrap();
            c.step(x, &labels, 0.01).unwrap();
        }
        let bits = |t: &mut Trainer| {
            t.patch().unwrap().tensors.iter().flat_map(|x| x.values.iter().map(|v| v.to_bits())).collect::<Vec<_>>()
        };
        assert_eq!(bits(&mut a), bits(&mut c), "{opt}");
        // State of another patch is refused.
        let mut other = params;
        other[0].push(0.0);
        assert!(c.load_state(other, state).is_err());
    }
}
