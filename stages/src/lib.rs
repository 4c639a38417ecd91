//! Built-in mtmed3d stages.
