//! Spatial transforms: orientation, cropping.

pub mod crop;
pub mod orientation;
pub mod original_space;
pub mod reorient;
