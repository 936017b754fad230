//! Dense convolution (groups = 1): 1×1 as a matrix product through `matrixmultiply` (via
//! ndarray's safe `general_mat_mul`), any other window (the stem) as direct loops.

use ndarray::{ArrayView2, ArrayViewMut2};
use rayon::prelude::*;

use super::depthwise::accumulate_plane;
use super::{raw_row, Epilogue};
use crate::graph::Conv;
use crate::tensor::Tensor;

/// Output channels per task of the 1×1 path: enough tasks for the thread pool, rows a multiple
/// of 8 (the GEMM micro-kernel height).
fn rows_per_task(out_channels: usize, batch: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let tasks_per_image = (4 * threads).div_ceil(batch).max(1);
    out_channels.div_ceil(tasks_per_image).next_multiple_of(8).clamp(8, 128)
}

/// Forward: `x: [N, Cin, H, W]` → `[N, Cout, OH, OW]`, then `epi` per output channel.
pub fn forward(conv: &Conv, x: &Tensor, epi: &Epilogue) -> Tensor {
    let [n, ci, ih, iw] = x.shape;
    debug_assert_eq!(ci, conv.in_channels);
    let (oh, ow) = conv.window.output_size(ih, iw).expect("shape checked by Graph::shapes");
    let co = conv.out_channels;
    let mut out = Tensor::zeros([n, co, oh, ow]);
    let hw = oh * ow;
    if conv.window.is_pointwise() {
        let blk = rows_per_task(co, n);
        out.data.par_chunks_mut(co * hw).enumerate().for_each(|(img, o)| {
            let xs = ArrayView2::from_shape((ci, hw), x.sample(img)).expect("sample is [Cin, HW]");
            o.par_chunks_mut(blk * hw).enumerate().for_each(|(b, o)| {
                let rows = o.len() / hw;
                let mut w = vec![0f32; rows * ci];
                let q: Vec<f32> = w
                    .chunks_exact_mut(ci)
                    .enumerate()
                    .map(|(r, row)| raw_row(&conv.weights, b * blk + r, row))
                    .collect();
                let wv = ArrayView2::from_shape((rows, ci), &w).expect("rows × Cin");
                let mut ov = ArrayViewMut2::from_shape((rows, hw), &mut *o).expect("rows × HW");
                ndarray::linalg::general_mat_mul(1.0, &wv, &xs, 0.0, &mut ov);
                for (r, plane) in o.chunks_exact_mut(hw).enumerate() {
                    epi.finish(b * blk + r, q[r], plane);
                }
            });
        });
    } else {
        let kl = conv.window.kernel[0] * conv.window.kernel[1];
        out.data.par_chunks_mut(hw).enumerate().for_each(|(p, plane)| {
            let (img, oc) = (p / co, p % co);
            let mut w = vec![0f32; ci * kl];
            let q = raw_row(&conv.weights, oc, &mut w);
            for (c, k) in w.chunks_exact(kl).enumerate() {
                let xp = &x.sample(img)[c * ih * iw..(c + 1) * ih * iw];
                accumulate_plane(xp, (ih, iw), k, &conv.window, plane, ow);
            }
            epi.finish(oc, q, plane);
        });
    }
    out
}
