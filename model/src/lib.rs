//! The MTMed3D multi-task model in burn: a shared 3D Swin Transformer encoder feeding a SwinUNETR
//! segmentation decoder, a DenseNet-121 3D grade classifier placed after the segmentation, and a RetinaNet
//! detector with a PANet neck; losses, task balancing (fixed weights, GradNorm, MGDA), checkpoints and an
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

#[cfg(feature = "jemalloc")]
pub mod allocator;
pub mod attention_softmax;
pub mod balance;
pub mod checkpoint;
pub mod config;
pub mod conv;
mod cpu;
pub mod decoder;
pub mod encoder;
pub mod error;
pub mod layer_norm;
pub mod loss;
pub mod model;
pub mod ops;
pub mod summary;
pub mod training;
pub mod window_attention;

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

/// Opens CUDA device `index`, or says why it cannot be used.
///
/// The backend loads the driver on a device thread of its own and panics there when the library
/// or the device is missing; the first operation then fails on the calling thread. A one-element
/// operation here turns that into an error that names the device and the way out, before a
/// model is built or a checkpoint read.
#[cfg(feature = "cuda")]
pub fn cuda_device(index: usize) -> std::result::Result<burn::backend::cuda::CudaDevice, String> {
    let device = burn::backend::cuda::CudaDevice::new(index);
    let probe = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        burn::tensor::Tensor::<CudaBackend, 1>::zeros([1], &device).into_data()
    }));
    match probe {
        Ok(_) => Ok(device),
        Err(_) => Err(format!(
            "device cuda:{index} cannot be used: the NVIDIA driver (libcuda) or NVRTC did not load, \
             or there is no GPU {index} (the lines above say which). Run where `nvidia-smi` lists \
             the GPU, with the driver's libraries on LD_LIBRARY_PATH (not CUDA's `stubs` folder), \
             or use `device: cpu`"
        )),
    }
}
