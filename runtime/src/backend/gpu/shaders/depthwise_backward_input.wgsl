// CPU twin: ops::depthwise::backward_input.
// dx[n, c, iy, ix] (+)= wscale[c] · Σ weight((c·KH + ky)·KW + kx) · dy[n, c, oy, ox] over oy·SH − PT + ky = iy, ox·SW − PL + kx = ix
// Bindings: 0 dy [N, C, OH, OW], 1 w, 2 wscale [C], 3 dx [N, C, H, W] (added to when u.accumulate), 4 uniform. One invocation per input element, folded grid.
@group(0) @binding(0) var<storage, read> dy: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> wscale: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;
@group(0) @binding(4) var<uniform> u: U;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= u.n * u.c * u.h * u.w) {
        return;
    }
    let ix = i32(i % u.w);
    let iy = i32((i / u.w) % u.h);
    let nc = i / (u.w * u.h);
    let c = nc % u.c;
    let base = nc * u.oh * u.ow;
    var s = 0.0;
    for (var ky = 0u; ky < u.kh; ky++) {
        let ty = iy + i32(u.pt) - i32(ky);
        if (ty < 0 || ty % i32(u.sh) != 0) {
            continue;
        }
        let oy = u32(ty) / u.sh;
        if (oy >= u.oh) {
            continue;
        }
        for (var kx = 0u; kx < u.kw; kx++) {
            let tx = ix + i32(u.pl) - i32(kx);
            if (tx < 0 || tx % i32(u.sw) != 0) {
                continue;
            }
            let ox = u32(tx) / u.sw;
            if (ox >= u.ow) {
                continue;
            }
            s += weight((c * u.kh + ky) * u.kw + kx) * dy[base + oy * u.ow + ox];
        }
    }
    var v = s * wscale[c];
    if (u.accumulate != 0u) {
        v += dx[i];
    }
    dx[i] = v;
}
