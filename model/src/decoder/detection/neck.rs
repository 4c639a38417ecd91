//! PANet neck: an FPN top-down path followed by a bottom-up path of strided convolutions
//! (paper Fig. 2 (b)+(c); Liu et al. 2018), every convolution with its own weights.
//!
//! The reference's "PANet" downsamples by taking every other voxel and re-applies the FPN's output
//! convolutions; here the bottom-up path has its own stride-2 convolutions and output convolutions.

use crate::conv::conv3d;
use burn::module::Module;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{Initializer, PaddingConfig3d};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;

use crate::ops::upsample_nearest_to;

/// The neck: lateral 1×1, FPN 3³ outputs, bottom-up stride-2 3³ and PAN 3³ outputs.
#[derive(Module, Debug)]
pub struct PanNeck<B: Backend> {
    /// Lateral 1×1 convolutions `C_i → F`.
    pub lateral: Vec<Conv3d<B>>,
    /// FPN output convolutions producing `P_i`.
    pub fpn_out: Vec<Conv3d<B>>,
    /// Stride-2 convolutions `N_i → size of P_{i+1}`.
    pub downsample: Vec<Conv3d<B>>,
    /// PAN output convolutions producing `N_{i+1}`.
    pub pan_out: Vec<Conv3d<B>>,
}

/// A convolution initialised like torchvision's FPN: Kaiming-uniform with `a = 1`, zero bias.
fn conv<B: Backend>(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    device: &B::Device,
) -> Conv3d<B> {
    let mut conv = Conv3dConfig::new([cin, cout], [k, k, k])
        .with_stride([stride; 3])
        .with_padding(PaddingConfig3d::Explicit(k / 2, k / 2, k / 2))
        .with_initializer(Initializer::KaimingUniform {
            gain: 1.0,
            fan_out_only: false,
        })
        .init(device);
    conv.bias = Some(Initializer::Zeros.init([cout], device));
    conv
}

impl<B: Backend> PanNeck<B> {
    /// Builds a neck over levels of widths `in_channels`, all mapped to `channels`.
    pub fn new(in_channels: &[usize], channels: usize, device: &B::Device) -> Self {
        let levels = in_channels.len();
        Self {
            lateral: in_channels
                .iter()
                .map(|&c| conv(c, channels, 1, 1, device))
                .collect(),
            fpn_out: (0..levels)
                .map(|_| conv(channels, channels, 3, 1, device))
                .collect(),
            downsample: (1..levels)
                .map(|_| conv(channels, channels, 3, 2, device))
                .collect(),
            pan_out: (1..levels)
                .map(|_| conv(channels, channels, 3, 1, device))
                .collect(),
        }
    }

    /// Feature maps from fine to coarse → neck outputs `N_i` of `F` channels at the same sizes.
    pub fn forward(&self, features: Vec<Tensor<B, 5>>) -> Vec<Tensor<B, 5>> {
        let levels = features.len();
        let laterals: Vec<_> = features
            .into_iter()
            .zip(&self.lateral)
            .map(|(f, conv)| conv3d(conv, f)) // [B, F, size_i]
            .collect();

        // top-down: inner_i = lateral_i + up(inner_{i+1}); P_i = conv3³(inner_i)
        let mut inner = laterals[levels - 1].clone();
        let mut p = vec![conv3d(&self.fpn_out[levels - 1], inner.clone())];
        for i in (0..levels - 1).rev() {
            let [_, _, d, h, w] = laterals[i].dims();
            inner = laterals[i].clone() + upsample_nearest_to(inner, [d, h, w]);
            p.push(conv3d(&self.fpn_out[i], inner.clone()));
        }
        p.reverse(); // fine to coarse

        // bottom-up: N_0 = P_0; N_{i+1} = ReLU(conv3³(P_{i+1} + ReLU(conv3³/2(N_i))))
        let mut n = vec![p[0].clone()];
        for i in 0..levels - 1 {
            let down = relu(conv3d(&self.downsample[i], n[i].clone())); // [B, F, size_{i+1}]
            n.push(relu(conv3d(&self.pan_out[i], p[i + 1].clone() + down)));
        }
        n
    }
}
