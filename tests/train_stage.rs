//! The `train` sink end to end: phantom cases through preprocessing into the tiny model. The loss falls
//! over a few epochs, the history has a data-wait fraction per epoch, a run stopped mid-epoch and resumed
//! ends with the weights of an uninterrupted run, and a resume with another model is refused.

use std::path::Path;

use mtmed3d_pipeline::{RunOptions, RunSummary, config, runtime};
use mtmed3d_stages::learn::train::checkpoint_difference;

/// phantom (48×48×32) → reorient → normalise → brats_regions → rand_crop 32³ → boxes → train.
fn pipeline(epochs: u32, cases: usize, train: &str) -> String {
    format!(
        "
name: train-test
seed: 7
epochs: {epochs}
shuffle: true
source:
  phantom: {{cases: {cases}, seed: 3, shape: [48, 48, 32], workers: 2}}
stages:
  - reorient: {{axcodes: RAS}}
  - normalise: {{nonzero: true, channel_wise: true}}
  - brats_regions: {{}}
  - rand_crop: {{size: [32, 32, 32], foreground_prob: 0.8, select: label, workers: 2}}
  - boxes: {{from: WT}}
sinks:
  - train: {{{train}}}
"
    )
}

fn run(yaml: &str, dir: &Path) -> Result<RunSummary, String> {
    let file = dir.join("pipeline.yaml");
    std::fs::write(&file, yaml).unwrap();
    let plan = config::load(&file, &[], &mtmed3d_stages::registry()).map_err(|d| d.to_string())?;
    runtime::run(&plan, &RunOptions::default()).map_err(|e| e.to_string())
}

fn history(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("history.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn kind<'a>(lines: &'a [serde_json::Value], k: &str) -> Vec<&'a serde_json::Value> {
    lines.iter().filter(|l| l["kind"] == k).collect()
}

#[test]
fn the_loss_falls_over_epochs_and_each_epoch_reports_its_data_wait() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let train = format!(
        "out: {}, batch_size: 2, balance: fixed, lr: {{encoder: 3.0e-3, segmentation: 3.0e-3, classification: 3.0e-3, detection: 3.0e-3}}",
        out.display()
    );
    let summary = run(&pipeline(5, 4, &train), dir.path()).unwrap();
    assert!(summary.success(false), "{}", summary.render());

    let lines = history(&out);
    let steps = kind(&lines, "step");
    let epochs = kind(&lines, "epoch");
    assert_eq!(steps.len(), 10, "4 cases / batch 2 × 5 epochs");
    assert_eq!(epochs.len(), 5);
    for (i, e) in epochs.iter().enumerate() {
        assert_eq!(e["epoch"], i as u64);
        assert_eq!(e["steps"], 2);
        let f = e["data_wait_fraction"].as_f64().unwrap();
        assert!((0.0..1.0).contains(&f), "data-wait fraction {f}");
        let wait = e["wait_s"].as_f64().unwrap();
        let busy = e["busy_s"].as_f64().unwrap();
        assert!((f - wait / (wait + busy)).abs() < 1e-9);
    }
    let first = epochs[0]["mean_total"].as_f64().unwrap();
    let last = epochs[4]["mean_total"].as_f64().unwrap();
    eprintln!(
        "mean loss per epoch: {:?}",
        epochs
            .iter()
            .map(|e| e["mean_total"].as_f64().unwrap())
            .collect::<Vec<_>>()
    );
    assert!(last < 0.8 * first, "loss {first} → {last}");
    // the schedule is sized from the case list: 2 steps × 5 epochs, decaying every step
    let lr: Vec<f64> = steps
        .iter()
        .map(|s| s["lr"]["encoder"].as_f64().unwrap())
        .collect();
    assert_eq!(lr[0], 3.0e-3);
    assert!(lr.windows(2).all(|w| w[1] < w[0]), "{lr:?}");
    assert!(out.join("last.ckpt").exists() && out.join("best.ckpt").exists());
}

