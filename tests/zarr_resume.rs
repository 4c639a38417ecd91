//! A preprocessing run into a Zarr case store killed with SIGKILL, then run again with the
//! same command: every case ends complete and byte-identical (arrays and attributes) to a
//! clean run, the rerun does only the missing cases, and a watcher polling the store while
//! the first run is killed never sees a case listed complete that does not verify.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mtmed3d_stages::io::zarr::CaseStore;

const CASES: usize = 20;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mtmed3d"))
}

fn pipeline(dir: &Path) -> PathBuf {
    let yaml = format!(
        "name: zarr-resume
seed: 5
source:
  brats: {{root: {root}}}
stages:
  - nifti_decode: {{workers: 1}}
  - reorient: {{axcodes: RAS}}
  - normalise: {{nonzero: true, channel_wise: true}}
  - brats_regions: {{}}
  - crop: {{mode: foreground, margin: 4}}
  - boxes: {{from: WT}}
sinks:
  - zarr_write: {{path: unset, patch_size: [32, 32, 32], workers: 1}}
",
        root = dir.join("data").display()
    );
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn run_to(pipeline: &Path, store: &Path, summary: &Path) -> Command {
    let mut c = bin();
    c.arg("run")
        .arg(pipeline)
        .arg("--set")
        .arg(format!("sinks.zarr_write.path={}", store.display()))
        .arg("--summary")
        .arg(summary)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Every file below `dir` by relative path, with its bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(
                    path.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&path).unwrap(),
                );
            }
        }
    }
    out
}

/// Runs the pipeline to the end, checks it succeeded, and returns how many cases it did.
fn run_to_completion(pipeline: &Path, store: &Path, summary: &Path) -> u64 {
    let out = run_to(pipeline, store, summary).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    summary_done(summary)
}

fn summary_done(path: &Path) -> u64 {
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    s["done"].as_u64().unwrap()
}

#[test]
fn a_killed_run_resumes_to_the_same_bytes_as_a_clean_run() {
    let dir = tempfile::tempdir().unwrap();
    let status = bin()
        .args([
            "phantom",
            "--cases",
            &CASES.to_string(),
            "--shape",
            "64,64,48",
            "--seed",
            "3",
        ])
        .arg("--out")
        .arg(dir.path().join("data"))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let pipeline = pipeline(dir.path());

    // The clean run.
    let clean = dir.path().join("clean.zarr");
    assert_eq!(
        run_to_completion(&pipeline, &clean, &dir.path().join("clean.json")),
        CASES as u64
    );

    // The killed run, watched: whatever is listed complete must verify.
    let killed = dir.path().join("killed.zarr");
    let mut child = run_to(&pipeline, &killed, &dir.path().join("first.json"))
        .spawn()
        .unwrap();
    let stop = AtomicBool::new(false);
    let (checked, done_at_kill) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut checked = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let Ok(store) = CaseStore::open(&killed) else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                for case in store.list().unwrap() {
                    if case.complete {
                        let problems = store.verify_case(&case.id).unwrap();
                        assert!(
                            problems.is_empty(),
                            "{} listed complete but: {problems:?}",
                            case.id
                        );
                        checked += 1;
                    }
                }
            }
            checked
        });
        let started = Instant::now();
        let done_at_kill = loop {
            let done = CaseStore::open(&killed)
                .and_then(|s| s.complete_cases(None))
                .map(|c| c.len())
                .unwrap_or(0);
            if done >= 3 {
                child.kill().unwrap(); // SIGKILL
                break done;
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "no case completed in 5 minutes"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        child.wait().unwrap();
        stop.store(true, Ordering::SeqCst);
        (watcher.join().unwrap(), done_at_kill)
    });
    assert!(checked > 0);
    let store = CaseStore::open(&killed).unwrap();
    let complete_after_kill = store.complete_cases(None).unwrap().len();
    assert!(complete_after_kill >= done_at_kill);
    assert!(
        complete_after_kill < CASES,
        "the run finished before it was killed"
    );

    // The same command again: only the missing cases are done.
    assert_eq!(
        run_to_completion(&pipeline, &killed, &dir.path().join("second.json")),
        (CASES - complete_after_kill) as u64
    );

    let finalise = bin()
        .args(["cache", "verify"])
        .arg(&killed)
        .output()
        .unwrap();
    assert!(
        finalise.status.success(),
        "{}",
        String::from_utf8_lossy(&finalise.stdout)
    );
    let store = CaseStore::open(&killed).unwrap();
    assert_eq!(store.complete_cases(None).unwrap().len(), CASES);
    // Byte-identical cases (every array chunk and every case's zarr.json); the root's
    // manifest and the temporary folder are not part of a case.
    let case_files = |root: &Path| -> BTreeMap<PathBuf, Vec<u8>> {
        files(root)
            .into_iter()
            .filter(|(p, _)| p != Path::new("zarr.json") && !p.starts_with(".partial"))
            .collect()
    };
    let (a, b) = (case_files(&clean), case_files(&killed));
    assert!(a.len() > CASES * 3, "{} files", a.len());
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "same files"
    );
    for (path, bytes) in &a {
        assert!(&b[path] == bytes, "{} differs", path.display());
    }
}
