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
    var acc: array<f32, 16>;
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
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = ta[k * 64u + lid.y + 16u * i];
                b[i] = tb[k * 64u + lid.x + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] += a[i] * b[j];
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let ci = c0 + lid.y + 16u * i;
        if (ci < u.ci) {
            for (var j = 0u; j < 4u; j++) {
                let p = p0 + lid.x + 16u * j;
                if (p < u.p) {
                    let o = (n * u.ci + ci) * u.p + p;
                    var v = acc[i * 4u + j];
                    if (u.accumulate != 0u) {
                        v += dx[o];
                    }
                    dx[o] = v;
                }
            }
        }
    }
}
