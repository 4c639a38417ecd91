//! Residual and up-sampling blocks of the segmentation decoder (MONAI `UnetResBlock`, `UnetrUpBlock`).

use crate::conv::conv3d;
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv3d, Conv3dConfig, ConvTranspose3d, ConvTranspose3dConfig};
use burn::nn::{InstanceNorm, InstanceNormConfig, PaddingConfig3d};
use burn::tensor::Tensor;
use burn::tensor::activation::leaky_relu;
use burn::tensor::backend::Backend;

const LEAKY_SLOPE: f64 = 0.01;

/// Residual block settings.
#[derive(Config, Debug)]
pub struct ResBlockConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
}

/// conv3³ → IN → LeakyReLU → conv3³ → IN, plus a shortcut (1×1 conv + IN when the width changes), then
/// LeakyReLU. All convolutions are bias-free; the instance norms have no affine parameters.
#[derive(Module, Debug)]
pub struct ResBlock<B: Backend> {
    /// First 3³ convolution.
    pub conv1: Conv3d<B>,
    /// Second 3³ convolution.
    pub conv2: Conv3d<B>,
    /// Norm after `conv1`.
    pub norm1: InstanceNorm<B>,
    /// Norm after `conv2`.
    pub norm2: InstanceNorm<B>,
    /// 1×1 projection of the shortcut when the width changes.
    pub conv3: Option<Conv3d<B>>,
    /// Norm of the projected shortcut.
    pub norm3: Option<InstanceNorm<B>>,
}

fn conv3<B: Backend>(cin: usize, cout: usize, device: &B::Device) -> Conv3d<B> {
    Conv3dConfig::new([cin, cout], [3, 3, 3])
        .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
        .with_bias(false)
        .init(device)
}

fn instance_norm<B: Backend>(c: usize, device: &B::Device) -> InstanceNorm<B> {
    InstanceNormConfig::new(c).with_affine(false).init(device)
}

impl ResBlockConfig {
    /// Builds the block.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ResBlock<B> {
        let (cin, cout) = (self.in_channels, self.out_channels);
        let project = cin != cout;
        ResBlock {
            conv1: conv3(cin, cout, device),
            conv2: conv3(cout, cout, device),
            norm1: instance_norm(cout, device),
            norm2: instance_norm(cout, device),
            conv3: project.then(|| {
                Conv3dConfig::new([cin, cout], [1, 1, 1])
                    .with_bias(false)
                    .init(device)
            }),
            norm3: project.then(|| instance_norm(cout, device)),
        }
    }
}

impl<B: Backend> ResBlock<B> {
    /// `[B, in, D, H, W] -> [B, out, D, H, W]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let residual = match (&self.conv3, &self.norm3) {
            (Some(conv), Some(norm)) => norm.forward(conv3d(conv, x.clone())),
            _ => x.clone(),
        };
        let y = self.norm1.forward(conv3d(&self.conv1, x));
        let y = leaky_relu(y, LEAKY_SLOPE);
        let y = self.norm2.forward(conv3d(&self.conv2, y));
        leaky_relu(y + residual, LEAKY_SLOPE)
    }
}

/// Up block settings.
#[derive(Config, Debug)]
pub struct UpBlockConfig {
    /// Channels of the deeper map.
    pub in_channels: usize,
    /// Channels of the output (and of the skip).
    pub out_channels: usize,
    /// Upsampling factor (kernel = stride of the transposed convolution).
    #[config(default = 2)]
    pub scale: usize,
}

/// Transposed convolution ×2, concatenation with the skip, residual block `2·out → out`.
#[derive(Module, Debug)]
pub struct UpBlock<B: Backend> {
    /// Bias-free transposed convolution, kernel = stride = scale.
    pub transp_conv: ConvTranspose3d<B>,
    /// Residual block after the concatenation.
    pub conv_block: ResBlock<B>,
}

impl UpBlockConfig {
    /// Builds the block.
    pub fn init<B: Backend>(&self, device: &B::Device) -> UpBlock<B> {
        let s = self.scale;
        UpBlock {
            transp_conv: ConvTranspose3dConfig::new(
                [self.in_channels, self.out_channels],
                [s, s, s],
            )
            .with_stride([s, s, s])
            .with_bias(false)
            .init(device),
            conv_block: ResBlockConfig::new(2 * self.out_channels, self.out_channels).init(device),
        }
    }
}

impl<B: Backend> UpBlock<B> {
    /// `x`: `[B, in, D, H, W]`, `skip`: `[B, out, sD, sH, sW]` → `[B, out, sD, sH, sW]`.
    pub fn forward(&self, x: Tensor<B, 5>, skip: Tensor<B, 5>) -> Tensor<B, 5> {
        let up = self.transp_conv.forward(x); // [B, out, sD, sH, sW]
        let cat = Tensor::cat(vec![up, skip], 1); // [B, 2·out, ..]
        self.conv_block.forward(cat)
    }
}
