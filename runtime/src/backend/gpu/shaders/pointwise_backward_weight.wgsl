// Reference: ops::conv::backward_weight for a 1×1 kernel.
// dw[co, ci] = Σ_{n, p} dy[n, co, p] · x[n, ci, p]   (overwrites)
// Bindings: 0 x [N, Ci, P], 1 dy [N, Co, P], 2 dw [Co, Ci], 3 uniform.
// Tiles of 64 output channels × 64 input channels, 16 of the N·P reduction steps at a time
// (each invocation accumulates 4 × 4 outputs in registers); grid (Ci/64, Co/64, 1).
struct U { n: u32, ci: u32, co: u32, p: u32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> dw: array<f32>;
@group(0) @binding(3) var<uniform> u: U;
var<workgroup> ta: array<f32, 1024>;
var<workgroup> tb: array<f32, 1024>;

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i0 = wid.x * 64u;
    let c0 = wid.y * 64u;
    let t = lid.y * 16u + lid.x;
    let total = u.n * u.p;
    var acc0 = vec4<f32>();
    var acc1 = vec4<f32>();
    var acc2 = vec4<f32>();
    var acc3 = vec4<f32>();
    for (var k0 = 0u; k0 < total; k0 += 16u) {
        for (var r = 0u; r < 4u; r++) {
            let e = t + r * 256u;
            let kk = e / 64u;
            let cc = e % 64u;
            let j = k0 + kk;
            var gv = 0.0;
            var xv = 0.0;
            if (j < total) {
                let n = j / u.p;
                let p = j % u.p;
                if (c0 + cc < u.co) {
                    gv = dy[(n * u.co + c0 + cc) * u.p + p];
                }
                if (i0 + cc < u.ci) {
                    xv = x[(n * u.ci + i0 + cc) * u.p + p];
                }
            }
            ta[kk * 64u + cc] = gv;
            tb[kk * 64u + cc] = xv;
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
    store(c0 + lid.y, i0 + lid.x, acc0);
    store(c0 + lid.y + 16u, i0 + lid.x, acc1);
    store(c0 + lid.y + 32u, i0 + lid.x, acc2);
    store(c0 + lid.y + 48u, i0 + lid.x, acc3);
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
