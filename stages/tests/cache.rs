//! The `cache` stage on a real store: the second run reads every case back and skips the
//! stages before the cache; changing a prefix parameter misses; changing a stage after the
//! cache hits; rewriting one source file misses that case only. Hits are bit-identical to a
//! fresh computation.

use std::path::{Path, PathBuf};

use mtmed3d_pipeline::{RunOptions, RunSummary, Sample, config, runtime};
use mtmed3d_stages::io::phantom::PhantomConfig;
use mtmed3d_stages::io::phantom_dataset::write_case;
use mtmed3d_stages::io::zarr::store::{CaseStore, same_sample};

fn dataset(dir: &Path, cases: usize) -> PathBuf {
    let root = dir.join("data");
    let config = PhantomConfig {
        shape: [40, 44, 32],
        ..PhantomConfig::default()
    };
    for i in 0..cases {
        write_case(&root, &config, 5, i).unwrap();
    }
    root
}

/// Runs the pipeline; `normalise_nonzero` is a prefix parameter, `factor` a suffix one.
fn run(dir: &Path, data: &Path, out: &str, normalise_nonzero: bool, factor: f32) -> RunSummary {
    let yaml = format!(
        "source: {{brats: {{root: {data}}}}}
stages:
  - nifti_decode: {{}}
  - reorient: {{axcodes: RAS}}
  - normalise: {{nonzero: {normalise_nonzero}}}
  - brats_regions: {{}}
  - cache: {{path: {cache}, patch_size: [32, 32, 32]}}
  - scale: {{factor: {factor}}}
sinks:
  - zarr_write: {{path: {out}, resume: false, patch_size: [32, 32, 32]}}
",
        data = data.display(),
        cache = dir.join("cache.zarr").display(),
        out = dir.join(out).display(),
    );
    let plan = config::parse_str(&yaml, &dir.join("p.yaml"), &[], &mtmed3d_stages::registry())
        .unwrap_or_else(|d| panic!("{d}"));
    let summary = runtime::run(&plan, &RunOptions::default()).unwrap();
    assert!(summary.success(false), "{}", summary.render());
    summary
}

fn outputs(dir: &Path, out: &str) -> Vec<Sample> {
    let store = CaseStore::open(&dir.join(out)).unwrap();
    let mut ids: Vec<String> = store.list().unwrap().into_iter().map(|c| c.id).collect();
    ids.sort();
    ids.iter().map(|id| store.read_case(id).unwrap()).collect()
}

fn assert_same(a: &[Sample], b: &[Sample]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        same_sample(x, y).unwrap_or_else(|e| panic!("{}: {e}", x.id));
    }
}

/// (hits, computed, how many samples the prefix's first stage decoded).
fn counts(s: &RunSummary) -> (u64, u64, u64) {
    let decode = s.stages.iter().find(|r| r.name == "nifti_decode").unwrap();
    (s.cache_hits, s.cache_misses, decode.received)
}

#[test]
fn hits_misses_and_invalidation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dataset(dir, 3);

    let first = run(dir, &data, "out1.zarr", true, 2.0);
    assert_eq!(counts(&first), (0, 3, 3));
    let cache = CaseStore::open(&dir.join("cache.zarr")).unwrap();
    assert_eq!(
        cache.list().unwrap().iter().filter(|c| c.complete).count(),
        3
    );

    // Same pipeline: every case read back, nothing decoded, outputs bit-identical.
    let second = run(dir, &data, "out2.zarr", true, 2.0);
    assert_eq!(counts(&second), (3, 0, 0));
    assert!(second.render().contains("cache: 3 hits, 0 computed"));
    let fresh = outputs(dir, "out1.zarr");
    assert_same(&fresh, &outputs(dir, "out2.zarr"));

    // A stage after the cache changed: still hits, and the new factor applies.
    let suffix = run(dir, &data, "out3.zarr", true, 4.0);
    assert_eq!(counts(&suffix), (3, 0, 0));
    let doubled = outputs(dir, "out3.zarr");
    let (a, b) = (
        fresh[0].f32("image").unwrap(),
        doubled[0].f32("image").unwrap(),
    );
    assert!(
        a.iter()
            .zip(b.iter())
            .all(|(x, y)| (x * 2.0).to_bits() == y.to_bits())
    );

    // A stage before the cache changed: every case misses.
    let prefix = run(dir, &data, "out4.zarr", false, 2.0);
    assert_eq!(counts(&prefix), (0, 3, 3));

    // Back to the first configuration, then one source file rewritten: only its case misses.
    let back = run(dir, &data, "out5.zarr", true, 2.0);
    assert_eq!(
        counts(&back),
        (0, 3, 3),
        "the prefix change replaced the entries"
    );
    let hgg_or_lgg = ["HGG", "LGG"]
        .iter()
        .map(|g| data.join(g).join("Phantom_0001"))
        .find(|p| p.is_dir())
        .unwrap();
    let t1 = hgg_or_lgg.join("Phantom_0001_t1.nii.gz");
    let bytes = std::fs::read(&t1).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&t1, &bytes).unwrap();
    let touched = run(dir, &data, "out6.zarr", true, 2.0);
    assert_eq!(counts(&touched), (2, 1, 1));
    assert_same(&fresh, &outputs(dir, "out6.zarr"));
}

#[test]
fn a_random_stage_before_the_cache_is_refused() {
    let yaml = "source: {phantom: {cases: 2, shape: [32, 32, 32]}}
stages:
  - rand_flip: {prob: 0.5}
  - cache: {path: c.zarr}
";
    let err = config::parse_str(yaml, Path::new("p.yaml"), &[], &mtmed3d_stages::registry())
        .err()
        .expect("must not validate")
        .to_string();
    assert!(
        err.contains("`rand_flip` is random, so it cannot come before `cache` (line 4)")
            && err.contains("move `rand_flip` after `cache`"),
        "{err}"
    );
}
