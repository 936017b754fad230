//! Softmax cross-entropy with optional label smoothing.

use crate::tensor::Tensor;

/// Loss of one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Loss {
    /// Mean loss over the batch.
    pub value: f32,
    /// Gradient of the mean loss with respect to the logits, `[N, K, 1, 1]`.
    pub grad: Tensor,
    /// Samples whose highest logit is their label.
    pub correct: usize,
}

/// `logits: [N, K, …]`, `labels[n] < K`; the target is `1 − ε` on the label and `ε/K` spread
/// over all classes (`ε = smoothing`, 0 for plain cross-entropy).
pub fn softmax_cross_entropy(logits: &Tensor, labels: &[usize], smoothing: f32) -> Loss {
    let n = logits.shape[0];
    let k = logits.sample_len();
    debug_assert_eq!(labels.len(), n);
    let mut grad = Tensor::zeros(logits.shape);
    let (mut total, mut correct) = (0f64, 0);
    for (i, &label) in labels.iter().enumerate() {
        let z = logits.sample(i);
        let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = z.iter().map(|&v| ((v - m) as f64).exp()).sum();
        let log_sum = sum.ln();
        let g = grad.sample_mut(i);
        let mut best = 0;
        for (c, &v) in z.iter().enumerate() {
            let logp = (v - m) as f64 - log_sum;
            let target = smoothing as f64 / k as f64 + if c == label { 1.0 - smoothing as f64 } else { 0.0 };
            total -= target * logp;
            g[c] = ((logp.exp() - target) / n as f64) as f32;
            if v > z[best] {
                best = c;
            }
        }
        correct += (best == label) as usize;
    }
    Loss { value: (total / n as f64) as f32, grad, correct }
}

/// The mean prediction entropy `H = −Σ_c p_c·log p_c` of `logits: [N, K, …]` (`p` the softmax),
/// with its gradient `∂H/∂z_c = −p_c·(log p_c + H)` per sample (over N for the mean): what label-free
/// adaptation by entropy minimisation ([`super::adapt`]) descends. `correct` is 0 (no labels).
pub fn softmax_entropy(logits: &Tensor) -> Loss {
    let n = logits.shape[0];
    let mut grad = Tensor::zeros(logits.shape);
    let mut total = 0f64;
    for i in 0..n {
        let z = logits.sample(i);
        let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let log_sum = z.iter().map(|&v| ((v - m) as f64).exp()).sum::<f64>().ln();
        let logp: Vec<f64> = z.iter().map(|&v| (v - m) as f64 - log_sum).collect();
        let h: f64 = -logp.iter().map(|&l| l.exp() * l).sum::<f64>();
        total += h;
        for (g, &l) in grad.sample_mut(i).iter_mut().zip(&logp) {
            *g = (-l.exp() * (l + h) / n as f64) as f32;
        }
    }
    Loss { value: (total / n as f64) as f32, grad, correct: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entropy_gradient_matches_finite_differences() {
        let mut rng = crate::data::Rng::new(5);
        let data: Vec<f32> = (0..3 * 7).map(|_| rng.uniform() * 6.0 - 3.0).collect();
        let logits = Tensor::from_vec([3, 7, 1, 1], data.clone()).unwrap();
        let l = softmax_entropy(&logits);
        // The entropy of one sample in f64, straight from the definition.
        let h = |z: &[f64]| -> f64 {
            let s: f64 = z.iter().map(|v| v.exp()).sum();
            -z.iter().map(|v| v.exp() / s * (v.exp() / s).ln()).sum::<f64>()
        };
        let mean = |d: &[f64]| d.chunks(7).map(h).sum::<f64>() / 3.0;
        let base: Vec<f64> = data.iter().map(|&v| v as f64).collect();
        assert!((l.value as f64 - mean(&base)).abs() < 1e-6);
        for i in 0..base.len() {
            let (mut up, mut down) = (base.clone(), base.clone());
            up[i] += 1e-5;
            down[i] -= 1e-5;
            let fd = (mean(&up) - mean(&down)) / 2e-5;
            assert!((fd - l.grad.data[i] as f64).abs() < 1e-5, "logit {i}: {fd} vs {}", l.grad.data[i]);
        }
        assert_eq!(l.correct, 0);
    }
}
