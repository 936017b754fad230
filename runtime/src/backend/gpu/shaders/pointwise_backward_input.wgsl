// CPU twin: ops::conv::backward_input for a 1×1 kernel (and ops::linear::backward_input, P = 1).
// dx[n, ci, p] (+)= Σ_co weight(co·ci_len + ci) · wscale[co] · dy[n, co, p]
// Bindings: 0 dy [N, Co, P], 1 w, 2 wscale [Co], 3 dx [N, Ci, P] (added to when u.accumulate), 4 uniform.
// Tiles of 64 input channels × 64 positions (lib/tile.wgsl); grid (P/64, Ci/64, N).
@group(0) @binding(0) var<storage, read> dy: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> wscale: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;
@group(0) @binding(4) var<uniform> u: U;
const TA_STRIDE: u32 = 64u;

// Element e of the slices at reduction step k0: a[co, ci] = scaled weight, b[co, p] = dy.
fn load(wid: vec3<u32>, k0: u32, e: u32) {
    let n = wid.z;
    let p0 = wid.x * 64u;
    let c0 = wid.y * 64u;
    let kk = e / 64u;
    let cc = e % 64u;
    var wv = 0.0;
    if (c0 + cc < u.ci && k0 + kk < u.co) {
        wv = weight((k0 + kk) * u.ci + c0 + cc) * wscale[k0 + kk];
    }
    ta[kk * TA_STRIDE + cc] = wv;
    var gv = 0.0;
    if (p0 + cc < u.p && k0 + kk < u.co) {
        gv = dy[(n * u.co + k0 + kk) * u.p + p0 + cc];
    }
    tb[kk * 64u + cc] = gv;
}

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let acc = tile_product(wid, lid, u.co);
    for (var i = 0u; i < 4u; i++) {
        store(wid.z, wid.y * 64u + lid.y + 16u * i, wid.x * 64u + lid.x, acc[i]);
    }
}

// Writes (or adds) one row of four input gradients (positions p, p + 16, p + 32, p + 48) of channel `ci`.
fn store(n: u32, ci: u32, p: u32, v: vec4<f32>) {
    if (ci >= u.ci) {
        return;
    }
    let row = (n * u.ci + ci) * u.p;
    for (var j = 0u; j < 4u; j++) {
        let o = row + p + 16u * j;
        if (p + 16u * j < u.p) {
            var r = v[j];
            if (u.accumulate != 0u) {
                r += dx[o];
            }
            dx[o] = r;
        }
    }
}
