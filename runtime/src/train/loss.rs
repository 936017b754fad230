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
