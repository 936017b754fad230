//! The GEMM choice for the 1×1 convolutions, by measurement: `gemm` 0.18, `matrixmultiply`
//! (through ndarray's safe `general_mat_mul`) and edgepatch's own tiles (`simd::gemm_block`,
//! the weights packed once, the activations read in place), single-threaded, on MobileNetV2's
//! pointwise shapes at 224 px (C[m×n] = A[m×k]·B[k×n], m = output channels, k = input channels,
//! n = H·W).
//!
//! Run: `cargo run --release -p edgepatch-bench --bin gemm_choice`
#![allow(unsafe_code)]

use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let shapes = [
        (16, 32, 12544),
        (96, 16, 12544),
        (24, 96, 3136),
        (144, 24, 3136),
        (32, 144, 784),
        (192, 32, 784),
        (64, 192, 196),
        (384, 64, 196),
        (96, 384, 196),
        (576, 96, 196),
        (160, 576, 49),
        (960, 160, 49),
        (320, 960, 49),
        (1280, 320, 49),
    ];
    println!("| m | k | n | gemm GFLOP/s | matrixmultiply GFLOP/s | edgepatch GFLOP/s |");
    println!("|---|---|---|---|---|---|");
    let (mut t_gemm, mut t_mm, mut t_own) = (0.0, 0.0, 0.0);
    for &(m, k, n) in &shapes {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 255) as f32 / 255.0 - 0.5).collect();
        let mut b: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 253) as f32 / 253.0 - 0.5).collect();
        b.resize(k * n + edgepatch::simd::gemm_tile().1, 0.0);
        let packed = edgepatch::simd::pack_panels(m, k, |r, p| a[r * k + p]);
        let mut c = vec![0f32; m * n];
        let reps = (2e9 / (2.0 * (m * k * n) as f64)).clamp(3.0, 200.0) as usize;
        let flops = 2.0 * (m * k * n) as f64;
        let mut run = |which: u8| {
            let mut ts = Vec::new();
            for _ in 0..reps {
                let t = Instant::now();
                if which == 2 {
                    edgepatch::simd::gemm_block(&packed, k, (&b, n), (&mut c, n), (m, n), &[]);
                } else if which == 0 {
                    unsafe {
                        gemm::gemm(
                            m,
                            n,
                            k,
                            c.as_mut_ptr(),
                            1,
                            n as isize,
                            false,
                            a.as_ptr(),
                            1,
                            k as isize,
                            b.as_ptr(),
                            1,
                            n as isize,
                            0.0,
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        )
                    }
                } else {
                    let av = ndarray::ArrayView2::from_shape((m, k), &a).unwrap();
                    let bv = ndarray::ArrayView2::from_shape((k, n), &b).unwrap();
                    let mut cv = ndarray::ArrayViewMut2::from_shape((m, n), &mut c).unwrap();
                    ndarray::linalg::general_mat_mul(1.0, &av, &bv, 0.0, &mut cv);
                }
                ts.push(t.elapsed().as_secs_f64());
            }
            median(ts)
        };
        let g = run(0);
        let mm = run(1);
        let own = run(2);
        t_gemm += g;
        t_mm += mm;
        t_own += own;
        println!("| {m} | {k} | {n} | {:.1} | {:.1} | {:.1} |", flops / g / 1e9, flops / mm / 1e9, flops / own / 1e9);
    }
    println!(
        "sum of medians: gemm {:.2} ms, matrixmultiply {:.2} ms, edgepatch {:.2} ms",
        t_gemm * 1e3,
        t_mm * 1e3,
        t_own * 1e3
    );
}
