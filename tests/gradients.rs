//! Every backward pass against central finite differences of the plain f64 definitions: each
//! op's input and parameter gradients, the loss, and whole networks for every patch kind.

use edgepatch::graph::{Affine, AutoPad, Conv, Depthwise, Linear, Weights, Window};
use edgepatch::ops::{self, Activation};
use edgepatch::patch::{self, PatchKinds, Role};
use edgepatch::train::{loss, tape};
use edgepatch::{Backbone, Tensor};
use edgepatch_tests::naive::{self, central_difference, sample_indices, Net64, T64};
use edgepatch_tests::onnx_builder::{tiny_net, TinyNet};
use edgepatch_tests::random_values;

/// `|analytic − numeric| ≤ rel·max(|a|, |n|) + abs` (analytic in f32, numeric in f64).
const GRAD_REL: f64 = 2e-3;
const GRAD_ABS: f64 = 2e-5;
const H: f64 = 1e-6;

fn check(what: &str, analytic: &[f32], x: &[f64], f: &mut dyn FnMut(&[f64]) -> f64, samples: usize) {
    assert_eq!(analytic.len(), x.len(), "{what}: gradient length");
    for i in sample_indices(x.len(), samples, x.len() as u64) {
        let num = central_difference(f, x, i, H);
        let a = analytic[i] as f64;
        let bound = GRAD_REL * a.abs().max(num.abs()) + GRAD_ABS;
        assert!((a - num).abs() <= bound, "{what}[{i}]: analytic {a:e}, numeric {num:e}");
    }
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn dot(a: &[f64], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * *y as f64).sum()
}

fn windows() -> Vec<Window> {
    vec![
        Window::new([1, 1], [1, 1], [0; 4]),
        Window::new([3, 3], [1, 1], [1; 4]),
        Window::new([3, 3], [2, 2], [1; 4]),
        Window::new([3, 3], [2, 2], [0, 0, 1, 1]),
        Window::new([3, 2], [1, 2], [2, 1, 0, 0]),
        Window::new([2, 2], [2, 1], [3, 2, 2, 3]),
        // ONNX SAME padding at stride 2: the inputs' odd and even sides pad differently.
        Window { auto: Some(AutoPad::SameUpper), ..Window::new([3, 3], [2, 2], [0; 4]) },
        Window { auto: Some(AutoPad::SameLower), ..Window::new([3, 3], [2, 2], [0; 4]) },
        Window { auto: Some(AutoPad::SameUpper), ..Window::new([5, 5], [2, 2], [0; 4]) },
        Window { auto: Some(AutoPad::SameLower), ..Window::new([7, 7], [2, 1], [0; 4]) },
        // Larger depthwise kernels with fixed padding.
        Window::new([5, 5], [1, 1], [2; 4]),
        Window::new([7, 7], [2, 2], [3; 4]),
    ]
}

fn quantize(w: &[f32], rows: usize) -> Weights {
    let per = w.len() / rows;
    let scales: Vec<f32> = w.chunks(per).map(|r| r.iter().fold(1e-6f32, |m, x| m.max(x.abs())) / 127.0).collect();
    let values = w.iter().enumerate().map(|(i, x)| (x / scales[i / per]).round() as i8).collect();
    Weights::Int8 { values, scales }
}

#[test]
fn conv_gradients() {
    for (k, win) in windows().into_iter().enumerate() {
        for int8 in [false, true] {
            let (n, ci, co, ih, iw) = (2, 3, 5, 7, 6);
            let shape = [n, ci, ih, iw];
            let x = random_values(n * ci * ih * iw, 10 + k as u64, 1.0);
            let w = random_values(co * ci * win.kernel[0] * win.kernel[1], 20 + k as u64, 0.5);
            let weights = if int8 { quantize(&w, co) } else { Weights::F32(w) };
            let wf = f64s(&weights.to_f32());
            let conv = Conv { in_channels: ci, out_channels: co, window: win, weights };
            let y = ops::conv::forward(&conv, &Tensor::from_vec(shape, x.clone()).unwrap(), &ops::Epilogue::NONE);
            let r = random_values(y.data.len(), 30 + k as u64, 1.0);
            let dy = Tensor::from_vec(y.shape, r.clone()).unwrap();
            let r64 = f64s(&r);
            let dx = ops::conv::backward_input(&conv, &dy, (ih, iw));
            let what = format!("conv {win:?} int8 {int8} dx");
            check(
                &what,
                &dx.data,
                &f64s(&x),
                &mut |xs| dot(&naive::conv(&T64::new(shape, xs.to_vec()), &wf, co, false, &win).data, &r),
                40,
            );
            let mut dw = vec![0f32; wf.len()];
            ops::conv::backward_weight(&conv, &Tensor::from_vec(shape, x.clone()).unwrap(), &dy, &mut dw);
            let x64 = T64::from_f32(shape, &x);
            check(
                &format!("conv {win:?} dw"),
                &dw,
                &wf,
                &mut |ws| dot(&naive::conv(&x64, ws, co, false, &win).data, &r),
                40,
            );
            let _ = r64;
        }
    }
}

