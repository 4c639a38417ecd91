//! RetinaNet classification and box-regression heads, shared across pyramid levels.

use crate::conv::conv3d;
use burn::module::Module;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Initializer, PaddingConfig3d};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;

/// A stack of conv3³ + GroupNorm + ReLU followed by a 3³ prediction convolution.
#[derive(Module, Debug)]
pub struct Head<B: Backend> {
    /// Tower convolutions.
    pub convs: Vec<Conv3d<B>>,
    /// Tower norms.
    pub norms: Vec<GroupNorm<B>>,
    /// Prediction convolution (`A·outputs` channels).
    pub predict: Conv3d<B>,
    outputs_per_anchor: usize,
}

fn conv<B: Backend>(cin: usize, cout: usize, bias: f64, device: &B::Device) -> Conv3d<B> {
    let mut conv = Conv3dConfig::new([cin, cout], [3, 3, 3])
        .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: 0.01,
        })
        .init(device);
    conv.bias = Some(Initializer::Constant { value: bias }.init([cout], device));
    conv
}

impl<B: Backend> Head<B> {
    /// A head of `convs` tower layers predicting `outputs_per_anchor` values for each of `anchors` anchors.
    pub fn new(
        channels: usize,
        convs: usize,
        groups: usize,
        anchors: usize,
        outputs_per_anchor: usize,
        prediction_bias: f64,
        device: &B::Device,
    ) -> Self {
        Self {
            convs: (0..convs)
                .map(|_| conv(channels, channels, 0.0, device))
                .collect(),
            norms: (0..convs)
                .map(|_| GroupNormConfig::new(groups, channels).init(device))
                .collect(),
            predict: conv(
                channels,
                anchors * outputs_per_anchor,
                prediction_bias,
                device,
            ),
            outputs_per_anchor,
        }
    }

    /// `[B, F, D, H, W]` → `[B, D·H·W·A, outputs]`, location-major and anchor-minor (the anchor order).
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 3> {
        let mut x = x;
        for (conv, norm) in self.convs.iter().zip(&self.norms) {
            x = relu(norm.forward(conv3d(conv, x)));
        }
        let y = conv3d(&self.predict, x); // [B, A·K, D, H, W]
        let [b, ak, d, h, w] = y.dims();
        let k = self.outputs_per_anchor;
        y.reshape([b, ak / k, k, d, h, w])
            .permute([0, 3, 4, 5, 1, 2]) // [B, D, H, W, A, K]
            .reshape([b, d * h * w * (ak / k), k])
    }
}
