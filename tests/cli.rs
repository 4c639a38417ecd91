//! The command line as a user meets it: exit statuses, messages, outputs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn mtmed3d(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mtmed3d"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn validate_prints_every_error_with_location_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "broken.yaml",
        "source:\n  synthetic: {cases: 2}\nstages:\n  - scael: {factor: 2}\n  - rand_noise: {std: high}\nsinks:\n  - json_write: {path: out/x.jsonl, colour: red}\n",
    );
    let out = mtmed3d(&["validate", "broken.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    for expected in [
        "error[unknown-stage]: unknown stage `scael`",
        "--> broken.yaml:4:5",
        "= help: did you mean `scale`?",
        "error[wrong-type]: `rand_noise`: wrong type: found the string `high`, expected a number",
        "--> broken.yaml:5:23",
        "error[unknown-field]: unknown parameter `colour` for `json_write`",
        "--> broken.yaml:7:37",
        "3 errors in broken.yaml",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }

    let out = mtmed3d(&["validate", "--json", "broken.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors = json["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 3);
    assert_eq!(errors[0]["kind"], "unknown_stage");
    assert_eq!(
        (errors[0]["line"].as_u64(), errors[0]["column"].as_u64()),
        (Some(4), Some(5))
    );
}

#[test]
fn validate_accepts_the_shipped_pipelines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for entry in std::fs::read_dir(root.join("configs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = mtmed3d(&["validate", path.to_str().unwrap()], root);
            // the GPU pipelines name `cuda:0`, which a build without CUDA reports, and nothing else
            let gpu_only = std::fs::read_to_string(&path)
                .unwrap()
                .contains("device: cuda:0");
            if gpu_only && !cfg!(feature = "cuda") && out.status.code() == Some(2) {
                let err = text(&out.stderr);
                assert!(
                    err.contains("needs mtmed3d built with `--features cuda`"),
                    "{err}"
                );
                assert!(err.contains("1 error in"), "{err}");
                continue;
            }
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}: {}",
                path.display(),
                text(&out.stderr)
            );
            assert!(text(&out.stdout).contains(": valid ("));
        }
    }
}

#[test]
fn a_missing_pipeline_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = mtmed3d(&["validate", "nope.yaml"], dir.path());
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("cannot read pipeline file nope.yaml"));
}

#[test]
fn a_failing_case_is_named_the_others_complete_and_the_status_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = "source:\n  synthetic: {cases: 20, shape: [4, 4, 4]}\nstages:\n  - fail_cases: {cases: [case_007], reason: truncated gzip stream}\nsinks:\n  - json_write: {path: out/stats.jsonl}\n";
    write(dir.path(), "p.yaml", pipeline);
    let out = mtmed3d(
        &["run", "p.yaml", "--summary", "out/summary.json"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("19 done, 1 failed of 20 samples"), "{err}");
    assert!(
        err.contains("FAILED case_007 in fail_cases: truncated gzip stream"),
        "{err}"
    );
    let rows = lines(&dir.path().join("out/stats.jsonl"));
    assert_eq!(rows.len(), 19);
    assert!(rows.iter().all(|r| r["id"] != "case_007"));
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["failures"][0]["case"], "case_007");
    assert_eq!(summary["done"], 19);

    let out = mtmed3d(
        &["run", "p.yaml", "--set", "allow_failures=true"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn shards_partition_the_cases() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "p.yaml",
        "source:\n  synthetic: {cases: 10, shape: [2, 2, 2]}\nsinks:\n  - json_write: {path: out/all.jsonl}\n",
    );
    let mut ids = Vec::new();
    for i in 0..3 {
        let path = format!("sinks.json_write.path=out/shard{i}.jsonl");
        let shard = format!("{i}/3");
        let out = mtmed3d(
            &["run", "p.yaml", "--shard", &shard, "--set", &path],
            dir.path(),
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let rows = lines(&dir.path().join(format!("out/shard{i}.jsonl")));
        assert!((3..=4).contains(&rows.len()));
        ids.extend(rows.iter().map(|r| r["id"].as_str().unwrap().to_string()));
    }
    ids.sort();
    let expected: Vec<String> = (0..10).map(|i| format!("case_{i:03}")).collect();
    assert_eq!(ids, expected);

    let out = mtmed3d(&["run", "p.yaml", "--shard", "3/3"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("the index must be below the count"));
}

#[test]
fn ctrl_c_stops_cleanly_and_leaves_no_complete_looking_output() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "slow.yaml",
        "source:\n  synthetic: {cases: 400, shape: [2, 2, 2]}\nstages:\n  - delay: {ms: 20}\nsinks:\n  - json_write: {path: out/stats.jsonl}\n",
    );
    let child = Command::new(env!("CARGO_BIN_EXE_mtmed3d"))
        .args(["run", "slow.yaml"])
        .current_dir(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopping took too long"
    );
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("interrupted: outputs of this run are incomplete"),
        "{err}"
    );
    assert!(!dir.path().join("out/stats.jsonl").exists());
    let partial = lines(&dir.path().join("out/stats.jsonl.partial"));
    assert!(
        !partial.is_empty() && partial.len() < 400,
        "{}",
        partial.len()
    );
}

