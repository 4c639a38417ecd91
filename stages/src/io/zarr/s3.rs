//! Case stores on S3 (cargo feature `s3`): zarrs' object-store adapter, made synchronous on
//! a small tokio runtime of its own.
//!
//! `zarr_write`, `cache` and `zarr_read` (and `mtmed3d cache list|verify|finalise`) accept
//! `s3://bucket/prefix` wherever they take a store's folder:
//!
//! ```yaml
//! sinks:
//!   - zarr_write: {path: "s3://my-bucket/cache/brats2018.zarr", patch_size: [96, 96, 96]}
//! ```
//!
//! Credentials and region come from the usual variables: `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` (`AWS_ENDPOINT` for MinIO and other S3-compatible
//! stores, with `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint).
//!
//! S3 has no rename, so a case is committed by writing its group `zarr.json` last, after all
//! its arrays; a single PUT is atomic, so the case is either complete or reads as incomplete
//! (see [`super::store`] for the whole protocol, replacing a case included).
//!
//! ```no_run
//! # fn main() -> Result<(), mtmed3d_pipeline::StageError> {
//! let storage = mtmed3d_stages::io::zarr::s3::s3_storage("s3://my-bucket/cache/brats2018.zarr")?;
//! let root = zarrs::group::Group::open(storage, "/").map_err(|e| mtmed3d_pipeline::StageError::new(e.to_string()))?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use mtmed3d_pipeline::StageError;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use zarrs::storage::Bytes;
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
        return Err(StageError::new(format!(
            "`{url}` names no bucket (write s3://bucket/prefix)"
        )));
    }
    let s3 = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()
        .map_err(|e| {
            StageError::new(format!(
                "{url}: {e} (S3 is configured from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, and AWS_ENDPOINT for MinIO)"
            ))
        })?;
    object_storage(PrefixStore::new(s3, prefix.trim_end_matches('/')))
        .map_err(|e| StageError::new(format!("{url}: {}", e.message)))
}

/// Any [`ObjectStore`] (S3, a local folder, memory) as a synchronous zarrs storage, for
/// [`super::CaseStore::create_or_open_objects`].
pub fn object_storage(
    store: impl ObjectStore,
) -> Result<ReadableWritableListableStorage, StageError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| StageError::new(format!("cannot start the IO runtime: {e}")))?;
    Ok(Arc::new(AsyncToSyncStorageAdapter::new(
        Arc::new(AsyncObjectStore::new(RawKeys(store))),
        TokioBlockOn(runtime),
    )))
}

/// Stores objects under exactly the keys zarrs asks for. zarrs' adapter makes an object path
/// from a key with `Path::from`, which percent-encodes the characters object_store avoids
/// (`~` among them, which escaped case ids use: `Case~207~2Fa`), yet lists the paths as
/// stored; without this, such a case would be written as `Case%7E207%7E2Fa/…`, listed under
/// that name and never found again. Decoding every incoming path keeps the keys of a bucket
/// the same as the file names of a folder store, so `aws s3 sync` works either way. (Keys
/// holding a literal `%` would be decoded too; a case store has none: ids escape `%`.)
#[derive(Debug)]
struct RawKeys<T>(T);

impl<T: fmt::Display> fmt::Display for RawKeys<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The path `Path::from` was given, before its percent-encoding.
fn raw(path: &Path) -> Path {
    let encoded = path.as_ref();
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = encoded
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .ok()
        .and_then(|s| Path::parse(s).ok())
        .unwrap_or_else(|| path.clone())
}

#[async_trait::async_trait]
impl<T: ObjectStore> ObjectStore for RawKeys<T> {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.0.put_opts(&raw(location), payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.0.put_multipart_opts(&raw(location), opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.0.get_opts(&raw(location), options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.0.get_ranges(&raw(location), ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.0
            .delete_stream(locations.map(|l| l.map(|p| raw(&p))).boxed())
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0.list(prefix.map(raw).as_ref())
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0
            .list_with_offset(prefix.map(raw).as_ref(), &raw(offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.0.list_with_delimiter(prefix.map(raw).as_ref()).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.0.copy_opts(&raw(from), &raw(to), options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.0.rename_opts(&raw(from), &raw(to), options).await
    }
}
