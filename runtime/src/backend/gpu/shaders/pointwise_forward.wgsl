// Reference: ops::conv::forward for a 1×1 kernel (and ops::linear::forward's product, P = 1).
// y[n, co, p] = wscale[co] · Σ_ci weight(co·ci_len + ci) · x[n, ci, p]
// Bindings: 0 x [N, Ci, P], 1 w (weights, see `weight`), 2 wscale [Co], 3 y [N, Co, P], 4 uniform.
// Tiles of 64 output channels × 64 positions, 16 reduction steps at a time (each invocation
// accumulates 4 × 4 outputs in registers); grid (P/64, Co/64, N).
struct U { n: u32, ci: u32, co: u32, p: u32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> wscale: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> u: U;
var<workgroup> ta: array<f32, 1040>;
var<workgroup> tb: array<f32, 1024>;

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let n = wid.z;
    let p0 = wid.x * 64u;
    let c0 = wid.y * 64u;
    let t = lid.y * 16u + lid.x;
    var acc0 = vec4<f32>();
    var acc1 = vec4<f32>();
    var acc2 = vec4<f32>();
    var acc3 = vec4<f32>();
    for (var k0 = 0u; k0 < u.ci; k0 += 16u) {
        for (var r = 0u; r < 4u; r++) {
            let e = t + r * 256u;
            let cc = e / 16u;
            let kw = e % 16u;
            var wv = 0.0;
            if (c0 + cc < u.co && k0 + kw < u.ci) {
                wv = weight((c0 + cc) * u.ci + k0 + kw);
            }
            ta[kw * 65u + cc] = wv;
            let kx = e / 64u;
            let pp = e % 64u;
            var xv = 0.0;
            if (p0 + pp < u.p && k0 + kx < u.ci) {
                xv = x[(n * u.ci + k0 + kx) * u.p + p0 + pp];
            }
            tb[kx * 64u + pp] = xv;
        }
        workgroupBarrier();
        for (var k = 0u; k < 16u; k++) {
            let base = k * 64u;
            let ka = k * 65u;
            let a = vec4<f32>(ta[ka + lid.y], ta[ka + lid.y + 16u], ta[ka + lid.y + 32u], ta[ka + lid.y + 48u]);
            let b = vec4<f32>(tb[base + lid.x], tb[base + lid.x + 16u], tb[base + lid.x + 32u], tb[base + lid.x + 48u]);
            acc0 += a.x * b;
            acc1 += a.y * b;
            acc2 += a.z * b;
            acc3 += a.w * b;
        }
        workgroupBarrier();
    }
    store(n, c0 + lid.y, p0 + lid.x, acc0);
    store(n, c0 + lid.y + 16u, p0 + lid.x, acc1);
    store(n, c0 + lid.y + 32u, p0 + lid.x, acc2);
    store(n, c0 + lid.y + 48u, p0 + lid.x, acc3);
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
