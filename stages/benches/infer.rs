//! Whole-volume inference time of the `infer` stage on a BraTS-sized case (240×240×155, four
//! modalities), on the CPU, for an untrained model of a preset (the weights do not change the
//! work done).
//!
//! ```sh
//! cargo bench -p mtmed3d-stages --features learn --bench infer -- --preset tiny
//! cargo bench -p mtmed3d-stages --features learn --bench infer -- --preset reference --windows 2
//! python3 benches/infer_peer.py --preset reference --windows 2   # PyTorch + MONAI peer
//! ```
//!
//! It times one forward pass on a single window (the second of two runs), then either the
//! whole stage (`process`: every window, blending, label map, boxes, grade, mapping back to
//! the original space) or, with `--windows N`, N windows with the rest extrapolated from
//! the per-window time. Prints one JSON line.

use std::time::Instant;

use mtmed3d_model::{CpuBackend, ModelConfig, checkpoint};
use mtmed3d_pipeline::{BuildContext, Field, Sample, SourceConfig, StageConfig, StageContext};
use mtmed3d_stages::learn::infer::Infer;
use mtmed3d_stages::learn::infer::window::WindowPlan;
use ndarray::s;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let preset = arg(&args, "--preset").unwrap_or_else(|| "tiny".into());
    let overlap: f64 = arg(&args, "--overlap").map_or(0.25, |v| v.parse().expect("--overlap"));
    let batch: usize = arg(&args, "--batch").map_or(1, |v| v.parse().expect("--batch"));
    let windows: Option<usize> = arg(&args, "--windows").map(|v| v.parse().expect("--windows"));
    let shape = [240, 240, 155];

    let dir = tempfile::tempdir().expect("temp dir");
    let config = ModelConfig::preset(&preset).expect("known preset");
    let model = config
        .init::<CpuBackend>(&Default::default())
        .expect("model builds");
    let ckpt = dir.path().join("model.mpk");
    checkpoint::save(&model, &config, &ckpt).expect("checkpoint saved");
    drop(model);

    let ctx = StageContext::new("bench", 1, 0);
    let source: mtmed3d_stages::io::sources::PhantomSource =
        serde_json::from_value(serde_json::json!({"cases": 1, "seed": 1, "shape": shape})).unwrap();
    let mut sample = source
        .build(&BuildContext::default())
        .unwrap()
        .load("Phantom_0000", &ctx)
        .unwrap();
    for (name, params) in [
        ("reorient", serde_json::json!({"axcodes": "RAS"})),
        (
            "normalise",
            serde_json::json!({"nonzero": true, "channel_wise": true}),
        ),
    ] {
        let stage: Box<dyn mtmed3d_pipeline::Stage> = match name {
            "reorient" => {
                serde_json::from_value::<mtmed3d_stages::spatial::reorient::Reorient>(params)
                    .unwrap()
                    .build(&BuildContext::default())
                    .unwrap()
            }
            _ => serde_json::from_value::<mtmed3d_stages::intensity::Normalise>(params)
                .unwrap()
                .build(&BuildContext::default())
                .unwrap(),
        };
        sample = stage.process(sample, &ctx).unwrap();
    }

    let stage = serde_json::from_value::<Infer>(serde_json::json!({
        "checkpoint": ckpt, "overlap": overlap, "batch": batch
    }))
    .unwrap()
    .build(&BuildContext::default())
    .expect("infer builds");
    let patch = config.input_size;
    let plan = WindowPlan::new(shape, patch, overlap);

    // one window: the stage on a sample of exactly the patch size
    let image = sample.f32("image").unwrap();
    let window = image
        .slice(s![.., 0..patch[0], 0..patch[1], 0..patch[2]])
        .to_owned();
    let mut one = Sample::new("window");
    one.insert("image", Field::f32(window.into_dyn()));
    let mut per_window = f64::NAN;
    for _ in 0..2 {
        let t = Instant::now();
        stage.process(one.clone(), &ctx).unwrap();
        per_window = t.elapsed().as_secs_f64();
    }

    let (measured_windows, seconds, extrapolated) = match windows {
        Some(n) => {
            // a slab one window wide in x and y and up to n windows long in z, as a whole stage
            let n = n.min(plan.starts.len());
            let mut part = Sample::new("part");
            let sub = image
                .slice(s![
                    ..,
                    0..patch[0],
                    0..patch[1],
                    0..(patch[2] * n).min(shape[2]).max(patch[2])
                ])
                .to_owned();
            part.insert("image", Field::f32(sub.into_dyn()));
            let t = Instant::now();
            let out = stage.process(part, &ctx).unwrap();
            let done = out.meta.attrs["infer"]["windows"].as_u64().unwrap() as usize;
            let secs = t.elapsed().as_secs_f64();
            (
                done,
                secs,
                Some(secs / done as f64 * plan.starts.len() as f64),
            )
        }
        None => {
            let t = Instant::now();
            let out = stage.process(sample.clone(), &ctx).unwrap();
            let secs = t.elapsed().as_secs_f64();
            assert_eq!(out.u8("pred_label").unwrap().shape(), &shape);
            (plan.starts.len(), secs, None)
        }
    };
    println!(
        "{}",
        serde_json::json!({
            "preset": preset,
            "volume": shape,
            "patch": patch,
            "overlap": overlap,
            "batch": batch,
            "windows_in_volume": plan.starts.len(),
            "one_window_seconds": per_window,
            "windows_measured": measured_windows,
            "seconds_measured": seconds,
            "whole_volume_seconds": extrapolated.unwrap_or(seconds),
            "extrapolated": extrapolated.is_some(),
            "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        })
    );
}
