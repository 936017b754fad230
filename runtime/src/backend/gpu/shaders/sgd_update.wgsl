// CPU twin: train::optim::Sgd::update.  g' = factor·g + wd·p (wd only below u.decay_end); v ← μ·v + g'; p ← p − lr·v
// Skips the step when scalars[4] (ok) is 0. Bindings: 0 p [L], 1 g [L], 2 v [L], 3 scalars, 4 uniform. Folded grid.
@group(0) @binding(0) var<storage, read_write> p: array<f32>;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> v: array<f32>;
@group(0) @binding(3) var<storage, read> scalars: array<f32>;
@group(0) @binding(4) var<uniform> u: U;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= u.len || scalars[4] == 0.0) {
        return;
    }
    let wd = select(0.0, u.wd, i < u.decay_end);
    let grad = g[i] * scalars[0] + wd * p[i];
    let vel = u.momentum * v[i] + grad;
    v[i] = vel;
    p[i] = p[i] - u.lr * vel;
}
