//! Runs a plan: each component on its own threads, joined by bounded channels.
//!
//! ```text
//! feeder ─▶ [case ids] ─▶ source workers ─▶ [queue] ─▶ stage 1 workers ─▶ … ─┬▶ [queue] ─▶ sink A
//!                                                                             └▶ [queue] ─▶ sink B
//! ```
//!
//! Memory is bounded by the channels: at most `Σ queue + Σ workers` samples (plus one per
//! source worker) exist at any time, whatever the dataset size, because a full channel blocks
//! the stage that feeds it. The runtime measures that number (`peak_in_flight`).
//!
//! A failed sample is reported with its case id, stage and reason; under `on_error: skip` the
//! others carry on, under `on_error: fail` the run stops cleanly. Stopping (Ctrl-C, a fatal
//! error) stops the source, lets every thread drain its channel without working, and tells
//! sinks through `finish` that the run is not complete.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::config::{CommonOptions, OnError, Plan, Planned};
use crate::error::StageError;
use crate::registry::{Built, Kind};
use crate::sample::Sample;
use crate::stage::{BuildContext, FinishContext, Sink, Source, Stage, StageContext};

/// How to run a plan.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Run only shard `index` of `count` (cases split by position in the sorted case list).
    pub shard: Option<Shard>,
    /// Set to stop the run (the CLI wires Ctrl-C to it).
    pub cancel: Option<Arc<AtomicBool>>,
    /// Draw progress bars here (hidden when not on a terminal).
    pub progress: Option<MultiProgress>,
}