#[test]
fn stages_lists_every_component_with_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let out = mtmed3d(&["stages", "--json"], dir.path());
    assert_eq!(out.status.code(), Some(0));
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let scale = all
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "scale")
        .unwrap();
    assert_eq!(scale["kind"], "stage");
    let params = scale["params"].as_array().unwrap();
    let factor = params.iter().find(|p| p["name"] == "factor").unwrap();
    assert_eq!(
        (factor["type"].as_str(), factor["required"].as_bool()),
        (Some("number"), Some(true))
    );
    let field = params.iter().find(|p| p["name"] == "field").unwrap();
    assert_eq!(field["default"], "image");
    assert!(!field["doc"].as_str().unwrap().is_empty());

    let out = mtmed3d(&["stages"], dir.path());
    let listing = text(&out.stdout);
    for name in ["synthetic", "scale", "rand_noise", "json_write", "discard"] {
        assert!(listing.contains(name), "{name} missing from:\n{listing}");
    }
    let out = mtmed3d(&["stages", "scael"], dir.path());
    assert!(text(&out.stderr).contains("did you mean `scale`?"));
}

#[test]
fn graph_draws_the_wired_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "p.yaml",
        "source:\n  synthetic: {}\nstages:\n  - scale: {factor: 2, queue: 5}\nsinks:\n  - json_write: {path: a.jsonl}\n  - discard: {}\n",
    );
    let out = mtmed3d(&["graph", "p.yaml"], dir.path());
    let mermaid = text(&out.stdout);
    assert!(mermaid.starts_with("flowchart LR\n"), "{mermaid}");
    for edge in [
        "n0 -->|queue 5| n1",
        "n1 -->|queue 2| n2",
        "n1 -->|queue 2| n3",
    ] {
        assert!(mermaid.contains(edge), "{edge} missing from:\n{mermaid}");
    }
    let out = mtmed3d(&["graph", "p.yaml", "--format", "dot"], dir.path());
    let dot = text(&out.stdout);
    assert!(dot.contains("n0 -> n1 [label=\"queue 5\"]"), "{dot}");
}

#[test]
fn the_quick_demo_runs_every_step_and_its_metrics_equal_evaluate_on_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = mtmed3d(&["demo", "--out", "run", "--quick"], dir.path());
    let log = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    for line in [
        "demo 1/3",
        "demo 2/3",
        "demo 3/3",
        "WT Dice",
        "detection mAP@0.5",
    ] {
        assert!(log.contains(line), "`{line}` missing from:\n{log}");
    }
    let run = dir.path().join("run");
    for file in [
        "configs/demo-train.yaml",
        "train/best.ckpt",
        "train/history.jsonl",
        "train/curves.svg",
        "metrics.csv",
    ] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    // the cache holds the 4 training cases, complete
    let cached = std::fs::read_dir(run.join("cache"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("Phantom_"))
        .count();
    assert_eq!(cached, 4);
    let test_cases: Vec<PathBuf> = ["HGG", "LGG"]
        .iter()
        .flat_map(|g| {
            std::fs::read_dir(run.join("data/test").join(g))
                .into_iter()
                .flatten()
        })
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    assert_eq!(test_cases.len(), 2);
    for case in &test_cases {
        let id = case.file_name().unwrap().to_string_lossy().to_string();
        let flair =
            mtmed3d_stages::io::nifti::read_nifti(case.join(format!("{id}_flair.nii.gz"))).unwrap();
        let mask =
            mtmed3d_stages::io::nifti::read_nifti(run.join(format!("predictions/{id}.nii.gz")))
                .unwrap();
        // the prediction lies on the input's grid
        assert_eq!(mask.shape()[1..], flair.shape()[1..], "{id}");
        assert_eq!(mask.affine(), flair.affine(), "{id}");
        assert!(run.join(format!("predictions/{id}.json")).is_file());
        assert!(run.join(format!("overlays/{id}.png")).is_file());
    }
    // the pipeline's metrics sink and `evaluate` on the written files agree
    let eval = mtmed3d(
        &[
            "evaluate",
            "--pred",
            "run/predictions",
            "--truth",
            "run/data/test",
            "--out",
            "eval.json",
        ],
        dir.path(),
    );
    assert_eq!(eval.status.code(), Some(0), "{}", text(&eval.stderr));
    let read = |p: PathBuf| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let (sink, files) = (
        read(run.join("metrics.json")),
        read(dir.path().join("eval.json")),
    );
    for key in [
        "dice_wt",
        "dice_tc",
        "dice_et",
        "hd95_wt",
        "hd95_et",
        "accuracy",
        "map_50",
        "mar_10_50",
    ] {
        let (a, b) = (
            sink["aggregate"][key].as_f64(),
            files["aggregate"][key].as_f64(),
        );
        assert!(a.is_some() && b.is_some(), "{key}: {a:?} {b:?}");
        assert!(
            (a.unwrap() - b.unwrap()).abs() < 1e-9,
            "{key}: {a:?} vs {b:?}"
        );
    }
}

