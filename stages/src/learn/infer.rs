//! The `infer` stage.
