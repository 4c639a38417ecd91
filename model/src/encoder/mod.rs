//! Shared 3D Swin Transformer encoder.

pub mod attention;
pub mod block;
pub mod merging;
pub mod swin;
pub mod window;

pub use attention::{WindowAttention, WindowAttentionConfig};
pub use block::{SwinBlock, SwinBlockConfig};
pub use merging::{PatchMerging, PatchMergingConfig};
pub use swin::{EncoderFeatures, SwinEncoder, SwinStage};
