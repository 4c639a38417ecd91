//! Timing of a preset (default `reference`): inference latency, forward + backward of the whole multi-task
//! model, per-part forward and forward + backward (encoder, segmentation decoder, classifier, detector), and
//! one full training step with fixed task weights and with a GradNorm update, on the CPU (flex) or, with
//! `--features cuda`, on a GPU.
//!
//! ```text
//! cargo bench -p mtmed3d-model --bench reference_step -- [--preset reference] [--device cpu|cuda]
//!     [--iters 3] [--batch 1] [--threads N] [--only inference,fwd_bwd,parts,encoder,step,gradnorm] [--json]
//! ```
//! Each measurement is printed as soon as it completes (one line, flushed), so a run cut short by a timeout
//! still reports what it measured; with `--json` each line is a JSON object. Compare with
//! `benches/pytorch_reference.py` (same machine, same thread count): `benches/model_cpu.sh` runs both.

use std::io::Write;
use std::time::{Duration, Instant};

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Tensor, TensorData};
use mtmed3d_model::balance::{GradNorm, GradNormConfig, TaskBalancer};
use mtmed3d_model::decoder::detection::{BoxTargets, detection_loss};
use mtmed3d_model::encoder::EncoderFeatures;
use mtmed3d_model::loss::{classification_focal_loss, segmentation_loss};
use mtmed3d_model::training::Trainer;
use mtmed3d_model::{ModelConfig, MultiTaskModel, Targets};

// jemalloc when built with `--features jemalloc` (`BURN_FEATURES=jemalloc model/benches/model_cpu.sh`).
#[cfg(feature = "jemalloc")]
mtmed3d_model::use_jemalloc!();

/// The allocator this binary runs on, for the report.
fn allocator() -> String {
    #[cfg(feature = "jemalloc")]
    if let Some(settings) = mtmed3d_model::allocator::settings() {
        return settings.to_string();
    }
    "the system allocator".to_string()
}

struct Args {
    preset: String,
    device: String,
    iters: usize,
    batch: usize,
    threads: usize,
    only: Vec<String>,
    json: bool,
}

const ALL: &[&str] = &[
    "inference",
    "fwd_bwd",
    "parts",
    "encoder",
    "step",
    "gradnorm",
];

