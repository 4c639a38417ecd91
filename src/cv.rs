//! `mtmed3d cv`: k-fold cross-validation from one training pipeline and one test pipeline.
//!
//! The training pipeline has a top-level `split` (see `mtmed3d_pipeline::split`); for each
//! fold it runs with `split.fold` set and `part: train`, and its validation pipeline gets the
//! same split with `part: val`, so each fold chooses its checkpoint on its own fold. The test
//! pipeline then runs with `part: test` — the held-out cases, the same for every fold and
//! never used to choose anything — and its `metrics` sink scores that fold's checkpoint.
//! `{fold}` anywhere in either file is replaced by the fold number, so outputs land in one
//! folder per fold. The summary holds every fold's aggregate, and their mean and standard
//! deviation.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::MultiProgress;
use serde_json::{Map, Value, json};

#[derive(Args)]
pub struct CvArgs {
    /// Training pipeline with a top-level `split: {folds: K, fold: 0, part: train}`.
    train: PathBuf,
    /// Test pipeline: infers with the fold's checkpoint (`checkpoint: runs/cv/fold{fold}/best.ckpt`)
    /// and has a `metrics` sink (`path: runs/cv/fold{fold}/metrics.json`).
    #[arg(long)]
    test: PathBuf,
    /// Summary JSON: each fold's aggregate metrics, their mean and standard deviation.
    #[arg(long, default_value = "runs/cv/cv.json")]
    out: PathBuf,
    /// Override a value of both pipelines, as with `run` (e.g. `--set epochs=4`).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    overrides: Vec<String>,
}

/// A pipeline file for one fold: `{fold}` replaced, the split's fold and part set.
fn fold_plan(
    path: &Path,
    fold: usize,
    part: &str,
    overrides: &[String],
    registry: &mtmed3d_pipeline::Registry,
) -> Result<Option<mtmed3d_pipeline::Plan>> {
    let text = crate::read_pipeline(path)?.replace("{fold}", &fold.to_string());
    let mut all = overrides.to_vec();
    all.push(format!("split.fold={fold}"));
    all.push(format!("split.part={part}"));
    Ok(crate::validated(&text, path, &all, registry, false))
}

pub fn run(args: CvArgs, progress: MultiProgress) -> Result<u8> {
    let registry = mtmed3d_stages::registry();
    let probe = crate::read_pipeline(&args.train)?;
    let Some(first) = crate::validated(&probe, &args.train, &args.overrides, &registry, false)
    else {
        return Ok(crate::EXIT_INVALID);
    };
    let Some(split) = first.split.clone() else {
        bail!(
            "{} has no `split`: add e.g. `split: {{folds: 5, fold: 0, part: train}}` at the top level",
            args.train.display()
        );
    };
    let mut folds = Vec::new();
    for fold in 0..split.folds {
        eprintln!("cv: fold {fold} of {}: training", split.folds);
        let Some(plan) = fold_plan(&args.train, fold, "train", &args.overrides, &registry)? else {
            return Ok(crate::EXIT_INVALID);
        };
        let code = crate::run_plan(&plan, None, None, progress.clone())?;
        if code != 0 {
            bail!("fold {fold}: training did not complete (exit status {code})");
        }
        eprintln!("cv: fold {fold}: testing on the held-out cases");
        let Some(plan) = fold_plan(&args.test, fold, "test", &args.overrides, &registry)? else {
            return Ok(crate::EXIT_INVALID);
        };
        let metrics_path = plan
            .sinks
            .iter()
            .find(|s| s.name == "metrics")
            .and_then(|s| s.canonical.get("path").and_then(Value::as_str))
            .map(PathBuf::from)
            .with_context(|| {
                format!(
                    "{} needs a `metrics` sink, whose `path` holds {{fold}}",
                    args.test.display()
                )
            })?;
        let code = crate::run_plan(&plan, None, None, progress.clone())?;
        if code != 0 {
            bail!("fold {fold}: testing did not complete (exit status {code})");
        }
        let metrics: Value = serde_json::from_str(
            &std::fs::read_to_string(&metrics_path)
                .with_context(|| format!("cannot read {}", metrics_path.display()))?,
        )
        .with_context(|| format!("{} is not JSON", metrics_path.display()))?;
        let cases: Vec<Value> = metrics["cases"]
            .as_array()
            .map(|c| c.iter().map(|c| c["case"].clone()).collect())
            .unwrap_or_default();
        folds.push(json!({
            "fold": fold,
            "metrics": metrics_path,
            "test_cases": cases,
            "aggregate": metrics["aggregate"],
        }));
    }
    let (mean, std) = mean_and_std(&folds);
    let summary = json!({
        "train": args.train,
        "test": args.test,
        "split": split,
        "folds": folds,
        "mean": mean,
        "std": std,
    });
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&summary)? + "\n")
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "\ncross-validation, {} folds, held-out test cases (mean ± std over folds):",
        split.folds
    );
    for (key, m) in &mean {
        let s = std.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN);
        if let Some(m) = m.as_f64() {
            eprintln!("  {key:<12} {m:>9.4} ± {s:.4}");
        }
    }
    eprintln!("summary in {}", args.out.display());
    Ok(0)
}

/// Mean and sample standard deviation (n − 1) over folds of every numeric aggregate; a metric
/// some fold could not compute (`null`) is averaged over the folds that have it.
fn mean_and_std(folds: &[Value]) -> (Map<String, Value>, Map<String, Value>) {
    let mut values: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for fold in folds {
        if let Some(agg) = fold["aggregate"].as_object() {
            for (k, v) in agg {
                if let Some(v) = v.as_f64() {
                    values.entry(k.clone()).or_default().push(v);
                }
            }
        }
    }
    let (mut mean, mut std) = (Map::new(), Map::new());
    for (k, v) in values {
        let n = v.len() as f64;
        let m = v.iter().sum::<f64>() / n;
        let s = if v.len() > 1 {
            (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        mean.insert(k.clone(), json!(m));
        std.insert(k, json!(s));
    }
    (mean, std)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_std_skip_missing_values() {
        let folds = vec![
            json!({"aggregate": {"dice_wt": 0.8, "hd95_wt": null}}),
            json!({"aggregate": {"dice_wt": 0.9, "hd95_wt": 4.0}}),
            json!({"aggregate": {"dice_wt": 1.0, "hd95_wt": 6.0}}),
        ];
        let (mean, std) = mean_and_std(&folds);
        assert!((mean["dice_wt"].as_f64().unwrap() - 0.9).abs() < 1e-12);
        assert!((std["dice_wt"].as_f64().unwrap() - 0.1).abs() < 1e-12);
        assert!((mean["hd95_wt"].as_f64().unwrap() - 5.0).abs() < 1e-12);
        assert!((std["hd95_wt"].as_f64().unwrap() - 2f64.sqrt()).abs() < 1e-12);
    }
}
