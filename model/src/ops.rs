//! Tensor operations burn 0.21 lacks in 3D, written from the 2D and elementwise primitives.

use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::module::max_pool2d;

/// A linear layer over the last axis of `x`, applied to `x` flattened to one row per token.
///
/// burn 0.21 differentiates a linear layer on a tensor of more than two axes as a batch of matrix
/// products over the leading axes: the weight gradient of a Swin MLP on `[1, 48, 48, 48, C]`
/// tokens became 2,304 small products into a `[2304, C, 4C]` buffer, summed afterwards one axis
/// at a time, and the bias gradient three reductions. On rows it is one matrix product and one
/// reduction. A profile of the `reference` encoder's backward pass put the batched form at more
/// than a third of it.
pub fn linear<B: Backend, const D: usize>(layer: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let mut dims = x.dims();
    let rows = dims[..D - 1].iter().product();
    let y = layer.forward(x.reshape([rows, dims[D - 1]]));
    dims[D - 1] = y.dims()[1];
    y.reshape(dims)
}

/// Layer norm over the channel axis of a `[B, C, D, H, W]` tensor, without affine parameters
/// (MONAI's `proj_out` of the Swin stage outputs).
pub fn channel_layer_norm<B: Backend>(x: Tensor<B, 5>, eps: f64) -> Tensor<B, 5> {
    let (var, mean) = x.clone().var_mean_bias(1); // [B, 1, D, H, W]
    (x - mean).div(var.add_scalar(eps).sqrt())
}

/// Layer norm over the last axis without affine parameters.
pub fn last_axis_layer_norm<B: Backend, const D: usize>(x: Tensor<B, D>, eps: f64) -> Tensor<B, D> {
    let (var, mean) = x.clone().var_mean_bias(D - 1);
    (x - mean).div(var.add_scalar(eps).sqrt())
}

