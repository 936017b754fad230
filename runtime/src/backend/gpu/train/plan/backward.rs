//! The backward launches, nodes in reverse (node `s` at time `2·count − s`): parameter
//! gradients where the schedule says a parameter trains, input gradients where it says one is
//! needed; the first gradient written into a value overwrites, later ones add.

use super::{Planner, Ref};
use crate::backend::gpu::kernels::params::{
    word, AffineGrads, ConvWindow, DepthwiseWindow, Elementwise, LinearGrad, MaxPoolWindow, Pointwise, PointwiseGrad,
    Pool, Product,
};
use crate::backend::gpu::kernels::{Launch, Range};
use crate::graph::Op;
use crate::ops::Activation;
use crate::{Error, Result};

impl Planner<'_> {
    pub(super) fn backward(&mut self) -> Result<()> {
        let (g, n, count) = (self.g, self.n, self.g.nodes.len());
        let mut written = vec![false; g.num_values];
        written[g.output] = true;
        for (s, node) in g.nodes.iter().enumerate().rev() {
            let time = 2 * count - s;
            let (x, y) = (node.inputs[0], node.output);
            let (xs, ys) = (self.shapes[x], self.shapes[y]);
            let dy_value = self.sched.output_of(g, s);
            if !written[dy_value] || self.sched.absorbed(s) {
                continue;
            }
            let dy = Ref::Grad(dy_value);
            let need_dx = self.sched.needs_grad[x];
            let acc = written[x] as u32;
            let (trains, t) = (self.sched.trains[s], self.t);
            let grad = |i: usize| Ref::Fixed(t.grad_range(i));
            match &node.op {
                Op::Conv(c) => {
                    let p = Pointwise {
                        n: word(n),
                        ci: word(c.in_channels),
                        co: word(c.out_channels),
                        p: word(xs.h * xs.w),
                    };
                    if let Some(i) = trains.weights {
                        let launch = if c.window.is_pointwise() {
                            Launch::pointwise_backward_weight(self.value(x), dy.clone(), grad(i), p)
                        } else {
                            let window = ConvWindow::new(c, n, (xs.h, xs.w), (ys.h, ys.w));
                            Launch::conv_backward_weight(self.value(x), dy.clone(), grad(i), window)
                        };
                        self.push(launch, time);
                    }
                    if need_dx {
                        if !c.window.is_pointwise() {
                            return Err(Error::Gpu(format!(
                                "node '{}': the input gradient of a {}×{} convolution is not implemented on the GPU",
                                node.name, c.window.kernel[0], c.window.kernel[1]
                            )));
                        }
                        let p = PointwiseGrad { n: p.n, ci: p.ci, co: p.co, p: p.p, accumulate: acc };
                        self.push(Launch::pointwise_backward_input(dy, self.weights(s), Ref::Grad(x), p), time);
                    }
                }
                Op::Depthwise(d) => {
                    let p = DepthwiseWindow::new(d, n, (xs.h, xs.w), (ys.h, ys.w), acc != 0);
                    if let Some(i) = trains.weights {
                        let p = DepthwiseWindow { accumulate: 0, ..p };
                        self.push(Launch::depthwise_backward_weight(self.value(x), dy.clone(), grad(i), p), time);
                    }
                    if need_dx {
                        self.push(Launch::depthwise_backward_input(dy, self.weights(s), Ref::Grad(x), p), time);
                    }
                }
                Op::Linear(l) => {
                    let o = word(l.out_features);
                    if let Some(i) = trains.weights {
                        let p = LinearGrad { n: word(n), o, f: word(l.in_features) };
                        self.push(Launch::linear_backward_weight(dy.clone(), self.value(x), grad(i), p), time);
                    }
                    if let Some(i) = trains.bias {
                        let p = AffineGrads { n: word(n), c: o, hw: 1, has_bias: 1, ..Default::default() };
                        self.push(Launch::affine_backward_params(dy.clone(), dy.clone(), dy.clone(), grad(i), p), time);
                    }
                    if need_dx {
                        let p = PointwiseGrad { n: word(n), ci: word(l.in_features), co: o, p: 1, accumulate: acc };
                        self.push(Launch::pointwise_backward_input(dy, self.weights(s), Ref::Grad(x), p), time);
                    }
                }
                Op::Mul => {
                    let b = node.inputs[1];
                    let per = self.per(x, b);
                    if need_dx {
                        let p = Product { total: self.size_word(y), per, accumulate: acc };
                        self.push(Launch::mul_forward(dy.clone(), self.value(b), Ref::Grad(x), p), time);
                    }
                    if self.sched.needs_grad[b] {
                        let acc = written[b] || (b == x && need_dx);
                        let p = Product { total: self.size_word(b), per, accumulate: acc as u32 };
                        self.push(Launch::mul_backward_other(dy, self.value(x), Ref::Grad(b), p), time);
                        written[b] = true;
                    }
                }
                Op::MaxPool(w) => {
                    if need_dx {
                        let p = MaxPoolWindow::new(w, n * xs.c, (xs.h, xs.w), acc != 0);
                        self.push(Launch::max_pool_backward(self.value(x), dy, Ref::Grad(x), p), time);
                    }
                }
                Op::GlobalPool => {
                    if need_dx {
                        let p = Pool { nc: word(n * xs.c), hw: word(xs.h * xs.w), accumulate: acc };
                        self.push(Launch::pool_backward(dy, Ref::Grad(x), p), time);
                    }
                }
                Op::Affine(_) | Op::Act(_) => self.affine_backward(s, dy, need_dx, acc, time),
                Op::Add => {
                    for (j, &v) in node.inputs.iter().enumerate() {
                        if self.sched.needs_grad[v] {
                            let acc = written[v] || (j == 1 && node.inputs[0] == v);
                            let p = Elementwise { total: self.size_word(y), accumulate: acc as u32 };
                            self.push(Launch::add_backward(dy.clone(), Ref::Grad(v), p), time);
                        }
                    }
                    for &v in &node.inputs {
                        written[v] |= self.sched.needs_grad[v];
                    }
                    continue;
                }
            }
            if need_dx {
                written[x] = true;
            }
        }
        Ok(())
    }

    /// The backward of an affine (with its fused activation) or of a lone activation (an
    /// affine of scale 1 and bias 0): the trained parameters' gradients in one launch, then the
    /// input gradient.
    fn affine_backward(&mut self, s: usize, dy: Ref, need_dx: bool, acc: u32, time: usize) {
        let (t, node) = (self.t, &self.g.nodes[s]);
        let x = node.inputs[0];
        let xs = self.shapes[x];
        // The activation's output gives its mask (the gradient itself stands in for an identity).
        let (out, act, scale, _) = self.affine_parts(s);
        let mask = if act == Activation::Identity { dy.clone() } else { Ref::Value(out) };
        let (ts, tb) = (self.sched.trains[s].scale, self.sched.trains[s].bias);
        if ts.is_some() || tb.is_some() {
            let trained = || [ts, tb].into_iter().flatten().map(|i| t.layout[i]);
            let first = trained().map(|(at, _)| at).min().expect("one trains");
            let last = trained().map(|(at, len)| at + len).max().expect("one trains");
            let rel = |i: Option<usize>| word(i.map_or(0, |i| t.layout[i].0 - first));
            let p = AffineGrads {
                n: word(self.n),
                c: word(xs.c),
                hw: word(xs.h * xs.w),
                act: act.code(),
                has_scale: ts.is_some() as u32,
                has_bias: tb.is_some() as u32,
                scale_at: rel(ts),
                bias_at: rel(tb),
            };
            let xr = if ts.is_some() { self.value(x) } else { dy.clone() };
            let grads = Ref::Fixed(Range::words(&t.grads, first, last - first));
            self.push(Launch::affine_backward_params(dy.clone(), mask.clone(), xr, grads, p), time);
        }
        if need_dx {
            let p = self.channelwise(x, act, acc != 0);
            self.push(Launch::affine_backward_input(dy, mask, Ref::Fixed(scale), Ref::Grad(x), p), time);
        }
    }
}
