// Reference: ops::activation::backward then ops::affine::backward_params.
// With dz = dy · act'(y): g[scale_at + c] = Σ_{n, i} dz · x, g[bias_at + c] = Σ_{n, i} dz   (each only when asked; overwrites)
// act' from the activation's output y: 1 for identity, y > 0 for ReLU, 0 < y < 6 for ReLU6.
// Bindings: 0 dy [N, C, HW], 1 y [N, C, HW], 2 x [N, C, HW] (the affine's input), 3 g (gradients), 4 uniform.
// One workgroup per channel, folded grid.
struct U { n: u32, c: u32, hw: u32, act: u32, has_scale: u32, has_bias: u32, scale_at: u32, bias_at: u32 }
@group(0) @binding(0) var<storage, read> dy: array<f32>;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> g: array<f32>;
@group(0) @binding(4) var<uniform> u: U;
var<workgroup> ps: array<f32, 256>;
var<workgroup> pb: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = wid.y * nwg.x + wid.x;
    var s = 0.0;
    var b = 0.0;
    if (c < u.c) {
        for (var j = lid; j < u.n * u.hw; j += 256u) {
            let i = ((j / u.hw) * u.c + c) * u.hw + j % u.hw;
            var d = dy[i];
            if (u.act != 0u) {
                let v = y[i];
                if (!(v > 0.0 && (u.act == 1u || v < 6.0))) {
                    d = 0.0;
                }
            }
            b += d;
            if (u.has_scale != 0u) {
                s += d * x[i];
            }
        }
    }
    ps[lid] = s;
    pb[lid] = b;
    workgroupBarrier();
    for (var k = 128u; k > 0u; k >>= 1u) {
        if (lid < k) {
            ps[lid] += ps[lid + k];
            pb[lid] += pb[lid + k];
        }
        workgroupBarrier();
    }
    if (lid == 0u && c < u.c) {
        if (u.has_scale != 0u) {
            g[u.scale_at + c] = ps[0];
        }
        if (u.has_bias != 0u) {
            g[u.bias_at + c] = pb[0];
        }
    }
}
