//! The MTMed3D multi-task model in burn: a shared 3D Swin Transformer encoder feeding a SwinUNETR
//! segmentation decoder, a DenseNet-121 3D grade classifier placed after the segmentation, and a RetinaNet
//! detector with a PANet neck; losses, task balancing (fixed weights, GradNorm), checkpoints and an
//! efficiency summary.
//!
//! ```no_run
//! use mtmed3d_model::{CpuBackend, ModelConfig};
//! use burn::tensor::{Distribution, Tensor};
//!
//! let config = ModelConfig::preset("tiny").unwrap();
//! let device = Default::default();
//! let model = config.init::<CpuBackend>(&device).unwrap();
//! let image = Tensor::<CpuBackend, 5>::random([1, 4, 32, 32, 32], Distribution::Normal(0.0, 1.0), &device);
//! let out = model.forward(image);
//! assert_eq!(out.seg_logits.dims(), [1, 3, 32, 32, 32]);
//! ```
//!
//! Backends: [`CpuBackend`] is burn's pure-Rust `flex` backend; with the `cuda` feature, [`CudaBackend`] is
//! burn's CUDA backend. Training uses `burn::backend::Autodiff` over either.

pub mod balance;
pub mod checkpoint;
pub mod config;
pub mod decoder;
pub mod encoder;
pub mod error;
pub mod loss;
pub mod model;
pub mod ops;
pub mod summary;
pub mod training;

pub use burn;
pub use config::ModelConfig;
pub use error::{ModelError, Result};
pub use model::{MultiTaskModel, MultiTaskOutput, Targets, Task, TaskLosses};

/// CPU backend (burn's `flex`).
pub type CpuBackend = burn::backend::Flex;
/// CPU backend with automatic differentiation.
pub type CpuAutodiff = burn::backend::Autodiff<CpuBackend>;
/// CUDA backend.
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Cuda;
/// CUDA backend with automatic differentiation.
#[cfg(feature = "cuda")]
pub type CudaAutodiff = burn::backend::Autodiff<CudaBackend>;
