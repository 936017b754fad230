// CPU twin: the second operand's gradient of ops::mul::backward.
// db[j] (+)= Σ_{k < per} dy[j·per + k] · a[j·per + k], summed in order (`per` 1, or H·W for a gate).
// Bindings: 0 dy, 1 a, 2 db (added to when u.accumulate), 3 uniform. One invocation per value of
// db (u.total of them), folded grid.
@group(0) @binding(0) var<storage, read> dy: array<f32>;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> db: array<f32>;
@group(0) @binding(3) var<uniform> u: U;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = flat_index(wid, nwg, lid);
    if (j >= u.total) {
        return;
    }
    var s = 0.0;
    for (var k = 0u; k < u.per; k++) {
        s += dy[j * u.per + k] * a[j * u.per + k];
    }
    if (u.accumulate != 0u) {
        s += db[j];
    }
    db[j] = s;
}
