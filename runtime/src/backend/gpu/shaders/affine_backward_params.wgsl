// CPU twin: ops::activation::backward then ops::affine::backward_params.
// With dz = dy · act'(y): g[scale_at + c] = Σ_{n, i} dz · x, g[bias_at + c] = Σ_{n, i} dz   (each only when asked; overwrites)
// act' from the activation's output y (see `passes`).
// Bindings: 0 dy [N, C, HW], 1 y [N, C, HW], 2 x [N, C, HW] (the affine's input), 3 g (gradients), 4 uniform.
// One workgroup per channel, folded grid.
@group(0) @binding(0) var<storage, read> dy: array<f32>;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> g: array<f32>;
@group(0) @binding(4) var<uniform> u: U;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = wid.y * nwg.x + wid.x;
    var s = 0.0;
    var b = 0.0;
    if (c < u.c) {
        for (var j = lid; j < u.n * u.hw; j += WG) {
            let i = ((j / u.hw) * u.c + c) * u.hw + j % u.hw;
            let d = select(0.0, dy[i], passes(y[i], u.act));
            b += d;
            if (u.has_scale != 0u) {
                s += d * x[i];
            }
        }
    }
    let ss = workgroup_sum(lid, s);
    let bs = workgroup_sum(lid, b);
    if (lid == 0u && c < u.c) {
        if (u.has_scale != 0u) {
            g[u.scale_at + c] = ss;
        }
        if (u.has_bias != 0u) {
            g[u.bias_at + c] = bs;
        }
    }
}
