//! The `zarr_write` sink: preprocessed cases into a Zarr v3 case store.
//!
//! ```yaml
//! sinks:
//!   - zarr_write: {path: cache/brats2018.zarr, patch_size: [96, 96, 96], workers: 2}
//! ```

use std::path::PathBuf;

use mtmed3d_pipeline::{
    BuildContext, Component, FinishContext, Problem, Sample, Sink, SinkConfig, StageContext,
    StageError,
};
use schemars::JsonSchema;
use serde::Deserialize;

use super::store::{CaseStore, StoreDtype, StoreOptions};

/// Writes each case as one group of a Zarr v3 store (readable by zarr-python): volumes as
/// zstd-compressed arrays, everything else as attributes. Each case is written under a
/// temporary name and renamed when complete (on S3: its group metadata written last); a rerun
/// of the same pipeline skips the cases already complete for the same upstream configuration.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ZarrWrite {
    /// The store: a folder (created if missing), or `s3://bucket/prefix` in a build with the
    /// `s3` feature. Shards of one run may share it.
    pub path: PathBuf,
    /// The training patch size (X, Y, Z): chunks default to half of it, so a random patch
    /// reads about (patch + chunk)³ voxels rather than the whole volume.
    #[serde(default = "default_patch")]
    pub patch_size: [usize; 3],
    /// Spatial chunk shape (default: half the patch size, rounded up).
    #[serde(default)]
    pub chunk: Option<[usize; 3]>,
    /// Shard shape, a multiple of the chunk (several chunks per file); default none.
    #[serde(default)]
    pub shard: Option<[usize; 3]>,
    /// Storage of f32 volumes: `f32` (exact), `f16` or `i16` (per-channel scale; half size).
    #[serde(default)]
    pub dtype: StoreDtype,
    /// zstd compression level (1–22).
    #[serde(default = "default_level")]
    pub level: i32,
    /// Threads zarrs may use per array (compression); the sink's own `workers` write cases in
    /// parallel.
    #[serde(default = "default_codec_threads")]
    pub codec_threads: usize,
    /// Skip cases already complete with the same upstream configuration (resume). `false`
    /// recomputes and replaces them.
    #[serde(default = "yes")]
    pub resume: bool,
    /// fsync each case before renaming it into place (safe against power loss; S3 needs no
    /// such step).
    #[serde(default = "yes")]
    pub durable: bool,
}

fn default_patch() -> [usize; 3] {
    [96, 96, 96]
}
fn default_level() -> i32 {
    3
}
fn default_codec_threads() -> usize {
    2
}
fn yes() -> bool {
    true
}

/// The chunk shape: as given, else half the training patch (rounded up), so a random patch
/// reads about (patch + chunk)³ voxels rather than the whole volume.
pub(crate) fn chunk_for(patch_size: [usize; 3], chunk: Option<[usize; 3]>) -> [usize; 3] {
    chunk.unwrap_or(patch_size.map(|p| p.div_ceil(2).max(1)))
}

/// Checks of the layout parameters a store writer shares (`zarr_write`, `cache`).
pub(crate) fn layout_problems(
    patch_size: [usize; 3],
    chunk: Option<[usize; 3]>,
    level: i32,
) -> Vec<Problem> {
    let mut p = Vec::new();
    if patch_size.contains(&0) {
        p.push(Problem::param("patch_size", "sizes must be at least 1"));
    }
    if chunk.is_some_and(|c| c.contains(&0)) {
        p.push(Problem::param("chunk", "sizes must be at least 1"));
    }
    if !(1..=22).contains(&level) {
        p.push(Problem::param("level", "zstd levels run from 1 to 22"));
    }
    p
}

impl ZarrWrite {
    pub fn store_options(&self, config_hash: Option<String>) -> StoreOptions {
        StoreOptions {
            chunk: chunk_for(self.patch_size, self.chunk),
            shard: self.shard,
            dtype: self.dtype,
            level: self.level,
            codec_threads: self.codec_threads,
            config_hash,
            durable: self.durable,
            ..StoreOptions::default()
        }
    }
}

impl Component for ZarrWrite {
    const NAME: &'static str = "zarr_write";
    const DOC: &'static str = "Writes cases into a Zarr v3 store (one group per case, renamed into place when complete; reruns resume).";
    fn outputs(&self) -> Vec<PathBuf> {
        vec![self.path.clone()]
    }
    fn check(&self) -> Vec<Problem> {
        let mut p = layout_problems(self.patch_size, self.chunk, self.level);
        let chunk = self.store_options(None).chunk;
        if let Some(shard) = self.shard
            && (0..3).any(|a| shard[a] == 0 || shard[a] % chunk[a] != 0)
        {
            p.push(Problem::param(
                "shard",
                format!("`shard` must be a multiple of the chunk shape {chunk:?} on every axis"),
            ));
        }
        if self.codec_threads == 0 {
            p.push(Problem::param("codec_threads", "must be at least 1"));
        }
        p
    }
}

impl SinkConfig for ZarrWrite {
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Sink>, StageError> {
        let store =
            CaseStore::create_or_open(&self.path, self.store_options(ctx.upstream_hash.clone()))?;
        Ok(Box::new(ZarrWriter {
            store,
            resume: self.resume,
            hash: ctx.upstream_hash.clone(),
        }))
    }
}

struct ZarrWriter {
    store: CaseStore,
    resume: bool,
    hash: Option<String>,
}

impl Sink for ZarrWriter {
    fn write(&self, sample: Sample, _ctx: &StageContext) -> Result<(), StageError> {
        self.store.write_case(&sample, None)
    }

    fn completed(&self) -> Result<Option<Vec<String>>, StageError> {
        if !self.resume {
            return Ok(None);
        }
        self.store.complete_cases(self.hash.as_deref()).map(Some)
    }

    fn finish(&self, ctx: &FinishContext) -> Result<(), StageError> {
        if ctx.complete {
            let cases = self.store.write_manifest()?;
            tracing::info!(
                "{}: {} complete cases (after sharded runs, `mtmed3d cache finalise` brings the manifest up to date)",
                self.store.path().display(),
                cases.len()
            );
        }
        Ok(())
    }
}
