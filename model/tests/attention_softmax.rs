//! The fused window-attention softmax against the same computation in burn tensor operations:
//! outputs and the gradients of scores and bias, with and without the shifted-window mask.

use burn::tensor::activation::softmax;
use burn::tensor::{Distribution, Tensor, TensorData};
use mtmed3d_model::attention_softmax::attention_softmax;
use mtmed3d_model::{CpuAutodiff, CpuBackend};

fn close(ours: TensorData, theirs: TensorData, what: &str) {
    let (a, b) = (
        ours.to_vec::<f32>().unwrap(),
        theirs.to_vec::<f32>().unwrap(),
    );
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    assert!(
        worst <= 1e-5 * scale.max(1.0),
        "{what}: largest difference {worst}"
    );
}

fn check(batch: usize, windows: usize, heads: usize, n: usize, masked: bool) {
    let device = Default::default();
    let scores = Tensor::<CpuAutodiff, 4>::random(
        [batch * windows, heads, n, n],
        Distribution::Normal(0.0, 2.0),
        &device,
    );
    let bias =
        Tensor::<CpuAutodiff, 3>::random([heads, n, n], Distribution::Normal(0.0, 1.0), &device);
    // A shifted-window mask: 0 or −100 per pair, different in every window.
    let mask = masked.then(|| {
        let values: Vec<f32> = (0..windows * n * n)
            .map(|i| {
                if (i * 7 + i / (n * n)).is_multiple_of(5) {
                    -100.0
                } else {
                    0.0
                }
            })
            .collect();
        Tensor::<CpuAutodiff, 3>::from_data(TensorData::new(values, [windows, n, n]), &device)
    });
    let seed = Tensor::<CpuAutodiff, 4>::random(
        [batch * windows, heads, n, n],
        Distribution::Normal(0.0, 1.0),
        &device,
    );

    let run = |fused: bool| {
        let (scores, bias) = (scores.clone().require_grad(), bias.clone().require_grad());
        let out = if fused {
            attention_softmax(scores.clone(), bias.clone(), mask.clone())
        } else {
            let mut z = scores.clone() + bias.clone().unsqueeze_dim::<4>(0);
            if let Some(mask) = mask.clone() {
                z = (z.reshape([batch, windows, heads, n, n])
                    + mask.unsqueeze_dim::<4>(1).unsqueeze_dim::<5>(0))
                .reshape([batch * windows, heads, n, n]);
            }
            softmax(z, 3)
        };
        let grads = (out.clone() * seed.clone()).sum().backward();
        (
            out.into_data(),
            scores.grad(&grads).unwrap().into_data(),
            bias.grad(&grads).unwrap().into_data(),
        )
    };
    let label = format!("{batch}×{windows} windows, {heads} heads, N = {n}, mask {masked}");
    let (out, d_scores, d_bias) = run(true);
    let (ref_out, ref_scores, ref_bias) = run(false);
    assert_eq!(
        out.shape.as_slice(),
        [batch * windows, heads, n, n],
        "{label}"
    );
    close(out.clone(), ref_out, &format!("{label}: output"));
    close(d_scores, ref_scores, &format!("{label}: scores gradient"));
    close(d_bias, ref_bias, &format!("{label}: bias gradient"));
    // Every row is a distribution.
    let rows = out.to_vec::<f32>().unwrap();
    for row in rows.chunks(n) {
        assert!(
            (row.iter().sum::<f32>() - 1.0).abs() < 1e-5,
            "{label}: a row sums to {}",
            row.iter().sum::<f32>()
        );
    }

    // Without autodiff.
    let plain4 =
        |t: &Tensor<CpuAutodiff, 4>| Tensor::<CpuBackend, 4>::from_data(t.to_data(), &device);
    let plain3 =
        |t: &Tensor<CpuAutodiff, 3>| Tensor::<CpuBackend, 3>::from_data(t.to_data(), &device);
    let inference = attention_softmax(plain4(&scores), plain3(&bias), mask.as_ref().map(plain3));
    close(
        inference.into_data(),
        out,
        &format!("{label}: inference output"),
    );
}

#[test]
fn fused_softmax_equals_the_tensor_operations() {
    check(1, 1, 2, 5, false);
    check(2, 3, 3, 8, false);
    check(2, 4, 3, 8, true);
    check(1, 6, 2, 27, true);
}
