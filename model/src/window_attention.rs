//! Window attention, `softmax(q·kᵀ·scale + bias + mask)·v`, as one operation from the fused
//! query/key/value projection to the heads' outputs side by side.
//!
//! In burn tensor operations the first Swin stage of the `reference` preset materialises its
//! attention matrix (343 windows × 3 heads × 343², 485 MB) in the forward pass and twice more in
//! the backward pass (the softmax's gradient and the product's), and copies the queries, keys and
//! values out of the projection, the heads' outputs back into tokens, and their gradients both
//! ways. Here, on `Flex` and `Autodiff<Flex>`, each (window, head) is computed whole in memory a
//! worker keeps hot: the forward pass keeps only each row's log-sum-exp, and the backward pass
//! recomputes the probabilities from it (one extra `N×N×d` product, cheaper than reading 485 MB
//! back) and writes the gradients straight into the projection's gradient. Other backends keep
//! the tensor operations.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::attention_softmax::attention_softmax;
use crate::cpu::{SharedMut, Strided, cast, flex, product, recast, zeroed};
use crate::{CpuAutodiff, CpuBackend};

/// Multi-head attention inside windows.
///
/// `qkv`: `[B·nW, N, 3C]`, the last axis laid out (query/key/value, head, channel), windows of
/// each batch item consecutive; `bias`: `[heads, N, N]`; `mask`: `[nW, N, N]`, a constant (no
/// gradient flows into it). Returns `[B·nW, N, C]`, head `h` in channels `h·C/heads..`.
pub fn window_attention<B: Backend>(
    qkv: Tensor<B, 3>,
    bias: Tensor<B, 3>,
    mask: Option<Tensor<B, 3>>,
    heads: usize,
    scale: f32,
) -> Tensor<B, 3> {
    type Args<B> = (Tensor<B, 3>, Tensor<B, 3>, Option<Tensor<B, 3>>);
    let args: Args<B> = (qkv, bias, mask);
    let args = match cast::<_, Args<CpuAutodiff>>(args) {
        Ok((qkv, bias, mask)) => {
            return recast(autodiff_window_attention(qkv, bias, mask, heads, scale));
        }
        Err(args) => args,
    };
    match cast::<_, Args<CpuBackend>>(args) {
        Ok((qkv, bias, mask)) => recast(flex_window_attention(qkv, bias, mask, heads, scale)),
        Err((qkv, bias, mask)) => composed(qkv, bias, mask, heads, scale),
    }
}

/// Inference on `Flex`: the forward pass alone, no log-sum-exp kept.
fn flex_window_attention(
    qkv: Tensor<CpuBackend, 3>,
    bias: Tensor<CpuBackend, 3>,
    mask: Option<Tensor<CpuBackend, 3>>,
    heads: usize,
    scale: f32,
) -> Tensor<CpuBackend, 3> {
    let Some(sizes) = Sizes::of(&qkv, &bias, mask.as_ref(), heads) else {
        return composed(qkv, bias, mask, heads, scale);
    };
    let qkv = qkv.into_primitive().tensor();
    let bias = bias.into_primitive().tensor();
    let mask = mask.map(|m| m.into_primitive().tensor());
    let (out, _) = forward_primitive(&qkv, &bias, mask.as_ref(), sizes, scale, false);
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// The same in burn tensor operations (every backend but `Flex`, and shapes the kernel does not
/// take).
pub fn composed<B: Backend>(
    qkv: Tensor<B, 3>,
    bias: Tensor<B, 3>,
    mask: Option<Tensor<B, 3>>,
    heads: usize,
    scale: f32,
) -> Tensor<B, 3> {
    let [bw, n, c3] = qkv.dims();
    let c = c3 / 3;
    let head_dim = c / heads;
    let qkv = qkv
        .reshape([bw, n, 3, heads, head_dim])
        .permute([2, 0, 3, 1, 4]); // [3, B·nW, heads, N, hd]
    let q = qkv
        .clone()
        .narrow(0, 0, 1)
        .squeeze_dim::<4>(0)
        .mul_scalar(scale);
    let k = qkv.clone().narrow(0, 1, 1).squeeze_dim::<4>(0);
    let v = qkv.narrow(0, 2, 1).squeeze_dim::<4>(0);
    let attn = attention_softmax(q.matmul(k.swap_dims(2, 3)), bias, mask);
    attn.matmul(v).swap_dims(1, 2).reshape([bw, n, c])
}

/// Shapes of one call.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// Windows in all batch items.
    windows: usize,
    /// Windows per batch item (the mask's first axis; 1 without a mask).
    mask_windows: usize,
    /// Tokens per window.
    n: usize,
    /// Channels of the output (a third of the projection's).
    c: usize,
    heads: usize,
    head_dim: usize,
}

