//! Window multi-head self-attention with a relative position bias (W-MSA / SW-MSA).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::window::bias_index;
use crate::ops::linear;
use crate::window_attention::window_attention;

/// Window attention settings.
#[derive(Config, Debug)]
pub struct WindowAttentionConfig {
    /// Token width.
    pub dim: usize,
    /// Heads; `dim` must be divisible by it.
    pub num_heads: usize,
    /// Configured (unclipped) cubic window edge; sizes the bias table to `(2w − 1)³` rows.
    pub window_size: usize,
    /// Bias on the query/key/value projection.
    #[config(default = true)]
    pub qkv_bias: bool,
    /// Index clipped windows like the reference (slice of the full window's index).
    #[config(default = true)]
    pub legacy_bias_index: bool,
}

/// Multi-head self-attention inside windows, with a learned bias per relative offset and head.
#[derive(Module, Debug)]
pub struct WindowAttention<B: Backend> {
    /// Query, key and value projections in one.
    pub qkv: Linear<B>,
    /// Output projection.
    pub proj: Linear<B>,
    /// `[(2w−1)³, heads]` bias per relative offset.
    pub relative_position_bias_table: Param<Tensor<B, 2>>,
    num_heads: usize,
    window_size: usize,
    legacy_bias_index: bool,
}

impl WindowAttentionConfig {
    /// Builds the module.
    pub fn init<B: Backend>(&self, device: &B::Device) -> WindowAttention<B> {
        let rows = (2 * self.window_size - 1).pow(3);
        WindowAttention {
            qkv: LinearConfig::new(self.dim, 3 * self.dim)
                .with_bias(self.qkv_bias)
                .init(device),
            proj: LinearConfig::new(self.dim, self.dim).init(device),
            // Swin initialises the table with a truncated normal of std 0.02.
            relative_position_bias_table: Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            }
            .init([rows, self.num_heads], device),
            num_heads: self.num_heads,
            window_size: self.window_size,
            legacy_bias_index: self.legacy_bias_index,
        }
    }
}

impl<B: Backend> WindowAttention<B> {
    /// `x`: `[B·nW, N, C]` tokens of windows laid out as `ws`; `mask`: `[nW, N, N]` for shifted windows.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        ws: [usize; 3],
        mask: Option<Tensor<B, 3>>,
    ) -> Tensor<B, 3> {
        let [_, n, c] = x.dims();
        let heads = self.num_heads;
        let head_dim = c / heads;
        let scale = (head_dim as f64).powf(-0.5);

        let qkv = linear(&self.qkv, x); // [B·nW, N, 3C]
        let index = bias_index::<B>(
            ws,
            [self.window_size; 3],
            self.legacy_bias_index,
            &qkv.device(),
        );
        let bias = self
            .relative_position_bias_table
            .val()
            .select(0, index) // [N·N, heads]
            .reshape([n, n, heads])
            .permute([2, 0, 1]); // [heads, N, N]
        let out = window_attention(qkv, bias, mask, heads, scale as f32); // [B·nW, N, C]
        linear(&self.proj, out)
    }
}
