// Reference: ops::conv::backward_input for a 1×1 kernel (and ops::linear::backward_input, P = 1).
// dx[n, ci, p] (+)= Σ_co weight(co·ci_len + ci) · wscale[co] · dy[n, co, p]
// Bindings: 0 dy [N, Co, P], 1 w, 2 wscale [Co], 3 dx [N, Ci, P] (added to when u.accumulate), 4 uniform.
// Tiles of 64 input channels × 64 positions; grid (P/64, Ci/64, N).
struct U { n: u32, ci: u32, co: u32, p: u32, accumulate: u32 }
@group(0) @binding(0) var<storage, read> dy: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> wscale: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;
@group(0) @binding(4) var<uniform> u: U;
var<workgroup> ta: array<f32, 1024>;
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
    for (var k0 = 0u; k0 < u.co; k0 += 16u) {
        for (var r = 0u; r < 4u; r++) {
            let e = t + r * 256u;
            let kk = e / 64u;
            let cc = e % 64u;
            var wv = 0.0;
            if (c0 + cc < u.ci && k0 + kk < u.co) {
                wv = weight((k0 + kk) * u.ci + c0 + cc) * wscale[k0 + kk];
            }
            ta[kk * 64u + cc] = wv;
            var gv = 0.0;
            if (p0 + cc < u.p && k0 + kk < u.co) {
                gv = dy[(n * u.co + k0 + kk) * u.p + p0 + cc];
            }
            tb[kk * 64u + cc] = gv;
        }
        workgroupBarrier();
        for (var k = 0u; k < 16u; k++) {
            let base = k * 64u;
            let a = vec4<f32>(ta[base + lid.y], ta[base + lid.y + 16u], ta[base + lid.y + 32u], ta[base + lid.y + 48u]);
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
