//! Efficiency summary of a configuration: parameters, multiply-accumulates and the memory of one training
//! step, per part — computed from the configuration alone, without building the model.
//!
//! MACs: one multiply-add is one MAC (the reference divides ptflops' MAC count by two and calls the result
//! MACs). Counted: convolutions, transposed convolutions, linear layers and both attention matrix
//! products; normalisations, activations, pooling and additions are not MACs and are left out. Counts are
//! for a batch of one at the configured input size.

use std::fmt;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;

use crate::config::{ClassifierPool, ModelConfig, stage_widths};
use crate::encoder::window::{effective_window, padded_dims};
use crate::error::Result;

/// Trainable parameters of a module: what `Module::num_params` counts minus the batch-norm running
/// statistics (buffers, not parameters — PyTorch's `numel` over `parameters()` leaves them out too).
pub fn trainable_parameters<B: AutodiffBackend, M: Module<B>>(module: &M) -> usize {
    struct Count(usize);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if param.is_require_grad() {
                self.0 += param.shape().num_elements();
            }
        }
    }
    let mut count = Count(0);
    module.visit(&mut count);
    count.0
}

/// Counts of one part of the model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PartSummary {
    /// Part name.
    pub name: String,
    /// Trainable parameters.
    pub parameters: u64,
    /// Multiply-accumulates of one forward pass.
    pub macs: u64,
    /// Elements of the intermediate tensors a backward pass keeps (an estimate: the outputs of every
    /// convolution, linear layer, normalisation and activation).
    pub activations: u64,
}

/// Memory of one training step with AdamW in f32.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MemoryEstimate {
    /// Weights.
    pub weights_bytes: u64,
    /// Gradients.
    pub gradients_bytes: u64,
    /// AdamW's two moments.
    pub optimizer_bytes: u64,
    /// Activations kept for the backward pass (estimate).
    pub activations_bytes: u64,
    /// Sum of the above.
    pub total_bytes: u64,
}

/// The summary of a configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelSummary {
    /// Preset name.
    pub name: String,
    /// Input `[C, X, Y, Z]`, batch 1.
    pub input: [usize; 4],
    /// Encoder, segmentation, classification, detection.
    pub parts: Vec<PartSummary>,
    /// Sum of the parts' parameters.
    pub total_parameters: u64,
    /// Sum of the parts' MACs.
    pub total_macs: u64,
    /// Training-step memory.
    pub memory: MemoryEstimate,
}

#[derive(Default)]
struct Counter {
    params: u64,
    macs: u64,
    act: u64,
}

impl Counter {
    /// Convolution with `k³` kernel producing `voxels_out` voxels.
    fn conv(&mut self, cin: usize, cout: usize, k: usize, voxels_out: usize, bias: bool) {
        let k3 = (k * k * k) as u64;
        self.params += cin as u64 * cout as u64 * k3 + if bias { cout as u64 } else { 0 };
        self.macs += voxels_out as u64 * cout as u64 * cin as u64 * k3;
        self.act += (voxels_out * cout) as u64;
    }
    fn linear(&mut self, din: usize, dout: usize, tokens: usize, bias: bool) {
        self.params += (din * dout) as u64 + if bias { dout as u64 } else { 0 };
        self.macs += (tokens * din * dout) as u64;
        self.act += (tokens * dout) as u64;
    }
    /// Normalisation (or activation) over `elements`, with `affine` parameters of width `c`.
    fn norm(&mut self, c: usize, elements: usize, affine: bool) {
        if affine {
            self.params += 2 * c as u64;
        }
        self.act += elements as u64;
    }
    /// Window attention over `tokens` (padded) tokens in windows of `n` tokens: the qkv projection, the
    /// two matrix products per head (`q·kᵀ`: n·n·head_dim MACs per window and head, `attn·v` the same, so
    /// together `2·tokens·n·ch` whatever the number of heads) and the output projection. The bias table has
    /// `(2w − 1)³` rows per head.
    fn window_attention(
        &mut self,
        ch: usize,
        heads: usize,
        tokens: usize,
        n: usize,
        window: usize,
        qkv_bias: bool,
    ) {
        self.linear(ch, 3 * ch, tokens, qkv_bias);
        self.params += ((2 * window - 1).pow(3) * heads) as u64;
        self.macs += 2 * (tokens * n * ch) as u64;
        // the attention matrix before and after the softmax, and the heads' output
        self.act += 2 * (tokens / n * heads * n * n) as u64 + (tokens * ch) as u64;
        self.linear(ch, ch, tokens, true);
    }
    fn part(self, name: &str) -> PartSummary {
        PartSummary {
            name: name.into(),
            parameters: self.params,
            macs: self.macs,
            activations: self.act,
        }
    }
}