#[test]
fn depthwise_gradients() {
    for (k, win) in windows().into_iter().enumerate() {
        for int8 in [false, true] {
            let (n, c, ih, iw) = (2, 5, 9, 8);
            let shape = [n, c, ih, iw];
            let x = random_values(n * c * ih * iw, 40 + k as u64, 1.0);
            let w = random_values(c * win.kernel[0] * win.kernel[1], 50 + k as u64, 0.7);
            let weights = if int8 { quantize(&w, c) } else { Weights::F32(w) };
            let wf = f64s(&weights.to_f32());
            let layer = Depthwise { channels: c, window: win, weights };
            let y = ops::depthwise::forward(&layer, &Tensor::from_vec(shape, x.clone()).unwrap(), &ops::Epilogue::NONE);
            let r = random_values(y.data.len(), 60 + k as u64, 1.0);
            let dy = Tensor::from_vec(y.shape, r.clone()).unwrap();
            let dx = ops::depthwise::backward_input(&layer, &dy, (ih, iw));
            let what = format!("depthwise {win:?} int8 {int8} dx");
            check(
                &what,
                &dx.data,
                &f64s(&x),
                &mut |xs| dot(&naive::conv(&T64::new(shape, xs.to_vec()), &wf, c, true, &win).data, &r),
                40,
            );
            let mut dw = vec![0f32; wf.len()];
            ops::depthwise::backward_weight(&layer, &Tensor::from_vec(shape, x.clone()).unwrap(), &dy, &mut dw);
            let x64 = T64::from_f32(shape, &x);
            check(
                &format!("depthwise {win:?} dw"),
                &dw,
                &wf,
                &mut |ws| dot(&naive::conv(&x64, ws, c, true, &win).data, &r),
                60,
            );
        }
    }
}

#[test]
fn affine_activation_pool_linear_gradients() {
    let shape = [3, 4, 5, 3];
    let len: usize = shape.iter().product();
    let x = random_values(len, 70, 4.0).iter().map(|v| v + 2.5).collect::<Vec<f32>>();
    let a = Affine { scale: random_values(4, 71, 1.5), bias: random_values(4, 72, 0.5), stats: None };
    let r = random_values(len, 73, 1.0);
    let (s64, b64, x64) = (f64s(&a.scale), f64s(&a.bias), T64::from_f32(shape, &x));

    let mut dx = Tensor::from_vec(shape, r.clone()).unwrap();
    let (mut ds, mut db) = (vec![0f32; 4], vec![0f32; 4]);
    ops::affine::backward_params(&dx, Some(&Tensor::from_vec(shape, x.clone()).unwrap()), Some(&mut ds), Some(&mut db));
    ops::affine::backward_input(&a, &mut dx);
    check(
        "affine dx",
        &dx.data,
        &x64.data,
        &mut |xs| dot(&naive::affine(&T64::new(shape, xs.to_vec()), &s64, &b64).data, &r),
        60,
    );
    check("affine ds", &ds, &s64, &mut |s| dot(&naive::affine(&x64, s, &b64).data, &r), 4);
    check("affine db", &db, &b64, &mut |b| dot(&naive::affine(&x64, &s64, b).data, &r), 4);

    for act in Activation::ALL {
        let mask = ops::activation::mask(act, &Tensor::from_vec(shape, x.clone()).unwrap());
        let mut g = Tensor::from_vec(shape, r.clone()).unwrap();
        ops::activation::backward(&mask, &mut g);
        check(
            &format!("{act:?} dx"),
            &g.data,
            &x64.data,
            &mut |xs| dot(&naive::activation(&T64::new(shape, xs.to_vec()), act).data, &r),
            200,
        );
    }

    let rp = random_values(12, 74, 1.0);
    let dp = ops::pool::backward(&Tensor::from_vec([3, 4, 1, 1], rp.clone()).unwrap(), (5, 3));
    check("pool dx", &dp.data, &x64.data, &mut |xs| dot(&naive::pool(&T64::new(shape, xs.to_vec())).data, &rp), 60);

    let (fi, fo, n) = (7, 3, 4);
    let l = Linear {
        in_features: fi,
        out_features: fo,
        weights: Weights::F32(random_values(fi * fo, 75, 1.0)),
        bias: random_values(fo, 76, 1.0),
    };
    let lx = random_values(n * fi, 77, 1.0);
    let rl = random_values(n * fo, 78, 1.0);
    let dy = Tensor::from_vec([n, fo, 1, 1], rl.clone()).unwrap();
    let (w64, lb64, lx64) = (f64s(&l.weights.to_f32()), f64s(&l.bias), T64::from_f32([n, fi, 1, 1], &lx));
    let dlx = ops::linear::backward_input(&l, &dy);
    check(
        "linear dx",
        &dlx.data,
        &lx64.data,
        &mut |xs| dot(&naive::linear(&T64::new([n, fi, 1, 1], xs.to_vec()), &w64, &lb64).data, &rl),
        28,
    );
    let (mut dw, mut dbl) = (vec![0f32; fi * fo], vec![0f32; fo]);
    ops::linear::backward_params(
        &Tensor::from_vec([n, fi, 1, 1], lx.clone()).unwrap(),
        &dy,
        Some(&mut dw),
        Some(&mut dbl),
    );
    check("linear dw", &dw, &w64, &mut |w| dot(&naive::linear(&lx64, w, &lb64).data, &rl), 21);
    check("linear db", &dbl, &lb64, &mut |b| dot(&naive::linear(&lx64, &w64, b).data, &rl), 3);
}

