//! The `mtmed3d` command line.

mod cache_cmd;

// Keeps a training step's large buffers from faulting in anew every step (model/src/allocator.rs).
#[cfg(feature = "jemalloc")]
mtmed3d_model::use_jemalloc!();

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{MultiProgress, ProgressDrawTarget};
use mtmed3d_pipeline::graph::{GraphFormat, render};
use mtmed3d_pipeline::{Diagnostics, Plan, Registry, RunOptions, Shard, config, runtime};

mod cv;
mod demo;
mod evaluate;
mod model_cmd;

#[derive(Parser)]
#[command(
    name = "mtmed3d",
    version,
    about = "3D medical-image pipelines declared in YAML",
    long_about = "3D medical-image pipelines declared in YAML: decode, reorient, normalise, crop, \
                  augment, cache, train and evaluate.\n\nStart with `mtmed3d demo`, then \
                  `mtmed3d stages` and the pipelines in configs/."
)]
struct Cli {
    /// Log format on stderr (verbosity: RUST_LOG, e.g. RUST_LOG=debug).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline.
    Run {
        pipeline: PathBuf,
        /// Override a value: `--set stages.rand_flip.prob=0.3`, `--set seed=7`.
        #[arg(long = "set", value_name = "PATH=VALUE")]
        overrides: Vec<String>,
        /// Run shard i of N (default from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT, or
        /// JOB_COMPLETION_INDEX with MTMED3D_SHARD_COUNT).
        #[arg(long, value_name = "i/N")]
        shard: Option<String>,
        /// Also write the run summary as JSON to this file.
        #[arg(long, value_name = "FILE")]
        summary: Option<PathBuf>,
    },
    /// Check a pipeline and report every mistake at once (exit status 2 when invalid).
    Validate {
        pipeline: PathBuf,
        #[arg(long = "set", value_name = "PATH=VALUE")]
        overrides: Vec<String>,
        /// Print the errors as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List every source, stage and sink with its parameters.
    Stages {
        /// As JSON (names, kinds, parameters with types, defaults and docs).
        #[arg(long)]
        json: bool,
        /// Only this component.
        name: Option<String>,
    },
    /// Draw the wired pipeline as Mermaid or Graphviz DOT.
    Graph {
        pipeline: PathBuf,
        #[arg(long = "set", value_name = "PATH=VALUE")]
        overrides: Vec<String>,
        #[arg(long, value_enum, default_value_t = Format::Mermaid)]
        format: Format,
    },
    /// Write a synthetic BraTS-2018-layout dataset (HGG/ and LGG/ case folders of .nii.gz).
    Phantom {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Number of cases.
        #[arg(long, default_value_t = 20)]
        cases: usize,
        /// Series seed: the same seed gives identical cases.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Volume shape X,Y,Z.
        #[arg(long, default_value = "240,240,155", value_parser = parse_shape)]
        shape: [usize; 3],
        /// Probability that a case is high grade.
        #[arg(long, default_value_t = 0.7)]
        hgg_fraction: f64,
    },
    /// Score predictions (label maps, boxes, grades) against a BraTS-layout truth folder.
    Evaluate(evaluate::EvaluateArgs),
    /// Inspect, verify and finalise a Zarr case store.
    #[command(subcommand)]
    Cache(cache_cmd::CacheCommand),
    /// Facts about the MTMed3D model: `mtmed3d model summary --preset reference`.
    #[command(subcommand)]
    Model(model_cmd::ModelCommand),
    /// The whole path with no downloads: synthetic cases → zarr cache → train the tiny model →
    /// whole-volume inference on held-out cases → metrics, overlays and training curves.
    Demo(demo::DemoArgs),
    /// K-fold cross-validation: train each fold, test each on the held-out cases, summarise
    /// mean ± std.
    Cv(cv::CvArgs),
    /// Draw a run's training curves (losses, validation, task weights) as SVG.
    Curves {
        /// The run's `history.jsonl` (written by `train`).
        history: PathBuf,
        /// Output file (default: `curves.svg` next to the history).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Mermaid,
    Dot,
}

/// Exit statuses: 0 success, 1 some cases failed or the run stopped, 2 invalid pipeline or
/// usage, 130 interrupted.
const EXIT_FAILED: u8 = 1;
const EXIT_INVALID: u8 = 2;
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let progress = MultiProgress::with_draw_target(if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    init_logging(cli.log_format, progress.clone());
    #[cfg(feature = "jemalloc")]
    match mtmed3d_model::allocator::settings() {
        Some(settings) => tracing::debug!(allocator = %settings, "allocator"),
        None => tracing::debug!("allocator: jemalloc did not report its settings"),
    }
    match dispatch(cli.command, progress) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn dispatch(command: Command, progress: MultiProgress) -> Result<u8> {
    let registry = mtmed3d_stages::registry();
    match command {
        Command::Run {
            pipeline,
            overrides,
            shard,
            summary,
        } => {
            let text = read_pipeline(&pipeline)?;
            let Some(plan) = validated(&text, &pipeline, &overrides, &registry, false) else {
                return Ok(EXIT_INVALID);
            };
            let shard = match shard {
                Some(s) => Some(Shard::parse(&s).map_err(anyhow::Error::msg)?),
                None => Shard::from_env().map_err(anyhow::Error::msg)?,
            };
            run_plan(&plan, shard, summary.as_deref(), progress)
        }
        Command::Validate {
            pipeline,
            overrides,
            json,
        } => {
            let text = read_pipeline(&pipeline)?;
            match validated(&text, &pipeline, &overrides, &registry, json) {
                Some(plan) => {
                    println!(
                        "{}: valid ({} source, {} stages, {} sinks)",
                        pipeline.display(),
                        plan.source.name,
                        plan.stages.len(),
                        plan.sinks.len()
                    );
                    Ok(0)
                }
                None => Ok(EXIT_INVALID),
            }
        }
        Command::Stages { json, name } => {
            print_stages(&registry, json, name.as_deref())?;
            Ok(0)
        }
        Command::Graph {
            pipeline,
            overrides,
            format,
        } => {
            let text = read_pipeline(&pipeline)?;
            let Some(plan) = validated(&text, &pipeline, &overrides, &registry, false) else {
                return Ok(EXIT_INVALID);
            };
            let format = match format {
                Format::Mermaid => GraphFormat::Mermaid,
                Format::Dot => GraphFormat::Dot,
            };
            print!("{}", render(&plan, format));
            Ok(0)
        }
        Command::Phantom {
            out,
            cases,
            seed,
            shape,
            hgg_fraction,
        } => write_phantoms(&out, cases, seed, shape, hgg_fraction, progress),
        Command::Evaluate(args) => evaluate::run(args),
        Command::Cache(command) => cache_cmd::run(command),
        Command::Model(command) => model_cmd::run(command),
        Command::Demo(args) => demo::run(args, progress),
        Command::Cv(args) => cv::run(args, progress),
        Command::Curves { history, out } => {
            let out = out.unwrap_or_else(|| history.with_file_name("curves.svg"));
            mtmed3d_stages::eval::curves::write_svg(&history, &out).map_err(anyhow::Error::msg)?;
            eprintln!("{}", out.display());
            Ok(0)
        }
    }
}

/// The flag Ctrl-C raises, shared by every run of this process (the demo runs several; a
/// process may install only one handler).
fn cancel_flag() -> Result<Arc<AtomicBool>> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    if let Some(flag) = FLAG.get() {
        return Ok(flag.clone());
    }
    let flag = Arc::new(AtomicBool::new(false));
    let raised = flag.clone();
    // First Ctrl-C: stop cleanly (outputs marked incomplete). Second: stop now.
    ctrlc::set_handler(move || {
        if raised.swap(true, Ordering::SeqCst) {
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
        eprintln!("\nstopping: finishing the samples in flight (Ctrl-C again to abort)");
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(FLAG.get_or_init(|| flag).clone())
}

/// Runs a pipeline file (with `--set` overrides); the exit status as `run` gives it.
fn run_file(path: &Path, overrides: &[String], progress: MultiProgress) -> Result<u8> {
    let text = read_pipeline(path)?;
    let registry = mtmed3d_stages::registry();
    let Some(plan) = validated(&text, path, overrides, &registry, false) else {
        return Ok(EXIT_INVALID);
    };
    run_plan(&plan, None, None, progress)
}

fn parse_shape(text: &str) -> Result<[usize; 3], String> {
    let parts: Vec<usize> = text
        .split(',')
        .map(|p| p.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("`{text}` is not a shape: write X,Y,Z, e.g. 240,240,155"))?;
    <[usize; 3]>::try_from(parts).map_err(|_| format!("`{text}` needs three sizes: X,Y,Z"))
}

pub(crate) fn write_phantoms(
    out: &Path,
    cases: usize,
    seed: u64,
    shape: [usize; 3],
    hgg_fraction: f64,
    progress: MultiProgress,
) -> Result<u8> {
    use mtmed3d_stages::io::phantom::PhantomConfig;
    use mtmed3d_stages::io::phantom_dataset::{CaseWritten, write_case};
    use rayon::prelude::*;
    let config = PhantomConfig {
        shape,
        hgg_fraction,
        ..PhantomConfig::default()
    };
    config.validate().map_err(anyhow::Error::msg)?;
    let bar = progress.add(indicatif::ProgressBar::new(cases as u64));
    bar.set_style(
        indicatif::ProgressStyle::with_template("phantom [{bar:30}] {pos}/{len} {elapsed} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let results: Vec<_> = (0..cases)
        .into_par_iter()
        .map(|index| {
            let r = write_case(out, &config, seed, index);
            bar.inc(1);
            r
        })
        .collect();
    bar.finish_and_clear();
    let (mut hgg, mut lgg, mut skipped) = (0, 0, 0);
    for r in results {
        match r? {
            CaseWritten::Written { grade, .. } if grade == "HGG" => hgg += 1,
            CaseWritten::Written { .. } => lgg += 1,
            CaseWritten::AlreadyComplete { .. } => skipped += 1,
        }
    }
    eprintln!(
        "{}: {hgg} HGG and {lgg} LGG cases written, {skipped} already complete ({}×{}×{}, seed {seed})",
        out.display(),
        shape[0],
        shape[1],
        shape[2]
    );
    Ok(0)
}

fn read_pipeline(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read pipeline file {} (the examples are in configs/)",
            path.display()
        )
    })
}

/// The plan, or `None` after printing every error.
fn validated(
    text: &str,
    path: &Path,
    overrides: &[String],
    registry: &Registry,
    json: bool,
) -> Option<Plan> {
    match config::parse_str(text, path, overrides, registry) {
        Ok(plan) => Some(plan),
        Err(diagnostics) => {
            report(&diagnostics, json);
            None
        }
    }
}

fn report(diagnostics: &Diagnostics, json: bool) {
    if json {
        println!("{}", diagnostics.to_json());
    } else {
        eprintln!("{diagnostics}");
    }
}

fn run_plan(
    plan: &Plan,
    shard: Option<Shard>,
    summary_path: Option<&Path>,
    progress: MultiProgress,
) -> Result<u8> {
    let cancel = cancel_flag()?;
    tracing::info!(pipeline = %plan.name, file = %plan.file.display(), "run started");
    let options = RunOptions {
        shard,
        cancel: Some(cancel),
        progress: Some(progress.clone()),
    };
    let summary = runtime::run(plan, &options)?;
    progress.clear().ok();
    eprint!("{}", summary.render());
    if let Some(path) = summary_path {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let json = serde_json::to_string_pretty(&summary)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write the run summary to {}", path.display()))?;
    }
    Ok(if summary.interrupted {
        EXIT_INTERRUPTED
    } else if summary.success(plan.allow_failures) {
        0
    } else {
        EXIT_FAILED
    })
}

fn print_stages(registry: &Registry, json: bool, only: Option<&str>) -> Result<()> {
    if let Some(name) = only
        && registry.get(name).is_none()
    {
        let hint = registry
            .suggest(name, mtmed3d_pipeline::Kind::Stage)
            .map(|s| format!(" (did you mean `{s}`?)"))
            .unwrap_or_default();
        anyhow::bail!("no component named `{name}`{hint}");
    }
    let selected = || {
        registry
            .entries()
            .filter(move |e| only.is_none_or(|n| e.name == n))
    };
    if json {
        let all = registry.describe();
        let list: Vec<_> = all
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| only.is_none_or(|n| e["name"] == n))
            .cloned()
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    for kind in [
        mtmed3d_pipeline::Kind::Source,
        mtmed3d_pipeline::Kind::Stage,
        mtmed3d_pipeline::Kind::Sink,
    ] {
        let entries: Vec<_> = selected().filter(|e| e.kind == kind).collect();
        if entries.is_empty() {
            continue;
        }
        writeln!(out, "{}:", kind.section())?;
        for e in entries {
            writeln!(out, "  {:<18} {}", e.name, e.doc)?;
            for p in e.params() {
                let default = match (&p.default, p.required) {
                    (_, true) => "required".to_string(),
                    (Some(d), _) => format!("default {d}"),
                    (None, _) => "optional".to_string(),
                };
                writeln!(
                    out,
                    "      {:<16} {:<22} {:<20} {}",
                    p.name, p.type_name, default, p.doc
                )?;
            }
        }
        writeln!(out)?;
    }
    writeln!(
        out,
        "every component also accepts: workers (threads, default 1), queue (input channel capacity, default 2), on_error (skip|fail, default skip)"
    )?;
    Ok(())
}

/// Logs go through the progress bars' lock so that a log line never lands inside a bar.
#[derive(Clone)]
struct BarSafeWriter(MultiProgress);

impl Write for BarSafeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // tracing-subscriber formats a whole event, then writes it in one call.
        self.0.suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn init_logging(format: LogFormat, progress: MultiProgress) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let writer = move || BarSafeWriter(progress.clone());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}
