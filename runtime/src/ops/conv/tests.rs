//! The convolution kernels against plain definitions, at every window shape the tests name.

use super::*;
use crate::graph::{Depthwise, Window};
use crate::ops::Activation;

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed * 97)) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

/// Plain definition: `y[n, o, oy, ox] = Σ w[o, c, ky, kx] · x[n, g(o)+c, oy·s + ky − p, ox·s + kx − p]`.
fn naive(x: &Tensor, w: &[f32], co: usize, ci_per: usize, depthwise: bool, win: &Window) -> Tensor {
    let [n, _, ih, iw] = x.shape;
    let (oh, ow) = win.output_size(ih, iw).unwrap();
    let [kh, kw] = win.kernel;
    let mut y = Tensor::zeros([n, co, oh, ow]);
    for b in 0..n {
        for o in 0..co {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0.0;
                    for c in 0..ci_per {
                        let xc = if depthwise { o } else { c };
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * win.stride[0] + ky) as isize - win.pads[0] as isize;
                                let ix = (ox * win.stride[1] + kx) as isize - win.pads[1] as isize;
                                if iy < 0 || ix < 0 || iy >= ih as isize || ix >= iw as isize {
                                    continue;
                                }
                                let xi = ((b * x.shape[1] + xc) * ih + iy as usize) * iw + ix as usize;
                                acc += w[((o * ci_per + c) * kh + ky) * kw + kx] * x.data[xi];
                            }
                        }
                    }
                    y.data[((b * co + o) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
    y
}

fn windows() -> Vec<Window> {
    vec![
        Window::new([1, 1], [1, 1], [0; 4]),
        Window::new([3, 3], [1, 1], [1; 4]),
        Window::new([3, 3], [2, 2], [1; 4]),
        Window::new([3, 3], [2, 2], [0, 0, 1, 1]),
        Window::new([5, 3], [1, 2], [2, 1, 2, 0]),
        Window::new([1, 1], [2, 2], [0; 4]),
        Window::new([2, 2], [2, 1], [3, 2, 2, 3]),
    ]
}

fn close(a: &[f32], b: &[f32]) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= 1e-4 * x.abs().max(y.abs()).max(1.0), "element {i}: {x} vs {y}");
    }
}

#[test]
fn dense_conv_matches_definition() {
    for (k, win) in windows().into_iter().enumerate() {
        let (n, ci, co) = (2, 5, 11);
        let x = Tensor::from_vec([n, ci, 13, 9], values(n * ci * 13 * 9, k as u32)).unwrap();
        let w = values(co * ci * win.kernel[0] * win.kernel[1], 7 + k as u32);
        let conv = Conv { in_channels: ci, out_channels: co, window: win, weights: Weights::F32(w.clone()) };
        let want = naive(&x, &w, co, ci, false, &win);
        close(&forward(&conv, &x, &Epilogue::NONE).data, &want.data);
    }
}

#[test]
fn pointwise_matches_the_definition_on_every_path() {
    let win = Window::new([1, 1], [1, 1], [0; 4]);
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let shapes = [(4, 70, 11, 48, 45), (1, 65, 9, 64, 33), (5, 3, 20, 7, 7), (4, 8, 70, 50, 41), (1, 8, 70, 50, 41)];
    for (n, ci, co, h, w) in shapes {
        let x = Tensor::from_vec([n, ci, h, w], values(n * ci * h * w, 5)).unwrap();
        let wv = values(co * ci, 6);
        let conv = Conv { in_channels: ci, out_channels: co, window: win, weights: Weights::F32(wv.clone()) };
        let y = forward(&conv, &x, &Epilogue::NONE);
        close(&y.data, &naive(&x, &wv, co, ci, false, &win).data);
        let dy = Tensor::from_vec([n, co, h, w], values(n * co * h * w, 8)).unwrap();
        let wt: Vec<f32> = (0..ci * co).map(|i| wv[(i % co) * ci + i / co]).collect();
        close(&backward_input(&conv, &dy, (h, w)).data, &naive(&dy, &wt, ci, co, false, &win).data);
        let serial = one_thread.install(|| (forward(&conv, &x, &Epilogue::NONE), backward_input(&conv, &dy, (h, w))));
        assert_eq!(serial.0.data, y.data, "forward, one thread and all");
        assert_eq!(serial.1.data, backward_input(&conv, &dy, (h, w)).data, "input gradient, one thread and all");
    }
}

