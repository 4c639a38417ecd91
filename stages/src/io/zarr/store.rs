//! A Zarr v3 store of preprocessed cases: one group per case, committed whole, so a case is
//! either absent or complete.
//!
//! ```text
//! cache.zarr/
//!   zarr.json                 root group: {"mtmed3d": {kind, format_version}, "cases": [...]}
//!   BraTS19_2013_10_1/
//!     zarr.json               case group: metadata, non-volume fields, checksums
//!     image/  zarr.json, c/…  (C, X, Y, Z), chunks follow the training patch size, zstd
//!     label/  zarr.json, c/…
//!   .partial/                 cases being written; removed when empty after a run
//! ```
//!
//! Case ids and field names become node names after escaping every character outside
//! `[A-Za-z0-9._-]` (and a leading `.` or `__`) as `~XX` (hex of the UTF-8 bytes), so ids
//! with `/`, `#` or spaces round-trip exactly.
//!
//! # How a case is committed
//!
//! On a filesystem a case is written whole under `.partial/` and renamed into place (an older
//! copy is first moved aside into `.partial/`); the rename is the commit.
//!
//! Object storage (`s3://bucket/prefix` with the cargo feature `s3`, or any zarrs storage given
//! to [`CaseStore::create_or_open_objects`]) has no rename, but a PUT of one object is atomic.
//! There a case is written under its final prefix, arrays first (their `zarr.json` and
//! chunks), and the case group's `zarr.json` LAST: that single PUT is the commit. A case prefix
//! without its group `zarr.json` is incomplete: never listed complete, never a cache hit,
//! written again by a rerun and removed by `finalise`. Replacing a case deletes the old group
//! `zarr.json` first, then the old arrays, then writes the new case, so at no moment does a
//! mix of old and new read as complete. zarr-python agrees: a prefix without group metadata is
//! not a member of the store's root group (it lists only the complete cases).
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mtmed3d_pipeline::{BoundingBox, Field, Meta, Sample, SpatialOp, StageError};
use ndarray::{ArrayD, IxDyn, SliceInfoElem};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use zarrs::array::CodecOptions;
use zarrs::array::codec::ZstdCodec;
use zarrs::array::{Array, ArrayBuilder, ArraySubset, data_type};
use zarrs::filesystem::FilesystemStore;
use zarrs::storage::{Bytes, ReadableWritableListableStorage, StoreKey, StorePrefix};

use crate::fields::{map_boxes, shifted_affine};
use crate::spatial::crop::crop_box;
use crate::spatial::orientation::aff2axcodes;

/// The layout version this build writes and the newest it reads.
pub const FORMAT_VERSION: u64 = 1;
/// `kind` in the root group's `mtmed3d` attributes.
pub const STORE_KIND: &str = "mtmed3d-case-store";
/// Where cases are written before they are renamed into place.
pub const PARTIAL_DIR: &str = ".partial";

/// How floating-point volumes are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StoreDtype {
    /// 32-bit floats: bit-exact.
    #[default]
    F32,
    /// 16-bit floats: half the size; relative error below 2^-11 (about 3 decimal digits).
    F16,
    /// 16-bit integers with a per-channel scale and offset (value = stored × scale + offset):
    /// half the size, absolute error at most half a step of (max − min) / 65534.
    I16,
}

impl StoreDtype {
    fn zarr_name(self) -> &'static str {
        match self {
            StoreDtype::F32 => "float32",
            StoreDtype::F16 => "float16",
            StoreDtype::I16 => "int16",
        }
    }
}

/// How a store lays out the volumes it writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreOptions {
    /// Spatial chunk shape (X, Y, Z); channels are never split, so a crop reads every channel
    /// of the chunks it touches at once.
    pub chunk: [usize; 3],
    /// Shard shape (X, Y, Z), a multiple of `chunk`: several chunks per file (fewer files on
    /// shared filesystems and object stores). `None`: one file per chunk.
    pub shard: Option<[usize; 3]>,
    /// Storage type of f32 volumes.
    pub dtype: StoreDtype,
    /// zstd level (1–22).
    pub level: i32,
    /// Threads zarrs may use to encode or decode the chunks of one array. Kept small: the
    /// pipeline runs its own stages on the other cores.
    pub codec_threads: usize,
    /// The upstream configuration's hash, recorded in each case.
    pub config_hash: Option<String>,
    /// The label field whose nonzero voxels are sampled into the attributes, so training
    /// crops can be centred on foreground without reading the label.
    pub foreground_field: String,
    /// How many foreground voxel positions to record per case.
    pub foreground_samples: usize,
    /// fsync every file before renaming a case into place (survives power loss, not only a
    /// killed process). Object storage ignores it: a PUT is durable once acknowledged.
    pub durable: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            chunk: [48, 48, 48],
            shard: None,
            dtype: StoreDtype::F32,
            level: 3,
            codec_threads: 2,
            config_hash: None,
            foreground_field: "label".into(),
            foreground_samples: 1000,
            durable: true,
        }
    }
}

/// One case of a store, as `list` reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseEntry {
    pub id: String,
    /// The node name in the store (the escaped id).
    pub group: String,
    pub complete: bool,
    pub key: Option<String>,
    pub config_hash: Option<String>,
    pub arrays: Vec<ArrayEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArrayEntry {
    pub field: String,
    pub shape: Vec<u64>,
    pub dtype: String,
}

/// A handle to one store, on a filesystem or on object storage.
pub struct CaseStore {
    /// The folder, or the object storage's URL (for messages).
    root: PathBuf,
    options: StoreOptions,
    /// Access to the whole store (zarrs opens arrays by path below the root).
    storage: ReadableWritableListableStorage,
    backend: Backend,
}

/// How cases are committed (see the module docs): the few operations that differ between a
/// filesystem and object storage dispatch on this; everything else goes through `storage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// A folder: cases are written under `.partial/` and renamed into place.
    Folder,
    /// Object storage: a case's arrays first, its group `zarr.json` last.
    Objects,
}

/// The URL of a store on object storage, or `None` for a filesystem path.
fn object_url(path: &Path) -> Option<&str> {
    path.to_str().filter(|p| p.starts_with("s3://"))
}

#[cfg(feature = "s3")]
fn url_storage(url: &str) -> Result<ReadableWritableListableStorage, StageError> {
    super::s3::s3_storage(url)
}

#[cfg(not(feature = "s3"))]
fn url_storage(url: &str) -> Result<ReadableWritableListableStorage, StageError> {
    Err(StageError::new(format!(
        "`{url}` is on S3, which this build of mtmed3d cannot reach: rebuild it with the `s3` feature (`cargo build --release --features mtmed3d-stages/s3`)"
    )))
}

/// An object-storage failure, with what usually causes one.
fn object_err(path: &Path, e: impl std::fmt::Display) -> StageError {
    err(
        path,
        format!(
            "{e} (check the bucket and prefix, and the credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, and AWS_ENDPOINT for MinIO and other S3-compatible stores)"
        ),
    )
}

fn store_key(root: &Path, rel: &str) -> Result<StoreKey, StageError> {
    StoreKey::new(rel).map_err(|e| err(&root.join(rel), e))
}

fn store_prefix(root: &Path, group: &str) -> Result<StorePrefix, StageError> {
    StorePrefix::new(format!("{group}/")).map_err(|e| err(&root.join(group), e))
}

/// Reads the JSON object at `rel` below the root of object storage; `None` when absent.
fn read_object_json(
    storage: &ReadableWritableListableStorage,
    root: &Path,
    rel: &str,
) -> Result<Option<Value>, StageError> {
    let path = root.join(rel);
    let Some(bytes) = storage
        .get(&store_key(root, rel)?)
        .map_err(|e| object_err(&path, e))?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| err(&path, format!("not valid JSON: {e}")))
}

static NONCE: AtomicU64 = AtomicU64::new(0);

