// The 64 × 64 tile product of the pointwise kernels. A workgroup of 16 × 16 invocations
// computes out[r, c] = Σ_k a[k, r] · b[k, c] for 64 rows and 64 columns, 16 reduction steps at
// a time: before each group of steps the kernel's `load(wid, k0, e)` stores element e (0..1024)
// of the two 16 × 64 slices, a[k0 + k, r] at ta[k · TA_STRIDE + r] and b[k0 + k, c] at
// tb[k · 64 + c] (zero past the ends). Invocation (lid.x, lid.y) returns rows lid.y + 16i
// (i = 0..3) of columns lid.x + 16j (component j). The kernel defines TA_STRIDE (64, or 65 when
// its loads write `ta` transposed) and `load`, and stores the result.
var<workgroup> ta: array<f32, 1040>;
var<workgroup> tb: array<f32, 1024>;

fn tile_product(wid: vec3<u32>, lid: vec3<u32>, len: u32) -> array<vec4<f32>, 4> {
    let t = lid.y * 16u + lid.x;
    var acc0 = vec4<f32>();
    var acc1 = vec4<f32>();
    var acc2 = vec4<f32>();
    var acc3 = vec4<f32>();
    for (var k0 = 0u; k0 < len; k0 += 16u) {
        for (var r = 0u; r < 4u; r++) {
            load(wid, k0, t + r * 256u);
        }
        workgroupBarrier();
        for (var k = 0u; k < 16u; k++) {
            let base = k * 64u;
            let ka = k * TA_STRIDE;
            let a = vec4<f32>(ta[ka + lid.y], ta[ka + lid.y + 16u], ta[ka + lid.y + 32u], ta[ka + lid.y + 48u]);
            let b = vec4<f32>(tb[base + lid.x], tb[base + lid.x + 16u], tb[base + lid.x + 32u], tb[base + lid.x + 48u]);
            acc0 += a.x * b;
            acc1 += a.y * b;
            acc2 += a.z * b;
            acc3 += a.w * b;
        }
        workgroupBarrier();
    }
    return array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
}
