// CPU twin: train::loss::softmax_cross_entropy.
// Per sample n of a pass of N: the loss −Σ_c t_c · log softmax(z)_c with t = (1 − ε)·onehot(label) + ε/K,
// the gradient (softmax − t)/B (B: the batch, of which the pass is samples first..first+N), and whether the
// first highest logit is the label.
// Bindings: 0 logits [N, K], 1 labels [B] (u32), 2 dlogits [N, K], 3 stats [2B] (loss_b, correct_b), 4 uniform.
@group(0) @binding(0) var<storage, read> z: array<f32>;
@group(0) @binding(1) var<storage, read> labels: array<u32>;
@group(0) @binding(2) var<storage, read_write> dz: array<f32>;
@group(0) @binding(3) var<storage, read_write> stats: array<f32>;
@group(0) @binding(4) var<uniform> u: U;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = gid.x;
    if (n >= u.n) {
        return;
    }
    let base = n * u.k;
    var m = z[base];
    var best = 0u;
    for (var c = 1u; c < u.k; c++) {
        if (z[base + c] > m) {
            m = z[base + c];
            best = c;
        }
    }
    var sum = 0.0;
    for (var c = 0u; c < u.k; c++) {
        sum += exp(z[base + c] - m);
    }
    let log_sum = log(sum);
    let label = labels[u.first + n];
    var loss = 0.0;
    for (var c = 0u; c < u.k; c++) {
        let logp = z[base + c] - m - log_sum;
        var t = u.smoothing / f32(u.k);
        if (c == label) {
            t += 1.0 - u.smoothing;
        }
        loss -= t * logp;
        dz[base + c] = (exp(logp) - t) / f32(u.batch);
    }
    let b = u.first + n;
    stats[2u * b] = loss;
    stats[2u * b + 1u] = select(0.0, 1.0, best == label);
}
