//! The runtime, driven through YAML pipelines of test components: backpressure bounds the
//! samples in flight, results do not depend on worker counts, failures are isolated and
//! named, fan-out reaches every sink, fatal errors and cancellation stop cleanly.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use mtmed3d_pipeline::{
    BuildContext, Component, Field, Registry, RunOptions, RunSummary, Sample, Sink, SinkConfig,
    Source, SourceConfig, Stage, StageConfig, StageContext, StageError, config, runtime,
};
use ndarray::{ArrayD, IxDyn};
use rand::RngExt;
use schemars::JsonSchema;
use serde::Deserialize;

/// Shared observations of one test, found by name (tests run in parallel).
#[derive(Default)]
struct Probe {
    live: AtomicI64,
    peak_live: AtomicI64,
    received: Mutex<BTreeMap<String, Vec<f32>>>,
    per_sink: Mutex<HashMap<String, Vec<String>>>,
}

static PROBES: LazyLock<Mutex<HashMap<String, Arc<Probe>>>> = LazyLock::new(Default::default);

fn probe(name: &str) -> Arc<Probe> {
    PROBES
        .lock()
        .unwrap()
        .entry(name.to_string())
        .or_default()
        .clone()
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Counting {
    cases: usize,
    probe: String,
    /// Voxels of each case's `x` (8 when not given).
    #[serde(default)]
    voxels: Option<usize>,
}

impl Component for Counting {
    const NAME: &'static str = "counting";
    const DOC: &'static str = "test source";
    fn writes(&self) -> Vec<String> {
        vec!["x".into()]
    }
}

impl SourceConfig for Counting {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Source>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

impl Source for Counting {
    fn cases(&self) -> Result<Vec<String>, StageError> {
        Ok((0..self.cases).map(|i| format!("case_{i:02}")).collect())
    }
    fn load(&self, case: &str, _: &StageContext) -> Result<Sample, StageError> {
        let p = probe(&self.probe);
        let now = p.live.fetch_add(1, Ordering::SeqCst) + 1;
        p.peak_live.fetch_max(now, Ordering::SeqCst);
        let mut s = Sample::new(case);
        let voxels = self.voxels.unwrap_or(8);
        s.insert("x", Field::f32(ArrayD::zeros(IxDyn(&[voxels]))));
        Ok(s)
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Jitter {}

impl Component for Jitter {
    const NAME: &'static str = "jitter";
    const DOC: &'static str = "adds seeded noise, sleeping a random while so arrival order varies";
    fn reads(&self) -> Vec<String> {
        vec!["x".into()]
    }
}

impl StageConfig for Jitter {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

impl Stage for Jitter {
    fn process(&self, mut s: Sample, ctx: &StageContext) -> Result<Sample, StageError> {
        let mut rng = ctx.rng(&s);
        for v in s.f32_mut("x")?.iter_mut() {
            *v += rng.random::<f32>();
        }
        // Timing noise from outside the seeded generator, to shuffle arrival order.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        std::thread::sleep(Duration::from_micros(u64::from(nanos % 2000)));
        Ok(s)
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FailOne {
    case: String,
}

impl Component for FailOne {
    const NAME: &'static str = "fail_one";
    const DOC: &'static str = "fails one case";
}

impl StageConfig for FailOne {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

impl Stage for FailOne {
    fn process(&self, s: Sample, _: &StageContext) -> Result<Sample, StageError> {
        if s.id == self.case {
            return Err(StageError::new("corrupt volume"));
        }
        Ok(s)
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Collect {
    probe: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    sleep_ms: u64,
    /// Cancel the run after this many samples.
    #[serde(default)]
    cancel_after: Option<usize>,
}

impl Component for Collect {
    const NAME: &'static str = "collect";
    const DOC: &'static str = "records what it receives";
}

impl SinkConfig for Collect {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Sink>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

impl Sink for Collect {
    fn write(&self, s: Sample, _: &StageContext) -> Result<(), StageError> {
        std::thread::sleep(Duration::from_millis(self.sleep_ms));
        let p = probe(&self.probe);
        let values = s.f32("x")?.iter().copied().collect();
        p.received.lock().unwrap().insert(s.id.clone(), values);
        let count = {
            let mut per_sink = p.per_sink.lock().unwrap();
            let seen = per_sink.entry(self.label.clone()).or_default();
            seen.push(s.id.clone());
            seen.len()
        };
        if let Some(n) = self.cancel_after
            && count >= n
        {
            CANCEL.lock().unwrap()[&self.probe].store(true, Ordering::SeqCst);
        }
        p.live.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

static CANCEL: LazyLock<Mutex<HashMap<String, Arc<AtomicBool>>>> = LazyLock::new(Default::default);

fn registry() -> Registry {
    let mut r = Registry::new();
    r.source::<Counting>()
        .stage::<Jitter>()
        .stage::<FailOne>()
        .sink::<Collect>();
    r
}

fn run(yaml: &str, probe_name: &str) -> RunSummary {
    let plan = config::parse_str(yaml, Path::new("test.yaml"), &[], &registry())
        .unwrap_or_else(|e| panic!("{e}"));
    let cancel = Arc::new(AtomicBool::new(false));
    CANCEL
        .lock()
        .unwrap()
        .insert(probe_name.to_string(), cancel.clone());
    let options = RunOptions {
        cancel: Some(cancel),
        ..Default::default()
    };
    runtime::run(&plan, &options).unwrap()
}

#[test]
fn max_in_flight_caps_the_cases_in_flight_below_the_queues() {
    let yaml = "
max_in_flight: 3
source:
  counting: {cases: 30, probe: capped, workers: 2}
stages:
  - jitter: {queue: 3, workers: 2}
  - jitter: {queue: 2}
sinks:
  - collect: {probe: capped, sleep_ms: 5, queue: 4}
";
    let summary = run(yaml, "capped");
    assert_eq!(summary.in_flight_bound, 3);
    assert_eq!(summary.done, 30);
    // Two source workers reserve slots atomically: never a fourth case, and the slow sink
    // keeps the cap reached.
    assert_eq!(summary.peak_in_flight, 3);
    let outside = probe("capped").peak_live.load(Ordering::SeqCst);
    assert!(outside <= 3, "test measured {outside} in flight, cap 3");
}

#[test]
fn max_in_flight_bytes_caps_the_volume_bytes_in_flight() {
    // Cases of 4000 bytes under a budget of 10 000. The first starts alone; once its size
    // is known each new case is expected to hold as much, and starts only if it fits: two
    // cases (8000 bytes) in flight, never a third, though the queues allow ten.
    let yaml = "
max_in_flight_bytes: 10000
source:
  counting: {cases: 30, probe: byte_capped, voxels: 1000, workers: 2}
stages:
  - jitter: {queue: 4, workers: 2}
sinks:
  - collect: {probe: byte_capped, sleep_ms: 5, queue: 4}
";
    let summary = run(yaml, "byte_capped");
    assert_eq!(summary.done, 30);
    assert_eq!(summary.in_flight_byte_budget, Some(10_000));
    assert_eq!(summary.peak_in_flight_bytes, Some(8000));
    assert_eq!(summary.peak_in_flight, 2);
    assert!(summary.in_flight_bound >= 10, "{}", summary.in_flight_bound);
    let outside = probe("byte_capped").peak_live.load(Ordering::SeqCst);
    assert!(outside <= 2, "test measured {outside} in flight");
    assert!(
        summary
            .render()
            .contains("in flight: at most 0 MiB of volumes (budget 0 MiB)")
    );
}

#[test]
fn a_case_larger_than_the_byte_budget_still_runs_alone() {
    let yaml = "
max_in_flight_bytes: 1 kB
source:
  counting: {cases: 5, probe: byte_small, voxels: 1000}
sinks:
  - collect: {probe: byte_small}
";
    let summary = run(yaml, "byte_small");
    assert_eq!((summary.done, summary.peak_in_flight), (5, 1));
    assert_eq!(summary.peak_in_flight_bytes, Some(4000));
}

#[test]
fn byte_budgets_read_units_and_refuse_nonsense_with_the_fix() {
    assert_eq!(config::parse_byte_size("400 MiB"), Ok(400 << 20));
    assert_eq!(config::parse_byte_size("1.5GB"), Ok(1_500_000_000));
    assert_eq!(config::parse_byte_size("512"), Ok(512));
    let e = config::parse_byte_size("400 Mb").unwrap_err();
    assert!(e.contains("`400 Mb` has the unit `Mb`; use B, kB"), "{e}");
    assert!(
        config::parse_byte_size("lots")
            .unwrap_err()
            .contains("does not start with a number")
    );
    let registry = registry();
    for (value, message) in [
        ("0", "`max_in_flight_bytes` must be more than 0"),
        ("400 Mb", "`max_in_flight_bytes`: `400 Mb` has the unit"),
        (
            "[1]",
            "`max_in_flight_bytes`: wrong type: found a list, expected a number of bytes or a size such as `400 MiB`",
        ),
        ("-5", "`max_in_flight_bytes`: `-5` bytes is negative"),
    ] {
        let yaml = format!(
            "max_in_flight_bytes: {value}\nsource:\n  counting: {{cases: 1, probe: p}}\nsinks:\n  - collect: {{probe: p}}\n"
        );
        let Err(e) = config::parse_str(&yaml, Path::new("budget.yaml"), &[], &registry) else {
            panic!("`{value}` was accepted");
        };
        let e = e.to_string();
        assert!(e.contains(message) && e.contains("budget.yaml:1"), "{e}");
    }
}

#[test]
fn max_in_flight_zero_is_refused() {
    let registry = registry();
    let Err(e) = config::parse_str(
        "max_in_flight: 0\nsource:\n  counting: {cases: 1}\nsinks:\n  - collect: {}\n",
        Path::new("cap.yaml"),
        &[],
        &registry,
    ) else {
        panic!("a cap of 0 was accepted");
    };
    let e = e.to_string();
    assert!(e.contains("`max_in_flight` must be at least 1"), "{e}");
}

#[test]
fn a_slow_sink_bounds_the_samples_in_flight() {
    let yaml = "
source:
  counting: {cases: 40, probe: slow}
stages:
  - jitter: {queue: 3, workers: 2}
  - jitter: {queue: 2}
sinks:
  - collect: {probe: slow, sleep_ms: 5, queue: 4}
";
    let summary = run(yaml, "slow");
    // source worker 1 + (3 + 2) + (2 + 1) + (4 + 1)
    let bound = 1 + 5 + 3 + 5;
    assert_eq!(summary.in_flight_bound, bound);
    assert_eq!(summary.done, 40);
    assert!(
        summary.peak_in_flight <= bound,
        "engine measured {} in flight, bound {bound}",
        summary.peak_in_flight
    );
    let outside = probe("slow").peak_live.load(Ordering::SeqCst) as u64;
    assert!(
        outside <= bound,
        "test measured {outside} in flight, bound {bound}"
    );
    // The sink is the bottleneck, so the channels fill: without backpressure the source
    // would have run ahead by all 40 cases.
    assert!(
        summary.peak_in_flight >= bound - 3,
        "channels never filled: peak {}",
        summary.peak_in_flight
    );
    let sink = summary.stages.last().unwrap();
    let source = &summary.stages[0];
    assert!(
        source.blocked_s > sink.waiting_s,
        "the source should wait on the slow sink, not the other way round"
    );
}

fn values(probe_name: &str) -> BTreeMap<String, Vec<f32>> {
    probe(probe_name).received.lock().unwrap().clone()
}

#[test]
fn results_are_identical_across_worker_counts() {
    let pipeline = |workers: usize, name: &str, seed: u64| {
        format!(
            "seed: {seed}\nsource:\n  counting: {{cases: 24, probe: {name}, workers: {workers}}}\nstages:\n  - jitter: {{workers: {workers}}}\n  - jitter: {{workers: {workers}, queue: 1}}\nsinks:\n  - collect: {{probe: {name}, workers: {workers}}}\n"
        )
    };
    run(&pipeline(1, "w1", 7), "w1");
    run(&pipeline(4, "w4", 7), "w4");
    run(&pipeline(4, "w4s8", 8), "w4s8");
    let (one, four, other_seed) = (values("w1"), values("w4"), values("w4s8"));
    assert_eq!(one.len(), 24);
    assert_eq!(
        one, four,
        "workers: 1 and workers: 4 must give identical samples"
    );
    assert_ne!(one, other_seed, "a different seed must change the results");
    // Two jitter stages draw different numbers for the same sample.
    let first = &one["case_00"];
    assert!(first.iter().all(|v| *v > 0.0 && *v < 2.0));
}

#[test]
fn one_failing_case_among_twenty_leaves_nineteen_done_and_is_named() {
    let yaml = "
source:
  counting: {cases: 20, probe: fail}
stages:
  - fail_one: {case: case_07, workers: 3}
sinks:
  - collect: {probe: fail}
";
    let summary = run(yaml, "fail");
    assert_eq!(summary.done, 19);
    assert_eq!(summary.failed, 1);
    assert_eq!(summary.failures.len(), 1);
    let f = &summary.failures[0];
    assert_eq!(
        (f.case.as_str(), f.stage.as_str(), f.reason.as_str()),
        ("case_07", "fail_one", "corrupt volume")
    );
    assert!(!summary.success(false), "a failed case must fail the run");
    assert!(summary.success(true), "unless failures are allowed");
    let got = values("fail");
    assert_eq!(got.len(), 19);
    assert!(!got.contains_key("case_07"));
    assert!(
        summary
            .render()
            .contains("FAILED case_07 in fail_one: corrupt volume")
    );
}

#[test]
fn on_error_fail_stops_the_run() {
    let yaml = "
source:
  counting: {cases: 200, probe: fatal}
stages:
  - fail_one: {case: case_03, on_error: fail}
sinks:
  - collect: {probe: fatal, sleep_ms: 1}
";
    let summary = run(yaml, "fatal");
    assert!(summary.fatal);
    assert!(!summary.interrupted);
    assert_eq!(summary.failures[0].case, "case_03");
    assert!(
        summary.samples < 200,
        "the source must stop after a fatal error ({} emitted)",
        summary.samples
    );
    assert_eq!(
        summary.done + summary.failed + summary.cancelled + summary.dropped,
        summary.samples,
        "every emitted sample is accounted for"
    );
}

#[test]
fn fan_out_delivers_every_sample_to_both_sinks() {
    let yaml = "
source:
  counting: {cases: 20, probe: fan}
stages:
  - jitter: {workers: 2}
sinks:
  - collect: {probe: fan, label: a}
  - collect: {probe: fan, label: b, sleep_ms: 1, workers: 2}
";
    let summary = run(yaml, "fan");
    assert_eq!(summary.done, 20);
    let p = probe("fan");
    let per_sink = p.per_sink.lock().unwrap();
    let expected: Vec<String> = (0..20).map(|i| format!("case_{i:02}")).collect();
    for label in ["a", "b"] {
        let mut got = per_sink[label].clone();
        got.sort();
        assert_eq!(got, expected, "sink {label}");
    }
}

#[test]
fn cancellation_stops_the_source_and_reports_an_interrupted_run() {
    let yaml = "
source:
  counting: {cases: 500, probe: cancel}
sinks:
  - collect: {probe: cancel, cancel_after: 10, sleep_ms: 1}
";
    let summary = run(yaml, "cancel");
    assert!(summary.interrupted);
    assert!(!summary.success(true));
    assert!(summary.done >= 10 && summary.done < 500, "{}", summary.done);
    assert_eq!(
        summary.done + summary.cancelled,
        summary.samples,
        "unfinished samples count as cancelled"
    );
}

#[test]
fn epochs_re_emit_every_case() {
    let yaml = "
epochs: 3
source:
  counting: {cases: 5, probe: epochs}
stages:
  - jitter: {}
sinks:
  - collect: {probe: epochs}
";
    let summary = run(yaml, "epochs");
    assert_eq!(summary.samples, 15);
    assert_eq!(summary.done, 15);
    let p = probe("epochs");
    let per_sink = p.per_sink.lock().unwrap();
    let seen = &per_sink[""];
    assert_eq!(seen.len(), 15);
    assert_eq!(seen.iter().filter(|id| *id == "case_04").count(), 3);
}
