// CPU twin: ops::depthwise::forward.
// y[n, c, oy, ox] = wscale[c] · Σ_{ky, kx} weight((c·KH + ky)·KW + kx) · x[n, c, oy·SH − PT + ky, ox·SW − PL + kx]
// Bindings: 0 x [N, C, H, W], 1 w, 2 wscale [C], 3 y [N, C, OH, OW], 4 uniform. One invocation per output, folded grid.
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> wscale: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> u: U;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= u.n * u.c * u.oh * u.ow) {
        return;
    }
    let ox = i % u.ow;
    let oy = (i / u.ow) % u.oh;
    let nc = i / (u.ow * u.oh);
    let c = nc % u.c;
    let base = nc * u.h * u.w;
    var s = 0.0;
    for (var ky = 0u; ky < u.kh; ky++) {
        let iy = i32(oy * u.sh + ky) - i32(u.pt);
        if (iy < 0 || iy >= i32(u.h)) {
            continue;
        }
        for (var kx = 0u; kx < u.kw; kx++) {
            let ix = i32(ox * u.sw + kx) - i32(u.pl);
            if (ix < 0 || ix >= i32(u.w)) {
                continue;
            }
            s += weight((c * u.kh + ky) * u.kw + kx) * x[base + u32(iy) * u.w + u32(ix)];
        }
    }
    y[i] = s * wscale[c];
}