fn err(path: &Path, e: impl std::fmt::Display) -> StageError {
    StageError::file(path, e)
}

/// Escapes a case id or field name into a Zarr node name (reversible, see module docs).
pub fn encode_name(name: &str) -> Result<String, StageError> {
    if name.is_empty() {
        return Err(StageError::new(
            "an empty case id or field name cannot be stored",
        ));
    }
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'-' || (b == b'_') || (b == b'.' && i > 0);
        // `__` at the start is reserved by the Zarr spec.
        let reserved = i == 0 && b == b'_' && name.as_bytes().get(1) == Some(&b'_');
        if plain && !reserved {
            out.push(b as char);
        } else {
            out.push_str(&format!("~{b:02X}"));
        }
    }
    Ok(out)
}

/// The inverse of [`encode_name`]; `None` for a name it cannot have made.
pub fn decode_name(node: &str) -> Option<String> {
    let bytes = node.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'~' {
            let hex = node.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn read_json(path: &Path) -> Result<Value, StageError> {
    let text = fs::read_to_string(path).map_err(|e| err(path, e))?;
    serde_json::from_str(&text).map_err(|e| err(path, format!("not valid JSON: {e}")))
}

/// Writes a file under a temporary name and renames it over `path` (atomic on POSIX).
fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> Result<(), StageError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id(),
        NONCE.fetch_add(1, Ordering::Relaxed)
    ));
    let mut f = fs::File::create(&tmp).map_err(|e| err(&tmp, e))?;
    f.write_all(bytes).map_err(|e| err(&tmp, e))?;
    if durable {
        f.sync_all().map_err(|e| err(&tmp, e))?;
    }
    fs::rename(&tmp, path).map_err(|e| err(path, e))
}

fn group_json(attributes: Value) -> Vec<u8> {
    let doc = json!({"zarr_format": 3, "node_type": "group", "attributes": attributes});
    let mut bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Where a case's arrays go: a node path (`""` for the storage's root) in a storage.
#[derive(Clone, Copy)]
struct Below<'a> {
    storage: &'a ReadableWritableListableStorage,
    prefix: &'a str,
}

/// The root group's attributes of a new store.
fn root_attrs(options: &StoreOptions) -> Value {
    json!({"mtmed3d": {
        "kind": STORE_KIND,
        "format_version": FORMAT_VERSION,
        "options": options,
    }})
}

/// CRC-32C of a slice of plain numbers, as their little-endian bytes. On a little-endian
/// machine those are the values' own bytes, checksummed in place; elsewhere each block is
/// converted first.
fn crc_of<T: bytemuck::Pod, const N: usize>(values: &[T], to_le: impl Fn(T) -> [u8; N]) -> u32 {
    if cfg!(target_endian = "little") {
        return crc32c::crc32c(bytemuck::cast_slice(values));
    }
    let mut crc = 0u32;
    let mut buf = Vec::with_capacity(1 << 16);
    for chunk in values.chunks((1 << 16) / N) {
        buf.clear();
        for &v in chunk {
            buf.extend_from_slice(&to_le(v));
        }
        crc = crc32c::crc32c_append(crc, &buf);
    }
    crc
}

fn number_to_json(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else if x.is_nan() {
        json!("NaN")
    } else if x > 0.0 {
        json!("inf")
    } else {
        json!("-inf")
    }
}

fn number_from_json(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) if s == "NaN" => Some(f64::NAN),
        Value::String(s) if s == "inf" => Some(f64::INFINITY),
        Value::String(s) if s == "-inf" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

/// Positions of up to `max` nonzero voxels (any channel), evenly spread over all of them in
/// C order, and how many there are.
fn foreground_positions(field: &Field, max: usize) -> (usize, Vec<[usize; 3]>) {
    fn scan<T: Copy + PartialEq + Default>(a: &ArrayD<T>, max: usize) -> (usize, Vec<[usize; 3]>) {
        let n = a.ndim();
        if n < 3 || max == 0 {
            return (0, vec![]);
        }
        let shape = a.shape();
        let (nx, ny, nz) = (shape[n - 3], shape[n - 2], shape[n - 1]);
        let spatial = nx * ny * nz;
        // A voxel is foreground when any channel is nonzero.
        let mut mask = vec![false; spatial];
        let standard = a.as_standard_layout();
        let values = standard
            .as_slice()
            .expect("a standard-layout array is one slice");
        // Channel by channel over plain slices: a branch-free loop the compiler vectorises.
        for channel in values.chunks_exact(spatial) {
            for (m, v) in mask.iter_mut().zip(channel) {
                *m |= *v != T::default();
            }
        }
        let count = mask.iter().filter(|m| **m).count();
        let take = count.min(max);
        let mut out = Vec::with_capacity(take);
        if take == 0 {
            return (0, out);
        }
        let mut k = 0usize; // index among foreground voxels
        let mut next = 0usize; // which sample we are looking for
        for (i, m) in mask.iter().enumerate() {
            if !*m {
                continue;
            }
            if k == next * count / take {
                out.push([i / (ny * nz), (i / nz) % ny, i % nz]);
                next += 1;
                if next == take {
                    break;
                }
            }
            k += 1;
        }
        (count, out)
    }
    match field {
        Field::U8(a) => scan(a, max),
        Field::F32(a) => scan(a, max),
        _ => (0, vec![]),
    }
}

/// What the case group's attributes say about one field.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FieldRecord {
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    array: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stored_dtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shape: Option<Vec<usize>>,
    /// CRC-32C of the stored (encoded dtype, C order, little-endian) array bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crc32c: Option<u32>,
    /// Per-channel `[scale, offset]` for `int16` storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quantisation: Option<Vec<[f64; 2]>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<Value>,
}

/// The parsed attributes of a complete case.
#[derive(Debug, Clone)]
pub struct CaseInfo {
    pub id: String,
    pub group: String,
    pub key: Option<String>,
    pub config_hash: Option<String>,
    pub meta: Meta,
    /// Number of foreground voxels and a spread sample of their positions.
    pub foreground_count: usize,
    pub foreground: Vec<[usize; 3]>,
    fields: BTreeMap<String, FieldRecord>,
}

impl CaseInfo {
    /// Shapes of the volume fields.
    pub fn volume_shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.fields
            .iter()
            .filter_map(|(n, r)| r.shape.clone().map(|s| (n.clone(), s)))
            .collect()
    }
}