impl Sizes {
    fn new(
        qkv: [usize; 3],
        bias: [usize; 3],
        mask: Option<[usize; 3]>,
        heads: usize,
    ) -> Option<Self> {
        let [windows, n, c3] = qkv;
        let c = c3 / 3;
        let mask_windows = mask.map_or(1, |m| m[0]);
        let fits = c3 % 3 == 0
            && heads > 0
            && c % heads == 0
            && bias == [heads, n, n]
            && mask.is_none_or(|m| m[1] == n && m[2] == n)
            && mask_windows > 0
            && windows % mask_windows == 0
            && n > 0;
        fits.then_some(Self {
            windows,
            mask_windows,
            n,
            c,
            heads,
            head_dim: c / heads,
        })
    }

    /// The sizes of a call the kernel takes: `f32` tensors of the shapes [`Sizes::new`] accepts.
    fn of<B: Backend>(
        qkv: &Tensor<B, 3>,
        bias: &Tensor<B, 3>,
        mask: Option<&Tensor<B, 3>>,
        heads: usize,
    ) -> Option<Self> {
        let all_f32 = [Some(qkv), Some(bias), mask]
            .into_iter()
            .flatten()
            .all(|t| t.dtype() == DType::F32);
        let sizes = Self::new(qkv.dims(), bias.dims(), mask.map(Tensor::dims), heads);
        sizes.filter(|_| all_f32)
    }

    /// Offset of head `h`'s query (`part` 0), key (1) or value (2) columns in window `w`.
    fn qkv_offset(&self, w: usize, part: usize, h: usize) -> usize {
        w * self.n * 3 * self.c + part * self.c + h * self.head_dim
    }
}

/// The operation's inputs, as contiguous values.
#[derive(Clone, Copy)]
struct Inputs<'a> {
    qkv: &'a [f32],
    bias: &'a [f32],
    mask: Option<&'a [f32]>,
}

/// `scores = scale · q·kᵀ + bias[h] + mask[w]` for window `w`, head `h`, into `scores` (`N×N`).
fn scores(
    Inputs { qkv, bias, mask }: Inputs,
    s: Sizes,
    scale: f32,
    w: usize,
    h: usize,
    out: &mut [f32],
) {
    let (n, block) = (s.n, s.n * s.n);
    let row = 3 * s.c;
    // SAFETY: the query and key blocks of window `w` lie inside `qkv` (`Sizes::new` checked the
    // shape against it), `out` holds `N×N` values and is this worker's own.
    unsafe {
        product(
            [n, n, s.head_dim],
            out.as_mut_ptr(),
            [n, 1],
            false,
            Strided {
                ptr: qkv.as_ptr().add(s.qkv_offset(w, 0, h)),
                row,
                col: 1,
            },
            // kᵀ: its rows are the key's channels, its columns the key's tokens.
            Strided {
                ptr: qkv.as_ptr().add(s.qkv_offset(w, 1, h)),
                row: 1,
                col: row,
            },
            scale,
        );
    }
    let bias = &bias[h * block..][..block];
    out.iter_mut().zip(bias).for_each(|(o, &b)| *o += b);
    if let Some(mask) = mask {
        let mask = &mask[(w % s.mask_windows) * block..][..block];
        out.iter_mut().zip(mask).for_each(|(o, &m)| *o += m);
    }
}

