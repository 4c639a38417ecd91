//! Small general-purpose components: a synthetic source, simple transforms, a JSON Lines
//! writer. They exercise the engine end to end and are handy for checking a pipeline's
//! wiring before pointing it at real data.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use mtmed3d_pipeline::{
    BuildContext, Component, Field, FinishContext, Problem, Sample, Sink, SinkConfig, Source,
    SourceConfig, Stage, StageConfig, StageContext, StageError,
};
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, RngExt};
use schemars::JsonSchema;
use serde::Deserialize;

fn default_field() -> String {
    "image".into()
}

/// Draws a standard normal value (Box–Muller), so the crate needs no distribution library.
fn standard_normal(rng: &mut impl Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// Cases of Gaussian noise, identical for the same seed and case whatever the epoch.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyntheticSource {
    /// Number of cases.
    #[serde(default = "SyntheticSource::default_cases")]
    pub cases: usize,
    /// Spatial shape of each volume (X, Y, Z).
    #[serde(default = "SyntheticSource::default_shape")]
    pub shape: [usize; 3],
    /// Channels of the `image` field.
    #[serde(default = "SyntheticSource::default_channels")]
    pub channels: usize,
    /// Case ids are `<prefix>_<number>`.
    #[serde(default = "SyntheticSource::default_prefix")]
    pub prefix: String,
}

impl SyntheticSource {
    fn default_cases() -> usize {
        8
    }
    fn default_shape() -> [usize; 3] {
        [16, 16, 16]
    }
    fn default_channels() -> usize {
        1
    }
    fn default_prefix() -> String {
        "case".into()
    }
}

impl Component for SyntheticSource {
    const NAME: &'static str = "synthetic";
    const DOC: &'static str =
        "Cases of Gaussian noise in field `image` (C×X×Y×Z), for trying pipelines without data.";

    fn writes(&self) -> Vec<String> {
        vec!["image".into()]
    }

    fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.shape.contains(&0) || self.channels == 0 {
            problems.push(Problem::param(
                "shape",
                "every dimension and `channels` must be at least 1",
            ));
        }
        let voxels = self
            .shape
            .iter()
            .try_fold(self.channels, |a, &b| a.checked_mul(b));
        if voxels.is_none_or(|v| v > 1 << 30) {
            problems.push(Problem::param(
                "shape",
                "a volume may have at most 2^30 voxels",
            ));
        }
        problems
    }
}

impl SourceConfig for SyntheticSource {
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Source>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

impl Source for SyntheticSource {
    fn cases(&self) -> Result<Vec<String>, StageError> {
        let width = self.cases.to_string().len().max(3);
        Ok((0..self.cases)
            .map(|i| format!("{}_{i:0width$}", self.prefix))
            .collect())
    }

    fn load(&self, case: &str, ctx: &StageContext) -> Result<Sample, StageError> {
        // Epoch 0 always: a case's data is the same every epoch; only augmentations vary.
        let mut rng = ctx.rng_for(0, case);
        let [x, y, z] = self.shape;
        let image = ArrayD::from_shape_simple_fn(IxDyn(&[self.channels, x, y, z]), || {
            standard_normal(&mut rng)
        });
        let mut sample = Sample::new(case);
        sample.insert("image", Field::f32(image));
        Ok(sample)
    }
}

/// Multiplies a volume by a constant.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    /// The f32 field to scale.
    #[serde(default = "default_field")]
    pub field: String,
    /// The factor.
    pub factor: f32,
}

impl Component for Scale {
    const NAME: &'static str = "scale";
    const DOC: &'static str = "Multiplies an f32 field by a constant factor.";
    fn reads(&self) -> Vec<String> {
        vec![self.field.clone()]
    }
    fn writes(&self) -> Vec<String> {
        vec![self.field.clone()]
    }
    fn check(&self) -> Vec<Problem> {
        if self.factor.is_finite() {
            vec![]
        } else {
            vec![Problem::param("factor", "`factor` must be a finite number")]
        }
    }
}

impl StageConfig for Scale {
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

impl Stage for Scale {
    fn process(&self, mut sample: Sample, _ctx: &StageContext) -> Result<Sample, StageError> {
        sample
            .f32_mut(&self.field)?
            .mapv_inplace(|v| v * self.factor);
        Ok(sample)
    }
}

/// Adds Gaussian noise, seeded per sample.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RandNoise {
    /// The f32 field to perturb.
    #[serde(default = "default_field")]
    pub field: String,
    /// Standard deviation of the noise.
    #[serde(default = "RandNoise::default_std")]
    pub std: f64,
}

impl RandNoise {
    fn default_std() -> f64 {
        0.1
    }
}

impl Component for RandNoise {
    const NAME: &'static str = "rand_noise";
    const DOC: &'static str = "Adds Gaussian noise to an f32 field (seeded per sample, so results do not depend on threads).";

    fn random(&self) -> bool {
        true
    }
    fn reads(&self) -> Vec<String> {
        vec![self.field.clone()]
    }
    fn writes(&self) -> Vec<String> {
        vec![self.field.clone()]
    }
    fn check(&self) -> Vec<Problem> {
        if self.std.is_finite() && self.std >= 0.0 {
            vec![]
        } else {
            vec![Problem::param("std", "`std` must be a finite number ≥ 0")]
        }
    }
}

impl StageConfig for RandNoise {
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

impl Stage for RandNoise {
    fn process(&self, mut sample: Sample, ctx: &StageContext) -> Result<Sample, StageError> {
        let mut rng = ctx.rng(&sample);
        sample
            .f32_mut(&self.field)?
            .mapv_inplace(|v| v + self.std as f32 * standard_normal(&mut rng));
        Ok(sample)
    }
}

/// Fails the listed cases: for rehearsing how a pipeline behaves when cases go bad.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailCases {
    /// Case ids to fail.
    pub cases: Vec<String>,
    /// The failure reason reported.
    #[serde(default = "FailCases::default_reason")]
    pub reason: String,
}

