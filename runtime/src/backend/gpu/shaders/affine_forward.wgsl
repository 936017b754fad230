// CPU twin: ops::affine::forward (with its activation, see `activate`).
// y[n, c, i] = act(scale[c] · x[n, c, i] + bias[c])
// Bindings: 0 x [N, C, HW], 1 scale [C], 2 bias [C], 3 y [N, C, HW], 4 uniform. One invocation per element, folded grid.
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> scale: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> u: U;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= u.total) {
        return;
    }
    let c = (i / u.hw) % u.c;
    y[i] = activate(scale[c] * x[i] + bias[c], u.act);
}
