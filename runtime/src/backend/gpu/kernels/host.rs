//! Test support (for the parity tests): one-call wrappers over host tensors, each running one
//! kernel (or the kernels a layer needs) through the same typed launch the training planner
//! uses, on fresh buffers. The parity tests compare them with the CPU twins.

use super::params::{
    word, AffineGrads, Channelwise, ConvWindow, DepthwiseWindow, Elementwise, LinearGrad, Loss, MaxPoolWindow,
    Pointwise, PointwiseGrad, Pool, Product,
};
use super::{bytes_of, pack, DeviceWeights, Launch, Range};
use crate::backend::gpu::Gpu;
use crate::graph::{Conv, Depthwise, Linear, Weights, Window};
use crate::ops::Activation;
use crate::tensor::Tensor;
use crate::{Error, Result};

fn upload(gpu: &Gpu, data: &[f32]) -> Result<Range> {
    Ok(Range::whole(gpu.storage_from(&bytes_of(data), "input")?))
}

fn weights(gpu: &Gpu, w: &Weights, rows: usize) -> Result<DeviceWeights<Range>> {
    let (words, scales, format) = pack(w, rows);
    Ok(DeviceWeights {
        w: Range::whole(gpu.storage_from(&bytes_of(&words), "weights")?),
        scale: upload(gpu, &scales)?,
        format,
    })
}

fn out(gpu: &Gpu, n: usize) -> Result<Range> {
    let buf = gpu.storage(n, "output")?;
    Ok(Range { size: 4 * n.max(1) as u64, ..Range::whole(buf) })
}

fn tensor(shape: [usize; 4], mut data: Vec<f32>) -> Tensor {
    data.truncate(shape.iter().product());
    Tensor { shape, data }
}

/// Runs `launches` in one submit and reads `out` back.
fn run(gpu: &Gpu, launches: Vec<Launch<Range>>, out: &Range) -> Result<Vec<f32>> {
    let calls: Vec<_> = launches.iter().map(|l| gpu.call(l)).collect();
    gpu.run(&calls, out)
}

fn output_size(window: &crate::graph::Window, h: usize, w: usize) -> Result<(usize, usize)> {
    window.output_size(h, w).ok_or_else(|| Error::Input("window does not fit".into()))
}

/// `conv` (any window) on `x: [N, Ci, H, W]`: the tiled kernel for 1×1, the direct one otherwise.
pub fn conv_forward(gpu: &Gpu, conv: &Conv, x: &Tensor) -> Result<Tensor> {
    let [n, ci, h, w] = x.shape;
    let (oh, ow) = output_size(&conv.window, h, w)?;
    let shape = [n, conv.out_channels, oh, ow];
    let (xb, wb, y) =
        (upload(gpu, &x.data)?, weights(gpu, &conv.weights, conv.out_channels)?, out(gpu, shape.iter().product())?);
    let launch = if conv.window.is_pointwise() {
        let p = Pointwise { n: word(n), ci: word(ci), co: word(conv.out_channels), p: word(h * w) };
        Launch::pointwise_forward(xb, wb, y.clone(), p)
    } else {
        Launch::conv_forward(xb, wb, y.clone(), ConvWindow::new(conv, n, (h, w), (oh, ow)))
    };
    Ok(tensor(shape, run(gpu, vec![launch], &y)?))
}

/// The input gradient of a 1×1 `conv`: `dy: [N, Co, H, W]` → `[N, Ci, H, W]`.
pub fn pointwise_backward_input(gpu: &Gpu, conv: &Conv, dy: &Tensor) -> Result<Tensor> {
    let [n, co, h, w] = dy.shape;
    let shape = [n, conv.in_channels, h, w];
    let (g, wb, dx) = (upload(gpu, &dy.data)?, weights(gpu, &conv.weights, co)?, out(gpu, shape.iter().product())?);
    let p = PointwiseGrad { n: word(n), ci: word(conv.in_channels), co: word(co), p: word(h * w), accumulate: 0 };
    Ok(tensor(shape, run(gpu, vec![Launch::pointwise_backward_input(g, wb, dx.clone(), p)], &dx)?))
}

