// The activations (codes ACT_* from ops::Activation::code, prepended by the loader) and their
// derivative. CPU twins: ops::Activation::apply and simd::passes.
fn activate(v: f32, act: u32) -> f32 {
    if (act == ACT_RELU) {
        return max(v, 0.0);
    }
    if (act == ACT_RELU6) {
        return clamp(v, 0.0, 6.0);
    }
    if (act == ACT_CLIP01) {
        return clamp(v, 0.0, 1.0);
    }
    return v;
}

// act'(z) ≠ 0, from the activation's output y: always for identity, y > 0 for ReLU,
// 0 < y < 6 for ReLU6, 0 < y < 1 for clip01.
fn passes(y: f32, act: u32) -> bool {
    if (act == ACT_IDENTITY) {
        return true;
    }
    if (act == ACT_CLIP01) {
        return y > 0.0 && y < 1.0;
    }
    return y > 0.0 && (act == ACT_RELU || y < 6.0);
}