/// `eˣ` to about 2 ulp for `x ≤ 88`, flushing to `e⁻⁸⁷` below `−87`, in operations that vectorise
/// (glibc's `expf` is a call per element: 15 % of the encoder's training step went to it).
///
/// `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`; `eʳ` by Cephes' degree-6 polynomial, `2ⁿ` built in
/// the exponent bits. The attention's exponents are never positive (scores minus their row's
/// maximum or log-sum-exp), and masked ones (about −100) contribute nothing either way.
#[inline(always)]
fn exp(x: f32) -> f32 {
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer without a branch or a call.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let rounded = x * std::f32::consts::LOG2_E + ROUND;
    let n = rounded - ROUND;
    // ln 2 in two parts, so that n·ln 2 is exact in the first.
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = (((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 0.166_666_65)
        * r
        + 0.5)
        * (r * r)
        + r
        + 1.0;
    // `rounded`'s low mantissa bits hold n: 2ⁿ from integer operations alone (a float-to-int
    // `as` saturates, which compiles to one scalar conversion per lane). n ∈ [−126, 127] after
    // the clamp: a normal power of two.
    let biased = rounded
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127);
    p * f32::from_bits(biased << 23)
}

/// Lanes the row reductions keep apart, so that they vectorise.
const LANES: usize = 8;

/// The maximum of a row, in `LANES` partial maxima.
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = m.max(v);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    lanes.iter().fold(tail, |m, &v| m.max(v))
}

/// The sum of a row, in `LANES` partial sums (a fixed order: the same result on every run).
#[inline(always)]
fn row_sum(row: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (s, &v) in lanes.iter_mut().zip(chunk) {
            *s += v;
        }
    }
    let tail: f32 = chunks.remainder().iter().sum();
    lanes.iter().sum::<f32>() + tail
}

#[inline(always)]
fn softmax_row_body(row: &mut [f32]) -> (f32, f32) {
    let max = row_max(row);
    row.iter_mut().for_each(|v| *v = exp(*v - max));
    let sum = row_sum(row);
    let inverse = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inverse);
    (max, sum)
}

