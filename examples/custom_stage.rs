//! Writing a stage of your own and running it in a YAML pipeline next to the built-in ones.
//!
//! `cargo run --example custom_stage`
//!
//! A stage is a config struct (serde + a JSON schema, so `validate` and `stages` know its
//! parameters) and an implementation of `Stage`. Registering it is one line.

use std::path::Path;

use mtmed3d_pipeline::{
    BuildContext, Component, Field, Problem, RunOptions, Sample, Stage, StageConfig, StageContext,
    StageError, config, runtime,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// Clips an f32 field to a window, as a CT pipeline would clip Hounsfield units.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ClipWindow {
    /// The field to clip.
    #[serde(default = "default_field")]
    field: String,
    /// Lowest value kept.
    low: f32,
    /// Highest value kept.
    high: f32,
    /// Where to write the fraction of voxels that were clipped.
    #[serde(default)]
    report_into: Option<String>,
}

fn default_field() -> String {
    "image".into()
}

impl Component for ClipWindow {
    const NAME: &'static str = "clip_window";
    const DOC: &'static str = "Clips an f32 field to [low, high].";

    // Declaring what a stage reads and writes lets `validate` catch a pipeline that reads a
    // field nothing provides, before anything runs.
    fn reads(&self) -> Vec<String> {
        vec![self.field.clone()]
    }
    fn writes(&self) -> Vec<String> {
        let mut fields = vec![self.field.clone()];
        fields.extend(self.report_into.clone());
        fields
    }
    fn check(&self) -> Vec<Problem> {
        if self.low < self.high {
            vec![]
        } else {
            vec![Problem::param("high", "`high` must be above `low`")]
        }
    }
}

impl StageConfig for ClipWindow {
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

impl Stage for ClipWindow {
    fn process(&self, mut sample: Sample, _ctx: &StageContext) -> Result<Sample, StageError> {
        let volume = sample.f32_mut(&self.field)?;
        let mut clipped = 0usize;
        volume.mapv_inplace(|v| {
            let c = v.clamp(self.low, self.high);
            clipped += usize::from(c != v);
            c
        });
        let fraction = clipped as f64 / volume.len().max(1) as f64;
        if let Some(name) = &self.report_into {
            sample.insert(name.clone(), Field::Number(fraction));
        }
        Ok(sample)
    }
}

const PIPELINE: &str = "
name: custom-stage-example
seed: 1
source:
  synthetic: {cases: 6, shape: [16, 16, 16]}
stages:
  - clip_window: {low: -1.0, high: 1.0, report_into: clipped}
sinks:
  - json_write: {path: runs/custom_stage/stats.jsonl}
";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut registry = mtmed3d_stages::registry();
    registry.stage::<ClipWindow>(); // the one line that makes the stage available
    let plan = config::parse_str(PIPELINE, Path::new("example.yaml"), &[], &registry)?;
    let summary = runtime::run(&plan, &RunOptions::default())?;
    print!("{}", summary.render());
    // About 32% of standard-normal voxels lie outside [-1, 1].
    println!("wrote runs/custom_stage/stats.jsonl");
    Ok(())
}
