// CPU twin: ops::activation::backward then ops::affine::backward_input.
// dx[n, c, i] (+)= dy · act'(y) · scale[c], act' as in affine_backward_params.
// Bindings: 0 dy [N, C, HW], 1 y [N, C, HW], 2 scale [C], 3 dx [N, C, HW] (added to when u.accumulate), 4 uniform. Folded grid.
@group(0) @binding(0) var<storage, read> dy: array<f32>;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read> scale: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;
@group(0) @binding(4) var<uniform> u: U;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= u.total) {
        return;
    }
    let d = select(0.0, dy[i], passes(y[i], u.act));
    var r = d * scale[(i / u.hw) % u.c];
    if (u.accumulate != 0u) {
        r += dx[i];
    }
    dx[i] = r;
}
