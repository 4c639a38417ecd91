//! Learning stages: `train` (streams batches into the multi-task model) and `infer`
//! (sliding-window inference over whole volumes). Behind the `learn` feature, because they
//! pull in the model crate and burn.

pub mod infer;
pub mod train;
