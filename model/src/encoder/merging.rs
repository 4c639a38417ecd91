//! Patch merging: halves each spatial axis and doubles the width.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::ops::PadMode;

use crate::config::PatchMergingMode;
use crate::layer_norm::layer_norm;
use crate::ops::linear;

/// Offsets (d, h, w) of the eight slices the legacy merging concatenates: MONAI's `"merging"` repeats
/// 010 and 001 and never takes 011 and 110.
pub const LEGACY_OFFSETS: [[usize; 3]; 8] = [
    [0, 0, 0],
    [1, 0, 0],
    [0, 1, 0],
    [0, 0, 1],
    [1, 0, 1],
    [0, 1, 0],
    [0, 0, 1],
    [1, 1, 1],
];

/// All eight offsets in lexicographic order (MONAI `"mergingv2"`).
pub const V2_OFFSETS: [[usize; 3]; 8] = [
    [0, 0, 0],
    [0, 0, 1],
    [0, 1, 0],
    [0, 1, 1],
    [1, 0, 0],
    [1, 0, 1],
    [1, 1, 0],
    [1, 1, 1],
];

/// Patch merging settings.
#[derive(Config, Debug)]
pub struct PatchMergingConfig {
    /// Input width `C` (output is `2C`).
    pub dim: usize,
    /// Which slices are concatenated.
    #[config(default = "PatchMergingMode::Legacy")]
    pub mode: PatchMergingMode,
    /// Layer norm epsilon.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
}

/// Concatenates 2×2×2 neighbours, normalises and projects `8C → 2C` (no bias).
#[derive(Module, Debug)]
pub struct PatchMerging<B: Backend> {
    /// Norm over the `8C` concatenation.
    pub norm: LayerNorm<B>,
    /// `8C → 2C` projection.
    pub reduction: Linear<B>,
    legacy: bool,
    /// The norm's epsilon (burn's `LayerNorm` keeps its own private).
    layer_norm_eps: f64,
}

impl PatchMergingConfig {
    /// Builds the module.
    pub fn init<B: Backend>(&self, device: &B::Device) -> PatchMerging<B> {
        PatchMerging {
            norm: LayerNormConfig::new(8 * self.dim)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
            reduction: LinearConfig::new(8 * self.dim, 2 * self.dim)
                .with_bias(false)
                .init(device),
            legacy: self.mode == PatchMergingMode::Legacy,
            layer_norm_eps: self.layer_norm_eps,
        }
    }
}

impl<B: Backend> PatchMerging<B> {
    /// `[B, D, H, W, C] -> [B, ⌈D/2⌉, ⌈H/2⌉, ⌈W/2⌉, 2C]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let gathered = self.gather(x); // [B, D/2, H/2, W/2, 8C]
        linear(
            &self.reduction,
            layer_norm(&self.norm, gathered, self.layer_norm_eps),
        )
    }

    /// The normalised `8C` concatenation fed to the projection (GradNorm measures gradients of the
    /// projection, the last shared layer, from it).
    pub fn normed_input(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        layer_norm(&self.norm, self.gather(x), self.layer_norm_eps)
    }

    /// The `8C` concatenation of the 2×2×2 neighbours.
    pub fn gather(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let [_, d, h, w, _] = x.dims();
        let x = if d % 2 + h % 2 + w % 2 > 0 {
            x.pad(
                [(0, 0), (0, d % 2), (0, h % 2), (0, w % 2), (0, 0)],
                PadMode::Constant(0.0),
            )
        } else {
            x
        };
        let [b, d, h, w, c] = x.dims();
        let offsets = if self.legacy {
            LEGACY_OFFSETS
        } else {
            V2_OFFSETS
        };
        let slices = offsets
            .iter()
            .map(|&[i, j, k]| {
                // x[:, i::2, j::2, k::2, :] as a reshape: [B, D/2, 2, H/2, 2, W/2, 2, C]
                x.clone()
                    .reshape([b, d / 2, 2, h / 2, 2, w / 2, 2, c])
                    .narrow(2, i, 1)
                    .narrow(4, j, 1)
                    .narrow(6, k, 1)
                    .reshape([b, d / 2, h / 2, w / 2, c])
            })
            .collect();
        Tensor::cat(slices, 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;
    use burn::tensor::TensorData;

    #[test]
    fn legacy_merging_takes_the_reference_slices() {
        let device = Default::default();
        // value = 100·d + 10·h + w for a 2×2×2 map with one channel
        let mut v = Vec::new();
        for d in 0..2 {
            for h in 0..2 {
                for w in 0..2 {
                    v.push((100 * d + 10 * h + w) as f32);
                }
            }
        }
        let x = Tensor::<CpuBackend, 5>::from_data(TensorData::new(v, [1, 2, 2, 2, 1]), &device);
        let legacy = PatchMergingConfig::new(1).init::<CpuBackend>(&device);
        let got: Vec<f32> = legacy.gather(x.clone()).to_data().to_vec().unwrap();
        assert_eq!(got, vec![0., 100., 10., 1., 101., 10., 1., 111.]);
        let v2 = PatchMergingConfig::new(1)
            .with_mode(PatchMergingMode::V2)
            .init::<CpuBackend>(&device);
        let got: Vec<f32> = v2.gather(x).to_data().to_vec().unwrap();
        assert_eq!(got, vec![0., 1., 10., 11., 100., 101., 110., 111.]);
    }
}
