//! Post-training int8 quantization of a graph's weights: per output channel, symmetric (zero
//! point 0), values in `[-127, 127]`, each row's scale the clipping range of least squared error.
//!
//! The clipping range of row `r` is searched over `f·max|w_r|` for the 101 fractions
//! `f = 0.5, 0.505, …, 1` (in f64, the first of equal errors kept); the scale is that range
//! `/127`, rounded to f32, and the values are `round_half_even(w / scale)` in f32, clipped. This
//! is, operation for operation, what `models/mobilenet_v2/build.py` does with NumPy (its
//! squared-error sums are NumPy's pairwise sums, reproduced by [`pairwise_sum`]), so quantizing
//! the f32 MobileNetV2 gives the shipped int8 model's values and scales bit for bit.
//!
//! Kernels of convolutions, depthwise convolutions and the classifier are quantized; per-channel
//! affines (the S/B a patch trains) and biases stay f32.

use crate::graph::{Graph, Op, Weights};

/// Candidate clipping ranges: `0.5 + i·0.005` for `i` in `0..=100` (NumPy's
/// `linspace(0.5, 1.0, 101)`: `i·step + start`, the last exactly 1).
fn fractions() -> impl Iterator<Item = f64> {
    (0..=100).map(|i| if i == 100 { 1.0 } else { i as f64 * (0.5 / 100.0) + 0.5 })
}

/// The sum of `v` in NumPy's pairwise order (`pairwise_sum_DOUBLE`: under 8 values one by one;
/// up to 128 values eight running sums combined as a tree, then the rest; beyond that the two
/// halves, the first a multiple of 8 long).
pub fn pairwise_sum(v: &[f64]) -> f64 {
    let n = v.len();
    if n < 8 {
        return v.iter().fold(0.0, |s, &x| s + x);
    }
    if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&v[..8]);
        let whole = n - n % 8;
        for c in v[8..whole].chunks_exact(8) {
            for (r, &x) in r.iter_mut().zip(c) {
                *r += x;
            }
        }
        let mut s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &v[whole..] {
            s += x;
        }
        return s;
    }
    let half = n / 2;
    let half = half - half % 8;
    pairwise_sum(&v[..half]) + pairwise_sum(&v[half..])
}

/// The scale of one row: the clipping range of least squared error over [`fractions`], `/127`.
/// An all-zero row gets `0.5/127` (its range taken as 1; every candidate is exact).
pub fn row_scale(row: &[f32]) -> f32 {
    let amax = row.iter().fold(0.0f32, |m, &x| m.max(x.abs())) as f64;
    let amax = if amax > 0.0 { amax } else { 1.0 };
    let (mut best, mut best_err) = (amax / 127.0, f64::INFINITY);
    let mut err = vec![0.0f64; row.len()];
    for f in fractions() {
        let s = amax * f / 127.0;
        for (e, &x) in err.iter_mut().zip(row) {
            let q = (x as f64 / s).round_ties_even().clamp(-127.0, 127.0);
            let d = q * s - x as f64;
            *e = d * d;
        }
        let total = pairwise_sum(&err);
        if total < best_err {
            (best, best_err) = (s, total);
        }
    }
    best as f32
}

/// `w` (`rows` rows of equal length) as int8 rows with their [`row_scale`]s.
pub fn quantize_rows(w: &[f32], rows: usize) -> Weights {
    let len = w.len() / rows.max(1);
    let mut values = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(rows);
    for row in w.chunks_exact(len.max(1)).take(rows) {
        let s = row_scale(row);
        values.extend(row.iter().map(|&x| (x / s).round_ties_even().clamp(-127.0, 127.0) as i8));
        scales.push(s);
    }
    Weights::Int8 { values: values.into(), scales }
}

/// What [`quantize_graph`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Quantized {
    /// Kernels quantized (convolutions, depthwise convolutions, the classifier).
    pub kernels: usize,
    /// Their weight values.
    pub values: usize,
    /// Kernels that were int8 already, left as they were.
    pub already_int8: usize,
    /// The graph's resident bytes before and after.
    pub bytes_before: usize,
    pub bytes_after: usize,
}

/// Quantizes every f32 kernel of `graph` in place (rows are output channels: the graph keeps
/// kernels as `[out, in·kh·kw]`).
pub fn quantize_graph(graph: &mut Graph) -> Quantized {
    let mut done = Quantized { bytes_before: graph.resident_bytes(), ..Quantized::default() };
    for node in &mut graph.nodes {
        let (weights, rows) = match &mut node.op {
            Op::Conv(c) => (&mut c.weights, c.out_channels),
            Op::Depthwise(d) => (&mut d.weights, d.channels),
            Op::Linear(l) => (&mut l.weights, l.out_features),
            _ => continue,
        };
        match weights {
            Weights::F32(w) => {
                done.kernels += 1;
                done.values += w.len();
                *weights = quantize_rows(w, rows);
            }
            Weights::Int8 { .. } => done.already_int8 += 1,
        }
    }
    done.bytes_after = graph.resident_bytes();
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_order_is_numpys() {
        // Values whose sum depends on the order: 1e16 absorbs a 1 added to it alone.
        let mut v = vec![1.0f64; 300];
        v[0] = 1e16;
        v[150] = -1e16;
        // Sequentially every 1 after the first big value is lost until it is cancelled.
        let sequential = v.iter().fold(0.0, |s, &x| s + x);
        assert_ne!(pairwise_sum(&v), sequential);
        for n in [0, 1, 7, 8, 9, 127, 128, 129, 1000] {
            let ones = vec![1.0; n];
            assert_eq!(pairwise_sum(&ones), n as f64);
        }
    }

    #[test]
    fn rows_round_trip_within_half_a_step() {
        let w: Vec<f32> = (0..3 * 50).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        let Weights::Int8 { values, scales } = quantize_rows(&w, 3) else { panic!("int8") };
        for (r, row) in w.chunks(50).enumerate() {
            let amax = row.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
            assert!(scales[r] >= 0.5 * amax / 127.0 * 0.999 && scales[r] <= amax / 127.0 * 1.001);
            for (i, &x) in row.iter().enumerate() {
                let q = values[r * 50 + i] as f32;
                if q.abs() < 127.0 {
                    assert!((q * scales[r] - x).abs() <= 0.5 * scales[r] * 1.0001, "row {r} value {i}");
                }
            }
        }
        let Weights::Int8 { values, scales } = quantize_rows(&[0.0; 4], 1) else { panic!("int8") };
        // Every range fits zeros exactly: the first, half of the unit range, is kept.
        assert_eq!((&values[..], scales[0]), (&[0i8; 4][..], (0.5f64 / 127.0) as f32));
    }
}