#[inline(always)]
fn exp_shifted_body(row: &mut [f32], shift: f32) {
    row.iter_mut().for_each(|v| *v = exp(*v - shift));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_row_avx2(row: &mut [f32]) -> (f32, f32) {
    softmax_row_body(row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp_shifted_avx2(row: &mut [f32], shift: f32) {
    exp_shifted_body(row, shift)
}

/// Whether this CPU runs the AVX2 versions (the build targets baseline x86-64; std caches the
/// answer).
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A row of scores into probabilities, in place; returns its maximum and `Σ e^(x − max)`.
fn softmax_row(row: &mut [f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { softmax_row_avx2(row) };
    }
    softmax_row_body(row)
}

/// `x ← e^(x − shift)` over a row.
fn exp_shifted(row: &mut [f32], shift: f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { exp_shifted_avx2(row, shift) };
    }
    exp_shifted_body(row, shift)
}

/// The forward pass on `Flex` tensors; with `keep_lse`, also each row's log-sum-exp
/// (`[B·nW, heads, N]`) for the backward pass.
fn forward_primitive(
    qkv: &FlexTensor,
    bias: &FlexTensor,
    mask: Option<&FlexTensor>,
    s: Sizes,
    scale: f32,
    keep_lse: bool,
) -> (FlexTensor, Vec<f32>) {
    let qkv = qkv.to_contiguous();
    let bias = bias.to_contiguous();
    let mask = mask.map(FlexTensor::to_contiguous);
    let (qkv, bias) = (qkv.storage::<f32>(), bias.storage::<f32>());
    let mask = mask.as_ref().map(|m| m.storage::<f32>());
    let n = s.n;
    let mut out = zeroed(s.windows * n * s.c);
    let mut lse = if keep_lse {
        zeroed(s.windows * s.heads * n)
    } else {
        Vec::new()
    };
    let out_ptr = SharedMut(out.as_mut_ptr());
    let lse_ptr = SharedMut(lse.as_mut_ptr());
    (0..s.windows * s.heads).into_par_iter().for_each_init(
        || vec![0f32; n * n],
        |p, task| {
            let (w, h) = (task / s.heads, task % s.heads);
            scores(Inputs { qkv, bias, mask }, s, scale, w, h, p);
            for i in 0..n {
                let row = &mut p[i * n..][..n];
                let (max, sum) = softmax_row(row);
                if keep_lse {
                    // SAFETY: row `i` of (window `w`, head `h`) is written by this task only.
                    unsafe { *lse_ptr.at((w * s.heads + h) * n + i) = max + sum.ln() };
                }
            }
            // SAFETY: head `h`'s columns of window `w`'s rows are this task's alone; the value
            // block lies inside `qkv`.
            unsafe {
                product(
                    [n, s.head_dim, n],
                    out_ptr.at(w * n * s.c + h * s.head_dim),
                    [s.c, 1],
                    false,
                    Strided {
                        ptr: p.as_ptr(),
                        row: n,
                        col: 1,
                    },
                    Strided {
                        ptr: qkv.as_ptr().add(s.qkv_offset(w, 2, h)),
                        row: 3 * s.c,
                        col: 1,
                    },
                    1.0,
                );
            }
        },
    );
    (flex(out, vec![s.windows, n, s.c]), lse)
}

/// Groups of consecutive windows whose bias gradients are summed apart, then in group order: the
/// sum does not depend on how the work was scheduled.
const BIAS_GROUPS: usize = 8;

/// The gradients of the projection (`[B·nW, N, 3C]`) and of the bias (`[heads, N, N]`).
fn backward(
    qkv: &[f32],
    bias: &[f32],
    mask: Option<&[f32]>,
    lse: &[f32],
    grad_out: &[f32],
    s: Sizes,
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    let (n, hd, c, block) = (s.n, s.head_dim, s.c, s.n * s.n);
    let row = 3 * c;
    let groups = s.windows.min(BIAS_GROUPS);
    let per_group = s.windows.div_ceil(groups);
    let mut grad_qkv = zeroed(s.windows * n * row);
    let grad_ptr = SharedMut(grad_qkv.as_mut_ptr());
    // One bias gradient per (group, head), in that order.
    let partial: Vec<Vec<f32>> = (0..groups * s.heads)
        .into_par_iter()
        .map(|task| {
            let (group, h) = (task / s.heads, task % s.heads);
            let mut bias_grad = vec![0f32; block];
            let mut p = vec![0f32; block];
            let mut dp = vec![0f32; block];
            let first = group * per_group;
            for w in first..(first + per_group).min(s.windows) {
                scores(Inputs { qkv, bias, mask }, s, scale, w, h, &mut p);
                let lse = &lse[(w * s.heads + h) * n..][..n];
                for (row, &lse) in p.chunks_exact_mut(n).zip(lse) {
                    exp_shifted(row, lse);
                }
                let g = grad_out.as_ptr().wrapping_add(w * n * c + h * hd);
                let q = qkv.as_ptr().wrapping_add(s.qkv_offset(w, 0, h));
                let k = qkv.as_ptr().wrapping_add(s.qkv_offset(w, 1, h));
                let v = qkv.as_ptr().wrapping_add(s.qkv_offset(w, 2, h));
                // SAFETY (all four products): the operands are head `h`'s blocks of window `w`,
                // inside their buffers; the destinations are this task's scratch or head `h`'s
                // columns of window `w` in the projection's gradient, written by no other task.
                unsafe {
                    // dv = pᵀ·g
                    product(
                        [n, hd, n],
                        grad_ptr.at(s.qkv_offset(w, 2, h)),
                        [row, 1],
                        false,
                        Strided {
                            ptr: p.as_ptr(),
                            row: 1,
                            col: n,
                        },
                        Strided {
                            ptr: g,
                            row: c,
                            col: 1,
                        },
                        1.0,
                    );
                    // dp = g·vᵀ
                    product(
                        [n, n, hd],
                        dp.as_mut_ptr(),
                        [n, 1],
                        false,
                        Strided {
                            ptr: g,
                            row: c,
                            col: 1,
                        },
                        Strided {
                            ptr: v,
                            row: 1,
                            col: row,
                        },
                        1.0,
                    );
                }
                // The softmax's backward pass: ds = p ⊙ (dp − Σ p·dp), per row.
                for (dp, p) in dp.chunks_exact_mut(n).zip(p.chunks_exact(n)) {
                    let dot: f32 = dp.iter().zip(p).map(|(a, b)| a * b).sum();
                    dp.iter_mut().zip(p).for_each(|(d, &y)| *d = y * (*d - dot));
                }
                bias_grad.iter_mut().zip(&dp).for_each(|(b, &d)| *b += d);
                unsafe {
                    // dq = scale · ds·k
                    product(
                        [n, hd, n],
                        grad_ptr.at(s.qkv_offset(w, 0, h)),
                        [row, 1],
                        false,
                        Strided {
                            ptr: dp.as_ptr(),
                            row: n,
                            col: 1,
                        },
                        Strided {
                            ptr: k,
                            row,
                            col: 1,
                        },
                        scale,
                    );
                    // dk = scale · dsᵀ·q
                    product(
                        [n, hd, n],
                        grad_ptr.at(s.qkv_offset(w, 1, h)),
                        [row, 1],
                        false,
                        Strided {
                            ptr: dp.as_ptr(),
                            row: 1,
                            col: n,
                        },
                        Strided {
                            ptr: q,
                            row,
                            col: 1,
                        },
                        scale,
                    );
                }
            }
            bias_grad
        })
        .collect();
    let mut bias_grad = vec![0f32; s.heads * block];
    for (task, part) in partial.iter().enumerate() {
        let h = task % s.heads;
        bias_grad[h * block..][..block]
            .iter_mut()
            .zip(part)
            .for_each(|(b, &p)| *b += p);
    }
    (grad_qkv, bias_grad)
}

#[derive(Debug)]
struct WindowAttentionBackward;

/// What the backward pass needs: the inputs, each row's log-sum-exp, the shapes and the scale.
#[derive(Debug, Clone)]
struct State {
    qkv: FlexTensor,
    bias: FlexTensor,
    mask: Option<FlexTensor>,
    lse: Vec<f32>,
    sizes: Sizes,
    scale: f32,
}

impl Backward<CpuBackend, 2> for WindowAttentionBackward {
    type State = State;

    fn backward(self, ops: Ops<State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [qkv_node, bias_node] = ops.parents;
        let grad = grads.consume::<CpuBackend>(&ops.node).to_contiguous();
        let state = ops.state;
        let s = state.sizes;
        let (qkv, bias) = (state.qkv.to_contiguous(), state.bias.to_contiguous());
        let mask = state.mask.as_ref().map(FlexTensor::to_contiguous);
        let (grad_qkv, grad_bias) = backward(
            qkv.storage::<f32>(),
            bias.storage::<f32>(),
            mask.as_ref().map(|m| m.storage::<f32>()),
            &state.lse,
            grad.storage::<f32>(),
            s,
            state.scale,
        );
        if let Some(node) = qkv_node {
            grads.register::<CpuBackend>(node.id, flex(grad_qkv, vec![s.windows, s.n, 3 * s.c]));
        }
        if let Some(node) = bias_node {
            grads.register::<CpuBackend>(node.id, flex(grad_bias, vec![s.heads, s.n, s.n]));
        }
    }
}

fn autodiff_window_attention(
    qkv: Tensor<CpuAutodiff, 3>,
    bias: Tensor<CpuAutodiff, 3>,
    mask: Option<Tensor<CpuAutodiff, 3>>,
    heads: usize,
    scale: f32,
) -> Tensor<CpuAutodiff, 3> {
    let Some(sizes) = Sizes::of(&qkv, &bias, mask.as_ref(), heads) else {
        return composed(qkv, bias, mask, heads, scale);
    };
    let qkv = qkv.into_primitive().tensor();
    let bias = bias.into_primitive().tensor();
    // The mask is built from constants; its values are all that is needed.
    let mask = mask.map(|m| m.into_primitive().tensor().primitive);
    let prep = WindowAttentionBackward
        .prepare::<NoCheckpointing>([qkv.node.clone(), bias.node.clone()])
        .compute_bound()
        .stateful();
    let out = match prep {
        OpsKind::Tracked(prep) => {
            let (out, lse) = forward_primitive(
                &qkv.primitive,
                &bias.primitive,
                mask.as_ref(),
                sizes,
                scale,
                true,
            );
            let state = State {
                qkv: qkv.primitive,
                bias: bias.primitive,
                mask,
                lse,
                sizes,
                scale,
            };
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => {
            let (out, _) = forward_primitive(
                &qkv.primitive,
                &bias.primitive,
                mask.as_ref(),
                sizes,
                scale,
                false,
            );
            prep.finish(out)
        }
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_the_library_over_the_attention_range() {
        let mut worst = 0f32;
        for i in 0..=200_000 {
            let x = -87.0 + 88.0 * i as f32 / 200_000.0;
            let (ours, libm) = (exp(x), x.exp());
            worst = worst.max((ours - libm).abs() / libm);
        }
        assert!(worst < 2.5e-7, "largest relative error {worst}");
        // Flushed, not wrapped: far below the range it stays a tiny positive number.
        assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 1e-37);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn softmax_rows_sum_to_one_in_every_length() {
        for n in [1, 7, 8, 9, 27, 343] {
            let mut row: Vec<f32> = (0..n).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
            let original = row.clone();
            let (max, sum) = softmax_row(&mut row);
            let expected_max = original.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            assert_eq!(max, expected_max);
            let expected_sum: f64 = original.iter().map(|&v| ((v - max) as f64).exp()).sum();
            assert!(
                (sum as f64 - expected_sum).abs() < 1e-5 * expected_sum,
                "n = {n}"
            );
            let total: f32 = row.iter().sum();
            assert!((total - 1.0).abs() < 1e-5, "n = {n}: {total}");
            let mut shifted = original.clone();
            exp_shifted(&mut shifted, max + sum.ln());
            for (a, b) in shifted.iter().zip(&row) {
                assert!((a - b).abs() < 1e-6, "n = {n}: {a} against {b}");
            }
        }
    }

    #[test]
    fn sizes_refuse_shapes_the_kernel_does_not_take() {
        assert!(Sizes::new([8, 27, 144], [3, 27, 27], Some([4, 27, 27]), 3).is_some());
        // channels not a multiple of three, heads not dividing them, bias or mask of other sizes
        assert!(Sizes::new([8, 27, 145], [3, 27, 27], None, 3).is_none());
        assert!(Sizes::new([8, 27, 144], [5, 27, 27], None, 5).is_none());
        assert!(Sizes::new([8, 27, 144], [3, 27, 26], None, 3).is_none());
        assert!(Sizes::new([8, 27, 144], [3, 27, 27], Some([3, 27, 27]), 3).is_none());
        assert!(Sizes::new([8, 27, 144], [3, 27, 27], Some([4, 27, 20]), 3).is_none());
    }
}
