// CPU twin: train::optim::clip_global_norm and the mean loss of train::loss::softmax_cross_entropy.
// scalars = [clip factor, gradient norm, mean loss, correct samples, ok (1 when loss and norm are finite)]
// Bindings: 0 partial [count], 1 stats [2N], 2 scalars [8], 3 uniform. One workgroup.
@group(0) @binding(0) var<storage, read> partial: array<f32>;
@group(0) @binding(1) var<storage, read> stats: array<f32>;
@group(0) @binding(2) var<storage, read_write> scalars: array<f32>;
@group(0) @binding(3) var<uniform> u: U;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = lid; i < u.count; i += WG) {
        s += partial[i];
    }
    let total_sum = workgroup_sum(lid, s);
    if (lid == 0u) {
        let norm = sqrt(total_sum);
        var loss = 0.0;
        var correct = 0.0;
        for (var n = 0u; n < u.n; n++) {
            loss += stats[2u * n];
            correct += stats[2u * n + 1u];
        }
        loss = loss / f32(u.n);
        var factor = 1.0;
        if (norm > u.max_norm && norm > 0.0) {
            factor = u.max_norm / norm;
        }
        // x − x == 0 holds exactly for finite x only.
        let ok = (loss - loss == 0.0) && (norm - norm == 0.0);
        scalars[0] = factor;
        scalars[1] = norm;
        scalars[2] = loss;
        scalars[3] = correct;
        scalars[4] = select(0.0, 1.0, ok);
    }
}
