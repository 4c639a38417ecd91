//! Spatial transforms: orientation.

pub mod orientation;
