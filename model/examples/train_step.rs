//! Time of one training step of a preset at a given batch size, on the CPU (flex): forward, backward,
//! one AdamW per model part, with fixed task weights and with a GradNorm update.
//!
//! ```text
//! cargo run --release -p mtmed3d-model --example train_step -- [--preset tiny] [--batch 2] [--iters 5]
//! ```
//! Prints the median seconds per step and how many steps fit in ten minutes.

use std::time::{Duration, Instant};

use burn::tensor::{Distribution, Tensor};
use mtmed3d_model::balance::{GradNorm, GradNormConfig, TaskBalancer};
use mtmed3d_model::decoder::detection::BoxTargets;
use mtmed3d_model::training::{PartRates, Trainer, seeded_init};
use mtmed3d_model::{CpuAutodiff, ModelConfig, Targets};

fn main() {
    let mut preset = "tiny".to_string();
    let (mut batch, mut iters) = (2usize, 5usize);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--preset" => preset = it.next().expect("--preset NAME"),
            "--batch" => batch = it.next().expect("--batch N").parse().expect("a number"),
            "--iters" => iters = it.next().expect("--iters N").parse().expect("a number"),
            other => panic!("unknown argument `{other}`"),
        }
    }
    let cfg = ModelConfig::preset(&preset).expect("a known preset");
    let device = Default::default();
    let [x, y, z] = cfg.input_size;
    let image = Tensor::<CpuAutodiff, 5>::random(
        [batch, 4, x, y, z],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let seg = Tensor::<CpuAutodiff, 5>::random(
        [batch, 3, x, y, z],
        Distribution::Bernoulli(0.1),
        &device,
    );
    let q = |v: usize| v as f32;
    let targets = Targets {
        seg,
        grades: (0..batch).map(|i| i % 2).collect(),
        boxes: (0..batch)
            .map(|_| BoxTargets {
                boxes: vec![[
                    q(x / 4),
                    q(y / 4),
                    q(z / 4),
                    q(3 * x / 4),
                    q(3 * y / 4),
                    q(3 * z / 4),
                ]],
                labels: vec![0],
            })
            .collect(),
    };
    println!(
        "preset {preset}, batch {batch} × 4×{x}×{y}×{z}, {} cores, median of {iters}",
        cores()
    );
    for (name, balancer, every) in [
        ("fixed weights", TaskBalancer::Fixed(vec![1.0; 3]), 1usize),
        (
            "gradnorm every step",
            TaskBalancer::GradNorm(GradNorm::new(GradNormConfig::new(), 3)),
            1,
        ),
    ] {
        let mut model = seeded_init::<CpuAutodiff>(&cfg, &device, 1).expect("valid preset");
        let mut trainer = Trainer::new(cfg.clone(), balancer, 0.01);
        trainer.gradnorm_every = every;
        let mut times: Vec<Duration> = Vec::new();
        for i in 0..=iters {
            let t = Instant::now();
            let (m, _) = trainer.step_parts(model, image.clone(), &targets, PartRates::REFERENCE);
            model = m;
            if i > 0 {
                times.push(t.elapsed()); // the first step also allocates: not counted
            }
        }
        times.sort();
        let median = times[times.len() / 2].as_secs_f64();
        println!(
            "{name:<22} {median:>8.3} s/step  → {:>5.0} steps in 10 min",
            600.0 / median
        );
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
