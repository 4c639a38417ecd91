//! The three kinds of component a pipeline is made of, and what the runtime hands them.
//!
//! A component is a plain config struct (serde, `deny_unknown_fields`, defaults, a JSON
//! schema for `mtmed3d stages`) that builds the running thing. Adding a stage to the
//! framework is one file with a config and an implementation, plus one line in a registry.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use crate::error::StageError;
use crate::rng::sample_seed;
use crate::sample::Sample;

/// Emits the cases of a pipeline. `cases` lists them up front (so runs can be sharded and
/// show progress); `load` makes the sample for one case and may run on several threads.
pub trait Source: Send + Sync {
    fn cases(&self) -> Result<Vec<String>, StageError>;
    fn load(&self, case: &str, ctx: &StageContext) -> Result<Sample, StageError>;

    /// Loads a case for one epoch. Sources whose output varies per epoch (random training
    /// crops read straight from a store) override this; the others load the same sample
    /// every epoch.
    fn load_epoch(
        &self,
        case: &str,
        _epoch: u32,
        ctx: &StageContext,
    ) -> Result<Sample, StageError> {
        self.load(case, ctx)
    }

    /// The stratum of a case for cross-validation splits (its grade), when the source knows
    /// it without loading the case; `None` puts every case in one stratum.
    fn stratum(&self, _case: &str) -> Result<Option<String>, StageError> {
        Ok(None)
    }

    /// What the case is made of, as text that changes whenever its inputs change (file paths
    /// with sizes and modification times; a generator's parameters). A `cache` stage keys
    /// cases by it; `None` means the source cannot tell, and such cases are always recomputed.
    fn identity(&self, _case: &str) -> Result<Option<String>, StageError> {
        Ok(None)
    }
}

/// Looks cases up in a cache (see [`Stage::cache`]).
pub trait CacheLookup: Send + Sync {
    /// The case as the cache stored it, if it is there complete under exactly this key.
    fn lookup(&self, case: &str, key: &str) -> Result<Option<Sample>, StageError>;

    /// Bumped whenever the stored layout changes, so old entries miss instead of misreading.
    fn format_version(&self) -> u32;
}

/// Transforms samples. Most stages implement `process` (one in, one out); stages that split a
/// case into pieces (patches) or drop samples override `expand`.
pub trait Stage: Send + Sync {
    fn process(&self, sample: Sample, ctx: &StageContext) -> Result<Sample, StageError>;

    fn expand(&self, sample: Sample, ctx: &StageContext) -> Result<Vec<Sample>, StageError> {
        self.process(sample, ctx).map(|s| vec![s])
    }

    /// Called once after the last sample has passed through the stage.
    fn finish(&self, _ctx: &FinishContext) -> Result<(), StageError> {
        Ok(())
    }

    /// A stage that ends the deterministic prefix of a pipeline returns its lookup; the
    /// runtime then asks it before loading each case, and on a hit sends the stored sample
    /// straight to this stage, skipping the source and every stage before it.
    fn cache(&self) -> Option<std::sync::Arc<dyn CacheLookup>> {
        None
    }
}

/// Consumes samples: writers, metrics, trainers.
pub trait Sink: Send + Sync {
    fn write(&self, sample: Sample, ctx: &StageContext) -> Result<(), StageError>;

    /// Cases whose output this sink already holds, complete and made by the same upstream
    /// configuration (a resumable store). When every sink of a pipeline names a case, the
    /// runtime skips it, so rerunning an interrupted run does only the missing cases. `None`
    /// (the default) means the sink needs every case.
    fn completed(&self) -> Result<Option<Vec<String>>, StageError> {
        Ok(None)
    }

    /// Called once after the last sample; `ctx.complete` is false when the run was
    /// interrupted or stopped by a fatal error, so outputs must not be marked complete.
    fn finish(&self, _ctx: &FinishContext) -> Result<(), StageError> {
        Ok(())
    }
}

