//! One Swin Transformer block: (shifted) window attention and an MLP, each behind a layer norm and a
//! residual connection (paper eqs. 1–4).

use burn::config::Config;
use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use burn::tensor::ops::PadMode;

use super::attention::{WindowAttention, WindowAttentionConfig};
use super::window::{effective_window, window_partition, window_reverse};
use crate::layer_norm::layer_norm;
use crate::ops::linear;

/// Swin block settings.
#[derive(Config, Debug)]
pub struct SwinBlockConfig {
    /// Token width.
    pub dim: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Configured cubic window edge.
    pub window_size: usize,
    /// Cyclic shift (0 for W-MSA, `window/2` for SW-MSA), before clipping to the map.
    pub shift_size: usize,
    /// MLP hidden width relative to `dim`.
    #[config(default = 4.0)]
    pub mlp_ratio: f64,
    /// Bias on the qkv projection.
    #[config(default = true)]
    pub qkv_bias: bool,
    /// Reference indexing of the bias table for clipped windows.
    #[config(default = true)]
    pub legacy_bias_index: bool,
    /// Layer norm epsilon.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
}

/// Two-layer perceptron with exact GELU.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `dim → hidden`.
    pub linear1: Linear<B>,
    /// `hidden → dim`.
    pub linear2: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    /// `[.., dim] -> [.., dim]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        linear(&self.linear2, gelu(linear(&self.linear1, x)))
    }
}

/// A Swin block on channels-last maps `[B, D, H, W, C]`.
#[derive(Module, Debug)]
pub struct SwinBlock<B: Backend> {
    /// Norm before attention.
    pub norm1: LayerNorm<B>,
    /// Window attention.
    pub attn: WindowAttention<B>,
    /// Norm before the MLP.
    pub norm2: LayerNorm<B>,
    /// Feed-forward network.
    pub mlp: Mlp<B>,
    window_size: usize,
    shift_size: usize,
    /// The norms' epsilon (burn's `LayerNorm` keeps its own private).
    layer_norm_eps: f64,
}

impl SwinBlockConfig {
    /// Builds the block.
    pub fn init<B: Backend>(&self, device: &B::Device) -> SwinBlock<B> {
        let hidden = (self.dim as f64 * self.mlp_ratio) as usize;
        SwinBlock {
            norm1: LayerNormConfig::new(self.dim)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
            attn: WindowAttentionConfig::new(self.dim, self.num_heads, self.window_size)
                .with_qkv_bias(self.qkv_bias)
                .with_legacy_bias_index(self.legacy_bias_index)
                .init(device),
            norm2: LayerNormConfig::new(self.dim)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
            mlp: Mlp {
                linear1: LinearConfig::new(self.dim, hidden).init(device),
                linear2: LinearConfig::new(hidden, self.dim).init(device),
            },
            window_size: self.window_size,
            shift_size: self.shift_size,
            layer_norm_eps: self.layer_norm_eps,
        }
    }
}

impl<B: Backend> SwinBlock<B> {
    /// The cyclic shift of this block (before clipping).
    pub fn shift_size(&self) -> usize {
        self.shift_size
    }

    /// `x`: `[B, D, H, W, C]`; `mask`: the stage's shifted-window mask (used only when this block shifts).
    pub fn forward(&self, x: Tensor<B, 5>, mask: Option<Tensor<B, 3>>) -> Tensor<B, 5> {
        let shortcut = x.clone();
        let x = shortcut + self.attention_part(x, mask);
        let y = self
            .mlp
            .forward(layer_norm(&self.norm2, x.clone(), self.layer_norm_eps));
        x + y
    }

    fn attention_part(&self, x: Tensor<B, 5>, mask: Option<Tensor<B, 3>>) -> Tensor<B, 5> {
        let [b, d, h, w, c] = x.dims();
        let (ws, ss) = effective_window([d, h, w], self.window_size, self.shift_size);
        let pad = [0, 1, 2].map(|i| ([d, h, w][i].div_ceil(ws[i]) * ws[i]) - [d, h, w][i]);

        let x = layer_norm(&self.norm1, x, self.layer_norm_eps);
        // zeros at the high end of each axis, after the norm (padded tokens are not masked in W-MSA)
        let x = if pad.iter().any(|&p| p > 0) {
            x.pad(
                [(0, 0), (0, pad[0]), (0, pad[1]), (0, pad[2]), (0, 0)],
                PadMode::Constant(0.0),
            )
        } else {
            x
        };
        let [_, dp, hp, wp, _] = x.dims();
        let shifted = ss.iter().any(|&s| s > 0);

        let x = if shifted {
            x.roll(
                &[-(ss[0] as i64), -(ss[1] as i64), -(ss[2] as i64)],
                &[1, 2, 3],
            )
        } else {
            x
        };
        let windows = window_partition(x, ws); // [B·nW, N, C]
        let windows = self
            .attn
            .forward(windows, ws, if shifted { mask } else { None });
        let x = window_reverse(windows, ws, [b, dp, hp, wp]); // [B, Dp, Hp, Wp, C]
        let x = if shifted {
            x.roll(&[ss[0] as i64, ss[1] as i64, ss[2] as i64], &[1, 2, 3])
        } else {
            x
        };
        if pad.iter().any(|&p| p > 0) {
            x.slice([0..b, 0..d, 0..h, 0..w, 0..c])
        } else {
            x
        }
    }
}