#[test]
fn loss_gradient() {
    for eps in [0.0, 0.1] {
        let z = random_values(4 * 6, 80, 3.0);
        let labels = [0, 5, 2, 2];
        let l = loss::softmax_cross_entropy(&Tensor::from_vec([4, 6, 1, 1], z.clone()).unwrap(), &labels, eps as f32);
        let want = naive::cross_entropy(&T64::from_f32([4, 6, 1, 1], &z), &labels, eps);
        assert!((l.value as f64 - want).abs() < 1e-5, "loss {} vs {want}", l.value);
        check(
            "loss dz",
            &l.grad.data,
            &f64s(&z),
            &mut |zs| naive::cross_entropy(&T64::new([4, 6, 1, 1], zs.to_vec()), &labels, eps),
            24,
        );
    }
}

/// Whole networks: the tape's gradients for every trained tensor against finite differences of
/// the f64 network's loss, for every patch kind, on float and int8 backbones.
#[test]
fn whole_network_gradients_for_every_patch_kind() {
    let kinds = ["logits", "sb", "bias", "dw", "full", "sb+logits", "bias+logits", "dw+logits", "sb+dw+logits"];
    // The last variant pads SAME_UPPER (the stride-2 layers see odd and even inputs at 33 px)
    // with a 5×5 second depthwise.
    // The fourth has HardSigmoid (an affine and clip01) in two places; the fifth MobileNetV3's
    // parts (HardSwish twice, squeeze-excitation, a 3×3/2 MaxPool) at 33 px.
    let variants = [
        (false, None, 0, 32, false, false),
        (true, None, 0, 32, false, false),
        (false, Some("SAME_UPPER"), 5, 33, false, false),
        (true, None, 0, 32, true, false),
        (false, None, 0, 33, false, true),
    ];
    for (quantized, auto_pad, dw2_kernel, px, hard_sigmoid, v3) in variants {
        let v = TinyNet { quantized, auto_pad, dw2_kernel, hard_sigmoid, v3, ..TinyNet::default() };
        let model = tiny_net(v, 900);
        let backbone = Backbone::from_onnx_bytes(&model).unwrap();
        let se: &[&str] = if v3 { &["se+logits", "sb+se+logits"] } else { &[] };
        for (k, spec) in kinds.iter().chain(se).enumerate() {
            let kinds: PatchKinds = spec.parse().unwrap();
            let mut graph = backbone.graph().clone();
            let classes = if kinds.new_head() { 3 } else { 5 };
            if kinds.new_head() {
                patch::new_head(&mut graph, classes, 7).unwrap();
            }
            let slots = patch::slots(&graph, kinds).unwrap();
            patch::make_trainable(&mut graph, &slots);
            let plan = edgepatch::schedule::Schedule::new(&graph, &slots);
            let shape = [3, 3, px, px];
            let x = random_values(shape.iter().product(), 100 + k as u64, 2.0);
            let labels = [0, 2, 1];
            let (logits, t) = tape::forward(&graph, &plan, Tensor::from_vec(shape, x.clone()).unwrap()).unwrap();
            let l = loss::softmax_cross_entropy(&logits, &labels, 0.0);
            let mut grads: Vec<Vec<f32>> = slots.iter().map(|&s| vec![0.0; patch::param(&graph, s).len()]).collect();
            tape::backward(&graph, &plan, t, l.grad, &mut grads);
            let net = Net64::new(&graph);
            let x64 = T64::from_f32(shape, &x);
            let base = naive::cross_entropy(&net.forward(&x64), &labels, 0.0);
            assert!((base - l.value as f64).abs() < 1e-4, "{spec}: loss {} vs f64 {base}", l.value);
            for (i, s) in slots.iter().enumerate() {
                let p0 = net.clone().param(s.node, s.role).clone();
                let mut f = |p: &[f64]| {
                    let mut n2 = net.clone();
                    *n2.param(s.node, s.role) = p.to_vec();
                    naive::cross_entropy(&n2.forward(&x64), &labels, 0.0)
                };
                let what = format!("{spec} (int8 {quantized}, v3 {v3}) node {} {:?}", s.node, s.role);
                check(&what, &grads[i], &p0, &mut f, 6);
            }
            let roles: Vec<Role> = slots.iter().map(|s| s.role).collect();
            assert!(!roles.is_empty(), "{spec}: nothing trains");
        }
    }
}