fn vol(d: [usize; 3]) -> usize {
    d[0] * d[1] * d[2]
}

fn scaled(input: [usize; 3], factor: usize) -> [usize; 3] {
    input.map(|s| s / factor)
}

fn encoder(cfg: &ModelConfig) -> PartSummary {
    let e = &cfg.encoder;
    let w = stage_widths(e.embed_dim);
    let mut c = Counter::default();
    let p = e.patch_size;
    c.conv(
        e.in_channels,
        e.embed_dim,
        p,
        vol(scaled(cfg.input_size, p)),
        true,
    );
    for (i, &ch) in w[..4].iter().enumerate() {
        let dims = scaled(cfg.input_size, p << i);
        let (t, heads) = (vol(dims), e.num_heads[i]);
        let (ws, _) = effective_window(dims, e.window_size, 0);
        let tp = vol(padded_dims(dims, ws));
        let n = vol(ws);
        let hidden = (ch as f64 * e.mlp_ratio) as usize;
        for _ in 0..e.depths[i] {
            c.norm(ch, t * ch, true);
            c.window_attention(ch, heads, tp, n, e.window_size, e.qkv_bias);
            c.norm(ch, t * ch, true);
            c.linear(ch, hidden, t, true);
            c.act += (t * hidden) as u64; // GELU
            c.linear(hidden, ch, t, true);
        }
        let merged = vol(dims.map(|s| s.div_ceil(2)));
        c.act += (merged * 8 * ch) as u64;
        c.norm(8 * ch, merged * 8 * ch, true);
        c.linear(8 * ch, 2 * ch, merged, false);
        if e.normalize {
            c.act += (merged * 2 * ch) as u64;
        }
    }
    c.part("encoder")
}

fn res_block(c: &mut Counter, cin: usize, cout: usize, v: usize) {
    c.conv(cin, cout, 3, v, false);
    c.norm(cout, v * cout, false);
    c.act += (v * cout) as u64; // LeakyReLU
    c.conv(cout, cout, 3, v, false);
    c.norm(cout, v * cout, false);
    if cin != cout {
        c.conv(cin, cout, 1, v, false);
        c.norm(cout, v * cout, false);
    }
    c.act += (v * cout) as u64;
}

fn up_block(c: &mut Counter, cin: usize, cout: usize, v_out: usize, scale: usize) {
    let s3 = (scale * scale * scale) as u64;
    c.params += cin as u64 * cout as u64 * s3;
    c.macs += (v_out * cin * cout) as u64; // every output voxel takes one tap of each input channel
    c.act += (v_out * cout) as u64 + (v_out * 2 * cout) as u64; // up + concatenation
    res_block(c, 2 * cout, cout, v_out);
}

fn segmentation(cfg: &ModelConfig) -> PartSummary {
    let s = &cfg.segmentation;
    let f = s.feature_size;
    let p = s.patch_size;
    let v = |factor: usize| vol(scaled(cfg.input_size, factor));
    let mut c = Counter::default();
    res_block(&mut c, s.in_channels, f, v(1));
    res_block(&mut c, f, f, v(p));
    res_block(&mut c, 2 * f, 2 * f, v(2 * p));
    res_block(&mut c, 4 * f, 4 * f, v(4 * p));
    res_block(&mut c, 16 * f, 16 * f, v(16 * p));
    up_block(&mut c, 16 * f, 8 * f, v(8 * p), 2);
    up_block(&mut c, 8 * f, 4 * f, v(4 * p), 2);
    up_block(&mut c, 4 * f, 2 * f, v(2 * p), 2);
    up_block(&mut c, 2 * f, f, v(p), 2);
    up_block(&mut c, f, f, v(1), p);
    c.conv(f, s.out_channels, 1, v(1), true);
    c.part("segmentation")
}

