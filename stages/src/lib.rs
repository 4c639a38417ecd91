//! Built-in mtmed3d stages, one module per family.

pub mod io;
pub mod spatial;
