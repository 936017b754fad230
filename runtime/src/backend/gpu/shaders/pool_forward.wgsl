// CPU twin: ops::pool::forward.  y[n, c] = mean_i x[n, c, i]
// Bindings: 0 x [N, C, HW], 1 y [N, C], 2 uniform. One invocation per (n, c), folded grid.
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> u: U;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= u.nc) {
        return;
    }
    var s = 0.0;
    for (var j = 0u; j < u.hw; j++) {
        s += x[i * u.hw + j];
    }
    y[i] = s / f32(u.hw);
}
