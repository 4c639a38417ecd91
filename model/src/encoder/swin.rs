//! The shared 3D Swin Transformer encoder (MONAI 1.3.0 `SwinTransformer`, as the reference uses it).

use crate::conv::conv3d;
use burn::module::Module;
use burn::nn::PaddingConfig3d;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::block::{SwinBlock, SwinBlockConfig};
use super::merging::{PatchMerging, PatchMergingConfig};
use super::window::{effective_window, padded_dims, shifted_window_mask};
use crate::config::{RelativeBiasIndex, SwinConfig, stage_widths};
use crate::ops::channel_layer_norm;

/// One stage: Swin blocks alternating W-MSA and SW-MSA, then a patch merging.
#[derive(Module, Debug)]
pub struct SwinStage<B: Backend> {
    /// Blocks; odd ones shift their windows by half a window.
    pub blocks: Vec<SwinBlock<B>>,
    /// Downsampling at the end of the stage.
    pub merging: PatchMerging<B>,
    window_size: usize,
}

impl<B: Backend> SwinStage<B> {
    /// Runs the blocks on `[B, C, D, H, W]` and returns the map before merging, channels last.
    pub fn blocks_forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let [_, _, d, h, w] = x.dims();
        let mut x = x.permute([0, 2, 3, 4, 1]); // [B, D, H, W, C]
        let (ws, ss) = effective_window([d, h, w], self.window_size, self.window_size / 2);
        let mask = ss
            .iter()
            .any(|&s| s > 0)
            .then(|| shifted_window_mask::<B>(padded_dims([d, h, w], ws), ws, ss, &x.device()));
        for block in &self.blocks {
            let block_mask = if block.shift_size() > 0 {
                mask.clone()
            } else {
                None
            };
            x = block.forward(x, block_mask);
        }
        x
    }

    /// `[B, C, D, H, W] -> [B, 2C, D/2, H/2, W/2]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let x = self.blocks_forward(x);
        self.merging.forward(x).permute([0, 4, 1, 2, 3])
    }
}

/// The encoder: patch embedding and four stages.
#[derive(Module, Debug)]
pub struct SwinEncoder<B: Backend> {
    /// Strided convolution `in → embed` with kernel = stride = patch size.
    pub patch_embed: Conv3d<B>,
    /// The four stages.
    pub stages: Vec<SwinStage<B>>,
    normalize: bool,
    eps: f64,
}

/// The five encoder outputs (`hs0..hs4`), channels first, normalised when the config asks for it.
#[derive(Debug, Clone)]
pub struct EncoderFeatures<B: Backend> {
    /// `embed·2^i` channels at `input / (patch·2^i)`.
    pub hidden: [Tensor<B, 5>; 5],
}

impl SwinConfig {
    /// Builds the encoder.
    pub fn init<B: Backend>(&self, device: &B::Device) -> SwinEncoder<B> {
        let widths = stage_widths(self.embed_dim);
        let patch = [self.patch_size; 3];
        let stages = (0..4)
            .map(|i| SwinStage {
                blocks: (0..self.depths[i])
                    .map(|j| {
                        SwinBlockConfig::new(
                            widths[i],
                            self.num_heads[i],
                            self.window_size,
                            if j % 2 == 0 { 0 } else { self.window_size / 2 },
                        )
                        .with_mlp_ratio(self.mlp_ratio)
                        .with_qkv_bias(self.qkv_bias)
                        .with_legacy_bias_index(
                            self.relative_bias_index == RelativeBiasIndex::SlicedLegacy,
                        )
                        .with_layer_norm_eps(self.layer_norm_eps)
                        .init(device)
                    })
                    .collect(),
                merging: PatchMergingConfig::new(widths[i])
                    .with_mode(self.merging)
                    .with_layer_norm_eps(self.layer_norm_eps)
                    .init(device),
                window_size: self.window_size,
            })
            .collect();
        SwinEncoder {
            patch_embed: Conv3dConfig::new([self.in_channels, self.embed_dim], patch)
                .with_stride(patch)
                .with_padding(PaddingConfig3d::Valid)
                .init(device),
            stages,
            normalize: self.normalize,
            eps: self.layer_norm_eps,
        }
    }
}

impl<B: Backend> SwinEncoder<B> {
    /// `[B, in, D, H, W]` → five feature maps (see [`EncoderFeatures`]).
    pub fn forward(&self, x: Tensor<B, 5>) -> EncoderFeatures<B> {
        let x0 = conv3d(&self.patch_embed, x); // [B, C, D/2, H/2, W/2]
        let x1 = self.stages[0].forward(x0.clone()); // [B, 2C, D/4, ..]
        let x2 = self.stages[1].forward(x1.clone()); // [B, 4C, D/8, ..]
        let x3 = self.stages[2].forward(x2.clone()); // [B, 8C, D/16, ..]
        let x4 = self.stages[3].forward(x3.clone()); // [B, 16C, D/32, ..]
        EncoderFeatures {
            hidden: [x0, x1, x2, x3, x4].map(|x| self.project_out(x)),
        }
    }

    /// Forward up to the input of the last shared layer (the stage-4 merging projection): the first four
    /// outputs and the normalised `8C` concatenation `u`, channels last, with `hs4 = project_out(u · W)`.
    pub fn forward_until_last_layer(&self, x: Tensor<B, 5>) -> ([Tensor<B, 5>; 4], Tensor<B, 5>) {
        let x0 = conv3d(&self.patch_embed, x);
        let x1 = self.stages[0].forward(x0.clone());
        let x2 = self.stages[1].forward(x1.clone());
        let x3 = self.stages[2].forward(x2.clone());
        let last = &self.stages[3];
        let u = last.merging.normed_input(last.blocks_forward(x3.clone()));
        ([x0, x1, x2, x3].map(|x| self.project_out(x)), u)
    }

    /// The last shared layer applied to `u` (channels last) and projected out: `hs4`, channels first.
    pub fn last_layer(&self, u: Tensor<B, 5>) -> Tensor<B, 5> {
        let x4 = self.stages[3]
            .merging
            .reduction
            .forward(u)
            .permute([0, 4, 1, 2, 3]);
        self.project_out(x4)
    }

    /// Non-affine channel layer norm of a stage output (identity when `normalize` is off).
    pub fn project_out(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        if self.normalize {
            channel_layer_norm(x, self.eps)
        } else {
            x
        }
    }
}