/// The kernel gradient of `conv` (raw weights) `[Co·Ci·KH·KW]`: the tiled kernel for 1×1,
/// one workgroup per weight otherwise.
pub fn conv_backward_weight(gpu: &Gpu, conv: &Conv, x: &Tensor, dy: &Tensor) -> Result<Vec<f32>> {
    let [n, ci, h, w] = x.shape;
    let (co, oh, ow) = (dy.shape[1], dy.shape[2], dy.shape[3]);
    let len = co * ci * conv.window.kernel[0] * conv.window.kernel[1];
    let (xb, g, d) = (upload(gpu, &x.data)?, upload(gpu, &dy.data)?, out(gpu, len)?);
    let launch = if conv.window.is_pointwise() {
        let p = Pointwise { n: word(n), ci: word(ci), co: word(co), p: word(h * w) };
        Launch::pointwise_backward_weight(xb, g, d.clone(), p)
    } else {
        Launch::conv_backward_weight(xb, g, d.clone(), ConvWindow::new(conv, n, (h, w), (oh, ow)))
    };
    let mut v = run(gpu, vec![launch], &d)?;
    v.truncate(len);
    Ok(v)
}

/// `dw` on `x: [N, C, H, W]`.
pub fn depthwise_forward(gpu: &Gpu, dw: &Depthwise, x: &Tensor) -> Result<Tensor> {
    let [n, c, h, w] = x.shape;
    let (oh, ow) = output_size(&dw.window, h, w)?;
    let shape = [n, c, oh, ow];
    let (xb, wb, y) = (upload(gpu, &x.data)?, weights(gpu, &dw.weights, c)?, out(gpu, shape.iter().product())?);
    let p = DepthwiseWindow::new(dw, n, (h, w), (oh, ow), false);
    Ok(tensor(shape, run(gpu, vec![Launch::depthwise_forward(xb, wb, y.clone(), p)], &y)?))
}

/// The input gradient of `dw` for an input of `hw`.
pub fn depthwise_backward_input(gpu: &Gpu, dw: &Depthwise, dy: &Tensor, hw: (usize, usize)) -> Result<Tensor> {
    let [n, c, oh, ow] = dy.shape;
    let shape = [n, c, hw.0, hw.1];
    let (g, wb, dx) = (upload(gpu, &dy.data)?, weights(gpu, &dw.weights, c)?, out(gpu, shape.iter().product())?);
    let p = DepthwiseWindow::new(dw, n, hw, (oh, ow), false);
    Ok(tensor(shape, run(gpu, vec![Launch::depthwise_backward_input(g, wb, dx.clone(), p)], &dx)?))
}

/// The kernel gradient of `dw` (raw weights, before any quantization scale) `[C·KH·KW]`.
pub fn depthwise_backward_weight(gpu: &Gpu, dw: &Depthwise, x: &Tensor, dy: &Tensor) -> Result<Vec<f32>> {
    let [n, c, h, w] = x.shape;
    let (oh, ow) = (dy.shape[2], dy.shape[3]);
    let len = c * dw.window.kernel[0] * dw.window.kernel[1];
    let (xb, g, d) = (upload(gpu, &x.data)?, upload(gpu, &dy.data)?, out(gpu, len)?);
    let p = DepthwiseWindow::new(dw, n, (h, w), (oh, ow), false);
    let mut v = run(gpu, vec![Launch::depthwise_backward_weight(xb, g, d.clone(), p)], &d)?;
    v.truncate(len);
    Ok(v)
}

fn channelwise(t: &Tensor, act: Activation) -> Channelwise {
    Channelwise { total: word(t.data.len()), c: word(t.shape[1]), hw: word(t.plane()), act: act.code(), accumulate: 0 }
}

/// `act(scale·x + bias)` per channel on `[N, C, H, W]`.
pub fn affine_forward(gpu: &Gpu, scale: &[f32], bias: &[f32], x: &Tensor, act: Activation) -> Result<Tensor> {
    let (xb, s, b, y) = (upload(gpu, &x.data)?, upload(gpu, scale)?, upload(gpu, bias)?, out(gpu, x.data.len())?);
    let launch = Launch::affine_forward(xb, s, b, y.clone(), channelwise(x, act));
    Ok(tensor(x.shape, run(gpu, vec![launch], &y)?))
}

/// `dx = dy · act'(y) · scale` per channel.
pub fn affine_backward_input(gpu: &Gpu, scale: &[f32], dy: &Tensor, y: &Tensor, act: Activation) -> Result<Tensor> {
    let (g, yb, s, dx) = (upload(gpu, &dy.data)?, upload(gpu, &y.data)?, upload(gpu, scale)?, out(gpu, dy.data.len())?);
    let launch = Launch::affine_backward_input(g, yb, s, dx.clone(), channelwise(dy, act));
    Ok(tensor(dy.shape, run(gpu, vec![launch], &dx)?))
}

