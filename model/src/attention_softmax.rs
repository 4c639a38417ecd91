//! The window attention's softmax with its relative position bias and shifted-window mask, fused.
//!
//! Written as burn tensor operations, `softmax(scores + bias + mask)` makes five passes over the
//! attention matrix forward and more backward. At the first Swin stage of the `reference` preset
//! that matrix holds 343 windows × 3 heads × 343² scores (485 MB), and on burn's `flex` backend
//! both additions broadcast in a pattern it walks element by element through a strided index
//! (the bias is a permuted view; the mask repeats across heads, a middle axis). A profile of the
//! training step put the attention's forward pass alone at 15 % of the time.
//!
//! Here, on `Flex` and `Autodiff<Flex>`, each row is read once, biased, masked and normalised in
//! one pass; the backward pass computes `y ⊙ (g − Σ y·g)` per row and sums it over windows for
//! the bias. Other backends keep the tensor operations.

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::cpu::{cast, dims, flex, recast};
use crate::{CpuAutodiff, CpuBackend};

/// `softmax(scores + bias + mask)` over the last axis.
///
/// `scores`: `[B·nW, heads, N, N]`, windows of each batch item consecutive; `bias`: `[heads, N, N]`;
/// `mask`: `[nW, N, N]`, a constant (no gradient flows into it).
pub fn attention_softmax<B: Backend>(
    scores: Tensor<B, 4>,
    bias: Tensor<B, 3>,
    mask: Option<Tensor<B, 3>>,
) -> Tensor<B, 4> {
    type Args<B> = (Tensor<B, 4>, Tensor<B, 3>, Option<Tensor<B, 3>>);
    let args: Args<B> = (scores, bias, mask);
    let args = match cast::<_, Args<CpuAutodiff>>(args) {
        Ok((scores, bias, mask)) => return recast(autodiff_attention_softmax(scores, bias, mask)),
        Err(args) => args,
    };
    let args = match cast::<_, Args<CpuBackend>>(args) {
        Ok((scores, bias, mask)) => {
            let scores = scores.into_primitive().tensor();
            let bias = bias.into_primitive().tensor();
            let mask = mask.map(|m| m.into_primitive().tensor());
            let out = forward_primitive(scores, &bias, mask.as_ref());
            return recast(Tensor::<CpuBackend, 4>::from_primitive(
                TensorPrimitive::Float(out),
            ));
        }
        Err(args) => args,
    };
    let (scores, bias, mask) = args;
    composed(scores, bias, mask)
}

/// The same with burn's tensor operations (every backend but `Flex`).
fn composed<B: Backend>(
    scores: Tensor<B, 4>,
    bias: Tensor<B, 3>,
    mask: Option<Tensor<B, 3>>,
) -> Tensor<B, 4> {
    let [bw, heads, n, _] = scores.dims();
    let mut scores = scores + bias.unsqueeze_dim::<4>(0);
    if let Some(mask) = mask {
        let nw = mask.dims()[0];
        let masked = scores.reshape([bw / nw, nw, heads, n, n])
            + mask.unsqueeze_dim::<4>(1).unsqueeze_dim::<5>(0);
        scores = masked.reshape([bw, heads, n, n]);
    }
    softmax(scores, 3)
}

/// Shapes: `[B·nW, heads, N]` and the number of windows per batch item (1 without a mask).
#[derive(Debug, Clone, Copy)]
struct Sizes {
    heads: usize,
    n: usize,
    windows: usize,
}

impl Sizes {
    /// Checks `scores` `[B·nW, heads, N, N]`, `bias` `[heads, N, N]`, `mask` `[nW, N, N]`.
    fn new(scores: [usize; 4], bias: [usize; 3], mask: Option<[usize; 3]>) -> Option<Self> {
        let [bw, heads, n, m] = scores;
        let windows = mask.map_or(1, |m| m[0]);
        let mask_fits = mask.is_none_or(|m| m[1] == n && m[2] == n);
        (n == m && bias == [heads, n, n] && mask_fits && windows > 0 && bw % windows == 0)
            .then_some(Self { heads, n, windows })
    }
}

/// `softmax(scores + bias[h] + mask[w])` row by row, in place.
fn forward(values: &mut [f32], bias: &[f32], mask: Option<&[f32]>, s: Sizes) {
    let block = s.n * s.n;
    values
        .par_chunks_mut(block)
        .enumerate()
        .for_each(|(index, out)| {
            // Blocks run (batch item, window, head), head fastest.
            let head = index % s.heads;
            let window = (index / s.heads) % s.windows;
            let bias = &bias[head * block..][..block];
            let mask = mask.map(|m| &m[window * block..][..block]);
            for i in 0..s.n {
                let row = i * s.n..(i + 1) * s.n;
                let out = &mut out[row.clone()];
                out.iter_mut()
                    .zip(&bias[row.clone()])
                    .for_each(|(o, &b)| *o += b);
                if let Some(mask) = mask {
                    out.iter_mut().zip(&mask[row]).for_each(|(o, &m)| *o += m);
                }
                let max = out.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let mut sum = 0f32;
                for o in out.iter_mut() {
                    *o = (*o - max).exp();
                    sum += *o;
                }
                let inverse = 1.0 / sum;
                out.iter_mut().for_each(|o| *o *= inverse);
            }
        });
}