#[test]
fn cross_validation_tests_every_fold_on_the_same_held_out_cases() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir(dir.path().join("configs")).unwrap();
    for name in ["cv-train.yaml", "cv-val.yaml", "cv-test.yaml"] {
        std::fs::copy(
            repo.join("configs").join(name),
            dir.path().join("configs").join(name),
        )
        .unwrap();
    }
    let phantom = mtmed3d(
        &[
            "phantom",
            "--out",
            "runs/cv/data",
            "--cases",
            "10",
            "--seed",
            "5",
            "--shape",
            "48,48,40",
        ],
        dir.path(),
    );
    assert_eq!(phantom.status.code(), Some(0), "{}", text(&phantom.stderr));
    let out = mtmed3d(
        &[
            "cv",
            "configs/cv-train.yaml",
            "--test",
            "configs/cv-test.yaml",
            "--set",
            "epochs=1",
            "--set",
            "split.folds=2",
            "--set",
            "split.test_fraction=0.25",
        ],
        dir.path(),
    );
    let log = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("dice_wt") && log.contains(" ± "), "{log}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("runs/cv/cv.json")).unwrap())
            .unwrap();
    let folds = summary["folds"].as_array().unwrap();
    assert_eq!(folds.len(), 2);
    // 6 HGG and 4 LGG: round(1.5) + round(1.0) = 3 held out, the other 7 dealt to 2 folds
    let test = &folds[0]["test_cases"];
    assert_eq!(test.as_array().unwrap().len(), 3, "{test}");
    assert_eq!(
        &folds[1]["test_cases"], test,
        "every fold is tested on the same cases"
    );
    let mut validated = 0;
    for fold in 0..2 {
        let history = lines(&dir.path().join(format!("runs/cv/fold{fold}/history.jsonl")));
        for step in history.iter().filter(|l| l["kind"] == "step") {
            for case in step["samples"].as_array().unwrap() {
                assert!(
                    !test.as_array().unwrap().contains(case),
                    "fold {fold} trained on test case {case}"
                );
            }
        }
        let validation = history.iter().find(|l| l["kind"] == "validation").unwrap();
        validated += validation["cases"].as_u64().unwrap();
    }
    assert_eq!(validated, 7, "each fold validates on its own fold");
    for key in ["dice_wt", "accuracy", "map_50"] {
        assert!(
            summary["mean"][key].is_f64() && summary["std"][key].is_f64(),
            "{key}"
        );
    }

    // a training pipeline without a split is refused with the fix
    let out = mtmed3d(
        &[
            "cv",
            "configs/cv-val.yaml",
            "--test",
            "configs/cv-test.yaml",
        ],
        dir.path(),
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("has no `split`"),
        "{}",
        text(&out.stderr)
    );
}

/// Built with `--features jemalloc`, the binary allocates with jemalloc set never to return memory
/// (model/src/allocator.rs), and `_RJEM_MALLOC_CONF` overrides that at run time, as the docs say.
#[cfg(feature = "jemalloc")]
#[test]
fn the_binary_runs_on_jemalloc_with_its_settings_and_the_environment_overrides_them() {
    let dir = tempfile::tempdir().unwrap();
    let allocator_line = |conf: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mtmed3d"));
        command
            .args(["stages"])
            .current_dir(dir.path())
            .env("RUST_LOG", "debug")
            .env_remove("_RJEM_MALLOC_CONF");
        if let Some(conf) = conf {
            command.env("_RJEM_MALLOC_CONF", conf);
        }
        let out = command.output().expect("the binary runs");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let err = text(&out.stderr);
        err.lines()
            .find(|l| l.contains("allocator"))
            .unwrap_or_else(|| panic!("no allocator line in:\n{err}"))
            .to_string()
    };
    let compiled = allocator_line(None);
    assert!(
        compiled.contains(
            "jemalloc (thp always, dirty_decay_ms -1, muzzy_decay_ms -1, oversize_threshold 0)"
        ),
        "{compiled}"
    );
    let overridden = allocator_line(Some("dirty_decay_ms:10000,muzzy_decay_ms:5000"));
    assert!(
        overridden.contains("dirty_decay_ms 10000, muzzy_decay_ms 5000"),
        "{overridden}"
    );
}