/// `(Σ dz·x, Σ dz)` per channel with `dz = dy · act'(y)`.
pub fn affine_backward_params(
    gpu: &Gpu,
    dy: &Tensor,
    y: &Tensor,
    x: &Tensor,
    act: Activation,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let [n, c, ..] = dy.shape;
    let at = super::align(c);
    let (g, yb, xb, d) = (upload(gpu, &dy.data)?, upload(gpu, &y.data)?, upload(gpu, &x.data)?, out(gpu, 2 * at)?);
    let [n, c32, hw, at32] = [n, c, dy.plane(), at].map(word);
    let p = AffineGrads { n, c: c32, hw, act: act.code(), has_scale: 1, has_bias: 1, scale_at: 0, bias_at: at32 };
    let v = run(gpu, vec![Launch::affine_backward_params(g, yb, xb, d.clone(), p)], &d)?;
    Ok((v[..c].to_vec(), v[at..at + c].to_vec()))
}

/// The classifier `l` on `x: [N, F, 1, 1]` (product, then the bias as an identity affine).
pub fn linear_forward(gpu: &Gpu, l: &Linear, x: &Tensor) -> Result<Tensor> {
    let n = x.shape[0];
    let (xb, wb) = (upload(gpu, &x.data)?, weights(gpu, &l.weights, l.out_features)?);
    let (tmp, y) = (out(gpu, n * l.out_features)?, out(gpu, n * l.out_features)?);
    let ones = upload(gpu, &vec![1.0; l.out_features])?;
    let bias = upload(gpu, &l.bias)?;
    let p = Pointwise { n: word(n), ci: word(l.in_features), co: word(l.out_features), p: 1 };
    let o = word(l.out_features);
    let affine = Channelwise { total: word(n) * o, c: o, hw: 1, act: Activation::Identity.code(), accumulate: 0 };
    let launches = vec![
        Launch::pointwise_forward(xb, wb, tmp.clone(), p),
        Launch::affine_forward(tmp, ones, bias, y.clone(), affine),
    ];
    Ok(tensor([n, l.out_features, 1, 1], run(gpu, launches, &y)?))
}

/// `dw[o, f] = Σ_n dy[n, o]·x[n, f]`.
pub fn linear_backward_weight(gpu: &Gpu, x: &Tensor, dy: &Tensor) -> Result<Vec<f32>> {
    let (n, f, o) = (x.shape[0], x.sample_len(), dy.sample_len());
    let (g, xb, d) = (upload(gpu, &dy.data)?, upload(gpu, &x.data)?, out(gpu, o * f)?);
    let p = LinearGrad { n: word(n), o: word(o), f: word(f) };
    run(gpu, vec![Launch::linear_backward_weight(g, xb, d.clone(), p)], &d)
}

/// `a + b`.
pub fn add_forward(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(tensor(a.shape, add_large(gpu, &a.data, &b.data)?))
}

/// Mean over H, W: `[N, C, H, W]` → `[N, C, 1, 1]`.
pub fn pool_forward(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    let nc = x.shape[0] * x.shape[1];
    let (xb, y) = (upload(gpu, &x.data)?, out(gpu, nc)?);
    let p = Pool { nc: word(nc), hw: word(x.plane()), accumulate: 0 };
    Ok(tensor([x.shape[0], x.shape[1], 1, 1], run(gpu, vec![Launch::pool_forward(xb, y.clone(), p)], &y)?))
}

/// The input gradient of the pool for an input of `hw`.
pub fn pool_backward(gpu: &Gpu, dy: &Tensor, hw: (usize, usize)) -> Result<Tensor> {
    let shape = [dy.shape[0], dy.shape[1], hw.0, hw.1];
    let (g, dx) = (upload(gpu, &dy.data)?, out(gpu, shape.iter().product())?);
    let p = Pool { nc: word(dy.shape[0] * dy.shape[1]), hw: word(hw.0 * hw.1), accumulate: 0 };
    Ok(tensor(shape, run(gpu, vec![Launch::pool_backward(g, dx.clone(), p)], &dx)?))
}

/// `a · b` (`b` of `a`'s shape or a per-channel gate `[N, C, 1, 1]`).
pub fn mul_forward(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (ab, bb, y) = (upload(gpu, &a.data)?, upload(gpu, &b.data)?, out(gpu, a.data.len())?);
    let p = Product { total: word(a.data.len()), per: word(a.data.len() / b.data.len().max(1)), accumulate: 0 };
    Ok(tensor(a.shape, run(gpu, vec![Launch::mul_forward(ab, bb, y.clone(), p)], &y)?))
}

