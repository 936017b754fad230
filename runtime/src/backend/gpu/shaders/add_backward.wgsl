// CPU twin: tape::backward's Add (the gradient passes to both inputs) with Tensor::add_assign.
// dx (+)= dy
// Bindings: 0 dy, 1 dx (added to when u.accumulate), 2 uniform. One invocation per element, folded grid.
@group(0) @binding(0) var<storage, read> dy: array<f32>;
@group(0) @binding(1) var<storage, read_write> dx: array<f32>;
@group(0) @binding(2) var<uniform> u: U;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= u.total) {
        return;
    }
    var v = dy[i];
    if (u.accumulate != 0u) {
        v += dx[i];
    }
    dx[i] = v;
}