impl FailCases {
    fn default_reason() -> String {
        "failed on purpose (fail_cases stage)".into()
    }
}

impl Component for FailCases {
    const NAME: &'static str = "fail_cases";
    const DOC: &'static str =
        "Fails the listed cases with a given reason, to rehearse error handling.";
}

impl StageConfig for FailCases {
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

impl Stage for FailCases {
    fn process(&self, sample: Sample, _ctx: &StageContext) -> Result<Sample, StageError> {
        if self.cases.iter().any(|c| c == sample.case_id()) {
            return Err(StageError::new(self.reason.clone()));
        }
        Ok(sample)
    }
}

/// Sleeps for a while per sample: simulates slow storage or a slow model.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Delay {
    /// Milliseconds per sample.
    pub ms: u64,
}

impl Component for Delay {
    const NAME: &'static str = "delay";
    const DOC: &'static str = "Waits a fixed time per sample, to simulate slow storage or compute.";
}

impl StageConfig for Delay {
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

impl Stage for Delay {
    fn process(&self, sample: Sample, _ctx: &StageContext) -> Result<Sample, StageError> {
        std::thread::sleep(Duration::from_millis(self.ms));
        Ok(sample)
    }
}

/// Summary statistics of a volume, as written by `json_write`.
pub fn volume_summary(field: &Field) -> serde_json::Value {
    fn stats(values: impl Iterator<Item = f64>, shape: &[usize]) -> serde_json::Value {
        let (mut n, mut sum, mut sum_sq) = (0u64, 0.0f64, 0.0f64);
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values {
            n += 1;
            sum += v;
            sum_sq += v * v;
            min = min.min(v);
            max = max.max(v);
        }
        let mean = if n > 0 { sum / n as f64 } else { 0.0 };
        let var = if n > 0 {
            (sum_sq / n as f64 - mean * mean).max(0.0)
        } else {
            0.0
        };
        serde_json::json!({
            "shape": shape, "mean": mean, "std": var.sqrt(),
            "min": if n > 0 { min } else { 0.0 }, "max": if n > 0 { max } else { 0.0 },
        })
    }
    match field {
        Field::F32(a) => stats(a.iter().map(|&v| f64::from(v)), a.shape()),
        Field::U8(a) => stats(a.iter().map(|&v| f64::from(v)), a.shape()),
        Field::Boxes(b) => serde_json::to_value(&**b).unwrap_or_default(),
        Field::Number(x) => serde_json::json!(x),
        Field::Text(t) => serde_json::json!(t),
        Field::Json(j) => (**j).clone(),
    }
}

/// Writes one JSON line per sample: id, epoch and a summary of each field.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonWrite {
    /// Output file (JSON Lines). Written as `<path>.partial` and renamed when the run
    /// completes, so an interrupted run never leaves a file that looks complete.
    pub path: PathBuf,
    /// Fields to summarise (all fields when empty).
    #[serde(default)]
    pub fields: Vec<String>,
}

impl Component for JsonWrite {
    const NAME: &'static str = "json_write";
    const DOC: &'static str = "Writes one JSON line per sample (id, epoch, field summaries), sorted by id, renamed into place when complete.";
    fn reads(&self) -> Vec<String> {
        self.fields.clone()
    }
    fn outputs(&self) -> Vec<PathBuf> {
        vec![self.path.clone()]
    }
}

impl SinkConfig for JsonWrite {
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Sink>, StageError> {
        Ok(Box::new(JsonWriter {
            config: self.clone(),
            lines: Mutex::new(BTreeMap::new()),
        }))
    }
}

struct JsonWriter {
    config: JsonWrite,
    /// Keyed by (epoch, id) so the file's order does not depend on thread timing.
    lines: Mutex<BTreeMap<(u32, String), String>>,
}

impl Sink for JsonWriter {
    fn write(&self, sample: Sample, _ctx: &StageContext) -> Result<(), StageError> {
        let mut fields = serde_json::Map::new();
        for (name, field) in sample.fields() {
            if self.config.fields.is_empty() || self.config.fields.iter().any(|f| f == name) {
                fields.insert(name.to_string(), volume_summary(field));
            }
        }
        let line = serde_json::json!({"id": sample.id, "epoch": sample.epoch, "fields": fields});
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((sample.epoch, sample.id.clone()), line.to_string());
        Ok(())
    }

    fn finish(&self, ctx: &FinishContext) -> Result<(), StageError> {
        let path = &self.config.path;
        let partial = partial_path(path);
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::create_dir_all(dir)?;
            }
            let mut file = std::io::BufWriter::new(fs::File::create(&partial)?);
            for line in lines.values() {
                writeln!(file, "{line}")?;
            }
            file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            if ctx.complete {
                fs::rename(&partial, path)?;
            }
            Ok(())
        };
        write().map_err(|e| StageError::file(path, e))?;
        if !ctx.complete {
            tracing::warn!(
                "run incomplete: {} holds the {} samples written so far",
                partial.display(),
                lines.len()
            );
        }
        Ok(())
    }
}

/// `out/stats.jsonl` → `out/stats.jsonl.partial`.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Discards samples (to time a pipeline without writing).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Discard {}

impl Component for Discard {
    const NAME: &'static str = "discard";
    const DOC: &'static str = "Drops every sample; for timing a pipeline without writing anything.";
}

impl SinkConfig for Discard {
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Sink>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

impl Sink for Discard {
    fn write(&self, _sample: Sample, _ctx: &StageContext) -> Result<(), StageError> {
        Ok(())
    }
}
