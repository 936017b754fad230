// CPU twin: ops::maxpool::backward.  dx[p, i] (+)= Σ dy[p, o] over the outputs o whose window's
// winner is input pixel i (the windows covering i, in output order; no atomics).
// Bindings: 0 x [nc, h, w], 1 dy [nc, oh, ow], 2 dx (added to when u.accumulate), 3 uniform.
// One invocation per input pixel, folded grid; `winner` is lib/max_pool.wgsl's.
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> dx: array<f32>;
@group(0) @binding(3) var<uniform> u: U;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = flat_index(wid, nwg, lid);
    let hw = u.h * u.w;
    if (g >= u.nc * hw) {
        return;
    }
    let p = g / hw;
    let i = g % hw;
    let iy = i / u.w;
    let ix = i % u.w;
    let base = p * hw;
    var s = 0.0;
    // Outputs whose window covers (iy, ix): oy·sh ≤ iy + pt < oy·sh + kh.
    let ty = iy + u.pt;
    let tx = ix + u.pl;
    var oy0 = 0u;
    if (ty + 1u > u.kh) {
        oy0 = (ty + 1u - u.kh + u.sh - 1u) / u.sh;
    }
    var ox0 = 0u;
    if (tx + 1u > u.kw) {
        ox0 = (tx + 1u - u.kw + u.sw - 1u) / u.sw;
    }
    for (var oy = oy0; oy < u.oh && oy * u.sh <= ty; oy++) {
        for (var ox = ox0; ox < u.ow && ox * u.sw <= tx; ox++) {
            if (winner(base, oy, ox) == i) {
                s += dy[p * u.oh * u.ow + oy * u.ow + ox];
            }
        }
    }
    if (u.accumulate != 0u) {
        s += dx[g];
    }
    dx[g] = s;
}