#[test]
fn depthwise_matches_definition() {
    for (k, win) in windows().into_iter().enumerate() {
        let (n, c) = (3, 7);
        let x = Tensor::from_vec([n, c, 10, 15], values(n * c * 150, 3 + k as u32)).unwrap();
        let w = values(c * win.kernel[0] * win.kernel[1], 11 + k as u32);
        let dw = Depthwise { channels: c, window: win, weights: Weights::F32(w.clone()) };
        let want = naive(&x, &w, c, 1, true, &win);
        close(&crate::ops::depthwise::forward(&dw, &x, &Epilogue::NONE).data, &want.data);
    }
}

#[test]
fn then_outputs_equal_the_separate_passes() {
    let (n, ci, co) = (2, 5, 11);
    let a = Affine { scale: values(co, 3), bias: values(co, 4), stats: None };
    for (k, win) in windows().into_iter().enumerate() {
        let x = Tensor::from_vec([n, ci, 13, 9], values(n * ci * 13 * 9, k as u32)).unwrap();
        let w = values(co * ci * win.kernel[0] * win.kernel[1], 7 + k as u32);
        let conv = Conv { in_channels: ci, out_channels: co, window: win, weights: Weights::F32(w) };
        let dwin = Depthwise {
            channels: ci,
            window: win,
            weights: Weights::F32(values(ci * win.kernel[0] * win.kernel[1], 9)),
        };
        let ad = Affine { scale: values(ci, 5), bias: values(ci, 6), stats: None };
        for act in Activation::ALL {
            let r = forward(&conv, &x, &Epilogue::NONE);
            let mut want = r.clone();
            crate::ops::affine::forward(&a, &mut want, act);
            let (r2, y) = forward_then(&conv, &x, &a, act);
            assert_eq!((&r2.data, &y.data), (&r.data, &want.data), "conv {win:?} {act:?}");
            assert_eq!(forward_then_in_place(&conv, &x, &a, act).data, want.data[..]);

            let r = crate::ops::depthwise::forward(&dwin, &x, &Epilogue::NONE);
            let mut want = r.clone();
            crate::ops::affine::forward(&ad, &mut want, act);
            let (r2, y) = crate::ops::depthwise::forward_then(&dwin, &x, &ad, act);
            assert_eq!((&r2.data, &y.data), (&r.data, &want.data), "depthwise {win:?} {act:?}");
            assert_eq!(crate::ops::depthwise::forward_then_in_place(&dwin, &x, &ad, act).data, want.data[..]);

            let mapped = crate::ops::affine::forward_act(&ad, &x, act);
            let (r, y) = crate::ops::depthwise::forward_then(&dwin, &mapped, &ad, act);
            let (r2, y2) =
                crate::ops::depthwise::forward_fused(&dwin, &x, Some((&ad, act)), crate::ops::Then::Keep(&ad, act));
            assert_eq!((&r2.data, &y2.unwrap().data), (&r.data, &y.data), "depthwise after {win:?} {act:?}");
            let (r3, none) =
                crate::ops::depthwise::forward_fused(&dwin, &x, Some((&ad, act)), crate::ops::Then::Nothing);
            assert_eq!((&r3.data, none.is_none()), (&r.data, true));
        }
    }
}

#[test]
fn int8_weights_and_epilogue() {
    let win = Window::new([1, 1], [1, 1], [0; 4]);
    let (ci, co) = (4, 9);
    let q: Vec<i8> = (0..ci * co).map(|i| (i as i32 * 37 % 255 - 127) as i8).collect();
    let scales: Vec<f32> = (0..co).map(|o| 0.01 * (o + 1) as f32).collect();
    let w: Vec<f32> = q.iter().enumerate().map(|(i, &v)| v as f32 * scales[i / ci]).collect();
    let x = Tensor::from_vec([1, ci, 6, 6], values(ci * 36, 5)).unwrap();
    let conv =
        Conv { in_channels: ci, out_channels: co, window: win, weights: Weights::Int8 { values: q.into(), scales } };
    let (s, b) = (values(co, 1), values(co, 2));
    let epi = Epilogue { scale: Some(&s), bias: Some(&b), act: Activation::Relu6 };
    let mut want = naive(&x, &w, co, ci, false, &win);
    for (i, v) in want.data.iter_mut().enumerate() {
        let o = i / 36;
        *v = (*v * s[o] + b[o]).clamp(0.0, 6.0);
    }
    close(&forward(&conv, &x, &epi).data, &want.data);
}
