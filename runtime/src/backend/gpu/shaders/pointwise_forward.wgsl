// CPU twin: ops::conv::forward for a 1×1 kernel (and ops::linear::forward's product, P = 1).
// y[n, co, p] = wscale[co] · Σ_ci weight(co·ci_len + ci) · x[n, ci, p]
// Bindings: 0 x [N, Ci, P], 1 w (weights, see `weight`), 2 wscale [Co], 3 y [N, Co, P], 4 uniform.
// Tiles of 64 output channels × 64 positions (lib/tile.wgsl); grid (P/64, Co/64, N).
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> wscale: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> u: U;
// The weights are read along their rows and stored transposed: a padded stride keeps the
// stores off one memory bank.
const TA_STRIDE: u32 = 65u;

// Element e of the slices at reduction step k0: a[ci, co] = weight, b[ci, p] = x.
fn load(wid: vec3<u32>, k0: u32, e: u32) {
    let n = wid.z;
    let p0 = wid.x * 64u;
    let c0 = wid.y * 64u;
    let cc = e / 16u;
    let kw = e % 16u;
    var wv = 0.0;
    if (c0 + cc < u.co && k0 + kw < u.ci) {
        wv = weight((c0 + cc) * u.ci + k0 + kw);
    }
    ta[kw * TA_STRIDE + cc] = wv;
    let kx = e / 64u;
    let pp = e % 64u;
    var xv = 0.0;
    if (p0 + pp < u.p && k0 + kx < u.ci) {
        xv = x[(n * u.ci + k0 + kx) * u.p + p0 + pp];
    }
    tb[kx * 64u + pp] = xv;
}

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let acc = tile_product(wid, lid, u.ci);
    for (var i = 0u; i < 4u; i++) {
        store(wid.z, wid.y * 64u + lid.y + 16u * i, wid.x * 64u + lid.x, acc[i]);
    }
}

// Writes one row of four outputs (positions p, p + 16, p + 32, p + 48) of channel `co`.
fn store(n: u32, co: u32, p: u32, v: vec4<f32>) {
    if (co >= u.co) {
        return;
    }
    let s = wscale[co];
    let row = (n * u.co + co) * u.p;
    for (var j = 0u; j < 4u; j++) {
        if (p + 16u * j < u.p) {
            y[row + p + 16u * j] = v[j] * s;
        }
    }
}
