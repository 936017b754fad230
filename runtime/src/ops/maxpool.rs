//! Max pooling over a window (ONNX `MaxPool`; padded pixels never win).

use rayon::prelude::*;

use crate::graph::Window;
use crate::tensor::Tensor;

/// The input index (within its plane) of the first largest value of each output pixel's window,
/// for an input plane of `(h, w)`, called with `(output index, input index)`. A NaN wins its
/// window (as it propagates in onnxruntime's and PyTorch's max).
fn for_each_winner(window: &Window, (h, w): (usize, usize), plane: &[f32], mut f: impl FnMut(usize, usize)) {
    let (oh, ow) = window.output_size(h, w).expect("the shape inference checked the window");
    let [pt, pl, ..] = window.pads_at(h, w);
    let ([kh, kw], [sh, sw]) = (window.kernel, window.stride);
    for oy in 0..oh {
        for ox in 0..ow {
            let mut best: Option<(usize, f32)> = None;
            for ky in 0..kh {
                let Some(y) = (oy * sh + ky).checked_sub(pt).filter(|&y| y < h) else { continue };
                for kx in 0..kw {
                    let Some(x) = (ox * sw + kx).checked_sub(pl).filter(|&x| x < w) else { continue };
                    let v = plane[y * w + x];
                    if best.is_none_or(|(_, b)| v > b || (v.is_nan() && !b.is_nan())) {
                        best = Some((y * w + x, v));
                    }
                }
            }
            let (i, _) = best.expect("every window covers an input pixel (pads are smaller than the kernel)");
            f(oy * ow + ox, i);
        }
    }
}

/// `x: [N, C, H, W]` → `[N, C, oh, ow]`, each output the largest input in its window.
pub fn forward(window: &Window, x: &Tensor) -> Tensor {
    let [n, c, h, w] = x.shape;
    let (oh, ow) = window.output_size(h, w).expect("the shape inference checked the window");
    let mut y = Tensor::scratch([n, c, oh, ow]);
    y.data.par_chunks_mut((oh * ow).max(1)).zip(x.data.par_chunks((h * w).max(1))).for_each(|(out, plane)| {
        for_each_winner(window, (h, w), plane, |o, i| out[o] = plane[i]);
    });
    y
}

/// Input gradient: each output's gradient goes to the input that won its window (added up where
/// windows overlap); `x` is the forward's input.
pub fn backward(window: &Window, x: &Tensor, dy: &Tensor) -> Tensor {
    let [_, _, h, w] = x.shape;
    let mut dx = Tensor::zeros(x.shape);
    let oplane = (dy.shape[2] * dy.shape[3]).max(1);
    dx.data
        .par_chunks_mut((h * w).max(1))
        .zip(x.data.par_chunks((h * w).max(1)))
        .zip(dy.data.par_chunks(oplane))
        .for_each(|((d, plane), g)| {
            for_each_winner(window, (h, w), plane, |o, i| d[i] += g[o]);
        });
    dx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_largest_value_wins_and_takes_the_gradient() {
        let x = Tensor { shape: [1, 1, 3, 4], data: vec![1., 5., 2., 2., 0., 5., 7., 3., 9., -1., 7., 8.] };
        let pool = Window::new([2, 2], [2, 2], [0; 4]);
        let y = forward(&pool, &x);
        assert_eq!((y.shape, y.data.clone()), ([1, 1, 1, 2], vec![5., 7.]));
        let dx = backward(&pool, &x, &Tensor { shape: y.shape, data: vec![1.5, -2.] });
        assert_eq!(dx.data, vec![0., 1.5, 0., 0., 0., 0., -2., 0., 0., 0., 0., 0.]);
        // Overlapping windows with padding: padded pixels never win, gradients add up.
        let pool = Window::new([3, 3], [1, 1], [1, 1, 1, 1]);
        let y = forward(&pool, &x);
        assert_eq!(y.data, vec![5., 7., 7., 7., 9., 9., 8., 8., 9., 9., 8., 8.]);
        let dx = backward(&pool, &x, &Tensor { shape: y.shape, data: vec![1.0; 12] });
        assert_eq!(dx.data, vec![0., 1., 0., 0., 0., 0., 3., 0., 4., 0., 0., 4.]);
    }
}