fn args() -> Args {
    let mut a = Args {
        preset: "reference".into(),
        device: "cpu".into(),
        iters: 3,
        batch: 1,
        threads: 0,
        only: ALL.iter().map(|s| s.to_string()).collect(),
        json: false,
    };
    let mut it = std::env::args().skip(1);
    let number = |v: Option<String>, flag: &str| -> usize {
        v.and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{flag} needs a number"))
    };
    while let Some(x) = it.next() {
        match x.as_str() {
            "--preset" => a.preset = it.next().expect("--preset NAME"),
            "--device" => a.device = it.next().expect("--device cpu|cuda"),
            "--iters" => a.iters = number(it.next(), "--iters").max(1),
            "--batch" => a.batch = number(it.next(), "--batch").max(1),
            "--threads" => a.threads = number(it.next(), "--threads"),
            "--only" => {
                a.only = it
                    .next()
                    .expect("--only LIST")
                    .split(',')
                    .map(str::to_string)
                    .collect();
                if let Some(bad) = a.only.iter().find(|o| !ALL.contains(&o.as_str())) {
                    panic!(
                        "--only: unknown measurement `{bad}` (known: {})",
                        ALL.join(",")
                    );
                }
            }
            "--json" => a.json = true,
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

struct Report {
    json: bool,
    header: serde_json::Value,
}

impl Report {
    /// Prints one measurement now, so that a run stopped by a timeout still shows what it finished.
    fn row(&self, name: &str, times: &[Duration]) {
        let mut sorted = times.to_vec();
        sorted.sort();
        let median = sorted[sorted.len() / 2].as_secs_f64();
        let min = sorted[0].as_secs_f64();
        if self.json {
            let mut v = self.header.clone();
            v["measurement"] = name.into();
            v["seconds"] = median.into();
            v["min_seconds"] = min.into();
            v["runs"] = times.len().into();
            println!("{v}");
        } else {
            println!("{name:<34}{median:>10.3}{min:>10.3}");
        }
        let _ = std::io::stdout().flush();
    }
}

fn sync<B: Backend>(device: &B::Device) {
    let _ = B::sync(device);
}

/// Runs `f` `iters + 1` times and keeps the times of all but the first (warm-up, allocations).
fn timed<R>(iters: usize, mut f: impl FnMut() -> R) -> Vec<Duration> {
    (0..=iters)
        .filter_map(|i| {
            let t = Instant::now();
            drop(f());
            (i > 0).then(|| t.elapsed())
        })
        .collect()
}

fn targets<B: Backend>(cfg: &ModelConfig, batch: usize, device: &B::Device) -> Targets<B> {
    let [x, y, z] = cfg.input_size;
    let half = [x, y, z].map(|s| s as f32 / 2.0);
    let ext = [x, y, z].map(|s| s as f32 / 5.0); // a box a fifth of each edge around the centre
    let mut mask = vec![0f32; batch * 3 * x * y * z];
    for (i, m) in mask.iter_mut().enumerate() {
        let v = i % (x * y * z);
        let p = [v / (y * z), (v / z) % y, v % z];
        *m = (0..3).all(|a| (p[a] as f32 + 0.5 - half[a]).abs() < ext[a]) as u8 as f32;
    }
    let one = BoxTargets {
        boxes: vec![[
            half[0] - ext[0],
            half[1] - ext[1],
            half[2] - ext[2],
            half[0] + ext[0],
            half[1] + ext[1],
            half[2] + ext[2],
        ]],
        labels: vec![0],
    };
    Targets {
        seg: Tensor::from_data(TensorData::new(mask, [batch, 3, x, y, z]), device),
        grades: (0..batch).map(|i| (i + 1) % 2).collect(),
        boxes: vec![one; batch],
    }
}

fn detached<B: AutodiffBackend>(f: &EncoderFeatures<B>) -> EncoderFeatures<B> {
    EncoderFeatures {
        hidden: f.hidden.clone().map(|h| h.detach().require_grad()),
    }
}

/// The encoder's forward and backward passes, from the mean of every stage's output.
fn encoder_fwd_bwd<B: AutodiffBackend>(
    model: &MultiTaskModel<B>,
    image: &Tensor<B, 5>,
) -> B::Gradients {
    let f = model.encoder.forward(image.clone());
    let loss = f
        .hidden
        .into_iter()
        .map(|h| h.mean())
        .reduce(|a, b| a + b)
        .expect("the encoder has stages");
    let g = loss.backward();
    sync::<B>(&image.device());
    g
}

/// Forward and forward + backward of each part on its own, from detached inputs: where the time goes.
fn parts<B: AutodiffBackend>(
    cfg: &ModelConfig,
    model: &MultiTaskModel<B>,
    image: &Tensor<B, 5>,
    t: &Targets<B>,
    iters: usize,
    report: &Report,
) {
    let device = image.device();
    let inner = mtmed3d_model::training::inference_model(model);
    let inner_image = image.clone().inner();
    let feats_inner = inner.encoder.forward(inner_image.clone());
    let seg_inner = inner
        .segmentation
        .forward(inner_image.clone(), &feats_inner);

    report.row(
        "encoder forward",
        &timed(iters, || {
            let f = inner.encoder.forward(inner_image.clone());
            sync::<B::InnerBackend>(&device);
            f
        }),
    );
    report.row(
        "segmentation forward",
        &timed(iters, || {
            let s = inner
                .segmentation
                .forward(inner_image.clone(), &feats_inner);
            sync::<B::InnerBackend>(&device);
            s
        }),
    );
    report.row(
        "classifier forward",
        &timed(iters, || {
            let x = inner
                .classification
                .prepare_input(seg_inner.clone(), inner_image.clone());
            let c = inner.classification.forward(x);
            sync::<B::InnerBackend>(&device);
            c
        }),
    );
    report.row(
        "detector forward",
        &timed(iters, || {
            let d = inner.detection.forward(&feats_inner, None);
            sync::<B::InnerBackend>(&device);
            d
        }),
    );

    let feats = model.encoder.forward(image.clone());
    let seg = model.segmentation.forward(image.clone(), &feats).detach();
    report.row(
        "encoder fwd+bwd",
        &timed(iters, || encoder_fwd_bwd(model, image)),
    );
    report.row(
        "segmentation fwd+bwd",
        &timed(iters, || {
            let f = detached(&feats);
            let s = model.segmentation.forward(image.clone(), &f);
            let g = segmentation_loss(&cfg.loss, s, t.seg.clone()).backward();
            sync::<B>(&device);
            g
        }),
    );
    report.row(
        "classifier fwd+bwd",
        &timed(iters, || {
            let x = model
                .classification
                .prepare_input(seg.clone().require_grad(), image.clone());
            let logits = model.classification.forward(x);
            let g =
                classification_focal_loss(logits, &t.grades, cfg.loss.cls_focal_gamma).backward();
            sync::<B>(&device);
            g
        }),
    );
    report.row(
        "detector fwd+bwd",
        &timed(iters, || {
            let f = detached(&feats);
            let out = model.detection.forward(&f, None);
            let [_, _, x, y, z] = image.dims();
            let anchors = cfg.anchors([x, y, z], &out.level_sizes);
            let l = detection_loss(&cfg.detection, &anchors, &out, &t.boxes);
            let g = (l.classification + l.box_regression).backward();
            sync::<B>(&device);
            g
        }),
    );
}

fn run<B: AutodiffBackend>(cfg: &ModelConfig, device: &B::Device, a: &Args, report: &Report) {
    let [x, y, z] = cfg.input_size;
    let model = cfg.init::<B>(device).expect("valid preset");
    let image = Tensor::<B, 5>::random(
        [a.batch, 4, x, y, z],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    let t = targets::<B>(cfg, a.batch, device);
    let want = |m: &str| a.only.iter().any(|o| o == m);

    if want("inference") {
        let inner = mtmed3d_model::training::inference_model(&model);
        let inner_image = image.clone().inner();
        report.row(
            "inference forward",
            &timed(a.iters, || {
                let out = inner.forward(inner_image.clone());
                sync::<B::InnerBackend>(device);
                out
            }),
        );
    }
    if want("fwd_bwd") {
        report.row(
            "forward + backward",
            &timed(a.iters, || {
                let out = model.forward(image.clone());
                let g = cfg.losses(&out, &t).weighted_sum(&[1.0; 3]).backward();
                sync::<B>(device);
                g
            }),
        );
    }
    if want("parts") {
        parts(cfg, &model, &image, &t, a.iters, report);
    }
    if want("encoder") && !want("parts") {
        // The encoder alone (also part of `parts`): the quick loop for work on its kernels.
        report.row(
            "encoder fwd+bwd",
            &timed(a.iters, || encoder_fwd_bwd(&model, &image)),
        );
    }
    let mut m = model;
    for (name, key, balancer) in [
        (
            "training step (AdamW)",
            "step",
            TaskBalancer::Fixed(vec![1.0; 3]),
        ),
        (
            "training step + GradNorm",
            "gradnorm",
            TaskBalancer::GradNorm(GradNorm::new(GradNormConfig::new(), 3)),
        ),
    ] {
        if !want(key) {
            continue;
        }
        let mut trainer = Trainer::<B>::new(cfg.clone(), balancer, 0.01);
        let mut times = Vec::new();
        for i in 0..=a.iters {
            let start = Instant::now();
            let (next, _) = trainer.step(m, image.clone(), &t, 1e-4);
            m = next;
            sync::<B>(device);
            if i > 0 {
                times.push(start.elapsed());
            }
        }
        report.row(name, &times);
    }
}

fn main() {
    let a = args();
    if a.threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(a.threads)
            .build_global()
            .expect("the rayon pool is set once, before any tensor work");
    }
    let cfg = ModelConfig::preset(&a.preset).expect("known preset");
    let [x, y, z] = cfg.input_size;
    let threads = rayon::current_num_threads();
    let framework = match a.device.as_str() {
        "cpu" => "burn 0.21 (flex)",
        _ => "burn 0.21 (cuda)",
    };
    let report = Report {
        json: a.json,
        header: serde_json::json!({
            "framework": framework, "preset": a.preset, "device": a.device,
            "input": [a.batch, 4, x, y, z], "threads": threads, "allocator": allocator(),
        }),
    };
    if !a.json {
        println!(
            "burn 0.21 preset {} on {} ({threads} rayon threads, {}), input {}×4×{x}×{y}×{z}, {} timed runs after one warm-up",
            a.preset,
            a.device,
            allocator(),
            a.batch,
            a.iters
        );
        println!("{:<34}{:>10}{:>10}", "measurement", "median s", "min s");
        let _ = std::io::stdout().flush();
    }
    match a.device.as_str() {
        "cpu" => run::<mtmed3d_model::CpuAutodiff>(&cfg, &Default::default(), &a, &report),
        #[cfg(feature = "cuda")]
        "cuda" => match mtmed3d_model::cuda_device(0) {
            Ok(device) => run::<mtmed3d_model::CudaAutodiff>(&cfg, &device, &a, &report),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        },
        d => panic!("unknown or disabled device `{d}` (cuda needs --features cuda)"),
    }
}
