//! The fused window attention against the same computation in burn tensor operations: outputs
//! and the gradients of the projection and of the bias, with and without the shifted-window mask,
//! with and without autodiff.

mod common;

use burn::tensor::{Distribution, Tensor, TensorData};
use common::assert_close;
use mtmed3d_model::window_attention::{composed, window_attention};
use mtmed3d_model::{CpuAutodiff, CpuBackend};

fn check(batch: usize, windows: usize, heads: usize, head_dim: usize, n: usize, masked: bool) {
    let device = Default::default();
    let (bw, c) = (batch * windows, heads * head_dim);
    let qkv =
        Tensor::<CpuAutodiff, 3>::random([bw, n, 3 * c], Distribution::Normal(0.0, 1.0), &device);
    let bias =
        Tensor::<CpuAutodiff, 3>::random([heads, n, n], Distribution::Normal(0.0, 1.0), &device);
    // A shifted-window mask: 0 or −100 per pair, different in every window, never a whole row.
    let mask = masked.then(|| {
        let values: Vec<f32> = (0..windows * n * n)
            .map(|i| {
                let (row, col) = ((i / n) % n, i % n);
                if row != col && (i * 7 + i / (n * n)).is_multiple_of(5) {
                    -100.0
                } else {
                    0.0
                }
            })
            .collect();
        Tensor::<CpuAutodiff, 3>::from_data(TensorData::new(values, [windows, n, n]), &device)
    });
    let seed =
        Tensor::<CpuAutodiff, 3>::random([bw, n, c], Distribution::Normal(0.0, 1.0), &device);
    let scale = (head_dim as f32).powf(-0.5);

    let run = |fused: bool| {
        let (qkv, bias) = (qkv.clone().require_grad(), bias.clone().require_grad());
        let out = if fused {
            window_attention(qkv.clone(), bias.clone(), mask.clone(), heads, scale)
        } else {
            composed(qkv.clone(), bias.clone(), mask.clone(), heads, scale)
        };
        let grads = (out.clone() * seed.clone()).sum().backward();
        (
            out.into_data(),
            qkv.grad(&grads).unwrap().into_data(),
            bias.grad(&grads).unwrap().into_data(),
        )
    };
    let label =
        format!("{batch}×{windows} windows, {heads} heads of {head_dim}, N = {n}, mask {masked}");
    let (out, d_qkv, d_bias) = run(true);
    let (ref_out, ref_qkv, ref_bias) = run(false);
    assert_eq!(out.shape.as_slice(), [bw, n, c], "{label}");
    assert_close(&out, &ref_out, 1e-5, &format!("{label}: output"));
    assert_close(
        &d_qkv,
        &ref_qkv,
        1e-4,
        &format!("{label}: projection gradient"),
    );
    assert_close(&d_bias, &ref_bias, 1e-4, &format!("{label}: bias gradient"));
    // The gradients are not all zero: the check compares something.
    assert!(
        d_qkv
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .any(|v| v.abs() > 1e-3),
        "{label}"
    );
    assert!(
        d_bias
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .any(|v| v.abs() > 1e-3),
        "{label}"
    );

    // Without autodiff (inference).
    let plain =
        |t: &Tensor<CpuAutodiff, 3>| Tensor::<CpuBackend, 3>::from_data(t.to_data(), &device);
    let inference = window_attention(
        plain(&qkv),
        plain(&bias),
        mask.as_ref().map(plain),
        heads,
        scale,
    );
    assert_close(
        &inference.into_data(),
        &out,
        1e-6,
        &format!("{label}: inference output"),
    );
}

#[test]
fn fused_window_attention_equals_the_tensor_operations() {
    check(1, 1, 1, 4, 5, false);
    check(2, 3, 3, 4, 8, false);
    check(2, 4, 3, 16, 27, true);
    check(1, 9, 2, 8, 64, true);
}

#[test]
fn the_bias_gradient_does_not_depend_on_the_thread_count() {
    // More windows than bias groups, so that workers sum disjoint groups.
    let device = Default::default();
    let (bw, heads, n, c) = (20, 2, 27, 16);
    let qkv =
        Tensor::<CpuAutodiff, 3>::random([bw, n, 3 * c], Distribution::Normal(0.0, 1.0), &device);
    let bias =
        Tensor::<CpuAutodiff, 3>::random([heads, n, n], Distribution::Normal(0.0, 1.0), &device);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let bias = bias.clone().require_grad();
            let out = window_attention(qkv.clone(), bias.clone(), None, heads, 0.25);
            let grads = out.powf_scalar(2.0).sum().backward();
            bias.grad(&grads)
                .unwrap()
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        })
    };
    assert_eq!(run(1), run(3));
}