/// Writes a whole C-order volume into an unsharded array chunk by chunk: each chunk is
/// gathered row by row into a buffer reused across chunks (padded with `fill` past the
/// volume's edge), then encoded and stored. zarrs' whole-array write gathers every chunk
/// through lists of byte ranges instead; a profile of BraTS-sized cases put that at 8 % of
/// preprocessing, a quarter of zstd's own time. Chunks go out `threads` at a time.
fn store_chunks<T>(
    array: &Array<dyn zarrs::storage::ReadableWritableListableStorageTraits>,
    shape: &[usize],
    fill: T,
    values: &[T],
    threads: usize,
) -> Result<(), zarrs::array::ArrayError>
where
    T: zarrs::array::Element + Copy + Send + Sync,
    for<'b> &'b [T]: zarrs::array::IntoArrayBytes<'b>,
{
    use rayon::prelude::*;
    let n = shape.len();
    let chunk_indices: Vec<Vec<u64>> =
        ArraySubset::new_with_shape(array.chunk_grid_shape().to_vec())
            .indices()
            .into_iter()
            .map(|i| i.to_vec())
            .collect();
    let Some(first) = chunk_indices.first() else {
        return Ok(());
    };
    // Volumes of fewer than three axes are one chunk: store them as they are.
    if n < 3 {
        return array.store_chunk(first, values);
    }
    // The grid is regular (see `grid`): every chunk has the first one's shape, leading axes
    // whole, and edge chunks are stored whole too, padded with `fill`.
    let chunk: Vec<usize> = array
        .chunk_shape(first)?
        .iter()
        .map(|c| c.get() as usize)
        .collect();
    let lead: usize = shape[..n - 3].iter().product();
    let [sx, sy, sz] = [shape[n - 3], shape[n - 2], shape[n - 1]];
    let [cx, cy, cz] = [chunk[n - 3], chunk[n - 2], chunk[n - 1]];
    let write_group = |group: &[Vec<u64>]| -> Result<(), zarrs::array::ArrayError> {
        let mut buffer: Vec<T> = vec![fill; lead * cx * cy * cz];
        let one = CodecOptions::default().with_concurrent_target(1);
        for indices in group {
            let [x0, y0, z0] = [0, 1, 2].map(|a| indices[n - 3 + a] as usize * [cx, cy, cz][a]);
            let (nx, ny, nz) = (cx.min(sx - x0), cy.min(sy - y0), cz.min(sz - z0));
            // Only a chunk past the volume's edge has voxels no row below overwrites.
            if (nx, ny, nz) != (cx, cy, cz) {
                buffer.fill(fill);
            }
            for l in 0..lead {
                for x in 0..nx {
                    for y in 0..ny {
                        let src = ((l * sx + x0 + x) * sy + y0 + y) * sz + z0;
                        let dst = ((l * cx + x) * cy + y) * cz;
                        buffer[dst..dst + nz].copy_from_slice(&values[src..src + nz]);
                    }
                }
            }
            array.store_chunk_opt(indices, buffer.as_slice(), &one)?;
        }
        Ok(())
    };
    let threads = threads.clamp(1, chunk_indices.len());
    if threads == 1 {
        write_group(&chunk_indices)
    } else {
        chunk_indices
            .par_chunks(chunk_indices.len().div_ceil(threads))
            .try_for_each(write_group)
    }
}

/// Reads `region` of `array`. Without sharding, every chunk the region touches is decoded
/// whole once and its overlap copied straight into the output. zarrs' subset read decodes the
/// same chunks but gathers the overlap run by run through lists of byte ranges and copies it
/// twice: in a profile of random 96³ crops from 48³ chunks that was a quarter of the read,
/// as long as zstd itself. A sharded array keeps zarrs' read, which decodes only the inner
/// chunks it needs rather than whole shards.
///
/// With a concurrency target of n > 1 in `opts`, chunks are decoded n at a time in parallel,
/// and only those n are held besides the output.
fn retrieve_subset<T>(
    array: &Array<dyn zarrs::storage::ReadableWritableListableStorageTraits>,
    region: &ArraySubset,
    opts: &CodecOptions,
) -> Result<ArrayD<T>, zarrs::array::ArrayError>
where
    T: zarrs::array::Element + Clone + Default + Send,
    ArrayD<T>: zarrs::array::FromArrayBytes,
{
    use rayon::prelude::*;
    use zarrs::array::ArrayShardedExt;
    let chunks = match array.chunks_in_array_subset(region) {
        Ok(Some(chunks)) if !array.is_sharded() => chunks,
        _ => return array.retrieve_array_subset_opt::<ArrayD<T>>(region, opts),
    };
    let shape: Vec<usize> = region.shape().iter().map(|&n| n as usize).collect();
    let mut out = ArrayD::<T>::from_elem(IxDyn(&shape), T::default());
    let threads = opts.concurrent_target().max(1);
    let one_chunk = (*opts).with_concurrent_target(1);
    let decode = |indices: &[u64]| {
        let chunk_subset = array.chunk_subset(indices)?;
        let overlap = chunk_subset.overlap(region)?;
        let chunk = array.retrieve_chunk_opt::<ArrayD<T>>(indices, &one_chunk)?;
        Ok::<_, zarrs::array::ArrayError>((chunk_subset, overlap, chunk))
    };
    let indices: Vec<_> = chunks.indices().into_iter().collect();
    for wave in indices.chunks(threads) {
        let decoded: Vec<_> = if wave.len() > 1 {
            wave.par_iter()
                .map(|i| decode(i))
                .collect::<Result<_, _>>()?
        } else {
            wave.iter().map(|i| decode(i)).collect::<Result<_, _>>()?
        };
        for (chunk_subset, overlap, chunk) in decoded {
            let within = |origin: &[u64]| -> Vec<SliceInfoElem> {
                overlap
                    .to_ranges()
                    .iter()
                    .zip(origin)
                    .map(|(r, &o)| {
                        SliceInfoElem::from((r.start - o) as usize..(r.end - o) as usize)
                    })
                    .collect()
            };
            out.slice_mut(within(region.start()).as_slice())
                .assign(&chunk.slice(within(chunk_subset.start()).as_slice()));
        }
    }
    Ok(out)
}

impl CaseStore {
    /// Opens the store at `path` (a folder, or `s3://bucket/prefix` with the feature `s3`),
    /// creating its root group (and folders) when missing. Safe when several processes
    /// (shards) create the same store at once.
    pub fn create_or_open(path: &Path, options: StoreOptions) -> Result<CaseStore, StageError> {
        if let Some(url) = object_url(path) {
            return CaseStore::create_or_open_objects(url_storage(url)?, url, options);
        }
        check_options(&options)?;
        fs::create_dir_all(path.join(PARTIAL_DIR)).map_err(|e| err(path, e))?;
        let meta = path.join("zarr.json");
        if !meta.exists() {
            // Every creator writes a complete file and renames it: the last one wins, and
            // readers never see a half-written root.
            write_atomic(&meta, &group_json(root_attrs(&options)), options.durable)?;
        }
        let mut store = CaseStore::open(path)?;
        store.options = options;
        Ok(store)
    }

    /// [`CaseStore::create_or_open`] on object storage (any zarrs storage; cases are
    /// committed by writing their group `zarr.json` last, see the module docs). `location`
    /// names the store in messages, e.g. its `s3://` URL.
    pub fn create_or_open_objects(
        storage: ReadableWritableListableStorage,
        location: &str,
        options: StoreOptions,
    ) -> Result<CaseStore, StageError> {
        check_options(&options)?;
        let root = PathBuf::from(location);
        if read_object_json(&storage, &root, "zarr.json")?.is_none() {
            // One PUT of the whole document: the last creator wins, and readers never see a
            // half-written root.
            let bytes = Bytes::from(group_json(root_attrs(&options)));
            storage
                .set(&store_key(&root, "zarr.json")?, bytes)
                .map_err(|e| object_err(&root.join("zarr.json"), e))?;
        }
        let mut store = CaseStore::open_objects(storage, location)?;
        store.options = options;
        Ok(store)
    }

    /// Opens an existing store (a folder, or `s3://bucket/prefix` with the feature `s3`);
    /// fails clearly when `path` is not one of ours or was written by a newer format.
    pub fn open(path: &Path) -> Result<CaseStore, StageError> {
        if let Some(url) = object_url(path) {
            return CaseStore::open_objects(url_storage(url)?, url);
        }
        let meta = path.join("zarr.json");
        let doc = if meta.is_file() {
            Some(read_json(&meta)?)
        } else {
            None
        };
        let storage: ReadableWritableListableStorage =
            Arc::new(FilesystemStore::new(path).map_err(|e| err(path, e))?);
        CaseStore::from_root(doc, path.to_path_buf(), storage, Backend::Folder)
    }

    /// [`CaseStore::open`] on object storage (see [`CaseStore::create_or_open_objects`]).
    pub fn open_objects(
        storage: ReadableWritableListableStorage,
        location: &str,
    ) -> Result<CaseStore, StageError> {
        let root = PathBuf::from(location);
        let doc = read_object_json(&storage, &root, "zarr.json")?;
        CaseStore::from_root(doc, root, storage, Backend::Objects)
    }

