//! The blocked kernels at every vector level this CPU has (NEON under qemu on aarch64), bit for
//! bit against their plain definitions: fused multiply-adds in order, then `act(v·s + b)`.

use super::blocked::{depthwise_at, pointwise_at, Depthwise, Pointwise, Weights, BLOCK};
use super::levels;
use crate::ops::Activation;

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| (((i + seed) * 7919) % 997) as f32 / 300.0 - 1.3).collect()
}

fn act(y: f32, act: Activation) -> f32 {
    match act {
        Activation::Identity => y,
        Activation::Relu => y.max(0.0),
        Activation::Relu6 => y.clamp(0.0, 6.0),
        Activation::Clip01 => y.clamp(0.0, 1.0),
    }
}

#[test]
fn the_blocked_product_is_its_definition_at_every_level() {
    let (k, blocks, pixels) = (21, 3, 31);
    let wf = values(blocks * k * BLOCK, 1);
    let wi: Vec<i8> = (0..blocks * k * BLOCK).map(|i| ((i * 37) % 255) as i8).collect();
    // Planar input (step 1) with one extra plane row of padding values around.
    let x = values(k * pixels, 2);
    let off: Vec<usize> = (0..k).map(|i| i * pixels).collect();
    let (s, b) = (values(blocks * BLOCK, 3), values(blocks * BLOCK, 4));
    for level in levels() {
        for (weights, wv) in [(Weights::F32(&wf), &wf), (Weights::I8(&wi), &wi.iter().map(|&v| v as f32).collect())] {
            for (raw, a, wide) in
                [(false, Activation::Relu6, true), (true, Activation::Identity, false), (false, Activation::Relu, true)]
            {
                // Pixel counts that end in each size of tile.
                for (first, count) in [(2, pixels - 3), (1, pixels - 2), (0, pixels)] {
                    let mut outs: Vec<Vec<f32>> = vec![vec![f32::NAN; count * BLOCK]; blocks];
                    let t = Pointwise {
                        w: weights,
                        k,
                        x: &x,
                        off: &off,
                        step: 1,
                        first,
                        count,
                        s: &s,
                        b: if raw { &[] } else { &b },
                        act: a,
                        raw,
                        wide,
                    };
                    let mut views: Vec<&mut [f32]> = outs.iter_mut().map(|v| &mut v[..]).collect();
                    pointwise_at(level, &t, &mut views);
                    for (o, out) in outs.iter().enumerate() {
                        for p in 0..count {
                            for l in 0..BLOCK {
                                let c = o * BLOCK + l;
                                let sum = (0..k).fold(0f32, |acc, i| {
                                    wv[(o * k + i) * BLOCK + l].mul_add(x[off[i] + first + p], acc)
                                });
                                let want = if raw { sum * s[c] } else { act(sum * s[c] + b[c], a) };
                                let got = out[p * BLOCK + l];
                                assert_eq!(
                                    got.to_bits(),
                                    want.to_bits(),
                                    "{level:?} raw {raw} {a:?}: block {o} pixel {p} lane {l}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn the_blocked_depthwise_is_its_definition_at_every_level() {
    let (s, b) = (values(BLOCK, 6), values(BLOCK, 7));
    // Planes wider and narrower than a group of pixels, down to one pixel.
    let planes = [(9, 11), (7, 7), (2, 3), (1, 1), (4, 13)];
    let shapes = [(3, 1, 1), (3, 2, 1), (5, 1, 2), (5, 2, 2), (3, 1, 0), (7, 3, 3)];
    for level in levels() {
        for ((ih, iw), (k, st, pad)) in planes.into_iter().flat_map(|p| shapes.map(|s| (p, s))) {
            if ih + 2 * pad < k || iw + 2 * pad < k {
                continue;
            }
            let x = values(ih * iw * BLOCK, 5 + ih);
            let w = values(k * k * BLOCK, k + st);
            let oh = (ih + 2 * pad - k) / st + 1;
            let ow = (iw + 2 * pad - k) / st + 1;
            for a in [Activation::Relu6, Activation::Identity, Activation::Relu, Activation::Clip01] {
                let mut out = vec![f32::NAN; oh * ow * BLOCK];
                let t = Depthwise {
                    x: &x,
                    row0: 0,
                    ih,
                    iw,
                    w: &w,
                    kernel: [k, k],
                    stride: [st, st],
                    pad: [pad, pad],
                    rows: 0..oh,
                    ow,
                    s: &s,
                    b: &b,
                    act: a,
                };
                depthwise_at(level, &t, &mut out);
                for oy in 0..oh {
                    for ox in 0..ow {
                        for l in 0..BLOCK {
                            let mut sum = 0f32;
                            for ky in 0..k {
                                for kx in 0..k {
                                    let (iy, ix) = (
                                        (oy * st + ky) as isize - pad as isize,
                                        (ox * st + kx) as isize - pad as isize,
                                    );
                                    let v = if iy < 0 || ix < 0 || iy >= ih as isize || ix >= iw as isize {
                                        0.0
                                    } else {
                                        x[((iy as usize) * iw + ix as usize) * BLOCK + l]
                                    };
                                    sum = w[(ky * k + kx) * BLOCK + l].mul_add(v, sum);
                                }
                            }
                            let want = act(sum * s[l] + b[l], a);
                            let got = out[(oy * ow + ox) * BLOCK + l];
                            assert_eq!(
                                got.to_bits(),
                                want.to_bits(),
                                "{level:?} {ih}×{iw} {k}×{k}/{st} {a:?}: ({oy}, {ox}) lane {l}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn relu6_and_clip01_keep_nan_and_negative_zero_as_clamp_does_at_every_level() {
    let x: Vec<f32> = [f32::NAN, -0.0, 0.0, -1.0, 7.0, 6.0, f32::INFINITY, f32::NEG_INFINITY, 0.5, 1.0, 1.5]
        .iter()
        .copied()
        .cycle()
        .take(BLOCK)
        .collect();
    let (w, s, b) = (vec![1.0f32; BLOCK], vec![1.0f32; BLOCK], vec![-0.0f32; BLOCK]);
    for (level, (a, hi)) in
        levels().into_iter().flat_map(|l| [(l, (Activation::Relu6, 6.0)), (l, (Activation::Clip01, 1.0))])
    {
        let mut out = vec![0f32; BLOCK];
        let t = Depthwise {
            x: &x,
            row0: 0,
            ih: 1,
            iw: 1,
            w: &w,
            kernel: [1, 1],
            stride: [1, 1],
            pad: [0, 0],
            rows: 0..1,
            ow: 1,
            s: &s,
            b: &b,
            act: a,
        };
        depthwise_at(level, &t, &mut out);
        for (l, (&got, &xi)) in out.iter().zip(&x).enumerate() {
            let want = (1f32.mul_add(xi, 0.0) * 1.0 + -0.0).clamp(0.0, hi);
            let same = got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan());
            assert!(same, "{level:?}: lane {l}: {got} for {want}");
        }
    }
}
