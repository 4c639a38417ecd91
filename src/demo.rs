//! `mtmed3d demo`: the whole path on synthetic BraTS-like cases, with no downloads.
//!
//! 1. Three phantom series are written as BraTS-2018 datasets (`.nii.gz`, HGG/ and LGG/):
//!    `train`, `val` (picks the best checkpoint) and `test` (held out: never seen by training
//!    nor used to choose anything).
//! 2. `configs/demo-train.yaml` decodes, reorients, normalises and caches the training cases
//!    in a zarr store (epochs after the first read the cache), then crops, flips and trains
//!    the `tiny` preset, validating on `val`.
//! 3. `configs/demo-test.yaml` runs the best checkpoint over the whole of every test volume
//!    and writes masks in the original space, boxes and grades, overlays and metrics.
//!
//! The pipeline files are written into the run folder with its paths, so every step can be
//! rerun or changed by hand: `mtmed3d run runs/demo/configs/demo-test.yaml`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::MultiProgress;
use serde_json::Value;

/// The pipelines the demo runs, embedded so that the demo needs no files.
const TRAIN: &str = include_str!("../configs/demo-train.yaml");
const VAL: &str = include_str!("../configs/demo-val.yaml");
const TEST: &str = include_str!("../configs/demo-test.yaml");

/// The folder the embedded pipelines name; replaced by `--out`.
const DEFAULT_OUT: &str = "runs/demo";

/// Volume shape of the demo's phantoms: a whole (small) brain, so inference covers several
/// windows of the tiny preset's 32³ input.
const SHAPE: [usize; 3] = [64, 64, 48];

/// What the held-out results should reach (the floors the demo is built to clear).
const FLOORS: [(&str, &str, f64); 5] = [
    ("dice_wt", "WT Dice", 0.85),
    ("dice_tc", "TC Dice", 0.75),
    ("dice_et", "ET Dice", 0.70),
    ("accuracy", "grade accuracy", 0.9),
    ("map_50", "detection mAP@0.5", 0.8),
];

#[derive(Args)]
pub struct DemoArgs {
    /// Run folder: data, configs, cache, checkpoints, predictions, overlays, metrics.
    #[arg(long, default_value = DEFAULT_OUT)]
    out: PathBuf,
    /// A smoke run: 4 training cases, 2 validation and 2 test cases, one epoch (about a
    /// minute); the metrics then mean nothing.
    #[arg(long)]
    quick: bool,
    /// Training epochs (default: the `epochs` of configs/demo-train.yaml).
    #[arg(long)]
    epochs: Option<usize>,
}

struct Split {
    name: &'static str,
    seed: u64,
    cases: usize,
    quick_cases: usize,
}

const SPLITS: [Split; 3] = [
    Split {
        name: "train",
        seed: 42,
        cases: 24,
        quick_cases: 4,
    },
    Split {
        name: "val",
        seed: 1042,
        cases: 6,
        quick_cases: 2,
    },
    Split {
        name: "test",
        seed: 2042,
        cases: 10,
        quick_cases: 2,
    },
];

/// A pipeline of the demo with `runs/demo` replaced by the run folder.
fn localise(template: &str, out: &Path) -> String {
    let out = out.to_string_lossy();
    let out = out.trim_end_matches('/');
    template
        .replace(
            "configs/demo-val.yaml",
            &format!("{out}/configs/demo-val.yaml"),
        )
        .replace(DEFAULT_OUT, out)
}

