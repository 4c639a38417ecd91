//! The engine's cost per sample per stage hop, with stages that do nothing.
//!
//! `cargo bench -p mtmed3d-pipeline --bench engine`. Each benchmark pushes 2,000 tiny samples
//! through a chain of `noop` stages; criterion's throughput is in hops (samples × stages),
//! so its "time per element" is the cost of one sample crossing one stage: a channel send and
//! receive, the bookkeeping of counters and the in-flight token.

use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mtmed3d_pipeline::{
    BuildContext, Component, Registry, RunOptions, Sample, Sink, SinkConfig, Source, SourceConfig,
    Stage, StageConfig, StageContext, StageError, config, runtime,
};
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Clone, Deserialize, JsonSchema)]
struct Tiny {
    cases: usize,
}

impl Component for Tiny {
    const NAME: &'static str = "tiny";
    const DOC: &'static str = "empty samples";
}

impl SourceConfig for Tiny {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Source>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

impl Source for Tiny {
    fn cases(&self) -> Result<Vec<String>, StageError> {
        Ok((0..self.cases).map(|i| format!("c{i:05}")).collect())
    }
    fn load(&self, case: &str, _: &StageContext) -> Result<Sample, StageError> {
        Ok(Sample::new(case))
    }
}

#[derive(Clone, Deserialize, JsonSchema)]
struct Noop {}

impl Component for Noop {
    const NAME: &'static str = "noop";
    const DOC: &'static str = "passes samples on";
}

impl StageConfig for Noop {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

impl Stage for Noop {
    fn process(&self, sample: Sample, _: &StageContext) -> Result<Sample, StageError> {
        Ok(sample)
    }
}

#[derive(Clone, Deserialize, JsonSchema)]
struct Drop {}

impl Component for Drop {
    const NAME: &'static str = "drop";
    const DOC: &'static str = "discards";
}

impl SinkConfig for Drop {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Sink>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

impl Sink for Drop {
    fn write(&self, _: Sample, _: &StageContext) -> Result<(), StageError> {
        Ok(())
    }
}

const SAMPLES: usize = 2000;

fn pipeline(stages: usize, queue: usize) -> String {
    let mut yaml = format!("source:\n  tiny: {{cases: {SAMPLES}}}\nstages:\n");
    for _ in 0..stages {
        yaml.push_str(&format!("  - noop: {{queue: {queue}}}\n"));
    }
    yaml.push_str(&format!("sinks:\n  - drop: {{queue: {queue}}}\n"));
    yaml
}

fn hops(c: &mut Criterion) {
    let mut registry = Registry::new();
    registry.source::<Tiny>().stage::<Noop>().sink::<Drop>();
    let mut group = c.benchmark_group("engine");
    group.sample_size(20);
    for (stages, queue) in [(1, 2), (8, 2), (8, 16)] {
        let plan = config::parse_str(
            &pipeline(stages, queue),
            Path::new("bench.yaml"),
            &[],
            &registry,
        )
        .expect("valid bench pipeline");
        // Hops: source → stage 1 → … → stage n → sink.
        group.throughput(Throughput::Elements((SAMPLES * (stages + 1)) as u64));
        group.bench_function(format!("{stages}_stages_queue_{queue}"), |b| {
            b.iter(|| {
                let summary = runtime::run(&plan, &RunOptions::default()).unwrap();
                assert_eq!(summary.done, SAMPLES as u64);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, hops);
criterion_main!(benches);
