// One workgroup reduction: the sum of `v` over the WG invocations, returned to every one of
// them. Every invocation must call it (it synchronises); it can be called again at once.
var<workgroup> reduce_part: array<f32, WG>;

fn workgroup_sum(lid: u32, v: f32) -> f32 {
    reduce_part[lid] = v;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) {
            reduce_part[lid] += reduce_part[lid + k];
        }
        workgroupBarrier();
    }
    let total = reduce_part[0];
    workgroupBarrier();
    return total;
}
