// Reference: train::optim::clip_global_norm (the sum of squares, in parts).
// partial[j] = Σ g[i]² over the j-th chunk of u.chunk values.
// Bindings: 0 g [L], 1 partial [ceil(L / chunk)], 2 uniform. One workgroup per chunk, folded grid.
struct U { len: u32, chunk: u32 }
@group(0) @binding(0) var<storage, read> g: array<f32>;
@group(0) @binding(1) var<storage, read_write> partial: array<f32>;
@group(0) @binding(2) var<uniform> u: U;
var<workgroup> part: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = wid.y * nwg.x + wid.x;
    let start = j * u.chunk;
    let end = min(start + u.chunk, u.len);
    var s = 0.0;
    for (var i = start + lid; i < end; i += 256u) {
        s += g[i] * g[i];
    }
    part[lid] = s;
    workgroupBarrier();
    for (var k = 128u; k > 0u; k >>= 1u) {
        if (lid < k) {
            part[lid] += part[lid + k];
        }
        workgroupBarrier();
    }
    if (lid == 0u && start < u.len) {
        partial[j] = part[0];
    }
}
