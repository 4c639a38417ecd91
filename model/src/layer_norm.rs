//! Layer norm over the last axis with its affine parameters, as one node of the autodiff graph.
//!
//! burn 0.21's `Autodiff` has no layer-norm operation of its own: `LayerNorm::forward` becomes
//! mean, subtraction, square, mean, square root, division, scale and shift, each a full pass with
//! a fresh buffer, and the backward pass walks each of them back through broadcasting strided
//! iterators. The `reference` encoder normalises 110,592 tokens twice per Swin block of its first
//! stage. Here, on `Autodiff<Flex>`, the forward pass is one sweep per row that keeps each row's
//! mean and reciprocal standard deviation, and the backward pass one more sweep per row. Every
//! other backend, and `Flex` without autodiff (which has a fused forward pass), keeps burn's
//! operation.

use burn::nn::LayerNorm;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::cpu::{cast, flex, recast, zeroed};
use crate::{CpuAutodiff, CpuBackend};

/// `norm` applied to `x` over its last axis (`eps`: the norm's epsilon, which burn's module
/// keeps private).
pub fn layer_norm<B: Backend, const D: usize>(
    norm: &LayerNorm<B>,
    x: Tensor<B, D>,
    eps: f64,
) -> Tensor<B, D> {
    let gamma = norm.gamma.val();
    let beta = norm.beta.as_ref().map(|b| b.val());
    type Args<B, const D: usize> = (Tensor<B, D>, Tensor<B, 1>, Option<Tensor<B, 1>>);
    let args: Args<B, D> = (x, gamma, beta);
    match cast::<_, Args<CpuAutodiff, D>>(args) {
        Ok((x, gamma, Some(beta))) => recast(autodiff_layer_norm(x, gamma, beta, eps)),
        Ok((x, gamma, None)) => recast(composed(x, gamma, None, eps)),
        Err((x, gamma, beta)) => composed(x, gamma, beta, eps),
    }
}

/// burn's own layer-norm operation (what `LayerNorm::forward` runs).
pub fn composed<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Option<Tensor<B, 1>>,
    eps: f64,
) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
        x.into_primitive().tensor(),
        gamma.into_primitive().tensor(),
        beta.map(|b| b.into_primitive().tensor()),
        eps,
    )))
}

/// Rows per parallel task, and per partial sum of the parameters' gradients: a fixed split, so
/// that those sums do not depend on the thread count.
const ROWS_PER_TASK: usize = 256;

/// The forward pass: the output, and each row's mean and reciprocal standard deviation (two
/// values per row of `C`: kept whether or not a backward pass follows).
fn forward(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let c = gamma.len();
    let rows = x.len() / c;
    let mut out = zeroed(x.len());
    let (mut means, mut rstds) = (vec![0f32; rows], vec![0f32; rows]);
    out.par_chunks_mut(ROWS_PER_TASK * c)
        .zip(x.par_chunks(ROWS_PER_TASK * c))
        .zip(
            means
                .par_chunks_mut(ROWS_PER_TASK)
                .zip(rstds.par_chunks_mut(ROWS_PER_TASK)),
        )
        .for_each(|((out, x), (means, rstds))| {
            let rows = out.chunks_exact_mut(c).zip(x.chunks_exact(c));
            for ((out, x), (row_mean, row_rstd)) in rows.zip(means.iter_mut().zip(rstds)) {
                let mean = x.iter().sum::<f32>() / c as f32;
                let var = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / c as f32;
                let rstd = 1.0 / (var + eps).sqrt();
                for (((o, &v), &g), &b) in out.iter_mut().zip(x).zip(gamma).zip(beta) {
                    *o = (v - mean) * rstd * g + b;
                }
                (*row_mean, *row_rstd) = (mean, rstd);
            }
        });
    (out, means, rstds)
}

