//! The product of two computed values: elementwise (HardSwish's `x · relu6(x + 3) / 6` as
//! exporters write it), or a value and a per-channel gate broadcast over H and W (the
//! squeeze-excitation `x · σ(…)`).

use rayon::prelude::*;

use crate::tensor::Tensor;

/// True when `b` multiplies `a` as [`forward`] accepts: the same shape, or `[N, C, 1, 1]` against
/// `a: [N, C, H, W]`.
pub fn fits(a: [usize; 4], b: [usize; 4]) -> bool {
    a == b || (b[0] == a[0] && b[1] == a[1] && b[2] == 1 && b[3] == 1)
}

/// `a ⊙ b` in place of `a: [N, C, H, W]`; `b` is of `a`'s shape or a gate `[N, C, 1, 1]`.
pub fn forward(a: &mut Tensor, b: &Tensor) {
    debug_assert!(fits(a.shape, b.shape), "{:?} · {:?}", a.shape, b.shape);
    if a.shape == b.shape {
        a.data.par_chunks_mut(1 << 14).zip(b.data.par_chunks(1 << 14)).for_each(|(x, y)| {
            x.iter_mut().zip(y).for_each(|(x, y)| *x *= y);
        });
    } else {
        let plane = a.plane().max(1);
        a.data.par_chunks_mut(plane).zip(b.data.par_iter()).for_each(|(p, &g)| p.iter_mut().for_each(|x| *x *= g));
    }
}

/// The input gradients of `y = a ⊙ b` from `dy` (of `a`'s shape): `da = dy ⊙ b` when `need.0`,
/// `db = dy ⊙ a` when `need.1` (for a gate, summed over each plane in order).
pub fn backward(a: &Tensor, b: &Tensor, dy: &Tensor, need: (bool, bool)) -> (Option<Tensor>, Option<Tensor>) {
    debug_assert_eq!(a.shape, dy.shape);
    let da = need.0.then(|| {
        let mut da = dy.clone();
        forward(&mut da, b);
        da
    });
    let db = need.1.then(|| {
        if a.shape == b.shape {
            let mut db = dy.clone();
            forward(&mut db, a);
            db
        } else {
            let plane = a.plane().max(1);
            let data = a
                .data
                .par_chunks(plane)
                .zip(dy.data.par_chunks(plane))
                .map(|(x, g)| x.iter().zip(g).map(|(x, g)| x * g).sum::<f32>())
                .collect();
            Tensor { shape: b.shape, data }
        }
    });
    (da, db)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(shape: [usize; 4], f: impl Fn(usize) -> f32) -> Tensor {
        Tensor { shape, data: (0..shape.iter().product()).map(f).collect() }
    }

    #[test]
    fn a_gate_scales_each_plane_and_its_gradient_sums_the_plane() {
        let a = tensor([2, 3, 2, 2], |i| i as f32 * 0.5 - 3.0);
        let b = tensor([2, 3, 1, 1], |i| i as f32 - 2.0);
        let mut y = a.clone();
        forward(&mut y, &b);
        for (i, v) in y.data.iter().enumerate() {
            assert_eq!(*v, a.data[i] * b.data[i / 4]);
        }
        let dy = tensor([2, 3, 2, 2], |i| (i % 5) as f32 - 1.5);
        let (da, db) = backward(&a, &b, &dy, (true, true));
        let (da, db) = (da.unwrap(), db.unwrap());
        for i in 0..24 {
            assert_eq!(da.data[i], dy.data[i] * b.data[i / 4]);
        }
        for p in 0..6 {
            let want: f32 = (0..4).map(|j| a.data[4 * p + j] * dy.data[4 * p + j]).sum();
            assert_eq!(db.data[p], want);
        }
        assert_eq!(db.shape, [2, 3, 1, 1]);
        assert!(
            fits([2, 3, 5, 5], [2, 3, 1, 1]) && !fits([2, 3, 5, 5], [2, 1, 1, 1]) && !fits([2, 3, 5, 5], [1, 3, 1, 1])
        );
    }
}
