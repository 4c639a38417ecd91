//! The `zarr_read` source: cases (or random training crops of them) from a case store.
//!
//! ```yaml
//! source:
//!   zarr_read: {path: cache/brats2018.zarr, crop: {size: [96, 96, 96], foreground_prob: 0.7}, workers: 4, queue: 8}
//! ```
//!
//! Read-ahead is the runtime's: `workers` cases are read at once and up to `queue` wait ready
//! for the next stage, so a model stage never waits while the storage keeps up.

use std::path::PathBuf;

use mtmed3d_pipeline::{
    BuildContext, Component, Problem, Sample, Source, SourceConfig, StageContext, StageError,
};
use rand::RngExt;
use schemars::JsonSchema;
use serde::Deserialize;

use super::store::CaseStore;

/// A random crop read straight from the store.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CropSpec {
    /// Crop size (X, Y, Z); padded with zeros where the volume is smaller.
    pub size: [usize; 3],
    /// Probability that the crop is centred on a foreground voxel (one of those sampled into
    /// the case's attributes when it was written), otherwise anywhere.
    #[serde(default = "default_fg")]
    pub foreground_prob: f64,
}

fn default_fg() -> f64 {
    0.5
}

/// Reads cases from a Zarr case store written by `zarr_write`: whole, or one random crop per
/// case and epoch that reads only the chunks it needs.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ZarrRead {
    /// The store: a folder, or `s3://bucket/prefix` in a build with the `s3` feature.
    pub path: PathBuf,
    /// Only these cases (default: every complete case).
    #[serde(default)]
    pub cases: Option<Vec<String>>,
    /// Read a random crop of each case rather than the whole case.
    #[serde(default)]
    pub crop: Option<CropSpec>,
    /// Threads zarrs may use to decode the chunks of one array.
    #[serde(default = "default_codec_threads")]
    pub codec_threads: usize,
}

fn default_codec_threads() -> usize {
    1
}

impl Component for ZarrRead {
    const NAME: &'static str = "zarr_read";
    const DOC: &'static str = "Cases from a Zarr case store: whole, or random crops (foreground-weighted) that read only the chunks they touch.";
    fn writes(&self) -> Vec<String> {
        // The fields depend on the store; the usual ones, for the wiring check.
        vec!["image".into(), "label".into(), "grade".into()]
    }
    fn check(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if let Some(c) = &self.crop {
            if c.size.contains(&0) {
                p.push(Problem::param("crop", "crop sizes must be at least 1"));
            }
            if !(0.0..=1.0).contains(&c.foreground_prob) {
                p.push(Problem::param(
                    "crop",
                    "`foreground_prob` must be within [0, 1]",
                ));
            }
        }
        if self.codec_threads == 0 {
            p.push(Problem::param("codec_threads", "must be at least 1"));
        }
        p
    }
}

impl SourceConfig for ZarrRead {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Source>, StageError> {
        let mut store = CaseStore::open(&self.path)?;
        store.set_codec_threads(self.codec_threads);
        Ok(Box::new(ZarrCases {
            config: self.clone(),
            store,
        }))
    }
}

struct ZarrCases {
    config: ZarrRead,
    store: CaseStore,
}

/// The window start that centres `size` on `centre` but stays inside `shape` where it fits
/// (as `rand_crop`).
fn centred_inside(centre: [usize; 3], size: [usize; 3], shape: [usize; 3]) -> [i64; 3] {
    [0, 1, 2].map(|a| {
        let start = centre[a] as i64 - size[a] as i64 / 2;
        let max_start = shape[a] as i64 - size[a] as i64;
        if max_start >= 0 {
            start.clamp(0, max_start)
        } else {
            max_start / 2
        }
    })
}

impl Source for ZarrCases {
    fn cases(&self) -> Result<Vec<String>, StageError> {
        let complete = self.store.complete_cases(None)?;
        match &self.config.cases {
            None => {
                if complete.is_empty() {
                    return Err(StageError::file(
                        &self.config.path,
                        "the store holds no complete case",
                    ));
                }
                Ok(complete)
            }
            Some(wanted) => {
                let missing: Vec<&String> =
                    wanted.iter().filter(|c| !complete.contains(c)).collect();
                if !missing.is_empty() {
                    return Err(StageError::file(
                        &self.config.path,
                        format!(
                            "cases not in the store or incomplete: {}",
                            missing
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
                Ok(wanted.clone())
            }
        }
    }

    fn load(&self, case: &str, ctx: &StageContext) -> Result<Sample, StageError> {
        self.load_epoch(case, 0, ctx)
    }

    fn load_epoch(&self, case: &str, epoch: u32, ctx: &StageContext) -> Result<Sample, StageError> {
        let Some(crop) = &self.config.crop else {
            return self.store.read_case(case);
        };
        let info = self.store.case_info(case)?.ok_or_else(|| {
            StageError::file(&self.config.path, format!("case `{case}` is not complete"))
        })?;
        let shape = info
            .volume_shapes()
            .values()
            .find(|s| s.len() >= 3)
            .map(|s| {
                let n = s.len();
                [s[n - 3], s[n - 2], s[n - 1]]
            })
            .ok_or_else(|| {
                StageError::file(&self.config.path, format!("case `{case}` has no 3D volume"))
            })?;
        // A new crop every epoch, the same for the same (seed, epoch, case).
        let mut rng = ctx.rng_for(epoch, case);
        let centre = if !info.foreground.is_empty() && rng.random::<f64>() < crop.foreground_prob {
            info.foreground[rng.random_range(0..info.foreground.len())]
        } else {
            [0, 1, 2].map(|a| rng.random_range(0..shape[a].max(1)))
        };
        let start = centred_inside(centre, crop.size, shape);
        self.store.read_crop_info(&info, start, crop.size)
    }
}
