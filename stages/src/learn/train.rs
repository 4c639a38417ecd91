//! The `train` stage.
