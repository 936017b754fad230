// CPU twin: ops::conv::forward (a dense convolution with any window, e.g. the stem).
// y[n, co, oy, ox] = wscale[co] · Σ_{ci, ky, kx} weight(((co·Ci + ci)·KH + ky)·KW + kx) · x[n, ci, oy·SH − PT + ky, ox·SW − PL + kx]
// Bindings: 0 x [N, Ci, H, W], 1 w, 2 wscale [Co], 3 y [N, Co, OH, OW], 4 uniform. One invocation per output, folded grid.
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> wscale: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> u: U;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= u.n * u.co * u.oh * u.ow) {
        return;
    }
    let ox = i % u.ow;
    let oy = (i / u.ow) % u.oh;
    let co = (i / (u.ow * u.oh)) % u.co;
    let n = i / (u.ow * u.oh * u.co);
    var s = 0.0;
    for (var ci = 0u; ci < u.ci; ci++) {
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
                let wv = weight(((co * u.ci + ci) * u.kh + ky) * u.kw + kx);
                s += wv * x[((n * u.ci + ci) * u.h + u32(iy)) * u.w + u32(ix)];
            }
        }
    }
    y[i] = s * wscale[co];
}