/// The gradient of the scores, written over the softmax output's gradient `g`, and that of the
/// bias, from the softmax output `y`.
fn backward(y: &[f32], g: &mut [f32], s: Sizes, want_bias: bool) -> Option<Vec<f32>> {
    let block = s.n * s.n;
    g.par_chunks_mut(s.n)
        .zip(y.par_chunks(s.n))
        .for_each(|(g, y)| {
            let dot: f32 = y.iter().zip(g.iter()).map(|(a, b)| a * b).sum();
            g.iter_mut().zip(y).for_each(|(g, &y)| *g = y * (*g - dot));
        });
    let scores: &[f32] = g;
    // The bias is shared by every window and batch item: sum their gradients per head, in
    // block order (independent of scheduling).
    want_bias.then(|| {
        let blocks = scores.len() / block;
        let per_head: Vec<Vec<f32>> = (0..s.heads)
            .into_par_iter()
            .map(|head| {
                let mut total = vec![0f32; block];
                for index in (head..blocks).step_by(s.heads) {
                    let grad = &scores[index * block..][..block];
                    total.iter_mut().zip(grad).for_each(|(t, &v)| *t += v);
                }
                total
            })
            .collect();
        per_head.concat()
    })
}

/// The fused softmax on `Flex` tensors, written over `scores` when nothing else holds them (the
/// attention matrix is fresh memory otherwise, hundreds of megabytes of page faults per step).
fn forward_primitive(
    scores: FlexTensor,
    bias: &FlexTensor,
    mask: Option<&FlexTensor>,
) -> FlexTensor {
    let shape = dims::<4>(&scores);
    let sizes = Sizes::new(shape, dims::<3>(bias), mask.map(dims::<3>));
    let all_f32 = [Some(&scores), Some(bias), mask]
        .into_iter()
        .flatten()
        .all(|t| t.dtype() == DType::F32);
    let (Some(sizes), true) = (sizes, all_f32) else {
        let wrap = |t: &FlexTensor| {
            Tensor::<CpuBackend, 4>::from_primitive(TensorPrimitive::Float(t.clone()))
        };
        let wrap3 = |t: &FlexTensor| {
            Tensor::<CpuBackend, 3>::from_primitive(TensorPrimitive::Float(t.clone()))
        };
        return composed(wrap(&scores), wrap3(bias), mask.map(wrap3))
            .into_primitive()
            .tensor();
    };
    let mut values = unique_contiguous(scores);
    let bias = bias.to_contiguous();
    let mask = mask.map(FlexTensor::to_contiguous);
    forward(
        values.storage_mut::<f32>(),
        bias.storage::<f32>(),
        mask.as_ref().map(|m| m.storage::<f32>()),
        sizes,
    );
    values
}

/// `t` in row-major order; its own buffer when no other tensor shares it, so that writing to it
/// (`storage_mut`) copies nothing.
fn unique_contiguous(t: FlexTensor) -> FlexTensor {
    if t.is_contiguous() && t.layout().start_offset() == 0 {
        t
    } else {
        t.to_contiguous()
    }
}

#[derive(Debug)]
struct AttentionSoftmaxBackward;

impl Backward<CpuBackend, 2> for AttentionSoftmaxBackward {
    /// The softmax output (which the following matrix product keeps anyway) and the sizes.
    type State = (FlexTensor, usize);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [scores_node, bias_node] = ops.parents;
        let mut grad = unique_contiguous(grads.consume::<CpuBackend>(&ops.node));
        let (y, windows) = ops.state;
        let [_, heads, n, _] = dims::<4>(&y);
        let sizes = Sizes { heads, n, windows };
        // The scores' gradient is written over the output's (fresh from the matrix product
        // after the softmax, so not shared).
        let bias = backward(
            y.storage::<f32>(),
            grad.storage_mut::<f32>(),
            sizes,
            bias_node.is_some(),
        );
        if let Some(node) = scores_node {
            grads.register::<CpuBackend>(node.id, grad);
        }
        if let (Some(node), Some(bias)) = (bias_node, bias) {
            grads.register::<CpuBackend>(node.id, flex(bias, vec![heads, n, n]));
        }
    }
}

fn autodiff_attention_softmax(
    scores: Tensor<CpuAutodiff, 4>,
    bias: Tensor<CpuAutodiff, 3>,
    mask: Option<Tensor<CpuAutodiff, 3>>,
) -> Tensor<CpuAutodiff, 4> {
    let sizes = Sizes::new(scores.dims(), bias.dims(), mask.as_ref().map(Tensor::dims));
    let (Some(sizes), DType::F32) = (sizes, scores.dtype()) else {
        return composed(scores, bias, mask);
    };
    let scores = scores.into_primitive().tensor();
    let bias = bias.into_primitive().tensor();
    // The mask is built from constants; its values are all that is needed.
    let mask = mask.map(|m| m.into_primitive().tensor().primitive);
    let scores_node = scores.node.clone();
    let out = forward_primitive(scores.primitive, &bias.primitive, mask.as_ref());
    let out = match AttentionSoftmaxBackward
        .prepare::<NoCheckpointing>([scores_node, bias.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((out.clone(), sizes.windows), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