pub fn run(args: DemoArgs, progress: MultiProgress) -> Result<u8> {
    let out = &args.out;
    let started = Instant::now();
    let configs = out.join("configs");
    std::fs::create_dir_all(&configs)
        .with_context(|| format!("cannot create the run folder {}", configs.display()))?;
    for (name, template) in [
        ("demo-train.yaml", TRAIN),
        ("demo-val.yaml", VAL),
        ("demo-test.yaml", TEST),
    ] {
        let path = configs.join(name);
        std::fs::write(&path, localise(template, out))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }

    eprintln!(
        "demo 1/3: synthetic BraTS-like cases ({}×{}×{}) into {}",
        SHAPE[0],
        SHAPE[1],
        SHAPE[2],
        out.join("data").display()
    );
    for split in &SPLITS {
        let cases = if args.quick {
            split.quick_cases
        } else {
            split.cases
        };
        let dir = out.join("data").join(split.name);
        crate::write_phantoms(&dir, cases, split.seed, SHAPE, 0.6, progress.clone())?;
    }

    let phase = Instant::now();
    eprintln!("demo 2/3: preprocess into a zarr cache and train the tiny preset");
    let mut overrides = Vec::new();
    if args.quick {
        overrides.push("epochs=1".to_string());
    }
    if let Some(epochs) = args.epochs {
        overrides.push(format!("epochs={epochs}"));
    }
    let code = crate::run_file(
        &configs.join("demo-train.yaml"),
        &overrides,
        progress.clone(),
    )?;
    if code != 0 {
        bail!(
            "training did not complete (exit status {code}); see the messages above and {}",
            out.join("train/history.jsonl").display()
        );
    }
    let train_s = phase.elapsed().as_secs_f64();

    let phase = Instant::now();
    eprintln!("demo 3/3: whole-volume inference on the held-out test cases, metrics, overlays");
    let code = crate::run_file(&configs.join("demo-test.yaml"), &[], progress)?;
    if code != 0 {
        bail!("inference or evaluation did not complete (exit status {code})");
    }
    let test_s = phase.elapsed().as_secs_f64();

    let metrics_path = out.join("metrics.json");
    let metrics: Value = serde_json::from_str(
        &std::fs::read_to_string(&metrics_path)
            .with_context(|| format!("cannot read {}", metrics_path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", metrics_path.display()))?;
    let cases = metrics["cases"].as_array().map_or(0, Vec::len);
    eprintln!(
        "\nheld-out test cases: {cases} (training {train_s:.0} s, inference and metrics {test_s:.0} s, all {:.0} s)",
        started.elapsed().as_secs_f64()
    );
    let mut below = 0;
    for (key, name, floor) in FLOORS {
        let value = metrics["aggregate"][key].as_f64();
        let verdict = match value {
            Some(v) if v >= floor => "ok",
            Some(_) => {
                below += 1;
                "below"
            }
            None => "missing",
        };
        eprintln!(
            "  {name:<20} {:>7}   floor {floor:.2}  {verdict}",
            value.map_or("-".into(), |v| format!("{v:.3}"))
        );
    }
    for key in ["hd95_wt", "hd95_tc", "hd95_et"] {
        if let Some(v) = metrics["aggregate"][key].as_f64() {
            eprintln!("  {:<20} {v:>7.2} mm", key.replace('_', " ").to_uppercase());
        }
    }
    if args.quick && below > 0 {
        eprintln!("  (--quick trains one epoch on 4 cases: the floors are not expected)");
    }
    eprintln!(
        "\noutputs in {}:\n  metrics.json, metrics.csv   per case and aggregate\n  predictions/                <case>.nii.gz (original space) and <case>.json (boxes, grade)\n  overlays/                   <case>.png: prediction on FLAIR with boxes\n  train/curves.svg            losses, validation Dice, task weights\n  train/history.jsonl         every step, epoch (data-wait fraction) and validation\n  train/best.ckpt             the checkpoint chosen on the validation cases\n  configs/                    the pipelines run, to rerun or change\nscore any model's predictions the same way:\n  mtmed3d evaluate --pred {p}/predictions --truth {p}/data/test",
        out.display(),
        p = out.display()
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelines_are_moved_into_the_run_folder() {
        let text = localise(TRAIN, Path::new("/tmp/x/"));
        assert!(!text.contains("runs/demo"), "{text}");
        assert!(text.contains("/tmp/x/configs/demo-val.yaml"));
        assert!(text.contains("/tmp/x/data/train"));
        let test = localise(TEST, Path::new("elsewhere"));
        assert!(test.contains("elsewhere/train/best.ckpt"), "{test}");
    }
}
