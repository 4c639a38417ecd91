//! Zarr v3 case stores: the `zarr_write` sink, the `zarr_read` source and [`CaseStore`],
//! the handle both (and the `cache` stage) use.

pub mod sink;
pub mod source;
pub mod store;

pub use store::{CaseEntry, CaseStore, StoreDtype, StoreOptions};