fn classification(cfg: &ModelConfig) -> PartSummary {
    let k = &cfg.classification;
    let affine = true; // batch norm and group norm both have γ, β
    let mut c = Counter::default();
    let mut dims = cfg.input_size.map(|s| (s + 2 * 3 - 7) / 2 + 1);
    c.conv(k.in_channels(), k.init_features, 7, vol(dims), false);
    c.norm(k.init_features, vol(dims) * k.init_features, affine);
    c.act += (vol(dims) * k.init_features) as u64;
    dims = dims.map(|s| (s + 2 - 3) / 2 + 1);
    c.act += (vol(dims) * k.init_features) as u64;
    let mut ch = k.init_features;
    let bottleneck = k.bn_size * k.growth_rate;
    for (i, &layers) in k.block_config.iter().enumerate() {
        let v = vol(dims);
        for l in 0..layers {
            let cin = ch + l * k.growth_rate;
            c.norm(cin, v * cin, affine);
            c.act += (v * cin) as u64;
            c.conv(cin, bottleneck, 1, v, false);
            c.norm(bottleneck, v * bottleneck, affine);
            c.act += (v * bottleneck) as u64;
            c.conv(bottleneck, k.growth_rate, 3, v, false);
            c.act += (v * (cin + k.growth_rate)) as u64; // concatenation
        }
        ch += layers * k.growth_rate;
        if i + 1 < k.block_config.len() {
            c.norm(ch, v * ch, affine);
            c.act += (v * ch) as u64;
            c.conv(ch, ch / 2, 1, v, false);
            ch /= 2;
            dims = dims.map(|s| s / 2);
            c.act += (vol(dims) * ch) as u64;
        }
    }
    c.norm(ch, vol(dims) * ch, affine);
    c.act += (vol(dims) * ch) as u64;
    let pooled = match k.pool {
        ClassifierPool::Average => ch,
        ClassifierPool::AverageAndMax => 2 * ch,
    };
    c.linear(pooled, k.num_classes, 1, true);
    c.part("classification")
}

fn detection(cfg: &ModelConfig) -> PartSummary {
    let d = &cfg.detection;
    let f = d.channels;
    let p = cfg.encoder.patch_size;
    let levels: Vec<usize> = (0..d.in_channels.len())
        .map(|l| vol(scaled(cfg.input_size, p << (l + 1))))
        .collect();
    let mut c = Counter::default();
    for (l, &cin) in d.in_channels.iter().enumerate() {
        c.conv(cin + d.guide_channels(), f, 1, levels[l], true);
        c.conv(f, f, 3, levels[l], true);
    }
    for &v in &levels[1..] {
        c.conv(f, f, 3, v, true);
        c.act += (v * f) as u64;
        c.conv(f, f, 3, v, true);
        c.act += (v * f) as u64;
    }
    let a = d.num_anchors();
    // the heads' weights are shared across levels: count parameters once, MACs per level
    for outputs in [d.num_classes, 6] {
        let before = c.params;
        for &v in &levels {
            for _ in 0..d.head_convs {
                c.conv(f, f, 3, v, true);
                c.norm(f, v * f, true);
                c.act += (v * f) as u64;
            }
            c.conv(f, a * outputs, 3, v, true);
        }
        let per_level = (c.params - before) / levels.len() as u64;
        c.params = before + per_level;
    }
    c.part("detection")
}

/// The summary of `cfg` (validated first).
pub fn summary(cfg: &ModelConfig) -> Result<ModelSummary> {
    cfg.validate()?;
    let parts = vec![
        encoder(cfg),
        segmentation(cfg),
        classification(cfg),
        detection(cfg),
    ];
    let total_parameters = parts.iter().map(|p| p.parameters).sum();
    let total_macs = parts.iter().map(|p| p.macs).sum();
    let activations: u64 = parts.iter().map(|p| p.activations).sum();
    let f32_bytes = 4;
    let weights = total_parameters * f32_bytes;
    let memory = MemoryEstimate {
        weights_bytes: weights,
        gradients_bytes: weights,
        optimizer_bytes: 2 * weights,
        activations_bytes: activations * f32_bytes,
        total_bytes: 4 * weights + activations * f32_bytes,
    };
    let [x, y, z] = cfg.input_size;
    Ok(ModelSummary {
        name: cfg.name.clone(),
        input: [cfg.encoder.in_channels, x, y, z],
        parts,
        total_parameters,
        total_macs,
        memory,
    })
}

impl ModelSummary {
    /// Pretty JSON.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }
}

fn human(n: u64, unit: &str) -> String {
    let v = n as f64;
    if v >= 1e12 {
        format!("{:.2} T{unit}", v / 1e12)
    } else if v >= 1e9 {
        format!("{:.2} G{unit}", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2} M{unit}", v / 1e6)
    } else {
        format!("{n} {unit}")
    }
}

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

