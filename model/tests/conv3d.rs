//! The tiled CPU convolution (`mtmed3d_model::conv`) against burn's own `conv3d`: outputs and the
//! gradients of input, weight and bias, over strides, paddings, dilations and kernel sizes.

use burn::tensor::module::conv3d as burn_conv3d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Distribution, Tensor, TensorData};
use mtmed3d_model::conv::{Geometry, conv3d_tensors, forward, input_gradient, weight_gradient};
use mtmed3d_model::{CpuAutodiff, CpuBackend};

struct Case {
    batch: usize,
    channels: [usize; 2],
    input: [usize; 3],
    kernel: [usize; 3],
    stride: usize,
    padding: usize,
    dilation: usize,
    bias: bool,
}

fn close(ours: TensorData, theirs: TensorData, what: &str) {
    let (a, b) = (
        ours.to_vec::<f32>().unwrap(),
        theirs.to_vec::<f32>().unwrap(),
    );
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= 2e-5 * scale,
        "{what}: largest difference {worst} (scale {scale})"
    );
}

fn check(case: &Case) {
    let device = Default::default();
    let [cin, cout] = case.channels;
    let [d, h, w] = case.input;
    let options = ConvOptions::new([case.stride; 3], [case.padding; 3], [case.dilation; 3], 1);
    let x = Tensor::<CpuAutodiff, 5>::random(
        [case.batch, cin, d, h, w],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let weight = Tensor::<CpuAutodiff, 5>::random(
        [cout, cin, case.kernel[0], case.kernel[1], case.kernel[2]],
        Distribution::Normal(0.0, 0.3),
        &device,
    );
    let bias = case
        .bias
        .then(|| Tensor::<CpuAutodiff, 1>::random([cout], Distribution::Normal(0.0, 1.0), &device));

    let run = |ours: bool| {
        let (x, weight) = (x.clone().require_grad(), weight.clone().require_grad());
        let bias = bias.clone().map(|b| b.require_grad());
        let out = if ours {
            conv3d_tensors(x.clone(), weight.clone(), bias.clone(), options.clone())
        } else {
            burn_conv3d(x.clone(), weight.clone(), bias.clone(), options.clone())
        };
        // A weighted sum, so that every output position gets a different gradient.
        let seed = Tensor::<CpuAutodiff, 5>::from_data(
            TensorData::new(
                (0..out.shape().num_elements())
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                    .collect::<Vec<_>>(),
                out.shape(),
            ),
            &device,
        );
        let grads = (out.clone() * seed).sum().backward();
        let grad_of = |t: &Tensor<CpuAutodiff, 5>| t.grad(&grads).unwrap().into_data();
        (
            out.into_data(),
            grad_of(&x),
            grad_of(&weight),
            bias.map(|b| b.grad(&grads).unwrap().into_data()),
        )
    };
    let (out, dx, dw, db) = run(true);
    let (ref_out, ref_dx, ref_dw, ref_db) = run(false);
    let label = format!(
        "in {:?}×{cin}, kernel {:?}, stride {}, padding {}, dilation {}",
        case.input, case.kernel, case.stride, case.padding, case.dilation
    );
    assert_eq!(out.shape, ref_out.shape, "{label}: output shape");
    close(out, ref_out, &format!("{label}: output"));
    close(dx, ref_dx, &format!("{label}: input gradient"));
    close(dw, ref_dw, &format!("{label}: weight gradient"));
    if let (Some(db), Some(ref_db)) = (db, ref_db) {
        close(db, ref_db, &format!("{label}: bias gradient"));
    }

    // Without autodiff: the inference path.
    let plain =
        |t: &Tensor<CpuAutodiff, 5>| Tensor::<CpuBackend, 5>::from_data(t.to_data(), &device);
    let ours = conv3d_tensors(
        plain(&x),
        plain(&weight),
        bias.as_ref()
            .map(|b| Tensor::<CpuBackend, 1>::from_data(b.to_data(), &device)),
        options.clone(),
    );
    let theirs = burn_conv3d(
        plain(&x),
        plain(&weight),
        bias.as_ref()
            .map(|b| Tensor::<CpuBackend, 1>::from_data(b.to_data(), &device)),
        options,
    );
    close(
        ours.into_data(),
        theirs.into_data(),
        &format!("{label}: inference output"),
    );
}

const fn case(
    channels: [usize; 2],
    input: [usize; 3],
    k: usize,
    stride: usize,
    padding: usize,
) -> Case {
    Case {
        batch: 1,
        channels,
        input,
        kernel: [k, k, k],
        stride,
        padding,
        dilation: 1,
        bias: true,
    }
}

#[test]
fn three_cubed_same_size_with_and_without_bias() {
    check(&case([3, 5], [7, 6, 9], 3, 1, 1));
    check(&Case {
        bias: false,
        batch: 2,
        ..case([4, 6], [5, 8, 7], 3, 1, 1)
    });
}

#[test]
fn pointwise_and_unpadded() {
    check(&Case {
        batch: 2,
        ..case([6, 4], [5, 3, 7], 1, 1, 0)
    });
    check(&case([2, 3], [6, 7, 8], 3, 1, 0));
    check(&Case {
        kernel: [1, 3, 2],
        ..case([3, 2], [4, 6, 5], 1, 1, 0)
    });
}

#[test]
fn strided_kernels_as_in_the_stem_and_the_patch_embedding() {
    check(&case([3, 4], [11, 10, 9], 7, 2, 3)); // DenseNet's stem
    check(&case([4, 6], [8, 6, 10], 2, 2, 0)); // Swin's patch embedding
    check(&case([5, 3], [9, 8, 7], 3, 2, 1)); // PANet's bottom-up path
}

#[test]
fn dilated_and_padded_wider_than_the_kernel() {
    check(&Case {
        dilation: 2,
        ..case([3, 3], [9, 8, 10], 3, 1, 2)
    });
    check(&case([2, 3], [4, 5, 3], 3, 1, 2));
    // Padding beyond the kernel's reach: the input gradient goes through the scatter.
    check(&case([2, 3], [4, 5, 3], 1, 1, 1));
}

#[test]
fn geometry_refuses_kernels_larger_than_the_padded_input() {
    let options = ConvOptions::new([1; 3], [0; 3], [1; 3], 1);
    assert_eq!(
        Geometry::new([1, 2, 4, 4, 4], [3, 2, 5, 3, 3], &options),
        None
    );
    assert_eq!(
        Geometry::new([1, 2, 4, 4, 4], [3, 3, 3, 3, 3], &options),
        None
    );
    let g = Geometry::new(
        [2, 2, 9, 8, 7],
        [3, 2, 3, 3, 3],
        &ConvOptions::new([2; 3], [1; 3], [1; 3], 1),
    )
    .unwrap();
    assert_eq!(g.output, [5, 4, 4]);

    // An empty batch: empty outputs and a zero weight gradient, not a panic.
    let empty = Geometry::new(
        [0, 2, 9, 8, 7],
        [3, 2, 3, 3, 3],
        &ConvOptions::new([2; 3], [1; 3], [1; 3], 1),
    )
    .unwrap();
    let weight = vec![0.5f32; 3 * 2 * 27];
    assert!(forward(&[], &weight, None, &empty).is_empty());
    assert!(input_gradient(&weight, &[], &empty).is_empty());
    assert_eq!(weight_gradient(&[], &[], &empty), vec![0f32; 3 * 2 * 27]);
}
