// CPU twin: train::optim::clip_global_norm (the sum of squares, in parts).
// partial[j] = Σ g[i]² over the j-th chunk of u.chunk values.
// Bindings: 0 g [L], 1 partial [ceil(L / chunk)], 2 uniform. One workgroup per chunk, folded grid.
@group(0) @binding(0) var<storage, read> g: array<f32>;
@group(0) @binding(1) var<storage, read_write> partial: array<f32>;
@group(0) @binding(2) var<uniform> u: U;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = wid.y * nwg.x + wid.x;
    let start = j * u.chunk;
    let end = min(start + u.chunk, u.len);
    var s = 0.0;
    for (var i = start + lid; i < end; i += WG) {
        s += g[i] * g[i];
    }
    let total_sum = workgroup_sum(lid, s);
    if (lid == 0u && start < u.len) {
        partial[j] = total_sum;
    }
}