/// The gradients of the input, of `gamma` and of `beta`.
fn backward(
    x: &[f32],
    gamma: &[f32],
    means: &[f32],
    rstds: &[f32],
    grad: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let c = gamma.len();
    let mut grad_x = zeroed(x.len());
    let partials: Vec<(Vec<f32>, Vec<f32>)> = grad_x
        .par_chunks_mut(ROWS_PER_TASK * c)
        .zip(x.par_chunks(ROWS_PER_TASK * c))
        .zip(grad.par_chunks(ROWS_PER_TASK * c))
        .zip(
            means
                .par_chunks(ROWS_PER_TASK)
                .zip(rstds.par_chunks(ROWS_PER_TASK)),
        )
        .map(|(((grad_x, x), grad), (means, rstds))| {
            let (mut grad_gamma, mut grad_beta) = (vec![0f32; c], vec![0f32; c]);
            let rows = grad_x
                .chunks_exact_mut(c)
                .zip(x.chunks_exact(c))
                .zip(grad.chunks_exact(c));
            for (((grad_x, x), g), (&mean, &rstd)) in rows.zip(means.iter().zip(rstds)) {
                // dx = rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ · x̂)), ĝ = g · γ.
                let (mut sum, mut sum_dot) = (0f32, 0f32);
                for (((&v, &g), &w), (dg, db)) in x
                    .iter()
                    .zip(g)
                    .zip(gamma)
                    .zip(grad_gamma.iter_mut().zip(grad_beta.iter_mut()))
                {
                    let normalised = (v - mean) * rstd;
                    let scaled = g * w;
                    sum += scaled;
                    sum_dot += scaled * normalised;
                    *dg += g * normalised;
                    *db += g;
                }
                let (mean_scaled, mean_dot) = (sum / c as f32, sum_dot / c as f32);
                for (((dx, &v), &g), &w) in grad_x.iter_mut().zip(x).zip(g).zip(gamma) {
                    let normalised = (v - mean) * rstd;
                    *dx = rstd * (g * w - mean_scaled - normalised * mean_dot);
                }
            }
            (grad_gamma, grad_beta)
        })
        .collect();
    let (mut grad_gamma, mut grad_beta) = (vec![0f32; c], vec![0f32; c]);
    for (dg, db) in &partials {
        grad_gamma.iter_mut().zip(dg).for_each(|(a, b)| *a += b);
        grad_beta.iter_mut().zip(db).for_each(|(a, b)| *a += b);
    }
    (grad_x, grad_gamma, grad_beta)
}

#[derive(Debug)]
struct LayerNormBackward;

/// What the backward pass needs: the input, `gamma`, and each row's statistics.
#[derive(Debug, Clone)]
struct State {
    x: FlexTensor,
    gamma: FlexTensor,
    means: Vec<f32>,
    rstds: Vec<f32>,
}

impl Backward<CpuBackend, 3> for LayerNormBackward {
    type State = State;

    fn backward(self, ops: Ops<State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<CpuBackend>(&ops.node).to_contiguous();
        let State {
            x,
            gamma,
            means,
            rstds,
        } = ops.state;
        let shape = x.layout().shape().to_vec();
        let (x, gamma) = (x.to_contiguous(), gamma.to_contiguous());
        let c = gamma.layout().shape()[0];
        let (grad_x, grad_gamma, grad_beta) = backward(
            x.storage::<f32>(),
            gamma.storage::<f32>(),
            &means,
            &rstds,
            grad.storage::<f32>(),
        );
        let [x_node, gamma_node, beta_node] = ops.parents;
        for (node, values, shape) in [
            (x_node, grad_x, shape),
            (gamma_node, grad_gamma, vec![c]),
            (beta_node, grad_beta, vec![c]),
        ] {
            if let Some(node) = node {
                grads.register::<CpuBackend>(node.id, flex(values, shape));
            }
        }
    }
}

fn autodiff_layer_norm<const D: usize>(
    x: Tensor<CpuAutodiff, D>,
    gamma: Tensor<CpuAutodiff, 1>,
    beta: Tensor<CpuAutodiff, 1>,
    eps: f64,
) -> Tensor<CpuAutodiff, D> {
    let c = x.dims()[D - 1];
    let fits = c > 0
        && gamma.dims() == [c]
        && beta.dims() == [c]
        && [x.dtype(), gamma.dtype(), beta.dtype()] == [DType::F32; 3];
    if !fits {
        return composed(x, gamma, Some(beta), eps);
    }
    let x = x.into_primitive().tensor();
    let gamma = gamma.into_primitive().tensor();
    let beta = beta.into_primitive().tensor();
    let shape = x.primitive.layout().shape().to_vec();
    let input = x.primitive.to_contiguous();
    let gamma_values = gamma.primitive.to_contiguous();
    let beta_values = beta.primitive.to_contiguous();
    let prep = LayerNormBackward
        .prepare::<NoCheckpointing>([x.node.clone(), gamma.node.clone(), beta.node.clone()])
        .compute_bound()
        .stateful();
    let (out, means, rstds) = forward(
        input.storage::<f32>(),
        gamma_values.storage::<f32>(),
        beta_values.storage::<f32>(),
        eps as f32,
    );
    let out = flex(out, shape);
    let out = match prep {
        OpsKind::Tracked(prep) => {
            let state = State {
                x: input,
                gamma: gamma_values,
                means,
                rstds,
            };
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
