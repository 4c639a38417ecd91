//! The runtime's cache protocol, with an in-memory cache stage: hits skip the source and the
//! stages before the cache; a change to the prefix's configuration or to a case's inputs
//! misses; a change after the cache still hits. Also the feed order (`seq`, `shuffle`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use mtmed3d_pipeline::{
    BuildContext, CacheLookup, Component, Field, Registry, RunOptions, RunSummary, Sample, Sink,
    SinkConfig, Source, SourceConfig, Stage, StageConfig, StageContext, StageError, config,
    runtime,
};
use ndarray::{ArrayD, IxDyn};
use schemars::JsonSchema;
use serde::Deserialize;

type Stored = Arc<Mutex<HashMap<String, (String, Sample)>>>;
/// (id, epoch, seq, x, cache_hit) as the sink saw them.
type Seen = (String, u32, u64, f32, bool);

#[derive(Default)]
struct Probe {
    loads: AtomicU64,
    prefix_calls: AtomicU64,
    seen: Mutex<Vec<Seen>>,
    store: Stored,
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

/// Cases whose inputs are at `version`: changing it is like editing the files.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Files {
    cases: usize,
    probe: String,
    #[serde(default)]
    version: u32,
}

impl Component for Files {
    const NAME: &'static str = "files";
    const DOC: &'static str = "test source with identities";
    fn writes(&self) -> Vec<String> {
        vec!["x".into()]
    }
}

impl SourceConfig for Files {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Source>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

impl Source for Files {
    fn cases(&self) -> Result<Vec<String>, StageError> {
        Ok((0..self.cases).map(|i| format!("case_{i:02}")).collect())
    }
    fn load(&self, case: &str, _: &StageContext) -> Result<Sample, StageError> {
        probe(&self.probe).loads.fetch_add(1, Ordering::SeqCst);
        let index: f32 = case[5..].parse().unwrap();
        let mut s = Sample::new(case);
        s.insert("x", Field::f32(ArrayD::from_elem(IxDyn(&[2]), index)));
        Ok(s)
    }
    fn identity(&self, case: &str) -> Result<Option<String>, StageError> {
        Ok(Some(format!("{case}@v{}", self.version)))
    }
}

fn one() -> f32 {
    1.0
}

/// `x += value`, counted, as a deterministic prefix stage.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Add {
    probe: String,
    #[serde(default = "one")]
    value: f32,
}

impl Component for Add {
    const NAME: &'static str = "add";
    const DOC: &'static str = "adds a constant";
}

impl StageConfig for Add {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

impl Stage for Add {
    fn process(&self, mut s: Sample, _: &StageContext) -> Result<Sample, StageError> {
        probe(&self.probe)
            .prefix_calls
            .fetch_add(1, Ordering::SeqCst);
        s.f32_mut("x")?.mapv_inplace(|v| v + self.value);
        Ok(s)
    }
}

/// `x *= value`, after the cache.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Mul {
    value: f32,
}

impl Component for Mul {
    const NAME: &'static str = "mul";
    const DOC: &'static str = "multiplies by a constant";
}

impl StageConfig for Mul {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

impl Stage for Mul {
    fn process(&self, mut s: Sample, _: &StageContext) -> Result<Sample, StageError> {
        s.f32_mut("x")?.mapv_inplace(|v| v * self.value);
        Ok(s)
    }
}

/// A random stage (validation only).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Noise {}

impl Component for Noise {
    const NAME: &'static str = "noise";
    const DOC: &'static str = "random";
    fn random(&self) -> bool {
        true
    }
}

impl StageConfig for Noise {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

impl Stage for Noise {
    fn process(&self, s: Sample, _: &StageContext) -> Result<Sample, StageError> {
        Ok(s)
    }
}

/// Keeps computed samples in memory under their keys.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct MemoCache {
    probe: String,
}

impl Component for MemoCache {
    const NAME: &'static str = "memo_cache";
    const DOC: &'static str = "in-memory cache";
    fn is_cache(&self) -> bool {
        true
    }
}

struct Memo(Stored);

impl CacheLookup for Memo {
    fn lookup(&self, case: &str, key: &str) -> Result<Option<Sample>, StageError> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .get(case)
            .filter(|(k, _)| k == key)
            .map(|(_, s)| s.clone()))
    }
    fn format_version(&self) -> u32 {
        1
    }
}