/// 3D max pooling with a cubic kernel, stride and padding (padding never wins the max).
///
/// Max pooling is separable: the max over a k³ window is the max over depth of the maxima over the
/// k² (height, width) windows, so it is two 2D poolings.
pub fn max_pool3d<B: Backend>(
    x: Tensor<B, 5>,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Tensor<B, 5> {
    let [b, c, d, h, w] = x.dims();
    let hw = max_pool2d(
        x.reshape([b * c * d, 1, h, w]),
        [kernel, kernel],
        [stride, stride],
        [padding, padding],
        [1, 1],
        false,
    ); // [B·C·D, 1, H', W']
    let [_, _, ho, wo] = hw.dims();
    let dd = max_pool2d(
        hw.reshape([b * c, 1, d, ho * wo]),
        [kernel, 1],
        [stride, 1],
        [padding, 0],
        [1, 1],
        false,
    ); // [B·C, 1, D', H'·W']
    let do_ = dd.dims()[2];
    dd.reshape([b, c, do_, ho, wo])
}

/// 2×2×2 average pooling with stride 2 (odd trailing voxels are dropped, as PyTorch's floor mode does).
pub fn avg_pool3d_2<B: Backend>(x: Tensor<B, 5>) -> Tensor<B, 5> {
    let [b, c, d, h, w] = x.dims();
    let (d2, h2, w2) = (d / 2, h / 2, w / 2);
    let x = if d % 2 + h % 2 + w % 2 > 0 {
        x.slice([0..b, 0..c, 0..2 * d2, 0..2 * h2, 0..2 * w2])
    } else {
        x
    };
    x.reshape([b, c, d2, 2, h2, 2, w2, 2])
        .mean_dims(&[3, 5, 7])
        .reshape([b, c, d2, h2, w2])
}

/// Mean over the three spatial axes: `[B, C, D, H, W] -> [B, C]`.
pub fn global_avg_pool3d<B: Backend>(x: Tensor<B, 5>) -> Tensor<B, 2> {
    let [b, c, ..] = x.dims();
    x.mean_dims(&[2, 3, 4]).reshape([b, c])
}

/// Global average and global max of each channel, concatenated: `[B, C, D, H, W]` → `[B, 2C]`
/// (averages first).
pub fn global_avg_max_pool3d<B: Backend>(x: Tensor<B, 5>) -> Tensor<B, 2> {
    let [b, c, d, h, w] = x.dims();
    let max = x
        .clone()
        .reshape([b, c, d * h * w])
        .max_dim(2)
        .reshape([b, c]);
    Tensor::cat(vec![global_avg_pool3d(x), max], 1)
}

/// Nearest-neighbour upsampling of a `[B, C, D, H, W]` tensor to `size` (each axis at most doubled).
pub fn upsample_nearest_to<B: Backend>(x: Tensor<B, 5>, size: [usize; 3]) -> Tensor<B, 5> {
    let [b, c, d, h, w] = x.dims();
    assert!(
        size[0] <= 2 * d && size[1] <= 2 * h && size[2] <= 2 * w,
        "upsampling {:?} to {size:?} more than doubles an axis",
        [d, h, w]
    );
    let up = x
        .reshape([b, c, d, 1, h, 1, w, 1])
        .expand([b, c, d, 2, h, 2, w, 2])
        .reshape([b, c, 2 * d, 2 * h, 2 * w]);
    if size == [2 * d, 2 * h, 2 * w] {
        up
    } else {
        up.slice([0..b, 0..c, 0..size[0], 0..size[1], 0..size[2]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;
    use burn::tensor::{TensorData, Tolerance};

    type B = CpuBackend;

    fn ramp(shape: [usize; 5]) -> Tensor<B, 5> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }

    #[test]
    fn average_and_max_pooling_per_channel() {
        let x = ramp([2, 3, 2, 3, 4]);
        let values = x.to_data().to_vec::<f32>().unwrap();
        let pooled = global_avg_max_pool3d(x).to_data().to_vec::<f32>().unwrap();
        assert_eq!(pooled.len(), 2 * 6);
        for b in 0..2 {
            for c in 0..3 {
                let block = &values[(b * 3 + c) * 24..(b * 3 + c + 1) * 24];
                let mean = block.iter().sum::<f32>() / 24.0;
                let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                assert!((pooled[b * 6 + c] - mean).abs() < 1e-5);
                assert_eq!(pooled[b * 6 + 3 + c], max);
            }
        }
    }

    /// Direct 3D max pool for comparison.
    fn naive_max_pool(x: &Tensor<B, 5>, k: usize, s: usize, p: usize) -> Vec<f32> {
        let [b, c, d, h, w] = x.dims();
        let v = x.to_data().to_vec::<f32>().unwrap();
        let out = |n: usize| (n + 2 * p - k) / s + 1;
        let (od, oh, ow) = (out(d), out(h), out(w));
        let mut res = Vec::new();
        for bc in 0..b * c {
            for i in 0..od {
                for j in 0..oh {
                    for l in 0..ow {
                        let mut m = f32::NEG_INFINITY;
                        for a in 0..k {
                            for bb in 0..k {
                                for cc in 0..k {
                                    let (z, y, xx) = (
                                        (i * s + a) as isize - p as isize,
                                        (j * s + bb) as isize - p as isize,
                                        (l * s + cc) as isize - p as isize,
                                    );
                                    if z >= 0
                                        && y >= 0
                                        && xx >= 0
                                        && (z as usize) < d
                                        && (y as usize) < h
                                        && (xx as usize) < w
                                    {
                                        let idx = bc * d * h * w
                                            + z as usize * h * w
                                            + y as usize * w
                                            + xx as usize;
                                        m = m.max(v[idx]);
                                    }
                                }
                            }
                        }
                        res.push(m);
                    }
                }
            }
        }
        res
    }

    #[test]
    fn separable_max_pool_equals_direct_pool() {
        let x = ramp([1, 2, 7, 6, 5]);
        let got = max_pool3d(x.clone(), 3, 2, 1);
        assert_eq!(got.dims(), [1, 2, 4, 3, 3]);
        assert_eq!(
            got.to_data().to_vec::<f32>().unwrap(),
            naive_max_pool(&x, 3, 2, 1)
        );
    }

    #[test]
    fn average_pool_halves_and_averages() {
        let x = ramp([1, 1, 4, 4, 5]);
        let got = avg_pool3d_2(x.clone());
        assert_eq!(got.dims(), [1, 1, 2, 2, 2]);
        let v = x.to_data().to_vec::<f32>().unwrap();
        let mut first = 0.0;
        for a in 0..2 {
            for b in 0..2 {
                for c in 0..2 {
                    first += v[a * 20 + b * 5 + c];
                }
            }
        }
        let got = got.to_data().to_vec::<f32>().unwrap();
        assert!((got[0] - first / 8.0).abs() < 1e-5);
    }

    #[test]
    fn channel_norm_has_zero_mean_unit_variance() {
        let x = ramp([2, 5, 2, 3, 2]);
        let y = channel_layer_norm(x, 0.0);
        let mean = y.clone().mean_dim(1);
        let var = y.var_bias(1);
        mean.into_data().assert_approx_eq::<f32>(
            &TensorData::zeros::<f32, _>([2, 1, 2, 3, 2]),
            Tolerance::absolute(1e-5),
        );
        var.into_data().assert_approx_eq::<f32>(
            &TensorData::ones::<f32, _>([2, 1, 2, 3, 2]),
            Tolerance::absolute(1e-4),
        );
    }

    #[test]
    fn nearest_upsampling_repeats_voxels() {
        let x = ramp([1, 1, 2, 2, 2]);
        let up = upsample_nearest_to(x.clone(), [4, 3, 4]);
        assert_eq!(up.dims(), [1, 1, 4, 3, 4]);
        let v = x.to_data().to_vec::<f32>().unwrap();
        let u = up.to_data().to_vec::<f32>().unwrap();
        // voxel (3, 2, 1) of the output comes from (1, 1, 0) of the input
        assert_eq!(u[3 * 12 + 2 * 4 + 1], v[4 + 2]);
    }
}
