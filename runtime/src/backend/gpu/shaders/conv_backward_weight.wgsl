// CPU twin: ops::conv::backward_weight (a dense convolution with any window, e.g. the stem).
// dw[co, ci, ky, kx] = Σ_{n, oy, ox} dy[n, co, oy, ox] · x[n, ci, oy·SH − PT + ky, ox·SW − PL + kx]   (overwrites)
// Bindings: 0 x [N, Ci, H, W], 1 dy [N, Co, OH, OW], 2 dw [Co, Ci, KH, KW], 3 uniform. One workgroup per weight, folded grid.
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> dw: array<f32>;
@group(0) @binding(3) var<uniform> u: U;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = wid.y * nwg.x + wid.x;
    let total = u.co * u.ci * u.kh * u.kw;
    let kx = g % u.kw;
    let ky = (g / u.kw) % u.kh;
    let ci = (g / (u.kw * u.kh)) % u.ci;
    let co = g / (u.kw * u.kh * u.ci);
    var s = 0.0;
    if (g < total) {
        let plane = u.oh * u.ow;
        for (var j = lid; j < u.n * plane; j += WG) {
            let n = j / plane;
            let oy = (j / u.ow) % u.oh;
            let ox = j % u.ow;
            let iy = i32(oy * u.sh + ky) - i32(u.pt);
            let ix = i32(ox * u.sw + kx) - i32(u.pl);
            if (iy >= 0 && iy < i32(u.h) && ix >= 0 && ix < i32(u.w)) {
                s += dy[(n * u.co + co) * plane + oy * u.ow + ox] * x[((n * u.ci + ci) * u.h + u32(iy)) * u.w + u32(ix)];
            }
        }
    }
    let total_sum = workgroup_sum(lid, s);
    if (lid == 0u && g < total) {
        dw[g] = total_sum;
    }
}