struct MemoStage(Stored);

impl StageConfig for MemoCache {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(MemoStage(probe(&self.probe).store.clone())))
    }
}

impl Stage for MemoStage {
    fn process(&self, s: Sample, _: &StageContext) -> Result<Sample, StageError> {
        if !s.cache_hit
            && let Some(key) = &s.cache_key
        {
            let mut stored = s.detached();
            stored.cache_key = None;
            self.0
                .lock()
                .unwrap()
                .insert(s.id.clone(), (key.clone(), stored));
        }
        Ok(s)
    }
    fn cache(&self) -> Option<Arc<dyn CacheLookup>> {
        Some(Arc::new(Memo(self.0.clone())))
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Collect {
    probe: String,
}

impl Component for Collect {
    const NAME: &'static str = "collect";
    const DOC: &'static str = "records what arrives";
}

impl SinkConfig for Collect {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Sink>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

impl Sink for Collect {
    fn write(&self, s: Sample, _: &StageContext) -> Result<(), StageError> {
        let x = s.f32("x")?[[0]];
        probe(&self.probe).seen.lock().unwrap().push((
            s.id.clone(),
            s.epoch,
            s.seq,
            x,
            s.cache_hit,
        ));
        Ok(())
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.source::<Files>();
    r.stage::<Add>();
    r.stage::<Mul>();
    r.stage::<Noise>();
    r.stage::<MemoCache>();
    r.sink::<Collect>();
    r
}

fn run(yaml: &str) -> RunSummary {
    let plan = config::parse_str(yaml, Path::new("cache.yaml"), &[], &registry())
        .unwrap_or_else(|d| panic!("{d}"));
    runtime::run(&plan, &RunOptions::default()).unwrap()
}

fn pipeline(probe: &str, version: u32, add: &str, mul: f32) -> String {
    format!(
        "source: {{files: {{cases: 6, probe: {probe}, version: {version}}}}}
stages:
  - add: {{probe: {probe}{add}}}
  - memo_cache: {{probe: {probe}}}
  - mul: {{value: {mul}}}
sinks:
  - collect: {{probe: {probe}}}
"
    )
}

/// Loads, prefix calls and sink values (sorted by case) of one run, resetting the probe.
fn observe(name: &str, summary: &RunSummary) -> (u64, u64, u64, Vec<f32>, usize) {
    let p = probe(name);
    assert_eq!(summary.done, 6, "{}", summary.render());
    let mut seen = std::mem::take(&mut *p.seen.lock().unwrap());
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    let hits_seen = seen.iter().filter(|s| s.4).count();
    (
        p.loads.swap(0, Ordering::SeqCst),
        p.prefix_calls.swap(0, Ordering::SeqCst),
        summary.cache_hits,
        seen.iter().map(|s| s.3).collect(),
        hits_seen,
    )
}

#[test]
fn second_run_hits_and_skips_the_prefix() {
    let first = run(&pipeline("hit", 0, "", 2.0));
    let (loads, calls, hits, values, _) = observe("hit", &first);
    assert_eq!((loads, calls, hits, first.cache_misses), (6, 6, 0, 6));
    assert_eq!(values, vec![2.0, 4.0, 6.0, 8.0, 10.0, 12.0]);

    let second = run(&pipeline("hit", 0, "", 2.0));
    let (loads, calls, hits, again, hits_seen) = observe("hit", &second);
    assert_eq!((loads, calls, hits, hits_seen), (0, 0, 6, 6));
    assert_eq!(again, values);
    assert!(second.render().contains("cache: 6 hits, 0 computed"));
}

#[test]
fn a_prefix_change_misses() {
    run(&pipeline("prefix", 0, "", 1.0));
    observe("prefix", &run(&pipeline("prefix", 0, "", 1.0)));
    let changed = run(&pipeline("prefix", 0, ", value: 5", 1.0));
    let (loads, calls, hits, values, _) = observe("prefix", &changed);
    assert_eq!((loads, calls, hits), (6, 6, 0));
    assert_eq!(values, vec![5.0, 6.0, 7.0, 8.0, 9.0, 10.0]);
}

#[test]
fn writing_a_default_explicitly_is_the_same_config() {
    run(&pipeline("default", 0, "", 1.0));
    observe("default", &run(&pipeline("default", 0, "", 1.0)));
    let explicit = run(&pipeline("default", 0, ", value: 1.0", 1.0));
    let (loads, _, hits, _, _) = observe("default", &explicit);
    assert_eq!((loads, hits), (0, 6));
}

#[test]
fn a_suffix_change_still_hits() {
    run(&pipeline("suffix", 0, "", 1.0));
    observe("suffix", &run(&pipeline("suffix", 0, "", 1.0)));
    let changed = run(&pipeline("suffix", 0, "", 3.0));
    let (loads, calls, hits, values, _) = observe("suffix", &changed);
    assert_eq!((loads, calls, hits), (0, 0, 6));
    assert_eq!(values, vec![3.0, 6.0, 9.0, 12.0, 15.0, 18.0]);
}

#[test]
fn changed_inputs_miss() {
    run(&pipeline("inputs", 0, "", 1.0));
    observe("inputs", &run(&pipeline("inputs", 0, "", 1.0)));
    let changed = run(&pipeline("inputs", 1, "", 1.0));
    let (loads, calls, hits, _, _) = observe("inputs", &changed);
    assert_eq!((loads, calls, hits), (6, 6, 0));
}

#[test]
fn random_stages_before_a_cache_and_two_caches_are_rejected() {
    let yaml = "source: {files: {cases: 2, probe: v}}
stages:
  - noise: {}
  - memo_cache: {probe: v}
  - memo_cache: {probe: w}
";
    let errors = config::parse_str(yaml, Path::new("bad.yaml"), &[], &registry())
        .err()
        .expect("must not validate")
        .to_string();
    assert!(
        errors.contains("bad.yaml:3:5")
            && errors.contains("`noise` is random, so it cannot come before `memo_cache` (line 4)"),
        "{errors}"
    );
    assert!(
        errors.contains("bad.yaml:5:5")
            && errors
                .contains("a pipeline has at most one cache; `memo_cache` at line 4 is the first"),
        "{errors}"
    );
}

fn feed_order(name: &str, shuffle: bool) -> BTreeMap<u32, Vec<String>> {
    let yaml = format!(
        "seed: 7
epochs: 3
shuffle: {shuffle}
source: {{files: {{cases: 6, probe: {name}, workers: 3}}}}
stages:
  - mul: {{value: 1, workers: 2}}
sinks:
  - collect: {{probe: {name}}}
"
    );
    let summary = run(&yaml);
    assert_eq!(summary.done, 18);
    let mut seen = std::mem::take(&mut *probe(name).seen.lock().unwrap());
    seen.sort_by_key(|s| s.2);
    assert_eq!(
        seen.iter().map(|s| s.2).collect::<Vec<_>>(),
        (0..18).collect::<Vec<u64>>(),
        "seq numbers every sample once, epoch-major"
    );
    let mut order = BTreeMap::new();
    for (id, epoch, seq, _, _) in seen {
        assert_eq!(u64::from(epoch), seq / 6);
        order.entry(epoch).or_insert_with(Vec::new).push(id);
    }
    order
}

#[test]
fn feed_order_is_numbered_and_shuffled_from_the_seed() {
    let sorted: Vec<String> = (0..6).map(|i| format!("case_{i:02}")).collect();
    let plain = feed_order("plain", false);
    assert!(plain.values().all(|o| *o == sorted));

    let shuffled = feed_order("shuffled", true);
    for epoch_order in shuffled.values() {
        let mut s = epoch_order.clone();
        s.sort();
        assert_eq!(s, sorted, "each epoch is a permutation");
    }
    assert!(
        shuffled[&0] != shuffled[&1] || shuffled[&1] != shuffled[&2],
        "epochs are ordered differently: {shuffled:?}"
    );
    assert_eq!(
        shuffled,
        feed_order("shuffled_again", true),
        "same seed, same order"
    );
}
