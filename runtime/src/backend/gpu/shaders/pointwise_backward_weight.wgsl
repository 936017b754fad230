// CPU twin: ops::conv::backward_weight for a 1×1 kernel.
// dw[co, ci] = Σ_{n, p} dy[n, co, p] · x[n, ci, p]   (overwrites)
// Bindings: 0 x [N, Ci, P], 1 dy [N, Co, P], 2 dw [Co, Ci], 3 uniform.
// Tiles of 64 output channels × 64 input channels over the N·P reduction steps
// (lib/tile.wgsl); grid (Ci/64, Co/64, 1).
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> dw: array<f32>;
@group(0) @binding(3) var<uniform> u: U;
const TA_STRIDE: u32 = 64u;

// Element e of the slices at reduction step k0 (a sample and position): a[j, co] = dy,
// b[j, ci] = x.
fn load(wid: vec3<u32>, k0: u32, e: u32) {
    let i0 = wid.x * 64u;
    let c0 = wid.y * 64u;
    let kk = e / 64u;
    let cc = e % 64u;
    let j = k0 + kk;
    var gv = 0.0;
    var xv = 0.0;
    if (j < u.n * u.p) {
        let n = j / u.p;
        let p = j % u.p;
        if (c0 + cc < u.co) {
            gv = dy[(n * u.co + c0 + cc) * u.p + p];
        }
        if (i0 + cc < u.ci) {
            xv = x[(n * u.ci + i0 + cc) * u.p + p];
        }
    }
    ta[kk * TA_STRIDE + cc] = gv;
    tb[kk * 64u + cc] = xv;
}

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let acc = tile_product(wid, lid, u.n * u.p);
    for (var i = 0u; i < 4u; i++) {
        store(wid.y * 64u + lid.y + 16u * i, wid.x * 64u + lid.x, acc[i]);
    }
}

// Writes one row of four weight gradients (input channels ci, ci + 16, ci + 32, ci + 48) of output channel `co`.
fn store(co: u32, ci: u32, v: vec4<f32>) {
    if (co >= u.co) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        if (ci + 16u * j < u.ci) {
            dw[co * u.ci + ci + 16u * j] = v[j];
        }
    }
}
