// CPU twin: ops::mul::forward (and the first operand's gradient of ops::mul::backward).
// y[i] (+)= a[i] · b[i / per]: `per` 1 for two values of one shape, H·W for a per-channel gate.
// Bindings: 0 a, 1 b, 2 y (added to when u.accumulate), 3 uniform. One invocation per element, folded grid.
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> u: U;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i < u.total) {
        var v = a[i] * b[i / u.per];
        if (u.accumulate != 0u) {
            v += y[i];
        }
        y[i] = v;
    }
}
