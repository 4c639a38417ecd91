//! Task decoders.

pub mod blocks;
pub mod classification;
pub mod detection;
pub mod segmentation;

pub use classification::ClassificationDecoder;
pub use detection::DetectionDecoder;
pub use segmentation::SegmentationDecoder;
