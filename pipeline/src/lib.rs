//! The mtmed3d engine: samples, stage traits, YAML pipelines validated with located errors,
//! and a threaded runtime over bounded channels.
//!
//! ```no_run
//! use mtmed3d_pipeline::{Registry, RunOptions, config, runtime};
//!
//! let registry = Registry::new(); // register components: registry.stage::<MyStageConfig>();
//! let plan = config::load("pipeline.yaml".as_ref(), &[], &registry).map_err(|e| e.to_string())?;
//! let summary = runtime::run(&plan, &RunOptions::default()).map_err(|e| e.to_string())?;
//! println!("{}", summary.render());
//! # Ok::<(), String>(())
//! ```

pub mod cache_key;
pub mod config;
pub mod error;
pub mod graph;
pub mod registry;
pub mod rng;
pub mod runtime;
pub mod sample;
pub mod split;
pub mod stage;
pub mod yaml;

pub use config::{CommonOptions, OnError, Plan};
pub use error::{Diagnostic, DiagnosticKind, Diagnostics, StageError};
pub use registry::{Kind, Registry};
pub use runtime::{RunOptions, RunSummary, Shard};
pub use sample::{Affine, BoundingBox, Field, Meta, Sample, SpatialOp};
pub use stage::{
    BuildContext, CacheLookup, Component, FinishContext, Problem, Sink, SinkConfig, Source,
    SourceConfig, Stage, StageConfig, StageContext,
};
