// CPU twin: ops::maxpool::forward.  y[p, oy, ox] = the first largest x[p, y, x] in the window
// (padded pixels never win; a NaN wins), found by `winner` (lib/max_pool.wgsl).
// Bindings: 0 x [nc, h, w], 1 y [nc, oh, ow], 2 uniform. One invocation per output, folded grid.
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> u: U;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let o = flat_index(wid, nwg, lid);
    let per = u.oh * u.ow;
    if (o >= u.nc * per) {
        return;
    }
    let p = o / per;
    let r = o % per;
    let base = p * u.h * u.w;
    y[o] = x[base + winner(base, r / u.ow, r % u.ow)];
}