    /// Checks the root group's document (`None`: absent) and makes the handle.
    fn from_root(
        doc: Option<Value>,
        root: PathBuf,
        storage: ReadableWritableListableStorage,
        backend: Backend,
    ) -> Result<CaseStore, StageError> {
        let path = root.as_path();
        let Some(doc) = doc else {
            return Err(err(
                path,
                "not a mtmed3d case store (no zarr.json): check the path, or write one with the `zarr_write` sink",
            ));
        };
        let ours = doc.get("attributes").and_then(|a| a.get("mtmed3d"));
        let kind = ours.and_then(|m| m.get("kind")).and_then(Value::as_str);
        if doc.get("node_type").and_then(Value::as_str) != Some("group") || kind != Some(STORE_KIND)
        {
            return Err(err(
                path,
                "a Zarr node but not a mtmed3d case store (no `mtmed3d.kind` attribute in zarr.json)",
            ));
        }
        check_format_version(ours, path, "case store")?;
        let options = ours
            .and_then(|m| m.get("options"))
            .and_then(|o| serde_json::from_value(o.clone()).ok())
            .unwrap_or_default();
        Ok(CaseStore {
            root,
            options,
            storage,
            backend,
        })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    /// Caps the threads zarrs uses per array (reads and writes).
    pub fn set_codec_threads(&mut self, threads: usize) {
        self.options.codec_threads = threads.max(1);
    }

    fn codec_options(&self) -> CodecOptions {
        CodecOptions::default().with_concurrent_target(self.options.codec_threads.max(1))
    }

    /// Writes every volume field of the sample as an array and everything else as group
    /// attributes and commits the case (see the module docs), replacing an existing case of
    /// the same id. `key` is stored as `cache_key`.
    pub fn write_case(&self, sample: &Sample, key: Option<&str>) -> Result<(), StageError> {
        let group = encode_name(&sample.id)?;
        match self.backend {
            Backend::Folder => self.write_case_folder(&group, sample, key),
            Backend::Objects => self.write_case_objects(&group, sample, key),
        }
    }

    /// Writes the case under `.partial/`, then renames it into place.
    fn write_case_folder(
        &self,
        group: &str,
        sample: &Sample,
        key: Option<&str>,
    ) -> Result<(), StageError> {
        let partial = self.root.join(PARTIAL_DIR);
        let tmp = partial.join(format!(
            "{}-{}@{group}",
            std::process::id(),
            NONCE.fetch_add(1, Ordering::Relaxed)
        ));
        let result = self.write_into(&tmp, sample, key).and_then(|()| {
            if self.options.durable {
                sync_tree(&tmp)?;
            }
            self.commit(&tmp, group)
        });
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result
    }

    /// Writes the case's arrays under its final prefix and then its group `zarr.json`, the
    /// commit; an older case of the same id is uncommitted (its group `zarr.json` deleted)
    /// before anything of it is removed.
    fn write_case_objects(
        &self,
        group: &str,
        sample: &Sample,
        key: Option<&str>,
    ) -> Result<(), StageError> {
        let dir = self.root.join(group);
        let meta = store_key(&self.root, &format!("{group}/zarr.json"))?;
        let prefix = store_prefix(&self.root, group)?;
        // From this delete until the final PUT the case reads as incomplete, so no reader
        // sees old attributes over new chunks or the reverse. Deleting the whole prefix also
        // clears what an interrupted attempt left behind.
        self.storage.erase(&meta).map_err(|e| object_err(&dir, e))?;
        self.storage
            .erase_prefix(&prefix)
            .map_err(|e| object_err(&dir, e))?;
        let result = self
            .write_arrays(&self.storage, &format!("/{group}"), sample, key)
            .and_then(|doc| {
                self.storage
                    .set(&meta, Bytes::from(doc))
                    .map_err(|e| object_err(&dir, e))
            });
        if result.is_err() {
            // Incomplete either way; this only saves `finalise` the work.
            let _ = self.storage.erase_prefix(&prefix);
        }
        result
    }

    fn write_into(&self, dir: &Path, sample: &Sample, key: Option<&str>) -> Result<(), StageError> {
        fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
        let storage: ReadableWritableListableStorage =
            Arc::new(FilesystemStore::new(dir).map_err(|e| err(dir, e))?);
        let doc = self.write_arrays(&storage, "", sample, key)?;
        fs::write(dir.join("zarr.json"), doc).map_err(|e| err(dir, e))
    }

    /// Writes the sample's volumes as arrays below `prefix` (a node path, `""` for the
    /// storage's root) and returns the case group's `zarr.json`, for the caller to commit.
    fn write_arrays(
        &self,
        storage: &ReadableWritableListableStorage,
        prefix: &str,
        sample: &Sample,
        key: Option<&str>,
    ) -> Result<Vec<u8>, StageError> {
        let at = Below { storage, prefix };
        let mut fields = BTreeMap::new();
        let mut boxes = serde_json::Map::new();
        for (name, field) in sample.fields() {
            let record = match field {
                Field::F32(a) => self.write_f32(at, name, a)?,
                Field::U8(a) => {
                    let array = encode_name(name)?;
                    let standard = a.as_standard_layout();
                    let values = standard.as_slice().unwrap_or_default();
                    let shape = a.shape();
                    self.write_array(at, &array, shape, data_type::uint8(), 0u8, values)?;
                    FieldRecord {
                        kind: "u8".into(),
                        array: Some(array),
                        stored_dtype: Some("uint8".into()),
                        shape: Some(a.shape().to_vec()),
                        crc32c: Some(crc32c::crc32c(values)),
                        quantisation: None,
                        value: None,
                    }
                }
                Field::Boxes(b) => {
                    let value =
                        serde_json::to_value(&**b).map_err(|e| StageError::new(e.to_string()))?;
                    boxes.insert(name.to_string(), value.clone());
                    value_record("boxes", value)
                }
                Field::Number(x) => value_record("number", number_to_json(*x)),
                Field::Text(t) => value_record("text", json!(t)),
                Field::Json(j) => value_record("json", (**j).clone()),
            };
            fields.insert(name.to_string(), record);
        }
        let (fg_count, fg) = match sample.get(&self.options.foreground_field) {
            Some(f) => foreground_positions(f, self.options.foreground_samples),
            None => (0, vec![]),
        };
        let meta = serde_json::to_value(&sample.meta).map_err(|e| {
            StageError::new(format!(
                "case `{}`: its metadata cannot be stored ({e}); a non-finite affine or spacing is the usual cause",
                sample.id
            ))
        })?;
        let m = &sample.meta;
        let codes = |a| {
            aff2axcodes(a)
                .iter()
                .map(|c| c.unwrap_or('?'))
                .collect::<String>()
        };
        let mut attrs = json!({
            "mtmed3d": {
                "format_version": FORMAT_VERSION,
                "case_id": sample.id,
                "cache_key": key,
                "config_hash": self.options.config_hash,
                "meta": meta,
                "fields": fields,
                "foreground": {"field": self.options.foreground_field, "count": fg_count, "voxels": fg},
            },
            // Plain copies for readers that are not mtmed3d (zarr-python, napari).
            "affine": m.affine,
            "spacing": m.spacing,
            "orientation": codes(&m.affine),
            "original_affine": m.original_affine,
            "original_shape": m.original_shape,
            "original_orientation": codes(&m.original_affine),
            "history": m.history,
            "boxes": boxes,
        });
        if let Some(grade) = m
            .attrs
            .get("grade")
            .cloned()
            .or_else(|| match sample.get("grade") {
                Some(Field::Text(t)) => Some(json!(t)),
                _ => None,
            })
        {
            attrs["grade"] = grade;
        }
        Ok(group_json(attrs))
    }

    fn write_f32(&self, at: Below, name: &str, a: &ArrayD<f32>) -> Result<FieldRecord, StageError> {
        let array = encode_name(name)?;
        let standard = a.as_standard_layout();
        let values = standard.as_slice().unwrap_or_default();
        let shape = a.shape();
        let mut quantisation = None;
        let crc = match self.options.dtype {
            StoreDtype::F32 => {
                self.write_array(at, &array, shape, data_type::float32(), 0f32, values)?;
                crc_of(values, f32::to_le_bytes)
            }
            StoreDtype::F16 => {
                let h: Vec<half::f16> = values.iter().map(|&v| half::f16::from_f32(v)).collect();
                self.write_array(at, &array, shape, data_type::float16(), half::f16::ZERO, &h)?;
                crc_of(&h, half::f16::to_le_bytes)
            }
            StoreDtype::I16 => {
                let channels = if shape.len() >= 4 { shape[0] } else { 1 };
                let per = values.len() / channels.max(1);
                let mut q = Vec::with_capacity(values.len());
                let mut params = Vec::with_capacity(channels);
                for c in 0..channels {
                    let part = &values[c * per..(c + 1) * per];
                    let (lo, hi) = part
                        .iter()
                        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
                            (l.min(v), h.max(v))
                        });
                    if part.iter().any(|v| !v.is_finite()) {
                        return Err(StageError::new(format!(
                            "field `{name}` holds non-finite values, which int16 storage cannot keep: use `dtype: f32`"
                        )));
                    }
                    let offset = if part.is_empty() {
                        0.0
                    } else {
                        (f64::from(lo) + f64::from(hi)) / 2.0
                    };
                    let span = if part.is_empty() {
                        0.0
                    } else {
                        f64::from(hi) - f64::from(lo)
                    };
                    let scale = if span > 0.0 { span / 65534.0 } else { 1.0 };
                    q.extend(part.iter().map(|&v| {
                        ((f64::from(v) - offset) / scale)
                            .round()
                            .clamp(-32767.0, 32767.0) as i16
                    }));
                    params.push([scale, offset]);
                }
                self.write_array(at, &array, shape, data_type::int16(), 0i16, &q)?;
                quantisation = Some(params);
                crc_of(&q, i16::to_le_bytes)
            }
        };
        Ok(FieldRecord {
            kind: "f32".into(),
            array: Some(array),
            stored_dtype: Some(self.options.dtype.zarr_name().into()),
            shape: Some(shape.to_vec()),
            crc32c: Some(crc),
            quantisation,
            value: None,
        })
    }

    /// Chunk (and shard) shapes for an array: leading axes whole, the last three from the
    /// options, never larger than the array (rounded up to whole chunks when sharded).
    fn grid(&self, shape: &[usize]) -> (Vec<u64>, Option<Vec<u64>>) {
        let n = shape.len();
        let full: Vec<u64> = shape.iter().map(|&s| s.max(1) as u64).collect();
        if n < 3 {
            return (full, None);
        }
        let mut chunk = full.clone();
        for a in 0..3 {
            chunk[n - 3 + a] = (self.options.chunk[a].min(shape[n - 3 + a])).max(1) as u64;
        }
        match self.options.shard {
            None => (chunk, None),
            Some(shard) => {
                let mut outer = chunk.clone();
                for a in 0..3 {
                    let c = chunk[n - 3 + a];
                    let whole = full[n - 3 + a].div_ceil(c) * c;
                    // A multiple of the chunk, at most the array rounded up to whole chunks.
                    outer[n - 3 + a] = ((shard[a] as u64 / c).max(1) * c).min(whole);
                }
                (outer, Some(chunk))
            }
        }
    }

    fn write_array<'a, T: zarrs::array::Element + Copy + Send + Sync>(
        &self,
        at: Below,
        name: &str,
        shape: &[usize],
        dtype: zarrs::array::DataType,
        fill: T,
        values: &'a [T],
    ) -> Result<(), StageError>
    where
        zarrs::array::FillValue: From<T>,
        &'a [T]: zarrs::array::IntoArrayBytes<'a>,
    {
        let (grid, inner) = self.grid(shape);
        let array_shape: Vec<u64> = shape.iter().map(|&s| s as u64).collect();
        let zstd = Arc::new(ZstdCodec::new(self.options.level, false));
        let mut builder = ArrayBuilder::new(
            array_shape.clone(),
            grid,
            dtype,
            zarrs::array::FillValue::from(fill),
        );
        builder.bytes_to_bytes_codecs(vec![zstd]);
        if let Some(inner) = inner {
            builder.subchunk_shape(inner);
        }
        let names: Option<Vec<&str>> = match shape.len() {
            4 => Some(vec!["c", "x", "y", "z"]),
            3 => Some(vec!["x", "y", "z"]),
            _ => None,
        };
        builder.dimension_names(names);
        let path = format!("{}/{name}", at.prefix);
        let array = builder
            .build(at.storage.clone(), &path)
            .map_err(|e| StageError::new(format!("array `{name}`: {e}")))?;
        array
            .store_metadata()
            .map_err(|e| StageError::new(format!("array `{name}`: {e}")))?;
        let expected: usize = shape.iter().product();
        if values.len() != expected {
            // The chunk gatherer indexes by the shape: refuse rather than read out of bounds.
            return Err(StageError::new(format!(
                "array `{name}`: {} values for the shape {shape:?} ({expected} expected)",
                values.len()
            )));
        }
        if shape.iter().all(|&s| s > 0) {
            let stored = if zarrs::array::ArrayShardedExt::is_sharded(&array) {
                let subset = ArraySubset::new_with_shape(array_shape);
                array.store_array_subset_opt(&subset, values, &self.codec_options())
            } else {
                store_chunks(&array, shape, fill, values, self.options.codec_threads)
            };
            stored.map_err(|e| StageError::new(format!("array `{name}`: {e}")))?;
        }
        Ok(())
    }

    /// Renames a finished temporary case into place, moving aside any older copy first.
    fn commit(&self, tmp: &Path, group: &str) -> Result<(), StageError> {
        let target = self.root.join(group);
        let mut old = None;
        if target.exists() {
            let aside = self.root.join(PARTIAL_DIR).join(format!(
                "old-{}-{}@{group}",
                std::process::id(),
                NONCE.fetch_add(1, Ordering::Relaxed)
            ));
            fs::rename(&target, &aside).map_err(|e| err(&target, e))?;
            old = Some(aside);
        }
        fs::rename(tmp, &target).map_err(|e| err(&target, e))?;
        if self.options.durable {
            fs::File::open(&self.root)
                .and_then(|d| d.sync_all())
                .map_err(|e| err(&self.root, e))?;
        }
        if let Some(old) = old {
            fs::remove_dir_all(&old).map_err(|e| err(&old, e))?;
        }
        Ok(())
    }

    /// The JSON document at `rel` (a `/`-separated path below the root); `None` when absent.
    fn read_doc(&self, rel: &str) -> Result<Option<Value>, StageError> {
        match self.backend {
            Backend::Folder => {
                let path = self.root.join(rel);
                if !path.is_file() {
                    return Ok(None);
                }
                read_json(&path).map(Some)
            }
            Backend::Objects => read_object_json(&self.storage, &self.root, rel),
        }
    }

    /// Replaces the document at `rel` whole (readers see the old one or the new one).
    fn write_doc(&self, rel: &str, bytes: Vec<u8>) -> Result<(), StageError> {
        match self.backend {
            Backend::Folder => write_atomic(&self.root.join(rel), &bytes, self.options.durable),
            Backend::Objects => self
                .storage
                .set(&store_key(&self.root, rel)?, Bytes::from(bytes))
                .map_err(|e| object_err(&self.root.join(rel), e)),
        }
    }

    /// Whether a file (object) exists at `rel`; unreadable counts as absent.
    fn exists(&self, rel: &str) -> bool {
        match self.backend {
            Backend::Folder => self.root.join(rel).is_file(),
            Backend::Objects => store_key(&self.root, rel)
                .ok()
                .and_then(|key| self.storage.size_key(&key).ok().flatten())
                .is_some(),
        }
    }

    /// The node names of the cases in place, committed or (on object storage) not.
    fn case_groups(&self) -> Result<Vec<String>, StageError> {
        let mut names = Vec::new();
        match self.backend {
            Backend::Folder => {
                for entry in fs::read_dir(&self.root).map_err(|e| err(&self.root, e))? {
                    let entry = entry.map_err(|e| err(&self.root, e))?;
                    if entry.path().is_dir() {
                        names.push(entry.file_name().to_string_lossy().into_owned());
                    }
                }
            }
            Backend::Objects => {
                let listing = self
                    .storage
                    .list_dir(&StorePrefix::root())
                    .map_err(|e| object_err(&self.root, e))?;
                names.extend(
                    listing
                        .prefixes()
                        .iter()
                        .map(|p| p.as_str().trim_end_matches('/').to_string()),
                );
            }
        }
        names.retain(|n| !n.starts_with('.'));
        Ok(names)
    }

    /// The attributes of a complete case, or `None` when it is absent.
    pub fn case_info(&self, case: &str) -> Result<Option<CaseInfo>, StageError> {
        let group = encode_name(case)?;
        let rel = format!("{group}/zarr.json");
        let Some(doc) = self.read_doc(&rel)? else {
            return Ok(None);
        };
        parse_case(&doc, &group, &self.root.join(&rel)).map(Some)
    }

    /// The case's cache key; `None` if the case is absent or incomplete.
    pub fn case_key(&self, case: &str) -> Result<Option<String>, StageError> {
        if !self.is_complete(case) {
            return Ok(None);
        }
        Ok(self.case_info(case)?.and_then(|i| i.key))
    }

    /// True when the case is in place, its attributes parse and every array it lists exists.
    pub fn is_complete(&self, case: &str) -> bool {
        let Ok(Some(info)) = self.case_info(case) else {
            return false;
        };
        info.fields.values().all(|r| {
            r.array
                .as_ref()
                .is_none_or(|a| self.exists(&format!("{}/{a}/zarr.json", info.group)))
        })
    }

    fn open_array(
        &self,
        group: &str,
        array: &str,
    ) -> Result<Array<dyn zarrs::storage::ReadableWritableListableStorageTraits>, StageError> {
        Array::open(self.storage.clone(), &format!("/{group}/{array}"))
            .map_err(|e| err(&self.root.join(group).join(array), e))
    }

    /// Reads a field's stored values in `subset` (every axis given) as f32 or u8.
    fn read_field(
        &self,
        info: &CaseInfo,
        name: &str,
        subset: &[std::ops::Range<u64>],
    ) -> Result<Field, StageError> {
        let record = &info.fields[name];
        let array_name = record.array.as_deref().unwrap_or(name);
        let array = self.open_array(&info.group, array_name)?;
        let path = self.root.join(&info.group).join(array_name);
        let region = ArraySubset::new_with_ranges(subset);
        let opts = self.codec_options();
        let e = |e: zarrs::array::ArrayError| err(&path, e);
        match (record.kind.as_str(), record.stored_dtype.as_deref()) {
            ("u8", _) => Ok(Field::u8(
                retrieve_subset::<u8>(&array, &region, &opts).map_err(e)?,
            )),
            ("f32", Some("float32")) => Ok(Field::f32(
                retrieve_subset::<f32>(&array, &region, &opts).map_err(e)?,
            )),
            ("f32", Some("float16")) => Ok(Field::f32(
                retrieve_subset::<half::f16>(&array, &region, &opts)
                    .map_err(e)?
                    .mapv(half::f16::to_f32),
            )),
            ("f32", Some("int16")) => {
                let q = retrieve_subset::<i16>(&array, &region, &opts).map_err(e)?;
                let params = record.quantisation.clone().unwrap_or_default();
                let mut out = ArrayD::<f32>::zeros(q.raw_dim());
                let nd = q.ndim();
                for (idx, v) in q.indexed_iter() {
                    let c = if nd >= 4 {
                        idx[0] + subset[0].start as usize
                    } else {
                        0
                    };
                    let [scale, offset] = params.get(c).copied().unwrap_or([1.0, 0.0]);
                    out[&idx] = (f64::from(*v) * scale + offset) as f32;
                }
                Ok(Field::f32(out))
            }
            (kind, dtype) => Err(err(
                &path,
                format!(
                    "field `{name}` has an unknown storage ({kind}, {dtype:?}): written by another mtmed3d version?"
                ),
            )),
        }
    }

    fn missing(&self, case: &str) -> StageError {
        err(
            &self.root,
            format!(
                "case `{case}` is not in the store or is incomplete (`mtmed3d cache list {}` shows what is there)",
                self.root.display()
            ),
        )
    }

    /// Rebuilds the sample exactly as written (id, meta, every field; epoch 0). Volumes
    /// stored as f16 or i16 come back as the nearest f32.
    pub fn read_case(&self, case: &str) -> Result<Sample, StageError> {
        let info = self.case_info(case)?.ok_or_else(|| self.missing(case))?;
        let mut sample = Sample::new(info.id.clone());
        sample.meta = info.meta.clone();
        for (name, record) in &info.fields {
            let field = match record.kind.as_str() {
                "f32" | "u8" => {
                    let shape = record.shape.clone().unwrap_or_default();
                    let subset: Vec<_> = shape.iter().map(|&s| 0..s as u64).collect();
                    if shape.contains(&0) {
                        empty_field(&record.kind, &shape)
                    } else {
                        self.read_field(&info, name, &subset)?
                    }
                }
                _ => value_field(record).map_err(|m| {
                    err(&self.root.join(&info.group), format!("field `{name}`: {m}"))
                })?,
            };
            sample.insert(name.clone(), field);
        }
        Ok(sample)
    }

    /// Reads the window of `size` starting at `start` (negative or past the end = zero
    /// padding) of every volume field, reading only the chunks it touches; boxes, affine and
    /// history change exactly as the `crop` stage changes them.
    pub fn read_crop(
        &self,
        case: &str,
        start: [i64; 3],
        size: [usize; 3],
    ) -> Result<Sample, StageError> {
        let info = self.case_info(case)?.ok_or_else(|| self.missing(case))?;
        self.read_crop_info(&info, start, size)
    }

    /// [`CaseStore::read_crop`] for a case whose attributes are already read.
    pub fn read_crop_info(
        &self,
        info: &CaseInfo,
        start: [i64; 3],
        size: [usize; 3],
    ) -> Result<Sample, StageError> {
        let mut sample = Sample::new(info.id.clone());
        sample.meta = info.meta.clone();
        let mut spatial: Option<[usize; 3]> = None;
        for (name, record) in &info.fields {
            let field = match (record.kind.as_str(), &record.shape) {
                ("f32" | "u8", Some(shape)) if shape.len() >= 3 => {
                    let n = shape.len();
                    let this = [shape[n - 3], shape[n - 2], shape[n - 1]];
                    if spatial.is_some_and(|s| s != this) {
                        return Err(err(
                            &self.root.join(&info.group),
                            format!(
                                "field `{name}` has spatial shape {this:?}, unlike the others ({spatial:?}): cannot crop them together"
                            ),
                        ));
                    }
                    spatial = Some(this);
                    let mut out_shape = shape.clone();
                    out_shape[n - 3..].copy_from_slice(&size);
                    let mut ranges: Vec<std::ops::Range<u64>> =
                        shape[..n - 3].iter().map(|&s| 0..s as u64).collect();
                    let mut dst: Vec<SliceInfoElem> = vec![SliceInfoElem::from(..); n - 3];
                    let mut overlap = true;
                    for a in 0..3 {
                        let len = this[a] as i64;
                        let lo = start[a].max(0);
                        let hi = (start[a] + size[a] as i64).min(len);
                        if lo >= hi {
                            overlap = false;
                            break;
                        }
                        ranges.push(lo as u64..hi as u64);
                        dst.push(SliceInfoElem::from(
                            (lo - start[a]) as isize..(hi - start[a]) as isize,
                        ));
                    }
                    let whole = |kind: &str| empty_field(kind, &out_shape);
                    let inside = overlap
                        && (0..3)
                            .all(|a| start[a] >= 0 && start[a] + size[a] as i64 <= this[a] as i64);
                    if !overlap || shape[..n - 3].contains(&0) {
                        whole(&record.kind)
                    } else if inside {
                        // the stored values are the crop: no zero-filled copy
                        self.read_field(info, name, &ranges)?
                    } else {
                        match self.read_field(info, name, &ranges)? {
                            Field::F32(part) => {
                                let mut out = ArrayD::<f32>::zeros(IxDyn(&out_shape));
                                out.slice_mut(dst.as_slice()).assign(&*part);
                                Field::f32(out)
                            }
                            Field::U8(part) => {
                                let mut out = ArrayD::<u8>::zeros(IxDyn(&out_shape));
                                out.slice_mut(dst.as_slice()).assign(&*part);
                                Field::u8(out)
                            }
                            other => other,
                        }
                    }
                }
                ("f32" | "u8", _) => {
                    // Volumes of fewer than three axes are not spatial: read whole.
                    let shape = record.shape.clone().unwrap_or_default();
                    let subset: Vec<_> = shape.iter().map(|&s| 0..s as u64).collect();
                    if shape.contains(&0) {
                        empty_field(&record.kind, &shape)
                    } else {
                        self.read_field(info, name, &subset)?
                    }
                }
                _ => value_field(record).map_err(|m| {
                    err(&self.root.join(&info.group), format!("field `{name}`: {m}"))
                })?,
            };
            sample.insert(name.clone(), field);
        }
        let shape_before = spatial.ok_or_else(|| {
            err(
                &self.root.join(&info.group),
                "the case has no 3D volume to crop",
            )
        })?;
        map_boxes(&mut sample, |c| crop_box(c, start, size))?;
        sample.meta.affine = shifted_affine(&sample.meta.affine, start);
        sample.meta.history.push(SpatialOp::Crop {
            start,
            shape_before,
            shape_after: size,
        });
        Ok(sample)
    }

    /// Every case in the store, complete or being written (interrupted writes show as
    /// incomplete until `finalise` removes them), sorted by id.
    pub fn list(&self) -> Result<Vec<CaseEntry>, StageError> {
        let mut out = Vec::new();
        for name in self.case_groups()? {
            let Some(id) = decode_name(&name) else {
                continue;
            };
            let info = self.case_info(&id).ok().flatten();
            let complete = info.is_some() && self.is_complete(&id);
            out.push(match info {
                Some(info) => CaseEntry {
                    id: info.id.clone(),
                    group: name,
                    complete,
                    key: info.key.clone(),
                    config_hash: info.config_hash.clone(),
                    arrays: info
                        .fields
                        .iter()
                        .filter_map(|(f, r)| {
                            Some(ArrayEntry {
                                field: f.clone(),
                                shape: r.shape.as_ref()?.iter().map(|&s| s as u64).collect(),
                                dtype: r.stored_dtype.clone()?,
                            })
                        })
                        .collect(),
                },
                None => CaseEntry {
                    id,
                    group: name,
                    complete: false,
                    key: None,
                    config_hash: None,
                    arrays: vec![],
                },
            });
        }
        let partial = self.root.join(PARTIAL_DIR);
        if self.backend == Backend::Folder && partial.is_dir() {
            for entry in fs::read_dir(&partial).map_err(|e| err(&partial, e))? {
                let entry = entry.map_err(|e| err(&partial, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some((_, group)) = name.split_once('@') else {
                    continue;
                };
                if name.starts_with("old-") {
                    continue;
                }
                if let Some(id) = decode_name(group) {
                    out.push(CaseEntry {
                        id,
                        group: format!("{PARTIAL_DIR}/{name}"),
                        complete: false,
                        key: None,
                        config_hash: None,
                        arrays: vec![],
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.id, !a.complete).cmp(&(&b.id, !b.complete)));
        Ok(out)
    }

    /// Ids of the complete cases, made with `config_hash` when given.
    pub fn complete_cases(&self, config_hash: Option<&str>) -> Result<Vec<String>, StageError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|c| c.complete)
            .filter(|c| config_hash.is_none() || c.config_hash.as_deref() == config_hash)
            .map(|c| c.id)
            .collect())
    }

    /// Reads every array of a case in full and checks shapes and checksums; returns the
    /// problems found (empty: the case is sound).
    pub fn verify_case(&self, case: &str) -> Result<Vec<String>, StageError> {
        let Some(info) = self.case_info(case)? else {
            return Ok(vec!["absent or incomplete".into()]);
        };
        let mut problems = Vec::new();
        for (name, record) in &info.fields {
            let (Some(array_name), Some(shape)) = (&record.array, &record.shape) else {
                continue;
            };
            let array = match self.open_array(&info.group, array_name) {
                Ok(a) => a,
                Err(e) => {
                    problems.push(format!("field `{name}`: {e}"));
                    continue;
                }
            };
            let stored: Vec<usize> = array.shape().iter().map(|&s| s as usize).collect();
            if &stored != shape {
                problems.push(format!(
                    "field `{name}`: array shape {stored:?}, attributes say {shape:?}"
                ));
                continue;
            }
            if shape.contains(&0) {
                continue;
            }
            let all = ArraySubset::new_with_shape(array.shape().to_vec());
            let opts = self.codec_options();
            let crc = match record.stored_dtype.as_deref() {
                Some("uint8") => array
                    .retrieve_array_subset_opt::<Vec<u8>>(&all, &opts)
                    .map(|v| crc32c::crc32c(&v)),
                Some("float32") => array
                    .retrieve_array_subset_opt::<Vec<f32>>(&all, &opts)
                    .map(|v| crc_of(&v, f32::to_le_bytes)),
                Some("float16") => array
                    .retrieve_array_subset_opt::<Vec<half::f16>>(&all, &opts)
                    .map(|v| crc_of(&v, half::f16::to_le_bytes)),
                Some("int16") => array
                    .retrieve_array_subset_opt::<Vec<i16>>(&all, &opts)
                    .map(|v| crc_of(&v, i16::to_le_bytes)),
                other => {
                    problems.push(format!("field `{name}`: unknown stored dtype {other:?}"));
                    continue;
                }
            };
            match crc {
                Err(e) => problems.push(format!("field `{name}`: cannot be read: {e}")),
                Ok(crc) if Some(crc) != record.crc32c => problems.push(format!(
                    "field `{name}`: checksum {crc:08x} differs from the recorded {:08x}",
                    record.crc32c.unwrap_or(0)
                )),
                Ok(_) => {}
            }
        }
        Ok(problems)
    }

    /// Writes the manifest (the sorted list of complete cases with their keys) into the root
    /// group's attributes and removes leftovers of interrupted writes (`.partial/` on a
    /// filesystem; on object storage every case prefix without its group `zarr.json`). Run it
    /// when no writer is active (after every shard has finished).
    pub fn finalise(&self) -> Result<Vec<CaseEntry>, StageError> {
        let cases = self.write_manifest()?;
        match self.backend {
            Backend::Folder => {
                let partial = self.root.join(PARTIAL_DIR);
                if partial.is_dir() {
                    for entry in fs::read_dir(&partial).map_err(|e| err(&partial, e))? {
                        let path = entry.map_err(|e| err(&partial, e))?.path();
                        fs::remove_dir_all(&path).map_err(|e| err(&path, e))?;
                    }
                }
            }
            Backend::Objects => {
                // A case with its group `zarr.json` but a damaged array stays: `verify`
                // reports it, and only the uncommitted are leftovers.
                for group in self.case_groups()? {
                    // Asked strictly: a failed request must not read as "uncommitted" here.
                    let meta = format!("{group}/zarr.json");
                    let committed = self
                        .storage
                        .size_key(&store_key(&self.root, &meta)?)
                        .map_err(|e| object_err(&self.root.join(&meta), e))?
                        .is_some();
                    if !committed {
                        let prefix = store_prefix(&self.root, &group)?;
                        self.storage
                            .erase_prefix(&prefix)
                            .map_err(|e| object_err(&self.root.join(&group), e))?;
                    }
                }
            }
        }
        Ok(cases)
    }

    /// Writes the manifest of the cases complete now into the root group's attributes
    /// (atomically; safe while other shards write, though it may then miss their latest).
    pub fn write_manifest(&self) -> Result<Vec<CaseEntry>, StageError> {
        if self.backend == Backend::Folder {
            // An empty `.partial/` is gone once the writers are done: zarr-python warns about
            // every folder in a hierarchy that is not a node. A shard still writing keeps it
            // (it is not empty) or makes it again.
            let _ = fs::remove_dir(self.root.join(PARTIAL_DIR));
        }
        let cases: Vec<CaseEntry> = self.list()?.into_iter().filter(|c| c.complete).collect();
        let meta = self.root.join("zarr.json");
        let mut doc = self
            .read_doc("zarr.json")?
            .ok_or_else(|| err(&meta, "the store's root group is gone"))?;
        let manifest: Vec<Value> = cases
            .iter()
            .map(|c| json!({"id": c.id, "group": c.group, "key": c.key, "config_hash": c.config_hash}))
            .collect();
        let attrs = doc
            .get_mut("attributes")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| err(&meta, "no attributes"))?;
        attrs.insert("cases".into(), Value::Array(manifest));
        let bytes = group_json(Value::Object(attrs.clone()));
        self.write_doc("zarr.json", bytes)?;
        Ok(cases)
    }
}

