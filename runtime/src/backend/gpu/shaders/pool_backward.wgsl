// CPU twin: ops::pool::backward.  dx[n, c, i] (+)= dy[n, c] / HW
// Bindings: 0 dy [N, C], 1 dx [N, C, HW] (added to when u.accumulate), 2 uniform. Folded grid.
@group(0) @binding(0) var<storage, read> dy: array<f32>;
@group(0) @binding(1) var<storage, read_write> dx: array<f32>;
@group(0) @binding(2) var<uniform> u: U;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    let total = u.nc * u.hw;
    if (i >= total) {
        return;
    }
    var v = dy[i / u.hw] / f32(u.hw);
    if (u.accumulate != 0u) {
        v += dx[i];
    }
    dx[i] = v;
}
