//! Timing of the `reference` preset (or another): inference latency, forward + backward of the whole
//! multi-task model, and one full training step, on the CPU (flex) or, with `--features cuda`, on a GPU.
//!
//! ```text
//! cargo bench -p mtmed3d-model --bench reference_step -- [--preset reference] [--device cpu|cuda] [--iters 3] [--json]
//! ```
//! Prints one table (or a JSON object with `--json`). Compare with `benches/pytorch_reference.py`, run on
//! the same machine, for the ratio against PyTorch + MONAI.

use std::time::{Duration, Instant};

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Tensor, TensorData};
use mtmed3d_model::balance::TaskBalancer;
use mtmed3d_model::decoder::detection::BoxTargets;
use mtmed3d_model::training::Trainer;
use mtmed3d_model::{ModelConfig, Targets};

struct Args {
    preset: String,
    device: String,
    iters: usize,
    json: bool,
}

fn args() -> Args {
    let mut a = Args {
        preset: "reference".into(),
        device: "cpu".into(),
        iters: 3,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--preset" => a.preset = it.next().expect("--preset NAME"),
            "--device" => a.device = it.next().expect("--device cpu|cuda"),
            "--iters" => a.iters = it.next().expect("--iters N").parse().expect("a number"),
            "--json" => a.json = true,
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn sync<B: Backend>(device: &B::Device) {
    let _ = B::sync(device);
}

fn run<B: AutodiffBackend>(
    cfg: &ModelConfig,
    device: &B::Device,
    iters: usize,
) -> Vec<(&'static str, Duration)> {
    let [x, y, z] = cfg.input_size;
    let model = cfg.init::<B>(device).expect("valid preset");
    let image = Tensor::<B, 5>::random([1, 4, x, y, z], Distribution::Normal(0.0, 1.0), device);
    let mut mask = vec![0f32; 3 * x * y * z];
    for (i, m) in mask.iter_mut().enumerate() {
        let v = i % (x * y * z);
        let (a, b, c) = (v / (y * z), (v / z) % y, v % z);
        *m = ((a as f32 - x as f32 / 2.0).abs() < 10.0
            && (b as f32 - y as f32 / 2.0).abs() < 12.0
            && (c as f32 - z as f32 / 2.0).abs() < 8.0) as u8 as f32;
    }
    let h = [x, y, z].map(|s| s as f32 / 2.0);
    let targets = Targets {
        seg: Tensor::from_data(TensorData::new(mask, [1, 3, x, y, z]), device),
        grades: vec![1],
        boxes: vec![BoxTargets {
            boxes: vec![[
                h[0] - 10.0,
                h[1] - 12.0,
                h[2] - 8.0,
                h[0] + 10.0,
                h[1] + 12.0,
                h[2] + 8.0,
            ]],
            labels: vec![0],
        }],
    };

    // inference latency: the model without autodiff
    let inner = mtmed3d_model::training::inference_model(&model);
    let inner_image = image.clone().inner();
    let mut latency = Vec::new();
    for i in 0..iters + 1 {
        let t = Instant::now();
        let out = inner.forward(inner_image.clone());
        let _ = out.seg_logits.into_data();
        sync::<B::InnerBackend>(device);
        if i > 0 {
            latency.push(t.elapsed());
        }
    }

    // forward + backward
    let mut fwd_bwd = Vec::new();
    for i in 0..iters + 1 {
        let t = Instant::now();
        let out = model.forward(image.clone());
        let losses = cfg.losses(&out, &targets);
        let grads = losses.weighted_sum(&[1.0, 1.0, 1.0]).backward();
        drop(grads);
        sync::<B>(device);
        if i > 0 {
            fwd_bwd.push(t.elapsed());
        }
    }

    // training step: forward, backward, AdamW
    let mut trainer = Trainer::<B>::new(cfg.clone(), TaskBalancer::Fixed(vec![1.0; 3]), 0.01);
    let mut m = model;
    let mut step = Vec::new();
    for i in 0..iters + 1 {
        let t = Instant::now();
        let (next, _) = trainer.step(m, image.clone(), &targets, 1e-4);
        m = next;
        sync::<B>(device);
        if i > 0 {
            step.push(t.elapsed());
        }
    }
    vec![
        ("inference forward", median(latency)),
        ("forward + backward", median(fwd_bwd)),
        ("training step (AdamW)", median(step)),
    ]
}

fn main() {
    let a = args();
    let cfg = ModelConfig::preset(&a.preset).expect("known preset");
    let rows = match a.device.as_str() {
        "cpu" => run::<mtmed3d_model::CpuAutodiff>(&cfg, &Default::default(), a.iters),
        #[cfg(feature = "cuda")]
        "cuda" => run::<mtmed3d_model::CudaAutodiff>(&cfg, &Default::default(), a.iters),
        d => panic!("unknown or disabled device `{d}` (cuda needs --features cuda)"),
    };
    let [x, y, z] = cfg.input_size;
    if a.json {
        let obj: serde_json::Map<String, serde_json::Value> = rows
            .iter()
            .map(|(k, d)| (k.to_string(), serde_json::json!(d.as_secs_f64())))
            .collect();
        println!(
            "{}",
            serde_json::json!({"preset": a.preset, "device": a.device, "input": [1, 4, x, y, z], "seconds": obj})
        );
    } else {
        println!(
            "preset {} on {} (burn 0.21), input 1×4×{x}×{y}×{z}, median of {}",
            a.preset, a.device, a.iters
        );
        println!("{:<26}{:>12}", "measurement", "seconds");
        for (k, d) in rows {
            println!("{k:<26}{:>12.3}", d.as_secs_f64());
        }
    }
}