/// One of `count` disjoint parts of the case list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// `i/N` with 0 ≤ i < N.
    pub fn parse(text: &str) -> Result<Shard, String> {
        let (i, n) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` is not a shard: write i/N, e.g. 0/4"))?;
        let index: usize = i
            .trim()
            .parse()
            .map_err(|_| format!("shard index `{i}` is not a number"))?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| format!("shard count `{n}` is not a number"))?;
        if count == 0 || index >= count {
            return Err(format!(
                "shard {index}/{count}: the index must be below the count (0/{count} … {}/{count})",
                count.saturating_sub(1)
            ));
        }
        Ok(Shard { index, count })
    }

    /// The shard from a Slurm array job or a Kubernetes indexed job, if running in one.
    pub fn from_env() -> Result<Option<Shard>, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let pair = match (
            var("SLURM_ARRAY_TASK_ID"),
            var("SLURM_ARRAY_TASK_COUNT"),
            var("JOB_COMPLETION_INDEX"),
            var("MTMED3D_SHARD_COUNT"),
        ) {
            (Some(i), Some(n), _, _) => Some((i, n, "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT")),
            (_, _, Some(i), Some(n)) => Some((i, n, "JOB_COMPLETION_INDEX/MTMED3D_SHARD_COUNT")),
            _ => None,
        };
        match pair {
            None => Ok(None),
            Some((i, n, from)) => Shard::parse(&format!("{i}/{n}"))
                .map(Some)
                .map_err(|e| format!("{from}: {e}")),
        }
    }

    pub fn select<T>(&self, items: Vec<T>) -> Vec<T> {
        items
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % self.count == self.index)
            .map(|(_, item)| item)
            .collect()
    }
}

/// Why a run could not start or was stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot build `{component}`: {message}")]
    Build { component: String, message: String },
    #[error("source `{source_name}` cannot list its cases: {message}")]
    Cases {
        source_name: String,
        message: String,
    },
}

/// One failed sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaseFailure {
    pub case: String,
    pub epoch: u32,
    pub stage: String,
    pub reason: String,
}

/// What one component did.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    pub name: String,
    pub kind: Kind,
    pub workers: usize,
    pub queue: usize,
    pub received: u64,
    pub emitted: u64,
    pub failed: u64,
    /// Time spent working, summed over workers.
    pub busy_s: f64,
    /// Time spent waiting for input, summed over workers (a starved stage).
    pub waiting_s: f64,
    /// Time spent blocked on a full downstream channel (a stage held back by a slower one).
    pub blocked_s: f64,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub pipeline: String,
    pub shard: Option<Shard>,
    pub cases: usize,
    pub epochs: u32,
    /// Samples emitted by the source (cases × epochs unless stopped early).
    pub samples: u64,
    pub done: u64,
    pub failed: u64,
    /// Samples stopped before completion because the run was interrupted.
    pub cancelled: u64,
    /// Samples a stage chose to drop (a filter), neither done nor failed.
    pub dropped: u64,
    pub failures: Vec<CaseFailure>,
    /// Errors from components' `finish` (writing a summary file, say).
    pub finish_errors: Vec<CaseFailure>,
    pub interrupted: bool,
    /// Stopped by a sample failing under `on_error: fail`.
    pub fatal: bool,
    /// Cases read from the cache (skipping the stages before it) and cases computed.
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub peak_in_flight: u64,
    /// Under `max_in_flight_bytes`: the most bytes counted for the cases in flight at once
    /// (reservations included), and the budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_in_flight_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_flight_byte_budget: Option<u64>,
    /// The bound the channels guarantee (Σ queue + Σ workers).
    pub in_flight_bound: u64,
    pub wall_s: f64,
    pub stages: Vec<StageReport>,
}

impl RunSummary {
    /// True when nothing failed (or failures were allowed) and the run was not stopped.
    pub fn success(&self, allow_failures: bool) -> bool {
        !self.interrupted
            && !self.fatal
            && self.finish_errors.is_empty()
            && (allow_failures || self.failures.is_empty())
    }

    /// A table for the terminal.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let shard = self
            .shard
            .map(|s| format!(" (shard {}/{})", s.index, s.count))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{}{shard}: {} done, {} failed{}{} of {} samples ({} cases × {} epochs) in {:.2} s; peak {} samples in flight (bound {})",
            self.pipeline,
            self.done,
            self.failed,
            if self.cancelled > 0 {
                format!(", {} cancelled", self.cancelled)
            } else {
                String::new()
            },
            if self.dropped > 0 {
                format!(", {} dropped", self.dropped)
            } else {
                String::new()
            },
            self.samples,
            self.cases,
            self.epochs,
            self.wall_s,
            self.peak_in_flight,
            self.in_flight_bound,
        );
        if let (Some(peak), Some(budget)) = (self.peak_in_flight_bytes, self.in_flight_byte_budget)
        {
            let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
            let _ = writeln!(
                out,
                "  in flight: at most {:.0} MiB of volumes (budget {:.0} MiB)",
                mib(peak),
                mib(budget)
            );
        }
        if self.cache_hits + self.cache_misses > 0 {
            let _ = writeln!(
                out,
                "  cache: {} hits, {} computed",
                self.cache_hits, self.cache_misses
            );
        }
        let _ = writeln!(
            out,
            "  {:<20} {:>7} {:>8} {:>8} {:>7} {:>9} {:>9} {:>9}",
            "component", "workers", "in", "out", "failed", "busy s", "wait s", "blocked s"
        );
        for s in &self.stages {
            let _ = writeln!(
                out,
                "  {:<20} {:>7} {:>8} {:>8} {:>7} {:>9.3} {:>9.3} {:>9.3}",
                s.name,
                s.workers,
                s.received,
                s.emitted,
                s.failed,
                s.busy_s,
                s.waiting_s,
                s.blocked_s
            );
        }
        for f in &self.failures {
            let epoch = if self.epochs > 1 {
                format!(" (epoch {})", f.epoch)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "  FAILED {}{epoch} in {}: {}",
                f.case, f.stage, f.reason
            );
        }
        for f in &self.finish_errors {
            let _ = writeln!(out, "  FAILED to finish {}: {}", f.stage, f.reason);
        }
        if self.interrupted {
            let _ = writeln!(out, "  interrupted: outputs of this run are incomplete");
        }
        out
    }
}

/// How long a source worker waits for a slot under `max_in_flight` before warning.
const STALL_WARNING: Duration = Duration::from_secs(60);

/// Shared bookkeeping of one run.
struct RunState {
    in_flight: AtomicU64,
    peak: AtomicU64,
    samples: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    cancelled_samples: AtomicU64,
    dropped: AtomicU64,
    failures: Mutex<Vec<CaseFailure>>,
    cancel: Arc<AtomicBool>,
    fatal: AtomicBool,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    /// The plan's `max_in_flight`: source workers wait for a case to finish before starting
    /// another past it.
    max_in_flight: Option<u64>,
    /// The plan's `max_in_flight_bytes`.
    byte_budget: Option<u64>,
    /// Bytes counted for the cases in flight: each at the larger of what was reserved when
    /// it started and the largest size it has been seen at.
    bytes: AtomicU64,
    peak_bytes: AtomicU64,
    /// Σ largest size and number of the cases that have left, for the reservation of the next.
    finished_bytes: AtomicU64,
    finished_measured: AtomicU64,
    /// The largest size any case has been seen at, for the reservation before one finished.
    largest_seen: AtomicU64,
    /// Signalled whenever a case leaves the pipeline.
    case_left: (Mutex<()>, std::sync::Condvar),
}

impl RunState {
    fn bounded(&self) -> bool {
        self.max_in_flight.is_some() || self.byte_budget.is_some()
    }

    /// What a case about to start is expected to hold: the mean largest size of the cases
    /// finished so far, else the largest size seen so far; `None` before any case was seen
    /// holding volumes, when only a case alone can start.
    fn expected_case_bytes(&self) -> Option<u64> {
        let n = self.finished_measured.load(Ordering::SeqCst);
        let mean = self.finished_bytes.load(Ordering::SeqCst).checked_div(n);
        mean.or_else(|| Some(self.largest_seen.load(Ordering::SeqCst)).filter(|&b| b > 0))
    }

    /// Counts one more case in flight, first waiting (under `max_in_flight` and
    /// `max_in_flight_bytes`) until there is room for it. Returns how many are in flight with
    /// it and the bytes reserved for it; `None` when the run was cancelled while waiting.
    fn enter(&self) -> Option<(u64, u64)> {
        if !self.bounded() {
            return Some((self.in_flight.fetch_add(1, Ordering::SeqCst) + 1, 0));
        }
        let started = Instant::now();
        let mut warned = false;
        let mut guard = self.case_left.0.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            // Checked and reserved under the lock: several source workers never overshoot
            // together. The first case always starts, however large.
            let n = self.in_flight.load(Ordering::SeqCst);
            let expected = self.expected_case_bytes();
            let count_fits = self.max_in_flight.is_none_or(|max| n < max);
            let bytes_fit = n == 0
                || self.byte_budget.is_none_or(|budget| {
                    expected.is_some_and(|e| {
                        self.bytes.load(Ordering::SeqCst).saturating_add(e) <= budget
                    })
                });
            let reserve = self.byte_budget.and(expected).unwrap_or(0);
            if count_fits && bytes_fit {
                self.in_flight.fetch_add(1, Ordering::SeqCst);
                let now = self.bytes.fetch_add(reserve, Ordering::SeqCst) + reserve;
                self.peak_bytes.fetch_max(now, Ordering::SeqCst);
                return Some((n + 1, reserve));
            }
            if self.cancel.load(Ordering::SeqCst) {
                return None;
            }
            if !warned && started.elapsed() > STALL_WARNING {
                warned = true;
                let bounds: Vec<String> = [
                    self.max_in_flight
                        .map(|max| format!("`max_in_flight: {max}`")),
                    self.byte_budget.map(|budget| {
                        format!(
                            "`max_in_flight_bytes: {budget}` ({} bytes counted)",
                            self.bytes.load(Ordering::SeqCst)
                        )
                    }),
                ]
                .into_iter()
                .flatten()
                .collect();
                tracing::warn!(
                    "no case has finished for {} s with {n} cases in flight under {}; \
                     a sink that holds cases until it has several (a training batch) needs a \
                     larger bound than what it holds",
                    STALL_WARNING.as_secs(),
                    bounds.join(" and ")
                );
            }
            // Timed, so a cancelled run is noticed even if no case leaves.
            guard = self
                .case_left
                .1
                .wait_timeout(guard, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn record_failure(&self, failure: CaseFailure, policy: OnError) {
        tracing::warn!(case = %failure.case, stage = %failure.stage, "{}", failure.reason);
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(failure);
        if policy == OnError::Fail {
            self.fatal.store(true, Ordering::SeqCst);
            self.cancel.store(true, Ordering::SeqCst);
        }
    }
}

/// Travels with every sample of one source case; counts the case in flight until the last
/// piece of it is dropped, then records how it ended.
pub(crate) struct InFlightToken {
    state: Arc<RunState>,
    failed: AtomicBool,
    delivered: AtomicBool,
    /// Bytes this case adds to `RunState::bytes`: the reservation, raised to the largest
    /// size seen.
    accounted: AtomicU64,
    /// The largest size the case (any piece of it) was seen at between components.
    largest: AtomicU64,
}

impl std::fmt::Debug for InFlightToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InFlightToken")
    }
}

impl InFlightToken {
    /// A token for a case already counted by [`RunState::enter`] (`now` in flight with it,
    /// `reserved` bytes counted for it).
    fn new(state: Arc<RunState>, (now, reserved): (u64, u64)) -> Arc<Self> {
        state.peak.fetch_max(now, Ordering::SeqCst);
        state.samples.fetch_add(1, Ordering::SeqCst);
        Arc::new(InFlightToken {
            state,
            failed: AtomicBool::new(false),
            delivered: AtomicBool::new(false),
            accounted: AtomicU64::new(reserved),
            largest: AtomicU64::new(0),
        })
    }

    /// Records a piece of the case seen holding `bytes` as it passes between components.
    fn observe(&self, bytes: u64) {
        self.largest.fetch_max(bytes, Ordering::SeqCst);
        self.state.largest_seen.fetch_max(bytes, Ordering::SeqCst);
        let before = self.accounted.fetch_max(bytes, Ordering::SeqCst);
        if bytes > before {
            let s = &self.state;
            let now = s.bytes.fetch_add(bytes - before, Ordering::SeqCst) + (bytes - before);
            s.peak_bytes.fetch_max(now, Ordering::SeqCst);
        }
    }
}

impl Drop for InFlightToken {
    fn drop(&mut self) {
        let s = &self.state;
        let counter = if self.failed.load(Ordering::SeqCst) {
            &s.failed
        } else if s.cancel.load(Ordering::SeqCst) && !self.delivered.load(Ordering::SeqCst) {
            &s.cancelled_samples
        } else if self.delivered.load(Ordering::SeqCst) {
            &s.done
        } else {
            &s.dropped
        };
        counter.fetch_add(1, Ordering::SeqCst);
        let largest = self.largest.load(Ordering::SeqCst);
        if largest > 0 {
            s.finished_bytes.fetch_add(largest, Ordering::SeqCst);
            s.finished_measured.fetch_add(1, Ordering::SeqCst);
        }
        s.bytes
            .fetch_sub(self.accounted.load(Ordering::SeqCst), Ordering::SeqCst);
        s.in_flight.fetch_sub(1, Ordering::SeqCst);
        if s.bounded() {
            // Taken so a source worker between its check and its wait cannot miss this.
            let _guard = s.case_left.0.lock().unwrap_or_else(|p| p.into_inner());
            s.case_left.1.notify_all();
        }
    }
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    emitted: AtomicU64,
    failed: AtomicU64,
    busy_ns: AtomicU64,
    waiting_ns: AtomicU64,
    blocked_ns: AtomicU64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Where a component's output goes: the next stage's channel, or every sink's.
struct Outputs {
    senders: Vec<Sender<Sample>>,
    /// No sinks after this point: a sample that gets here is complete.
    terminal: bool,
}

impl Outputs {
    /// Sends to every receiver (sharing voxels), blocking while a channel is full. Returns the
    /// time spent blocked.
    fn send(&self, sample: Sample) -> Duration {
        if let Some(t) = &sample.token
            && t.state.byte_budget.is_some()
        {
            t.observe(sample.volume_bytes());
        }
        if self.terminal {
            if let Some(t) = &sample.token {
                t.delivered.store(true, Ordering::SeqCst);
            }
            return Duration::ZERO;
        }
        let start = Instant::now();
        if let Some((last, rest)) = self.senders.split_last() {
            for tx in rest {
                // A closed channel means the consumer stopped (the run is being cancelled).
                let _ = tx.send(sample.clone());
            }
            let _ = last.send(sample);
        }
        start.elapsed()
    }
}

/// A component being run: its name, options, context and counters.
struct Hop {
    name: String,
    kind: Kind,
    options: CommonOptions,
    ctx: StageContext,
    counters: Counters,
    bar: Option<ProgressBar>,
}

impl Hop {
    fn report(&self) -> StageReport {
        let c = &self.counters;
        let secs = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 * 1e-9;
        StageReport {
            name: self.name.clone(),
            kind: self.kind,
            workers: self.options.workers,
            queue: self.options.queue,
            received: c.received.load(Ordering::Relaxed),
            emitted: c.emitted.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            busy_s: secs(&c.busy_ns),
            waiting_s: secs(&c.waiting_ns),
            blocked_s: secs(&c.blocked_ns),
        }
    }

    fn fail(&self, state: &RunState, case: &str, epoch: u32, error: StageError) {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        state.record_failure(
            CaseFailure {
                case: case.to_string(),
                epoch,
                stage: self.name.clone(),
                reason: error.message,
            },
            self.options.on_error,
        );
    }

    fn tick(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> StageError {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    StageError::new(format!("internal error (panic): {text}"))
}

/// Runs a component's workers until its input channel closes. `work` handles one sample and
/// returns the time it spent blocked on full downstream channels; a failure (or a panic) is
/// recorded against the sample's case and marks the case failed. After a cancel, samples are
/// drained without work so upstream threads never block on a channel nobody reads.
fn serve(
    hop: &Hop,
    rx: &Receiver<Sample>,
    state: &RunState,
    work: impl Fn(Sample) -> Result<Duration, StageError> + Sync,
) {
    std::thread::scope(|workers| {
        for _ in 0..hop.options.workers {
            let rx = rx.clone();
            let work = &work;
            workers.spawn(move || {
                loop {
                    let wait = Instant::now();
                    let Ok(sample) = rx.recv() else { break };
                    hop.counters
                        .waiting_ns
                        .fetch_add(nanos(wait.elapsed()), Ordering::Relaxed);
                    if state.cancel.load(Ordering::SeqCst) {
                        continue;
                    }
                    hop.counters.received.fetch_add(1, Ordering::Relaxed);
                    let token = sample.token.clone();
                    let (case, epoch) = (sample.id.clone(), sample.epoch);
                    let started = Instant::now();
                    let result = catch_unwind(AssertUnwindSafe(|| work(sample)))
                        .unwrap_or_else(|p| Err(panic_message(p)));
                    let elapsed = started.elapsed();
                    hop.tick();
                    match result {
                        Ok(blocked) => {
                            let busy = elapsed.saturating_sub(blocked);
                            hop.counters
                                .busy_ns
                                .fetch_add(nanos(busy), Ordering::Relaxed);
                            hop.counters
                                .blocked_ns
                                .fetch_add(nanos(blocked), Ordering::Relaxed);
                        }
                        Err(e) => {
                            hop.counters
                                .busy_ns
                                .fetch_add(nanos(elapsed), Ordering::Relaxed);
                            if let Some(t) = &token {
                                t.failed.store(true, Ordering::SeqCst);
                            }
                            hop.fail(state, &case, epoch, e);
                        }
                    }
                }
            });
        }
    });
}

/// Builds every component of a plan, then runs it.
pub fn run(plan: &Plan, options: &RunOptions) -> Result<RunSummary, RunError> {
    let mut ctx = BuildContext {
        pipeline_name: plan.name.clone(),
        pipeline_file: Some(plan.file.clone()),
        seed: plan.seed,
        epochs: plan.epochs,
        cases_per_epoch: None,
        upstream_hash: Some(upstream_hash(plan)),
        split: plan.split.clone(),
    };
    let build = |p: &Planned, ctx: &BuildContext| {
        p.config.build(ctx).map_err(|e| RunError::Build {
            component: p.name.clone(),
            message: e.message,
        })
    };
    let source = match build(&plan.source, &ctx)? {
        Built::Source(s) => s,
        _ => unreachable!("validated as a source"),
    };
    let cases = case_list(plan, source.as_ref(), options)?;
    ctx.cases_per_epoch = Some(cases.len());
    let mut stages = Vec::new();
    for p in &plan.stages {
        match build(p, &ctx)? {
            Built::Stage(s) => stages.push(s),
            _ => unreachable!("validated as a stage"),
        }
    }
    let mut sinks = Vec::new();
    for p in &plan.sinks {
        match build(p, &ctx)? {
            Built::Sink(s) => sinks.push(s),
            _ => unreachable!("validated as a sink"),
        }
    }
    run_with_cases(plan, source, cases, stages, sinks, options)
}

/// The source's cases, sorted, without duplicates, restricted to the split's part and to
/// the shard.
fn case_list(
    plan: &Plan,
    source: &dyn Source,
    options: &RunOptions,
) -> Result<Vec<String>, RunError> {
    let fail = |message: String| RunError::Cases {
        source_name: plan.source.name.clone(),
        message,
    };
    let mut cases = source.cases().map_err(|e| fail(e.message))?;
    cases.sort();
    cases.dedup();
    if let Some(split) = &plan.split {
        let strata = cases
            .iter()
            .map(|c| Ok((c.clone(), source.stratum(c)?)))
            .collect::<Result<Vec<_>, StageError>>()
            .map_err(|e| fail(e.message))?;
        let total = cases.len();
        cases = split.select(&strata);
        if cases.is_empty() {
            return Err(fail(format!(
                "`split` leaves no case in part {:?} of fold {} ({total} cases, {} folds, test fraction {})",
                split.part, split.fold, split.folds, split.test_fraction
            )));
        }
    }
    if let Some(shard) = options.shard {
        cases = shard.select(cases);
    }
    Ok(cases)
}

/// The order cases are fed in one epoch: sorted, or shuffled from (seed, epoch) when the
/// pipeline asks, so the order is the same on every run and every machine.
fn epoch_order(plan: &Plan, cases: &[String], epoch: u32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..cases.len()).collect();
    if plan.shuffle {
        use rand_chacha::ChaCha8Rng;
        use rand_chacha::rand_core::{Rng, SeedableRng};
        let mut rng =
            ChaCha8Rng::seed_from_u64(crate::rng::sample_seed(plan.seed, epoch, "", 0, "shuffle"));
        // Fisher–Yates.
        for i in (1..order.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
    }
    order
}

/// The case's cache key, and the cached sample when there is a complete entry under it.
fn cache_lookup(
    cache: Option<&CachePlan>,
    source: &dyn Source,
    case: &str,
) -> Result<(Option<String>, Option<Sample>), StageError> {
    let Some(cache) = cache else {
        return Ok((None, None));
    };
    let Some(key) = cache.key(source, case)? else {
        return Ok((None, None));
    };
    let hit = cache.lookup.lookup(case, &key)?;
    Ok((Some(key), hit))
}

/// The cache stage of a pipeline and what its keys are made of.
struct CachePlan {
    /// Index of the cache stage among the stages.
    stage: usize,
    lookup: Arc<dyn crate::stage::CacheLookup>,
    /// Hash of the format version and the canonical configs of the source and the stages
    /// before the cache.
    prefix: String,
}

impl CachePlan {
    fn find(plan: &Plan, stages: &[Box<dyn Stage>]) -> Option<CachePlan> {
        let (stage, lookup) = stages
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.cache().map(|l| (i, l)))?;
        let prefix: Vec<serde_json::Value> = std::iter::once(&plan.source)
            .chain(plan.stages[..stage].iter())
            .map(|p| serde_json::json!({"component": p.name, "params": p.canonical}))
            .collect();
        let text = crate::cache_key::canonical_text(&serde_json::json!({
            "format_version": lookup.format_version(),
            "prefix": prefix,
        }));
        Some(CachePlan {
            stage,
            lookup,
            prefix: crate::cache_key::digest(&text),
        })
    }

    /// The key of one case; `None` when the source cannot identify its inputs.
    fn key(&self, source: &dyn Source, case: &str) -> Result<Option<String>, StageError> {
        Ok(source.identity(case)?.map(|identity| {
            crate::cache_key::digest(&format!("{}\n{case}\n{identity}", self.prefix))
        }))
    }
}

/// A stable hash (SHA-256, hex) of the seed, the source and the stages, with their parameters
/// in canonical form (defaults filled in, keys sorted).
pub fn upstream_hash(plan: &Plan) -> String {
    let components: Vec<serde_json::Value> = std::iter::once(&plan.source)
        .chain(plan.stages.iter())
        .map(|p| serde_json::json!([p.name, p.canonical]))
        .collect();
    let canonical = serde_json::json!({"seed": plan.seed, "components": components});
    crate::cache_key::digest(&crate::cache_key::canonical_text(&canonical))
}

/// Runs components that are already built (for library users and tests).
pub fn run_built(
    plan: &Plan,
    source: Box<dyn Source>,
    stages: Vec<Box<dyn Stage>>,
    sinks: Vec<Box<dyn Sink>>,
    options: &RunOptions,
) -> Result<RunSummary, RunError> {
    let cases = case_list(plan, source.as_ref(), options)?;
    run_with_cases(plan, source, cases, stages, sinks, options)
}

fn run_with_cases(
    plan: &Plan,
    source: Box<dyn Source>,
    mut cases: Vec<String>,
    stages: Vec<Box<dyn Stage>>,
    sinks: Vec<Box<dyn Sink>>,
    options: &RunOptions,
) -> Result<RunSummary, RunError> {
    let started = Instant::now();
    let cache = CachePlan::find(plan, &stages);
    if let Some(c) = &cache
        && let Some(first) = cases.first()
        && matches!(c.key(source.as_ref(), first), Ok(None))
    {
        tracing::warn!(
            "source `{}` cannot identify its cases' inputs, so `{}` recomputes every case",
            plan.source.name,
            plan.stages[c.stage].name
        );
    }
    // Resuming: a case every sink already holds complete is not computed again.
    let mut done_everywhere: Option<std::collections::BTreeSet<String>> = None;
    for sink in &sinks {
        let held = match sink.completed() {
            Ok(Some(held)) => held.into_iter().collect::<std::collections::BTreeSet<_>>(),
            Ok(None) => {
                done_everywhere = Some(Default::default());
                break;
            }
            Err(e) => {
                tracing::warn!("cannot tell which cases are already done ({e}); computing all");
                done_everywhere = Some(Default::default());
                break;
            }
        };
        done_everywhere = Some(match done_everywhere {
            None => held,
            Some(before) => before.intersection(&held).cloned().collect(),
        });
    }
    if let Some(done) = done_everywhere.filter(|d| !d.is_empty()) {
        let before = cases.len();
        cases.retain(|c| !done.contains(c));
        if before > cases.len() {
            tracing::info!(
                "{} of {before} cases are already complete in every output: skipping them",
                before - cases.len()
            );
        }
    }
    let cancel = options
        .cancel
        .clone()
        .unwrap_or_else(|| Arc::new(AtomicBool::new(false)));
    let state = Arc::new(RunState {
        in_flight: AtomicU64::new(0),
        peak: AtomicU64::new(0),
        samples: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        cancelled_samples: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        failures: Mutex::new(Vec::new()),
        cancel: cancel.clone(),
        fatal: AtomicBool::new(false),
        max_in_flight: plan.max_in_flight,
        byte_budget: plan.max_in_flight_bytes,
        bytes: AtomicU64::new(0),
        peak_bytes: AtomicU64::new(0),
        finished_bytes: AtomicU64::new(0),
        finished_measured: AtomicU64::new(0),
        largest_seen: AtomicU64::new(0),
        case_left: (Mutex::new(()), std::sync::Condvar::new()),
        cache_hits: AtomicU64::new(0),
        cache_misses: AtomicU64::new(0),
    });
    let total = cases.len() as u64 * u64::from(plan.epochs);
    let style = ProgressStyle::with_template(
        "{prefix:>20} [{bar:30.cyan/blue}] {pos:>5}/{len:5} {per_sec:>10} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let make_hop = |index: usize, p: &Planned| {
        let mut ctx = StageContext::new(p.name.clone(), index, plan.seed);
        ctx.cancel = cancel.clone();
        let bar = options.progress.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new(total));
            bar.set_style(style.clone());
            bar.set_prefix(p.name.clone());
            bar
        });
        Hop {
            name: p.name.clone(),
            kind: p.kind,
            options: p.options,
            ctx,
            counters: Counters::default(),
            bar,
        }
    };
    let source_hop = make_hop(0, &plan.source);
    let stage_hops: Vec<Hop> = plan
        .stages
        .iter()
        .enumerate()
        .map(|(i, p)| make_hop(i + 1, p))
        .collect();
    let sink_hops: Vec<Hop> = plan
        .sinks
        .iter()
        .enumerate()
        .map(|(i, p)| make_hop(plan.stages.len() + 1 + i, p))
        .collect();

    // Channels: one into each stage, one into each sink. Each hop gets its own clones of the
    // ends it uses, and the originals are dropped before the threads start, so a channel
    // closes exactly when every producer feeding it has finished.
    let (stage_senders, stage_receivers): (Vec<Sender<Sample>>, Vec<Receiver<Sample>>) =
        stage_hops.iter().map(|h| bounded(h.options.queue)).unzip();
    let (sink_senders, sink_receivers): (Vec<Sender<Sample>>, Vec<Receiver<Sample>>) =
        sink_hops.iter().map(|h| bounded(h.options.queue)).unzip();
    // outputs[i] is where the output of hop i goes (0 = source, then each stage).
    let mut outputs: Vec<Outputs> = (0..=stage_hops.len())
        .map(|position| {
            if position < stage_senders.len() {
                Outputs {
                    senders: vec![stage_senders[position].clone()],
                    terminal: false,
                }
            } else {
                Outputs {
                    senders: sink_senders.clone(),
                    terminal: sink_senders.is_empty(),
                }
            }
        })
        .collect();
    // Cache hits skip the source's work and every stage before the cache: they go straight
    // into the cache stage's channel.
    let hit_output = cache.as_ref().map(|c| Outputs {
        senders: vec![stage_senders[c.stage].clone()],
        terminal: false,
    });
    drop(stage_senders);
    drop(sink_senders);

    let queue_bound = source_hop.options.workers as u64
        + stage_hops
            .iter()
            .chain(sink_hops.iter())
            .map(|h| (h.options.queue + h.options.workers) as u64)
            .sum::<u64>();
    let in_flight_bound = plan
        .max_in_flight
        .map_or(queue_bound, |max| max.min(queue_bound));

    let finish_errors: Mutex<Vec<CaseFailure>> = Mutex::new(Vec::new());
    let finish = |hop: &Hop, result: Result<(), StageError>| {
        if let Err(e) = result {
            finish_errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(CaseFailure {
                    case: String::new(),
                    epoch: 0,
                    stage: hop.name.clone(),
                    reason: e.message,
                });
        }
        if let Some(bar) = &hop.bar {
            bar.finish();
        }
    };
    let finish_context = |hop: &Hop| FinishContext {
        stage: hop.name.clone(),
        complete: !cancel.load(Ordering::SeqCst),
        samples_done: hop.counters.emitted.load(Ordering::Relaxed),
        samples_failed: hop.counters.failed.load(Ordering::Relaxed),
    };

    std::thread::scope(|scope| {
        // Feeder: (epoch, seq, case), stopping early on cancel.
        let (case_tx, case_rx) = bounded::<(u32, u64, String)>(source_hop.options.workers);
        {
            let cases = &cases;
            let cancel = &cancel;
            let epochs = plan.epochs;
            scope.spawn(move || {
                let mut seq = 0u64;
                'feed: for epoch in 0..epochs {
                    for i in epoch_order(plan, cases, epoch) {
                        if cancel.load(Ordering::SeqCst)
                            || case_tx.send((epoch, seq, cases[i].clone())).is_err()
                        {
                            break 'feed;
                        }
                        seq += 1;
                    }
                }
            });
        }

        // Source workers.
        {
            let out = outputs.remove(0);
            let hop = &source_hop;
            let source = source.as_ref();
            let state = &state;
            let cache = cache.as_ref();
            let hit_output = hit_output;
            let skipped = cache.map(|c| &stage_hops[..c.stage]).unwrap_or(&[]);
            scope.spawn(move || {
                std::thread::scope(|inner| {
                    for _ in 0..hop.options.workers {
                        let case_rx = case_rx.clone();
                        let out = &out;
                        let hit_output = hit_output.as_ref();
                        inner.spawn(move || {
                            loop {
                                let wait = Instant::now();
                                let Ok((epoch, seq, case)) = case_rx.recv() else {
                                    break;
                                };
                                hop.counters
                                    .waiting_ns
                                    .fetch_add(nanos(wait.elapsed()), Ordering::Relaxed);
                                if state.cancel.load(Ordering::SeqCst) {
                                    continue;
                                }
                                let Some(now) = state.enter() else {
                                    continue;
                                };
                                hop.counters.received.fetch_add(1, Ordering::Relaxed);
                                let token = InFlightToken::new(state.clone(), now);
                                let busy = Instant::now();
                                let looked_up = catch_unwind(AssertUnwindSafe(|| {
                                    cache_lookup(cache, source, &case)
                                }))
                                .unwrap_or_else(|p| Err(panic_message(p)));
                                let (key, hit) = match looked_up {
                                    Ok(found) => found,
                                    Err(e) => {
                                        // A broken cache entry is recomputed, not fatal.
                                        tracing::warn!(
                                            "cache lookup for `{case}` failed ({}); computing it",
                                            e.message
                                        );
                                        (None, None)
                                    }
                                };
                                // A hit skips the source and the stages before the cache.
                                let (loaded, is_hit, target) = match (hit, hit_output) {
                                    (Some(sample), Some(hit_out)) => {
                                        for skipped_hop in skipped {
                                            skipped_hop.tick();
                                        }
                                        state.cache_hits.fetch_add(1, Ordering::Relaxed);
                                        (Ok(sample), true, hit_out)
                                    }
                                    _ => {
                                        if cache.is_some() {
                                            state.cache_misses.fetch_add(1, Ordering::Relaxed);
                                        }
                                        let loaded = catch_unwind(AssertUnwindSafe(|| {
                                            source.load_epoch(&case, epoch, &hop.ctx)
                                        }))
                                        .unwrap_or_else(|p| Err(panic_message(p)));
                                        (loaded, false, out)
                                    }
                                };
                                hop.counters
                                    .busy_ns
                                    .fetch_add(nanos(busy.elapsed()), Ordering::Relaxed);
                                hop.tick();
                                match loaded {
                                    Ok(mut sample) => {
                                        sample.epoch = epoch;
                                        sample.seq = seq;
                                        sample.cache_key = key;
                                        sample.cache_hit = is_hit;
                                        sample.token = Some(token);
                                        hop.counters.emitted.fetch_add(1, Ordering::Relaxed);
                                        let blocked = target.send(sample);
                                        hop.counters
                                            .blocked_ns
                                            .fetch_add(nanos(blocked), Ordering::Relaxed);
                                    }
                                    Err(e) => {
                                        token.failed.store(true, Ordering::SeqCst);
                                        hop.fail(state, &case, epoch, e);
                                    }
                                }
                            }
                        });
                    }
                });
                finish(hop, Ok(()));
                drop(out);
                drop(hit_output);
            });
        }

        // Stages: each output goes on downstream; time blocked there is not busy time.
        for ((hop, stage), (rx, out)) in stage_hops
            .iter()
            .zip(stages.iter())
            .zip(stage_receivers.into_iter().zip(outputs.drain(..)))
        {
            let state = &state;
            let stage = stage.as_ref();
            let finish = &finish;
            let finish_context = &finish_context;
            scope.spawn(move || {
                serve(hop, &rx, state, |sample| {
                    let outputs = stage.expand(sample, &hop.ctx)?;
                    let mut blocked = Duration::ZERO;
                    for s in outputs {
                        hop.counters.emitted.fetch_add(1, Ordering::Relaxed);
                        blocked += out.send(s);
                    }
                    Ok(blocked)
                });
                // Every worker has stopped: the stage's output is final.
                finish(hop, stage.finish(&finish_context(hop)));
                drop(out);
            });
        }

        // Sinks.
        for ((hop, sink), rx) in sink_hops.iter().zip(sinks.iter()).zip(sink_receivers) {
            let state = &state;
            let sink = sink.as_ref();
            let finish = &finish;
            let finish_context = &finish_context;
            scope.spawn(move || {
                serve(hop, &rx, state, |sample| {
                    let token = sample.token.clone();
                    sink.write(sample, &hop.ctx)?;
                    hop.counters.emitted.fetch_add(1, Ordering::Relaxed);
                    if let Some(t) = token {
                        t.delivered.store(true, Ordering::SeqCst);
                    }
                    Ok(Duration::ZERO)
                });
                finish(hop, sink.finish(&finish_context(hop)));
            });
        }
    });

    let mut failures =
        std::mem::take(&mut *state.failures.lock().unwrap_or_else(|p| p.into_inner()));
    failures.sort_by(|a, b| (a.epoch, &a.case).cmp(&(b.epoch, &b.case)));
    let reports = std::iter::once(&source_hop)
        .chain(stage_hops.iter())
        .chain(sink_hops.iter())
        .map(Hop::report)
        .collect();
    let fatal = state.fatal.load(Ordering::SeqCst);
    Ok(RunSummary {
        pipeline: plan.name.clone(),
        shard: options.shard,
        cases: cases.len(),
        epochs: plan.epochs,
        samples: state.samples.load(Ordering::SeqCst),
        done: state.done.load(Ordering::SeqCst),
        failed: state.failed.load(Ordering::SeqCst),
        cancelled: state.cancelled_samples.load(Ordering::SeqCst),
        dropped: state.dropped.load(Ordering::SeqCst),
        failures,
        finish_errors: finish_errors
            .into_inner()
            .unwrap_or_else(|p| p.into_inner()),
        interrupted: cancel.load(Ordering::SeqCst) && !fatal,
        fatal,
        cache_hits: state.cache_hits.load(Ordering::SeqCst),
        cache_misses: state.cache_misses.load(Ordering::SeqCst),
        peak_in_flight: state.peak.load(Ordering::SeqCst),
        peak_in_flight_bytes: plan
            .max_in_flight_bytes
            .map(|_| state.peak_bytes.load(Ordering::SeqCst)),
        in_flight_byte_budget: plan.max_in_flight_bytes,
        in_flight_bound,
        wall_s: started.elapsed().as_secs_f64(),
        stages: reports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_cases_disjointly_and_completely() {
        let cases: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
        let mut all = Vec::new();
        for i in 0..3 {
            let part = Shard { index: i, count: 3 }.select(cases.clone());
            assert!(part.len() == 3 || part.len() == 4);
            all.extend(part);
        }
        all.sort();
        assert_eq!(all, cases);
        assert_eq!(Shard::parse("1/4").unwrap(), Shard { index: 1, count: 4 });
        assert!(Shard::parse("4/4").unwrap_err().contains("below the count"));
        assert!(Shard::parse("x").unwrap_err().contains("write i/N"));
    }
}
