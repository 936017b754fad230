//! The forward launches: node `s` at time `s`. A schedule step's convolution runs alone and its
//! affine with the fused activation in one launch (the GPU kernels have no epilogue).

use super::{Planner, Ref};
use crate::backend::gpu::kernels::params::{
    word, Channelwise, ConvWindow, DepthwiseWindow, MaxPoolWindow, Pointwise, Pool, Product,
};
use crate::backend::gpu::kernels::Launch;
use crate::graph::Op;
use crate::ops::Activation;

impl Planner<'_> {
    pub(super) fn forward(&mut self) {
        let (g, n) = (self.g, self.n);
        for (s, node) in g.nodes.iter().enumerate() {
            let (x, y) = (node.inputs[0], node.output);
            let (xs, ys) = (self.shapes[x], self.shapes[y]);
            match &node.op {
                Op::Conv(c) if c.window.is_pointwise() => {
                    let p = Pointwise {
                        n: word(n),
                        ci: word(c.in_channels),
                        co: word(c.out_channels),
                        p: word(xs.h * xs.w),
                    };
                    self.push(Launch::pointwise_forward(self.value(x), self.weights(s), Ref::Value(y), p), s);
                }
                Op::Conv(c) => {
                    let p = ConvWindow::new(c, n, (xs.h, xs.w), (ys.h, ys.w));
                    self.push(Launch::conv_forward(self.value(x), self.weights(s), Ref::Value(y), p), s);
                }
                Op::Depthwise(d) => {
                    let p = DepthwiseWindow::new(d, n, (xs.h, xs.w), (ys.h, ys.w), false);
                    self.push(Launch::depthwise_forward(self.value(x), self.weights(s), Ref::Value(y), p), s);
                }
                Op::Affine(_) | Op::Act(_) if self.sched.absorbed(s) => {}
                Op::Affine(_) | Op::Act(_) => {
                    let (out, act, scale, bias) = self.affine_parts(s);
                    let p = self.channelwise(x, act, false);
                    let launch =
                        Launch::affine_forward(self.value(x), Ref::Fixed(scale), Ref::Fixed(bias), Ref::Value(out), p);
                    self.push(launch, s);
                }
                Op::Add => {
                    let launch = Launch::add_forward(
                        self.value(x),
                        self.value(node.inputs[1]),
                        Ref::Value(y),
                        self.size_word(y),
                    );
                    self.push(launch, s);
                }
                Op::Mul => {
                    let b = node.inputs[1];
                    let p = Product { total: self.size_word(y), per: self.per(x, b), accumulate: 0 };
                    self.push(Launch::mul_forward(self.value(x), self.value(b), Ref::Value(y), p), s);
                }
                Op::MaxPool(w) => {
                    let p = MaxPoolWindow::new(w, n * xs.c, (xs.h, xs.w), false);
                    self.push(Launch::max_pool_forward(self.value(x), Ref::Value(y), p), s);
                }
                Op::GlobalPool => {
                    let p = Pool { nc: word(n * xs.c), hw: word(xs.h * xs.w), accumulate: 0 };
                    self.push(Launch::pool_forward(self.value(x), Ref::Value(y), p), s);
                }
                Op::Linear(l) => {
                    let (o, t) = (l.out_features, self.t);
                    let tmp = self.temp(n * o);
                    let p = Pointwise { n: word(n), ci: word(l.in_features), co: word(o), p: 1 };
                    self.push(Launch::pointwise_forward(self.value(x), self.weights(s), tmp.clone(), p), s);
                    let bias = Ref::Fixed(t.src(t.nodes[s].bias.expect("linear bias")));
                    let ones = Ref::Fixed(t.src(t.ones));
                    let p = Channelwise {
                        total: word(n * o),
                        c: word(o),
                        hw: 1,
                        act: Activation::Identity.code(),
                        accumulate: 0,
                    };
                    self.push(Launch::affine_forward(tmp, ones, bias, Ref::Value(y), p), s);
                }
            }
        }
    }
}
