//! The `cache` stage: ends the deterministic prefix of a pipeline and keeps what it computed
//! in a Zarr v3 case store, so later runs skip it.
//!
//! ```yaml
//! stages:
//!   - nifti_decode: {}
//!   - reorient: {axcodes: RAS}
//!   - normalise: {nonzero: true, channel_wise: true}
//!   - cache: {path: cache/brats2018.zarr}   # everything above runs once per case
//!   - rand_crop: {size: [96, 96, 96]}
//! ```
//!
//! Each case's key is a SHA-256 of the format version, the canonical configuration (defaults
//! filled in) of the source and every stage before the cache, and the case's inputs as the
//! source identifies them (file paths, sizes and modification times; a generator's
//! parameters). Before loading a case the runtime asks the store: a case stored complete under
//! the same key is read back and sent straight to this stage, skipping the source's decoding
//! and every stage before it. Otherwise the case is computed, passed on at once, and written
//! in the background by a writer thread; the stream only waits when `write_queue` cases are
//! already waiting to be written. Every case is committed whole (renamed into place on a
//! filesystem; on S3 its group metadata is written last, see `io::zarr::store`), so an
//! interrupted run never leaves a case that looks complete.
//! Editing a stage before the cache, or a source file, changes the key (a miss); editing a
//! stage after it does not (a hit).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, bounded};
use mtmed3d_pipeline::{
    BuildContext, CacheLookup, Component, FinishContext, Problem, Sample, Stage, StageConfig,
    StageContext, StageError,
};
use schemars::JsonSchema;
use serde::Deserialize;

use super::zarr::sink::{chunk_for, layout_problems};
use super::zarr::store::{CaseStore, FORMAT_VERSION, StoreDtype, StoreOptions};

/// Caches the cases computed by the stages before it in a Zarr v3 store; later runs read them
/// back instead of recomputing them (keyed by the inputs and the configuration before it).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    /// The store: a folder (created if missing), or `s3://bucket/prefix` in a build with the
    /// `s3` feature. Shards of one run may share it.
    pub path: PathBuf,
    /// The training patch size (X, Y, Z): chunks default to half of it, so a random crop read
    /// from the store touches few chunks.
    #[serde(default = "default_patch")]
    pub patch_size: [usize; 3],
    /// Spatial chunk shape (default: half the patch size, rounded up).
    #[serde(default)]
    pub chunk: Option<[usize; 3]>,
    /// Storage of f32 volumes. `f32` (the default) makes a hit bit-identical to a miss; `f16`
    /// and `i16` halve the store but a hit then differs from a fresh computation by the
    /// rounding.
    #[serde(default)]
    pub dtype: StoreDtype,
    /// zstd compression level (1–22).
    #[serde(default = "default_level")]
    pub level: i32,
    /// Computed cases waiting for the background writer before the stream waits for it.
    #[serde(default = "default_write_queue")]
    pub write_queue: usize,
    /// fsync each case before renaming it into place (safe against power loss).
    #[serde(default = "yes")]
    pub durable: bool,
}

fn default_patch() -> [usize; 3] {
    [96, 96, 96]
}
fn default_level() -> i32 {
    3
}
fn default_write_queue() -> usize {
    4
}
fn yes() -> bool {
    true
}

impl Component for Cache {
    const NAME: &'static str = "cache";
    const DOC: &'static str = "Ends the deterministic prefix: keeps each computed case in a Zarr v3 store and, on later runs, reads it back instead of running the source and the stages before it.";
    fn outputs(&self) -> Vec<PathBuf> {
        vec![self.path.clone()]
    }
    fn is_cache(&self) -> bool {
        true
    }
    fn check(&self) -> Vec<Problem> {
        let mut p = layout_problems(self.patch_size, self.chunk, self.level);
        if self.write_queue == 0 {
            p.push(Problem::param("write_queue", "must be at least 1"));
        }
        p
    }
}

impl Cache {
    fn store_options(&self) -> StoreOptions {
        StoreOptions {
            chunk: chunk_for(self.patch_size, self.chunk),
            dtype: self.dtype,
            level: self.level,
            // One background writer: it may use both codec threads while stages compute.
            codec_threads: 2,
            durable: self.durable,
            ..StoreOptions::default()
        }
    }
}

impl StageConfig for Cache {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
        let store = Arc::new(CaseStore::create_or_open(&self.path, self.store_options())?);
        let (tx, rx) = bounded::<Sample>(self.write_queue);
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let (store, stop, written, failed) =
                (store.clone(), stop.clone(), written.clone(), failed.clone());
            std::thread::Builder::new()
                .name("cache-writer".into())
                .spawn(move || {
                    for sample in rx {
                        if stop.load(Ordering::SeqCst) {
                            continue;
                        }
                        let key = sample.cache_key.clone();
                        match store.write_case(&sample, key.as_deref()) {
                            Ok(()) => {
                                written.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                // The case itself went on downstream: only its cache entry is
                                // missing, and the next run computes it again.
                                tracing::warn!(case = %sample.id, "not cached: {}", e.message);
                                failed
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .push(format!("{}: {}", sample.id, e.message));
                            }
                        }
                    }
                })
                .map_err(|e| StageError::new(format!("cannot start the cache writer: {e}")))?
        };
        Ok(Box::new(CacheStage {
            store,
            sender: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            stop,
            written,
            failed,
        }))
    }
}

struct CacheStage {
    store: Arc<CaseStore>,
    sender: Mutex<Option<Sender<Sample>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<String>>>,
}

impl Stage for CacheStage {
    fn process(&self, sample: Sample, _: &StageContext) -> Result<Sample, StageError> {
        if sample.cache_hit || sample.cache_key.is_none() {
            return Ok(sample);
        }
        // Only a handle to the volumes is queued; the original goes on at once.
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(sender) = sender
            && sender.send(sample.detached()).is_err()
        {
            tracing::warn!(case = %sample.id, "not cached: the cache writer has stopped");
        }
        Ok(sample)
    }

    fn cache(&self) -> Option<Arc<dyn CacheLookup>> {
        Some(Arc::new(StoreLookup(self.store.clone())))
    }

    fn finish(&self, ctx: &FinishContext) -> Result<(), StageError> {
        if !ctx.complete {
            // Interrupted: finish the case being written (it is renamed atomically either
            // way) and drop the queued ones; the next run computes them.
            self.stop.store(true, Ordering::SeqCst);
        }
        drop(self.sender.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(writer) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            writer
                .join()
                .map_err(|_| StageError::new("the cache writer panicked"))?;
        }
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        tracing::info!(
            "{}: {} cases written{}",
            self.store.path().display(),
            self.written.load(Ordering::Relaxed),
            if failed.is_empty() {
                String::new()
            } else {
                format!(", {} could not be written", failed.len())
            }
        );
        Ok(())
    }
}

struct StoreLookup(Arc<CaseStore>);

impl CacheLookup for StoreLookup {
    fn lookup(&self, case: &str, key: &str) -> Result<Option<Sample>, StageError> {
        if self.0.case_key(case)?.as_deref() != Some(key) {
            return Ok(None);
        }
        self.0.read_case(case).map(Some)
    }

    fn format_version(&self) -> u32 {
        FORMAT_VERSION as u32
    }
}
