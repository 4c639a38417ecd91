//! DenseNet-121 3D classification decoder, placed after the segmentation (paper §III-C3).
//!
//! burn 0.21 has no 3D pooling: the stem's 3³/2 max pool and the transitions' 2³ average pools come from
//! [`crate::ops`].

use crate::conv::conv3d;
use burn::module::Module;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig3d,
};
use burn::tensor::Tensor;
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::backend::Backend;

use crate::config::{ClassificationConfig, ClassifierInput, ClassifierNorm, ClassifierPool};
use crate::ops::{avg_pool3d_2, global_avg_max_pool3d, global_avg_pool3d, max_pool3d};

/// Batch or group normalisation, by configuration.
#[derive(Module, Debug)]
pub enum Norm<B: Backend> {
    /// Batch statistics in training, running statistics in inference.
    Batch(BatchNorm<B>),
    /// Per-sample group statistics.
    Group(GroupNorm<B>),
}

impl<B: Backend> Norm<B> {
    fn new(kind: ClassifierNorm, channels: usize, device: &B::Device) -> Self {
        match kind {
            ClassifierNorm::Batch => Norm::Batch(BatchNormConfig::new(channels).init(device)),
            ClassifierNorm::Group(g) => Norm::Group(GroupNormConfig::new(g, channels).init(device)),
        }
    }

    /// Normalises `[B, C, D, H, W]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        match self {
            Norm::Batch(n) => n.forward(x),
            Norm::Group(n) => n.forward(x),
        }
    }
}

/// BN → ReLU → conv1³ (to `bn_size·growth`) → BN → ReLU → conv3³ (to `growth`), concatenated to its input.
#[derive(Module, Debug)]
pub struct DenseLayer<B: Backend> {
    /// Norm of the input.
    pub norm1: Norm<B>,
    /// Bottleneck 1×1 convolution.
    pub conv1: Conv3d<B>,
    /// Norm of the bottleneck.
    pub norm2: Norm<B>,
    /// 3³ convolution producing `growth` channels.
    pub conv2: Conv3d<B>,
}

impl<B: Backend> DenseLayer<B> {
    /// `[B, C, ..] -> [B, C + growth, ..]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let y = conv3d(&self.conv1, relu(self.norm1.forward(x.clone())));
        let y = conv3d(&self.conv2, relu(self.norm2.forward(y)));
        Tensor::cat(vec![x, y], 1)
    }
}

/// BN → ReLU → conv1³ (halving the width) → 2³ average pool.
#[derive(Module, Debug)]
pub struct Transition<B: Backend> {
    /// Norm.
    pub norm: Norm<B>,
    /// 1×1 convolution.
    pub conv: Conv3d<B>,
}

impl<B: Backend> Transition<B> {
    /// `[B, C, D, H, W] -> [B, C/2, D/2, H/2, W/2]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        avg_pool3d_2(conv3d(&self.conv, relu(self.norm.forward(x))))
    }
}

/// A dense block and the transition after it (none after the last block).
#[derive(Module, Debug)]
pub struct DenseStage<B: Backend> {
    /// Dense layers.
    pub layers: Vec<DenseLayer<B>>,
    /// Transition, absent after the last block.
    pub transition: Option<Transition<B>>,
}

/// DenseNet-121 3D (MONAI `DenseNet121(spatial_dims=3)`).
#[derive(Module, Debug)]
pub struct ClassificationDecoder<B: Backend> {
    /// 7³ stride-2 stem convolution.
    pub conv0: Conv3d<B>,
    /// Stem norm.
    pub norm0: Norm<B>,
    /// Dense blocks and transitions.
    pub stages: Vec<DenseStage<B>>,
    /// Final norm.
    pub norm5: Norm<B>,
    /// Linear classifier on the pooled features.
    pub classifier: Linear<B>,
    input: ClassifierInput,
    pool: ClassifierPool,
}

fn conv<B: Backend>(cin: usize, cout: usize, k: usize, device: &B::Device) -> Conv3d<B> {
    Conv3dConfig::new([cin, cout], [k, k, k])
        .with_padding(PaddingConfig3d::Explicit(k / 2, k / 2, k / 2))
        .with_bias(false)
        .init(device)
}

impl ClassificationConfig {
    /// Builds the decoder.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ClassificationDecoder<B> {
        let norm = |c| Norm::new(self.norm, c, device);
        let mut channels = self.init_features;
        let mut stages = Vec::new();
        for (i, &layers) in self.block_config.iter().enumerate() {
            let layers = (0..layers)
                .map(|l| {
                    let cin = channels + l * self.growth_rate;
                    let bottleneck = self.bn_size * self.growth_rate;
                    DenseLayer {
                        norm1: norm(cin),
                        conv1: conv(cin, bottleneck, 1, device),
                        norm2: norm(bottleneck),
                        conv2: conv(bottleneck, self.growth_rate, 3, device),
                    }
                })
                .collect::<Vec<_>>();
            channels += layers.len() * self.growth_rate;
            let transition = (i + 1 < self.block_config.len()).then(|| {
                let t = Transition {
                    norm: norm(channels),
                    conv: conv(channels, channels / 2, 1, device),
                };
                channels /= 2;
                t
            });
            stages.push(DenseStage { layers, transition });
        }
        ClassificationDecoder {
            conv0: Conv3dConfig::new([self.in_channels(), self.init_features], [7, 7, 7])
                .with_stride([2, 2, 2])
                .with_padding(PaddingConfig3d::Explicit(3, 3, 3))
                .with_bias(false)
                .init(device),
            norm0: norm(self.init_features),
            stages,
            norm5: norm(channels),
            classifier: LinearConfig::new(
                match self.pool {
                    ClassifierPool::Average => channels,
                    ClassifierPool::AverageAndMax => 2 * channels,
                },
                self.num_classes,
            )
            .init(device),
            input: self.input,
            pool: self.pool,
        }
    }
}

impl<B: Backend> ClassificationDecoder<B> {
    /// Builds the classifier's input from the segmentation logits and the image, as configured.
    pub fn prepare_input(&self, seg_logits: Tensor<B, 5>, image: Tensor<B, 5>) -> Tensor<B, 5> {
        match self.input {
            ClassifierInput::Logits => seg_logits,
            ClassifierInput::ProbabilitiesWithImage => {
                Tensor::cat(vec![sigmoid(seg_logits), image], 1)
            }
        }
    }

    /// `[B, in, D, H, W]` → class logits `[B, classes]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 2> {
        let x = conv3d(&self.conv0, x); // [B, 64, D/2, ..]
        let x = relu(self.norm0.forward(x));
        let mut x = max_pool3d(x, 3, 2, 1); // [B, 64, D/4, ..]
        for stage in &self.stages {
            for layer in &stage.layers {
                x = layer.forward(x); // width += growth
            }
            if let Some(t) = &stage.transition {
                x = t.forward(x); // width /= 2, size /= 2
            }
        }
        let x = relu(self.norm5.forward(x)); // [B, 1024, D/32, ..]
        let pooled = match self.pool {
            ClassifierPool::Average => global_avg_pool3d(x),
            ClassifierPool::AverageAndMax => global_avg_max_pool3d(x),
        };
        self.classifier.forward(pooled) // [B, classes]
    }
}