impl fmt::Display for ModelSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "model `{}`, input {:?} (batch 1)", self.name, self.input)?;
        writeln!(
            f,
            "{:<16}{:>14}{:>14}{:>16}",
            "part", "parameters", "MACs", "activations"
        )?;
        for p in &self.parts {
            writeln!(
                f,
                "{:<16}{:>14}{:>14}{:>16}",
                p.name,
                p.parameters,
                human(p.macs, "MAC"),
                gib(p.activations * 4)
            )?;
        }
        writeln!(
            f,
            "{:<16}{:>14}{:>14}",
            "total",
            self.total_parameters,
            human(self.total_macs, "MAC")
        )?;
        let m = &self.memory;
        writeln!(
            f,
            "training step (f32, AdamW): weights {}, gradients {}, optimizer {}, activations {} → {}",
            gib(m.weights_bytes),
            gib(m.gradients_bytes),
            gib(m.optimizer_bytes),
            gib(m.activations_bytes),
            gib(m.total_bytes)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_parameter_counts() {
        let s = summary(&ModelConfig::reference()).unwrap();
        assert_eq!(s.parts[0].parameters, 8_063_154);
        assert_eq!(s.parts[1].parameters, 54_128_787);
        assert_eq!(s.parts[2].parameters, 11_288_578);
    }

    #[test]
    fn patch_embedding_macs_are_counted_once_per_multiply_add() {
        let mut c = Counter::default();
        // 4→48, k=2, on 48³ outputs: 48³ · 48 · 4 · 8 multiply-adds
        c.conv(4, 48, 2, 48 * 48 * 48, true);
        assert_eq!(c.macs, 48 * 48 * 48 * 48 * 4 * 8);
    }

    #[test]
    fn stage_one_attention_macs_match_a_hand_count() {
        // Reference stage 1: 48³ tokens of width 48, window 7 → padded to 49³ = 7³ windows of 343
        // tokens, 3 heads of 16.
        let mut c = Counter::default();
        c.window_attention(48, 3, 49 * 49 * 49, 343, 7, true);
        let windows: u64 = 7 * 7 * 7;
        let per_window_head = 343 * 343 * 16; // one n×n×hd product
        let qkv = 49u64.pow(3) * 48 * 144;
        let proj = 49u64.pow(3) * 48 * 48;
        let products = 2 * windows * 3 * per_window_head; // q·kᵀ and attn·v, 3 heads
        assert_eq!(c.macs, qkv + products + proj);
        assert_eq!(c.macs, 1_084_253_184 + 3_873_946_272);
        // qkv 48·144 + 144, proj 48·48 + 48, bias table 13³·3
        assert_eq!(c.params, 48 * 144 + 144 + 48 * 48 + 48 + 2197 * 3);
    }

    #[test]
    fn reference_encoder_macs_add_up_per_stage() {
        // Every stage's blocks by hand (padded tokens tp, window tokens n, width ch, MLP on the unpadded t
        // tokens), plus patch embedding and merging.
        let cfg = ModelConfig::reference();
        let s = summary(&cfg).unwrap();
        let embed = 48u64.pow(3) * 48 * 4 * 8;
        let stages: [(u64, u64, u64, u64); 4] = [
            (49 * 49 * 49, 343, 48, 48 * 48 * 48),
            (28 * 28 * 28, 343, 96, 24 * 24 * 24),
            (14 * 14 * 14, 343, 192, 12 * 12 * 12),
            (6 * 6 * 6, 216, 384, 6 * 6 * 6),
        ];
        let mut total = embed;
        for (tp, n, ch, t) in stages {
            let block = tp * ch * 3 * ch + 2 * tp * n * ch + tp * ch * ch + 2 * t * ch * 4 * ch;
            let merge = (t / 8) * 8 * ch * 2 * ch;
            total += 2 * block + merge;
        }
        assert_eq!(s.parts[0].macs, total);
    }

    #[test]
    fn summary_serialises_to_json() {
        let s = summary(&ModelConfig::tiny()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&s.to_json().unwrap()).unwrap();
        assert_eq!(v["parts"].as_array().unwrap().len(), 4);
        assert!(v["memory"]["total_bytes"].as_u64().unwrap() > 0);
        assert!(s.to_string().contains("segmentation"));
    }
}