/// What a stage knows about where it runs.
#[derive(Debug, Clone)]
pub struct StageContext {
    /// Registered name of the stage (`rand_flip`).
    pub stage: String,
    /// Position in the pipeline: 0 is the source, then stages, then sinks.
    pub index: usize,
    /// The pipeline's seed.
    pub seed: u64,
    pub(crate) cancel: Arc<AtomicBool>,
}

impl StageContext {
    pub fn new(stage: impl Into<String>, index: usize, seed: u64) -> Self {
        StageContext {
            stage: stage.into(),
            index,
            seed,
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The random generator for this sample in this stage, seeded from (seed, epoch, sample
    /// id, stage), so results do not depend on thread count or arrival order.
    pub fn rng(&self, sample: &Sample) -> ChaCha8Rng {
        self.rng_for(sample.epoch, &sample.id)
    }

    pub fn rng_for(&self, epoch: u32, id: &str) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(sample_seed(self.seed, epoch, id, self.index, &self.stage))
    }

    /// True once the run is being stopped (Ctrl-C, or a fatal error elsewhere); long stages
    /// should check it and return early.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// Handed to `finish`.
#[derive(Debug, Clone)]
pub struct FinishContext {
    pub stage: String,
    /// False when the run was interrupted or stopped by a fatal error.
    pub complete: bool,
    pub samples_done: u64,
    pub samples_failed: u64,
}

/// Where a component is being built.
#[derive(Debug, Clone, Default)]
pub struct BuildContext {
    pub pipeline_name: String,
    /// The pipeline file (relative paths in configs are taken from the working directory).
    pub pipeline_file: Option<PathBuf>,
    pub seed: u64,
    pub epochs: u32,
    /// Cases per epoch after sharding, when known (a run lists them before building stages
    /// and sinks; a trainer sizes its learning-rate schedule from it).
    pub cases_per_epoch: Option<usize>,
    /// A stable hash of what produces the samples a sink receives: the seed, the source and
    /// every stage with their parameters. Stores record it, so a rerun with another
    /// configuration does not take old outputs for its own.
    pub upstream_hash: Option<String>,
    /// The pipeline's cross-validation split (a trainer gives its validation pipeline the
    /// same split, part `val`).
    pub split: Option<crate::split::Split>,
}

/// A problem with a parameter's value that its type cannot express (a probability above 1).
#[derive(Debug, Clone)]
pub struct Problem {
    /// The parameter at fault, so the error can point at it.
    pub param: Option<String>,
    pub message: String,
}

impl Problem {
    pub fn param(name: &str, message: impl Into<String>) -> Self {
        Problem {
            param: Some(name.to_string()),
            message: message.into(),
        }
    }
}

/// What every component config declares: its name, one line of documentation, the fields it
/// reads and writes (checked across the pipeline before anything runs), the paths it writes
/// and value checks.
pub trait Component: DeserializeOwned + JsonSchema + Send + Sync + 'static {
    const NAME: &'static str;
    const DOC: &'static str;

    fn reads(&self) -> Vec<String> {
        Vec::new()
    }
    fn writes(&self) -> Vec<String> {
        Vec::new()
    }
    /// Files or folders this component writes. Two sinks on one path, or one inside the other's
    /// folder, are an error; a sink that shares its folder names its files by a pattern
    /// (`dir/*.json`), and patterns that differ may share a folder.
    fn outputs(&self) -> Vec<PathBuf> {
        Vec::new()
    }
    fn check(&self) -> Vec<Problem> {
        Vec::new()
    }
    /// True when the output depends on the per-sample random generator; such a stage cannot
    /// sit before a cache.
    fn random(&self) -> bool {
        false
    }
    /// True for a stage that caches what the stages before it computed.
    fn is_cache(&self) -> bool {
        false
    }
}

pub trait SourceConfig: Component {
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Source>, StageError>;
}

pub trait StageConfig: Component {
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Stage>, StageError>;
}

pub trait SinkConfig: Component {
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Sink>, StageError>;
}
