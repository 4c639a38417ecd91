//! Zarr v3 case stores: the `zarr_write` sink, the `zarr_read` source and [`CaseStore`],
//! the handle both (and the `cache` stage) use.
//!
//! A store is a folder (local or shared, e.g. Lustre/NFS for Slurm shards) or, with the cargo
//! feature `s3`, `s3://bucket/prefix` (module `s3`; credentials from `AWS_*` variables). How each
//! commits a case atomically is in [`store`]'s docs.

#[cfg(test)]
mod object_tests;
#[cfg(feature = "s3")]
pub mod s3;
pub mod sink;
pub mod source;
pub mod store;

pub use store::{CaseEntry, CaseStore, StoreDtype, StoreOptions};