fn value_record(kind: &str, value: Value) -> FieldRecord {
    FieldRecord {
        kind: kind.into(),
        array: None,
        stored_dtype: None,
        shape: None,
        crc32c: None,
        quantisation: None,
        value: Some(value),
    }
}

fn empty_field(kind: &str, shape: &[usize]) -> Field {
    if kind == "u8" {
        Field::u8(ArrayD::zeros(IxDyn(shape)))
    } else {
        Field::f32(ArrayD::zeros(IxDyn(shape)))
    }
}

fn value_field(record: &FieldRecord) -> Result<Field, String> {
    let value = record.value.clone().unwrap_or(Value::Null);
    Ok(match record.kind.as_str() {
        "boxes" => Field::Boxes(Arc::new(
            serde_json::from_value::<Vec<BoundingBox>>(value).map_err(|e| e.to_string())?,
        )),
        "number" => Field::Number(number_from_json(&value).ok_or("not a number")?),
        "text" => Field::Text(value.as_str().ok_or("not a string")?.to_string()),
        "json" => Field::Json(Arc::new(value)),
        other => return Err(format!("unknown field kind `{other}`")),
    })
}

/// Refuses a store or case written in a format this build cannot read (absent counts as 0).
fn check_format_version(ours: Option<&Value>, path: &Path, what: &str) -> Result<(), StageError> {
    let version = ours
        .and_then(|m| m.get("format_version"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if version == 0 || version > FORMAT_VERSION {
        return Err(err(
            path,
            format!(
                "{what} format version {version} is not supported (this mtmed3d reads 1 to {FORMAT_VERSION}): upgrade mtmed3d or rebuild the store"
            ),
        ));
    }
    Ok(())
}

fn parse_case(doc: &Value, group: &str, path: &Path) -> Result<CaseInfo, StageError> {
    let ours = doc
        .get("attributes")
        .and_then(|a| a.get("mtmed3d"))
        .ok_or_else(|| err(path, "not a mtmed3d case (no `mtmed3d` attributes)"))?;
    check_format_version(Some(ours), path, "case")?;
    let get = |k: &str| ours.get(k).cloned().unwrap_or(Value::Null);
    let meta: Meta = serde_json::from_value(get("meta"))
        .map_err(|e| err(path, format!("case metadata: {e}")))?;
    let fields: BTreeMap<String, FieldRecord> = serde_json::from_value(get("fields"))
        .map_err(|e| err(path, format!("case fields: {e}")))?;
    let id = get("case_id")
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| err(path, "no `case_id`"))?;
    let fg = get("foreground");
    Ok(CaseInfo {
        id,
        group: group.to_string(),
        key: get("cache_key").as_str().map(str::to_string),
        config_hash: get("config_hash").as_str().map(str::to_string),
        meta,
        foreground_count: fg.get("count").and_then(Value::as_u64).unwrap_or(0) as usize,
        foreground: fg
            .get("voxels")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default(),
        fields,
    })
}

fn check_options(o: &StoreOptions) -> Result<(), StageError> {
    if o.chunk.contains(&0) {
        return Err(StageError::new("`chunk` sizes must be at least 1"));
    }
    if let Some(shard) = o.shard
        && (0..3).any(|a| shard[a] == 0 || shard[a] % o.chunk[a] != 0)
    {
        return Err(StageError::new(format!(
            "`shard` {shard:?} must be a multiple of `chunk` {:?} along every axis",
            o.chunk
        )));
    }
    if !(1..=22).contains(&o.level) {
        return Err(StageError::new("`level` (zstd) must be within 1–22"));
    }
    Ok(())
}

/// fsyncs every file and folder below `dir`.
fn sync_tree(dir: &Path) -> Result<(), StageError> {
    for entry in fs::read_dir(dir).map_err(|e| err(dir, e))? {
        let path = entry.map_err(|e| err(dir, e))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| err(&path, e))?;
        }
    }
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(dir, e))
}