/// The product of two values (elementwise, and a value times a per-channel gate): both input
/// gradients against finite differences of `Σ r·(a·b)`.
#[test]
fn product_gradients() {
    for gate in [false, true] {
        let shape = [2, 3, 4, 5];
        let bshape = if gate { [2, 3, 1, 1] } else { shape };
        let a = random_values(shape.iter().product(), 61, 1.5);
        let b = random_values(bshape.iter().product(), 62, 1.5);
        let r = random_values(shape.iter().product(), 63, 1.0);
        let (ta, tb) = (Tensor::from_vec(shape, a.clone()).unwrap(), Tensor::from_vec(bshape, b.clone()).unwrap());
        let dy = Tensor::from_vec(shape, r.clone()).unwrap();
        let (da, db) = ops::mul::backward(&ta, &tb, &dy, (true, true));
        let r64 = f64s(&r);
        let loss = |a: &[f64], b: &[f64]| {
            let y = naive::product(&T64::new(shape, a.to_vec()), &T64::new(bshape, b.to_vec()));
            y.data.iter().zip(&r64).map(|(y, r)| y * r).sum::<f64>()
        };
        let (a64, b64) = (f64s(&a), f64s(&b));
        check(&format!("mul da (gate {gate})"), &da.unwrap().data, &a64, &mut |p| loss(p, &b64), 24);
        check(&format!("mul db (gate {gate})"), &db.unwrap().data, &b64, &mut |p| loss(&a64, p), 24);
    }
}

/// Max pooling's input gradient against finite differences, over windows with and without
/// padding and overlap (inputs with distinct values, so that no window has a tie).
#[test]
fn max_pool_gradients() {
    for win in [
        Window::new([2, 2], [2, 2], [0; 4]),
        Window::new([3, 3], [2, 2], [1; 4]),
        Window::new([3, 2], [1, 2], [1, 0, 0, 1]),
    ] {
        let shape = [2, 2, 7, 6];
        let x = random_values(shape.iter().product(), 71, 2.0);
        let xt = Tensor::from_vec(shape, x.clone()).unwrap();
        let y = ops::maxpool::forward(&win, &xt);
        let r = random_values(y.data.len(), 72, 1.0);
        let dx = ops::maxpool::backward(&win, &xt, &Tensor::from_vec(y.shape, r.clone()).unwrap());
        let want = naive::max_pool(&T64::from_f32(shape, &x), &win);
        assert_eq!(want.data, f64s(&y.data), "{win:?}: forward");
        let mut f = |p: &[f64]| dot(&naive::max_pool(&T64::new(shape, p.to_vec()), &win).data, &r);
        check(&format!("max pool {win:?}"), &dx.data, &f64s(&x), &mut f, 40);
    }
}
