// Shared by max_pool_forward and max_pool_backward, which declare `x: array<f32>` (the input
// planes) and the uniform `u` (MaxPoolWindow).
// The plane index (y·w + x) of the first largest value of output (oy, ox)'s window in plane `base`.
fn winner(base: u32, oy: u32, ox: u32) -> u32 {
    var best = 0u;
    var found = false;
    var bv = 0.0;
    for (var ky = 0u; ky < u.kh; ky++) {
        let yy = i32(oy * u.sh + ky) - i32(u.pt);
        if (yy < 0 || yy >= i32(u.h)) {
            continue;
        }
        for (var kx = 0u; kx < u.kw; kx++) {
            let xx = i32(ox * u.sw + kx) - i32(u.pl);
            if (xx < 0 || xx >= i32(u.w)) {
                continue;
            }
            let i = u32(yy) * u.w + u32(xx);
            let v = x[base + i];
            let v_nan = v != v;
            let b_nan = bv != bv;
            if (!found || v > bv || (v_nan && !b_nan)) {
                best = i;
                bv = v;
                found = true;
            }
        }
    }
    return best;
}
