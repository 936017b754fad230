// CPU twin: ops::linear::backward_params (the weight part).
// dw[o, f] = Σ_n dy[n, o] · x[n, f]   (overwrites)
// Bindings: 0 dy [N, O], 1 x [N, F], 2 dw [O, F], 3 uniform. One invocation per (o, f), folded grid.
@group(0) @binding(0) var<storage, read> dy: array<f32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> dw: array<f32>;
@group(0) @binding(3) var<uniform> u: U;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= u.o * u.f) {
        return;
    }
    let o = i / u.f;
    let f = i % u.f;
    var s = 0.0;
    for (var n = 0u; n < u.n; n++) {
        s += dy[n * u.o + o] * x[n * u.f + f];
    }
    dw[i] = s;
}