/// Makes a sample's `f32` and `u8` volumes and non-volume fields comparable (for tests).
pub fn same_sample(a: &Sample, b: &Sample) -> Result<(), String> {
    if a.id != b.id {
        return Err(format!("ids differ: {} vs {}", a.id, b.id));
    }
    if a.meta != b.meta {
        return Err(format!("meta differs: {:?} vs {:?}", a.meta, b.meta));
    }
    let na: Vec<&str> = a.field_names().collect();
    let nb: Vec<&str> = b.field_names().collect();
    if na != nb {
        return Err(format!("fields differ: {na:?} vs {nb:?}"));
    }
    for (name, fa) in a.fields() {
        let fb = b.get(name).ok_or("missing")?;
        let same = match (fa, fb) {
            (Field::F32(x), Field::F32(y)) => {
                x.shape() == y.shape()
                    && x.iter()
                        .zip(y.iter())
                        .all(|(p, q)| p.to_bits() == q.to_bits())
            }
            (Field::U8(x), Field::U8(y)) => x == y,
            (Field::Boxes(x), Field::Boxes(y)) => x == y,
            (Field::Number(x), Field::Number(y)) => x.to_bits() == y.to_bits(),
            (Field::Text(x), Field::Text(y)) => x == y,
            (Field::Json(x), Field::Json(y)) => x == y,
            _ => false,
        };
        if !same {
            return Err(format!("field `{name}` differs"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_of_the_little_endian_bytes() {
        let values: Vec<f32> = (0..100_000).map(|i| (i as f32 * 0.37).sin()).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(crc_of(&values, f32::to_le_bytes), crc32c::crc32c(&bytes));
        let q: Vec<i16> = (0..70_001).map(|i| (i % 65_536 - 32_768) as i16).collect();
        let bytes: Vec<u8> = q.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(crc_of(&q, i16::to_le_bytes), crc32c::crc32c(&bytes));
        // A known CRC-32C (RFC 3720's 32 bytes of zeros) pins the polynomial.
        assert_eq!(crc_of(&[0f32; 8], f32::to_le_bytes), 0x8A91_36AA);
    }
}
