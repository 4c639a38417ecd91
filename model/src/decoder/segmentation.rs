//! SwinUNETR segmentation decoder: residual blocks on the image and every encoder output, five up blocks,
//! a 1×1 output convolution producing TC/WT/ET logits.

use crate::conv::conv3d;
use burn::module::Module;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::blocks::{ResBlock, ResBlockConfig, UpBlock, UpBlockConfig};
use crate::config::SegmentationConfig;
use crate::encoder::EncoderFeatures;

/// The decoder (MONAI `SwinUNETR` without its `swinViT`).
#[derive(Module, Debug)]
pub struct SegmentationDecoder<B: Backend> {
    /// On the image: `in → f` at full resolution.
    pub encoder1: ResBlock<B>,
    /// On `hs0`: `f → f`.
    pub encoder2: ResBlock<B>,
    /// On `hs1`: `2f → 2f`.
    pub encoder3: ResBlock<B>,
    /// On `hs2`: `4f → 4f`.
    pub encoder4: ResBlock<B>,
    /// On `hs4` (the bottleneck): `16f → 16f`.
    pub encoder10: ResBlock<B>,
    /// `16f → 8f`, skip = raw `hs3`.
    pub decoder5: UpBlock<B>,
    /// `8f → 4f`, skip = `encoder4`.
    pub decoder4: UpBlock<B>,
    /// `4f → 2f`, skip = `encoder3`.
    pub decoder3: UpBlock<B>,
    /// `2f → f`, skip = `encoder2`.
    pub decoder2: UpBlock<B>,
    /// `f → f` back to the input resolution, skip = `encoder1`.
    pub decoder1: UpBlock<B>,
    /// 1×1 convolution with bias: `f → out`.
    pub out: Conv3d<B>,
}

impl SegmentationConfig {
    /// Builds the decoder.
    pub fn init<B: Backend>(&self, device: &B::Device) -> SegmentationDecoder<B> {
        let f = self.feature_size;
        let res = |cin, cout| ResBlockConfig::new(cin, cout).init(device);
        let up = |cin, cout| UpBlockConfig::new(cin, cout).init(device);
        SegmentationDecoder {
            encoder1: res(self.in_channels, f),
            encoder2: res(f, f),
            encoder3: res(2 * f, 2 * f),
            encoder4: res(4 * f, 4 * f),
            encoder10: res(16 * f, 16 * f),
            decoder5: up(16 * f, 8 * f),
            decoder4: up(8 * f, 4 * f),
            decoder3: up(4 * f, 2 * f),
            decoder2: up(2 * f, f),
            decoder1: UpBlockConfig::new(f, f)
                .with_scale(self.patch_size)
                .init(device),
            out: Conv3dConfig::new([f, self.out_channels], [1, 1, 1]).init(device),
        }
    }
}

impl<B: Backend> SegmentationDecoder<B> {
    /// `image`: `[B, in, D, H, W]`, `features`: the encoder outputs → logits `[B, out, D, H, W]`.
    pub fn forward(&self, image: Tensor<B, 5>, features: &EncoderFeatures<B>) -> Tensor<B, 5> {
        let [hs0, hs1, hs2, hs3, hs4] = features.hidden.clone();
        let enc0 = self.encoder1.forward(image); // [B, f, D, H, W]
        let enc1 = self.encoder2.forward(hs0); // [B, f, D/2, ..]
        let enc2 = self.encoder3.forward(hs1); // [B, 2f, D/4, ..]
        let enc3 = self.encoder4.forward(hs2); // [B, 4f, D/8, ..]
        let dec4 = self.encoder10.forward(hs4); // [B, 16f, D/32, ..]
        let dec3 = self.decoder5.forward(dec4, hs3); // [B, 8f, D/16, ..]
        let dec2 = self.decoder4.forward(dec3, enc3); // [B, 4f, D/8, ..]
        let dec1 = self.decoder3.forward(dec2, enc2); // [B, 2f, D/4, ..]
        let dec0 = self.decoder2.forward(dec1, enc1); // [B, f, D/2, ..]
        let out = self.decoder1.forward(dec0, enc0); // [B, f, D, H, W]
        conv3d(&self.out, out) // [B, out, D, H, W]
    }
}
