//! Zarr v3 case stores: the `zarr_write` sink, the `zarr_read` source and [`CaseStore`],
//! the handle both (and the `cache` stage) use.
//!
//! `s3` notes: with the cargo feature `s3`, [`s3::s3_storage`] opens `s3://bucket/prefix` as zarrs
//! storage (credentials from `AWS_*` variables). Case stores themselves are written to
//! filesystems (local or shared, e.g. Lustre/NFS for Slurm shards); see `s3.rs` for why and how
//! to publish one to a bucket.

#[cfg(feature = "s3")]
pub mod s3;
pub mod sink;
pub mod source;
pub mod store;

pub use store::{CaseEntry, CaseStore, StoreDtype, StoreOptions};
