//! Zarr storage on S3 (cargo feature `s3`): zarrs' object-store adapter, made synchronous on
//! a small tokio runtime of its own.
//!
//! ```no_run
//! # fn main() -> Result<(), mtmed3d_pipeline::StageError> {
//! // Credentials and region from the usual variables: AWS_ACCESS_KEY_ID,
//! // AWS_SECRET_ACCESS_KEY, AWS_REGION (AWS_ENDPOINT for MinIO and other S3-compatible stores).
//! let storage = mtmed3d_stages::io::zarr::s3::s3_storage("s3://my-bucket/cache/brats2018.zarr")?;
//! let root = zarrs::group::Group::open(storage, "/").map_err(|e| mtmed3d_pipeline::StageError::new(e.to_string()))?;
//! # Ok(()) }
//! ```
//!
//! What this covers: reading and writing Zarr nodes under an S3 prefix. [`super::CaseStore`]
//! commits a case by renaming its folder, which S3 does not have; a case store on S3 would
//! commit by writing the case group's `zarr.json` last. That commit is not implemented yet:
//! write the store to a filesystem and copy it (`aws s3 sync cache/brats2018.zarr s3://…`), or
//! mount the bucket.

use std::future::Future;
use std::sync::Arc;

use mtmed3d_pipeline::StageError;
use object_store::aws::AmazonS3Builder;
use object_store::prefix::PrefixStore;
use zarrs::storage::ReadableWritableListableStorage;
use zarrs::storage::storage_adapter::async_to_sync::{
    AsyncToSyncBlockOn, AsyncToSyncStorageAdapter,
};
use zarrs_object_store::AsyncObjectStore;

struct TokioBlockOn(tokio::runtime::Runtime);

impl AsyncToSyncBlockOn for TokioBlockOn {
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.0.block_on(future)
    }
}

/// A synchronous zarrs storage for `s3://bucket/prefix`, configured from the environment.
pub fn s3_storage(url: &str) -> Result<ReadableWritableListableStorage, StageError> {
    let rest = url.strip_prefix("s3://").ok_or_else(|| {
        StageError::new(format!(
            "`{url}` is not an S3 URL (write s3://bucket/prefix)"
        ))
    })?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(StageError::new(format!("`{url}` names no bucket")));
    }
    let s3 = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()
        .map_err(|e| StageError::new(format!("{url}: {e}")))?;
    let store = PrefixStore::new(s3, prefix.trim_end_matches('/'));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| StageError::new(format!("{url}: cannot start the IO runtime: {e}")))?;
    Ok(Arc::new(AsyncToSyncStorageAdapter::new(
        Arc::new(AsyncObjectStore::new(store)),
        TokioBlockOn(runtime),
    )))
}
