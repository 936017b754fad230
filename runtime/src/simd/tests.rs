//! Every kernel at every vector level this CPU has, in one process: against its plain
//! definition where it has an exact one, and bit for bit against the portable level.

use super::*;
use crate::ops::Activation;

#[test]
fn kernels_match_their_definitions_at_every_level() {
    for level in levels() {
        definitions_hold(level);
    }
}

fn definitions_hold(level: Level) {
    let x: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 997) as f32 / 300.0 - 1.3).collect();
    let srcs: Vec<&[f32]> = (0..9).map(|t| &x[t..]).collect();
    let w: Vec<f32> = (0..9).map(|t| 0.3 - t as f32 * 0.07).collect();
    let mut out = vec![0.5f32; 991];
    taps_at(level, &mut out, &srcs, &w, true);
    for (i, o) in out.iter().enumerate() {
        let mut want = 0.5f32;
        for t in 0..9 {
            want = w[t].mul_add(x[i + t], want);
        }
        assert_eq!(*o, want, "{level:?}: tap sum {i}");
    }
    let mut out5 = vec![0f32; 991];
    taps_at(level, &mut out5, &srcs[..5], &w[..5], false);
    for (i, o) in out5.iter().enumerate() {
        let want = (0..5).fold(0f32, |a, t| w[t].mul_add(x[i + t], a));
        assert_eq!(*o, want, "five taps {i}");
    }
    let x: Vec<f32> = (0..10000).map(|i| ((i * 7919) % 997) as f32 / 300.0 - 1.3).collect();
    let nr = gemm_tile_at(level).1;
    for (rows, k, cols, ldb) in [
        (13, 7, nr, 40),
        (8, 1, nr / 2, nr),
        (3, 20, 5, 9),
        (17, 33, 11, 50),
        (4, 5, nr / 2 + 1, nr),
        (20, 70, 2 * nr + 5, 3 * nr),
        (9, 10, 3 * nr, 3 * nr + 1),
    ] {
        let a = |r: usize, p: usize| x[(r * 31 + p * 7) % 997];
        let packed = pack_panels_at(level, rows, k, a);
        let mut c = vec![f32::NAN; rows * 4 * nr];
        gemm_block_at(level, &packed, k, (&x[3..], ldb), (&mut c, 4 * nr), (rows, cols), &[]);
        for r in 0..rows {
            for j in 0..4 * nr {
                let want = if j < cols {
                    (0..k).fold(0f32, |acc, p| a(r, p).mul_add(x[3 + p * ldb + j], acc))
                } else {
                    f32::NAN
                };
                assert_eq!(c[r * 4 * nr + j].to_bits(), want.to_bits(), "gemm {rows}×{k}×{cols} ({r}, {j})");
            }
        }
    }
    for (oh, ow, sh, sw) in [(4, 4, 1, 1), (7, 7, 1, 1), (8, 8, 1, 1), (3, 5, 1, 1), (9, 2, 1, 1), (1, 1, 1, 1)]
        .into_iter()
        .chain([(14, 14, 1, 1), (16, 16, 1, 1), (4, 4, 2, 2), (7, 7, 2, 2), (5, 3, 2, 2), (3, 16, 2, 2)])
    {
        let (rows, width) = ((oh - 1) * sh + 3, LANES + 2 / sw);
        let src = &x[..rows * width * sw];
        let g: Vec<f32> = (0..oh * ow).map(|i| x[(i * 13 + 5) % 997] * 0.7).collect();
        let mut dk = [0.25f32; 9];
        kernel_gradient_3x3_at(level, &mut dk, &g, ow, src, Layout { rows, width, sh, sw });
        let slot = ow.next_power_of_two();
        let per = LANES / slot;
        for (t, &got) in dk.iter().enumerate() {
            let o = ((t % 3 % sw) * rows + t / 3) * width + t % 3 / sw;
            let at = |oy: usize, ox: usize| (src[o + oy * sh * width + ox], g[oy * ow + ox]);
            let mut lanes = [0f32; LANES];
            for group in 0..oh.div_ceil(per) {
                for s in 0..per {
                    let oy = group * per + s;
                    for ox in 0..ow {
                        let (xv, gv) = if oy < oh { at(oy, ox) } else { (0.0, 0.0) };
                        lanes[s * slot + ox] = xv.mul_add(gv, lanes[s * slot + ox]);
                    }
                }
            }
            let want = 0.25 + lanes.chunks_exact(slot).flat_map(|c| &c[..ow]).sum::<f32>();
            assert_eq!(got.to_bits(), want.to_bits(), "kernel gradient {oh}×{ow} /{sh}, tap {t}");
            let exact: f64 = (0..oh * ow).map(|i| at(i / ow, i % ow)).map(|(a, b)| a as f64 * b as f64).sum();
            assert!((got as f64 - 0.25 - exact).abs() < 1e-4 * (1.0 + exact.abs()), "{oh}×{ow}: {got} vs {exact}");
        }
    }
    let x = &x[..1000];
    let mut v = x.to_vec();
    epilogue_at(level, &mut v, 2.5, -0.25, Activation::Relu6);
    for (a, b) in v.iter().zip(x) {
        assert_eq!(*a, (b * 2.5 - 0.25).clamp(0.0, 6.0));
    }
}

/// Values in [-1.3, 2) with no pattern a kernel could depend on.
fn data(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| (((i + seed) * 7919) % 997) as f32 / 300.0 - 1.3).collect()
}