/// Both operands' gradients of `a · b` from `dy` (of `a`'s shape).
pub fn mul_backward(gpu: &Gpu, a: &Tensor, b: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let (ab, bb, g) = (upload(gpu, &a.data)?, upload(gpu, &b.data)?, upload(gpu, &dy.data)?);
    let (da, db) = (out(gpu, a.data.len())?, out(gpu, b.data.len())?);
    let per = word(a.data.len() / b.data.len().max(1));
    let calls = [
        gpu.call(&Launch::mul_forward(
            g.clone(),
            bb,
            da.clone(),
            Product { total: word(a.data.len()), per, accumulate: 0 },
        )),
        gpu.call(&Launch::mul_backward_other(
            g,
            ab,
            db.clone(),
            Product { total: word(b.data.len()), per, accumulate: 0 },
        )),
    ];
    let [x, y] = <[Vec<f32>; 2]>::try_from(gpu.run_all(&calls, &[&da, &db])?).expect("two outputs");
    Ok((tensor(a.shape, x), tensor(b.shape, y)))
}

/// Max pooling of `x` over `window`.
pub fn max_pool_forward(gpu: &Gpu, window: &Window, x: &Tensor) -> Result<Tensor> {
    let [n, c, h, w] = x.shape;
    let p = MaxPoolWindow::new(window, n * c, (h, w), false);
    let (xb, y) = (upload(gpu, &x.data)?, out(gpu, n * c * (p.oh * p.ow) as usize)?);
    let shape = [n, c, p.oh as usize, p.ow as usize];
    Ok(tensor(shape, run(gpu, vec![Launch::max_pool_forward(xb, y.clone(), p)], &y)?))
}

/// The input gradient of max pooling `x` over `window`.
pub fn max_pool_backward(gpu: &Gpu, window: &Window, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let [n, c, h, w] = x.shape;
    let p = MaxPoolWindow::new(window, n * c, (h, w), false);
    let (xb, g, dx) = (upload(gpu, &x.data)?, upload(gpu, &dy.data)?, out(gpu, x.data.len())?);
    Ok(tensor(x.shape, run(gpu, vec![Launch::max_pool_backward(xb, g, dx.clone(), p)], &dx)?))
}

/// Per-sample losses, correct flags and the gradient of the mean loss.
pub fn softmax_cross_entropy(
    gpu: &Gpu,
    logits: &Tensor,
    labels: &[usize],
    smoothing: f32,
) -> Result<(Vec<f32>, Vec<f32>, Tensor)> {
    let (n, k) = (logits.shape[0], logits.sample_len());
    let lab: Vec<u32> = labels.iter().map(|&l| word(l)).collect();
    let (z, lb) = (upload(gpu, &logits.data)?, Range::whole(gpu.storage_from(&bytes_of(&lab), "labels")?));
    let (dz, stats) = (out(gpu, n * k)?, out(gpu, 2 * n)?);
    let launch = Launch::softmax_cross_entropy(
        z,
        lb,
        dz.clone(),
        stats.clone(),
        Loss { n: word(n), k: word(k), smoothing, first: 0, batch: word(n) },
    );
    let call = gpu.call(&launch);
    let [s, g] = <[Vec<f32>; 2]>::try_from(gpu.run_all(&[call], &[&stats, &dz])?).expect("two outputs");
    let (loss, correct) = (s.iter().step_by(2).copied().collect(), s.iter().skip(1).step_by(2).copied().collect());
    Ok((loss, correct, tensor(logits.shape, g)))
}

/// The dispatch shape of a one-dimensional kernel over `n` elements, as recorded (for
/// checking the folding of large dispatches).
pub fn groups_for(gpu: &Gpu, n: usize) -> [u32; 3] {
    let r = Range::whole(gpu.storage(1, "probe").expect("one word"));
    gpu.call(&Launch::add_backward(r.clone(), r, Elementwise { total: word(n), accumulate: 0 })).groups
}

/// `a + b` through the add kernel (large inputs exercise folded dispatches).
pub fn add_large(gpu: &Gpu, a: &[f32], b: &[f32]) -> Result<Vec<f32>> {
    let (ab, bb, y) = (upload(gpu, a)?, upload(gpu, b)?, out(gpu, a.len())?);
    run(gpu, vec![Launch::add_forward(ab, bb, y.clone(), word(a.len()))], &y)
}