#[test]
fn a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let common = "batch_size: 2, balance: gradnorm, gradnorm_every: 2, lr: {encoder: 2.0e-3, segmentation: 2.0e-3, classification: 1.0e-3, detection: 1.0e-3}";
    let full = dir.path().join("full");
    let part = dir.path().join("part");
    let yaml = |out: &Path, extra: &str| {
        pipeline(2, 5, &format!("out: {}, {common}{extra}", out.display()))
    };

    let a = run(&yaml(&full, ""), dir.path()).unwrap();
    assert!(a.success(false), "{}", a.render());

    // 5 cases, batch 2: steps 1–3 are epoch 0 (the last one a single sample), 4–6 epoch 1. Killed
    // after step 5: the last checkpoint is step 4's, one step into epoch 1
    let b = run(
        &yaml(&part, ", checkpoint_every: 2, stop_after_steps: 5"),
        dir.path(),
    )
    .unwrap();
    assert_eq!(b.failures.len(), 1, "{}", b.render());
    assert!(
        b.failures[0].reason.contains("stopped after 5 steps"),
        "{}",
        b.render()
    );
    let stopped = history(&part);
    assert_eq!(kind(&stopped, "step").len(), 5);

    let resume = format!(", resume: {}", part.join("last.ckpt").display());
    let c = run(&yaml(&part, &resume), dir.path()).unwrap();
    assert!(c.success(false), "{}", c.render());

    // the history is cut back to the checkpoint and continued: every step once, in order
    let resumed = history(&part);
    let steps: Vec<u64> = kind(&resumed, "step")
        .iter()
        .map(|s| s["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);
    let samples = |h: &[serde_json::Value]| -> Vec<String> {
        kind(h, "step")
            .iter()
            .map(|s| s["samples"].to_string())
            .collect()
    };
    assert_eq!(
        samples(&resumed),
        samples(&history(&full)),
        "same batches in the same order"
    );

    let (diff, param) =
        checkpoint_difference(&full.join("last.ckpt"), &part.join("last.ckpt")).unwrap();
    eprintln!("largest weight difference after resume: {diff:e} (parameter {param})");
    assert!(
        diff <= 1e-5,
        "weights differ by {diff} at parameter {param}"
    );
}

#[test]
fn resuming_with_another_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let train = format!(
        "out: {}, batch_size: 2, balance: fixed, checkpoint_every: 1, stop_after_steps: 1",
        out.display()
    );
    run(&pipeline(1, 2, &train), dir.path()).unwrap();
    let ckpt = out.join("last.ckpt");
    assert!(ckpt.exists());
    let train = format!(
        "out: {}, preset: reference, batch_size: 2, resume: {}",
        out.display(),
        ckpt.display()
    );
    let err = run(&pipeline(1, 2, &train), dir.path()).unwrap_err();
    assert!(err.contains("cannot build `train`: cannot resume"), "{err}");
    assert!(err.contains("different model configuration"), "{err}");
    assert!(err.contains("in the checkpoint but"), "{err}");
}

#[test]
fn cuda_without_the_feature_says_how_to_get_it() {
    if cfg!(feature = "cuda") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let train = format!(
        "out: {}, device: \"cuda:1\"",
        dir.path().join("run").display()
    );
    let err = run(&pipeline(1, 2, &train), dir.path()).unwrap_err();
    assert!(
        err.contains("device `cuda:1` needs a build with CUDA support"),
        "{err}"
    );
    assert!(err.contains("--features cuda"), "{err}");
}

/// The CLI trains in a child process that is killed with SIGKILL mid-epoch (after its third
/// step, with a checkpoint every second step); the same command with `resume` finishes the
/// run, and the weights equal those of an uninterrupted run.
#[test]
fn a_training_process_killed_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_run() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let common = "batch_size: 2, balance: gradnorm, gradnorm_every: 2, checkpoint_every: 2, lr: {encoder: 2.0e-3, segmentation: 2.0e-3, classification: 1.0e-3, detection: 1.0e-3}";
    let (full, killed) = (dir.path().join("full"), dir.path().join("killed"));
    let a = run(
        &pipeline(2, 5, &format!("out: {}, {common}", full.display())),
        dir.path(),
    )
    .unwrap();
    assert!(a.success(false), "{}", a.render());

    let file = dir.path().join("killed.yaml");
    std::fs::write(
        &file,
        pipeline(2, 5, &format!("out: {}, {common}", killed.display())),
    )
    .unwrap();
    let mtmed3d = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_mtmed3d"));
        c.arg("run")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    };
    let mut child = mtmed3d().spawn().unwrap();
    let started = Instant::now();
    let steps_done = || {
        std::fs::read_to_string(killed.join("history.jsonl"))
            .map(|h| h.matches("\"kind\":\"step\"").count())
            .unwrap_or(0)
    };
    // 5 cases, batch 2: epoch 0 is steps 1–3, so after step 4 the process is inside epoch 1
    while steps_done() < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "no 4 steps in 10 minutes"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(steps_done() < 6, "killed after the run ended");

    let status = mtmed3d()
        .arg("--set")
        .arg(format!(
            "sinks.train.resume={}",
            killed.join("last.ckpt").display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    let steps: Vec<u64> = kind(&history(&killed), "step")
        .iter()
        .map(|s| s["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6], "every step once, in order");
    let (diff, param) =
        checkpoint_difference(&full.join("last.ckpt"), &killed.join("last.ckpt")).unwrap();
    eprintln!("largest weight difference after SIGKILL and resume: {diff:e} (parameter {param})");
    assert_eq!(diff, 0.0, "parameter {param} differs by {diff:e}");
}