/// Runs `f` at every level and asserts that each gives the portable level's bits.
fn same_at_every_level<T: PartialEq + std::fmt::Debug>(what: &str, f: impl Fn(Level) -> T) {
    let want = f(Level::Portable);
    for level in levels() {
        assert_eq!(f(level), want, "{what} at {level:?}");
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn every_kernel_gives_the_same_bits_at_every_level() {
    let x = data(4096, 1);
    for (oh, ow, sh, sw) in [(5usize, 7usize, 1usize, 1usize), (4, 20, 2, 2), (1, 1, 1, 1), (7, 17, 1, 1)] {
        let (rows, width) = ((oh - 1) * sh + 3, (ow + 2 / sw).next_multiple_of(LANES));
        let l = Layout { rows, width, sh, sw };
        let k: [f32; 9] = std::array::from_fn(|t| 0.3 - t as f32 * 0.07);
        same_at_every_level("conv3x3", |lv| {
            let mut out = data(oh * ow, 3);
            conv3x3_at(lv, &mut out, ow, &x, l, &k, true);
            bits(&out)
        });
    }
    for (ih, iw, sw, pt, pl) in
        [(6usize, 9usize, 1usize, 1usize, 1usize), (7, 40, 2, 1, 1), (5, 3, 2, 0, 0), (4, 33, 2, 1, 0)]
    {
        let geo = Phases { rows: ih + 2, width: (iw + 2).div_ceil(sw) + LANES, sw, pt, pl };
        for map in [None, Some((1.5, -0.25, Activation::Relu6))] {
            same_at_every_level("layout_input", |lv| {
                let mut dst = vec![0.5f32; geo.rows * geo.width * sw];
                layout_input_at(lv, &x[..ih * iw], iw, &mut dst, geo, map);
                bits(&dst)
            });
        }
    }
    for (oh, ow, pt, pl) in [(4usize, 5usize, 1usize, 1usize), (8, 17, 0, 0), (3, 40, 1, 0)] {
        let (len, m) = (ow + 2 + LANES, ow + 1);
        let (ih, iw) = (2 * oh - pt, 2 * ow - pl);
        let k: [f32; 9] = std::array::from_fn(|t| 0.2 + t as f32 * 0.05);
        same_at_every_level("transpose_stride_2", |lv| {
            let mut dx = vec![0f32; ih * iw];
            let mut scratch = vec![0f32; 2 * m];
            transpose_stride_2_at(lv, &x[..oh * len], &k, GradRows { len, m, iw, pt, pl }, &mut dx, &mut scratch);
            bits(&dx)
        });
    }
    let g = data(77, 5);
    same_at_every_level("tap_products", |lv| {
        let srcs: Vec<&[f32]> = (0..9).map(|t| &x[t..]).collect();
        let mut acc: Vec<Vec<f32>> = (0..9).map(|t| data(80, t)).collect();
        tap_products_at(lv, &mut acc, &srcs, &g);
        acc.iter().map(|a| bits(a)).collect::<Vec<_>>()
    });
    for act in Activation::ALL {
        let then = Some((0.75, 0.5, act));
        same_at_every_level("finish_plane", |lv| {
            let (mut r, mut y) = (x[..1000].to_vec(), vec![0f32; 1000]);
            finish_plane_at(lv, &mut r, Some(&mut y), 1.25, then);
            let mut r2 = x[..1000].to_vec();
            finish_plane_at(lv, &mut r2, None, 1.25, then);
            (bits(&r), bits(&y), bits(&r2))
        });
        same_at_every_level("affine_act", |lv| {
            let mut y = vec![0f32; 1001];
            affine_act_at(lv, &mut y, &x[..1001], 2.5, -0.5, act);
            bits(&y)
        });
        same_at_every_level("affine_act_backward", |lv| {
            let mut dy = data(1001, 9);
            let (sx, sg) = affine_act_backward_at(lv, &mut dy, &x[..1001], 2.5, -0.5, act, true);
            (bits(&dy), sx.to_bits(), sg.to_bits())
        });
        same_at_every_level("mask_bits and masked_scale", |lv| {
            let mut words = vec![0u64; 1001usize.div_ceil(64)];
            mask_bits_at(lv, &x[..1001], act, &mut words);
            let mut v = data(1001, 11);
            let sum = masked_scale_at(lv, &mut v, &words, 0.5, true);
            (words, bits(&v), sum.to_bits())
        });
    }
}

#[test]
fn int8_dots_give_the_bits_of_converting_first_at_every_level() {
    let a: Vec<f32> = (0..1300).map(|i| ((i * 7919) % 997) as f32 / 300.0 - 1.3).collect();
    let q: Vec<i8> = (0..1300u32).map(|i| ((i * 31 + 7) % 255) as u8 as i8).collect();
    let qf: Vec<f32> = q.iter().map(|&v| v as f32).collect();
    for len in (0..40).chain([1279, 1280, 1300]) {
        // The plain definition: eight lanes, summed in order, then the tail.
        let mut acc = [0f32; 8];
        for i in 0..len / 8 * 8 {
            acc[i % 8] += a[i] * qf[i];
        }
        let tail: f32 = (len / 8 * 8..len).map(|i| a[i] * qf[i]).sum();
        let want = acc.iter().sum::<f32>() + tail;
        for level in levels() {
            assert_eq!(dot_at(level, &a[..len], &qf[..len]).to_bits(), want.to_bits(), "{level:?} f32 dot of {len}");
            assert_eq!(dot_i8_at(level, &a[..len], &q[..len]).to_bits(), want.to_bits(), "{level:?} int8 dot of {len}");
        }
    }
}
