//! The `infer` stage in a YAML pipeline on a phantom case of non-multiple size stored LPS:
//! BraTS files → nifti_decode → reorient → normalise → infer → nifti_write `space: original`,
//! with the written masks checked by nibabel.
#![cfg(feature = "learn")]

mod common;

use std::path::{Path, PathBuf};

use mtmed3d_model::{CpuBackend, ModelConfig, checkpoint};
use mtmed3d_pipeline::{RunOptions, config, runtime};
use mtmed3d_stages::io::nifti::read_nifti;
use mtmed3d_stages::io::phantom::PhantomConfig;
use mtmed3d_stages::io::phantom_dataset::write_case;

fn tiny_checkpoint(dir: &Path) -> PathBuf {
    let config = ModelConfig::tiny();
    let model = config.init::<CpuBackend>(&Default::default()).unwrap();
    let path = dir.join("tiny.mpk");
    checkpoint::save(&model, &config, &path).unwrap();
    path
}

fn case_dir(root: &Path) -> PathBuf {
    ["HGG", "LGG"]
        .iter()
        .map(|g| root.join(g).join("Phantom_0000"))
        .find(|d| d.is_dir())
        .expect("the phantom case was written")
}

#[test]
fn masks_written_in_the_original_space_open_in_nibabel_with_the_input_affine() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let phantom = PhantomConfig {
        shape: [50, 45, 37],
        ..PhantomConfig::default()
    };
    write_case(&root, &phantom, 3, 0).unwrap();
    let ckpt = tiny_checkpoint(dir.path());
    let out = dir.path().join("out");
    let yaml = format!(
        "
source:
  brats: {{root: {root}}}
stages:
  - nifti_decode: {{}}
  - reorient: {{axcodes: RAS}}
  - normalise: {{nonzero: true, channel_wise: true}}
  - infer: {{checkpoint: {ckpt}, overlap: 0.25, batch: 3, masks: pred_regions}}
sinks:
  - nifti_write: {{dir: {out}, fields: [pred_label, pred_regions], space: original}}
  - json_write: {{path: {json}}}
",
        root = root.display(),
        ckpt = ckpt.display(),
        out = out.display(),
        json = dir.path().join("cases.jsonl").display(),
    );
    let file = dir.path().join("p.yaml");
    std::fs::write(&file, yaml).unwrap();
    let plan = config::load(&file, &[], &mtmed3d_stages::registry()).unwrap();
    let summary = runtime::run(&plan, &RunOptions::default()).unwrap();
    assert!(summary.success(false), "{}", summary.render());

    let case = case_dir(&root);
    let t1 = case.join("Phantom_0000_t1.nii.gz");
    let label = out.join("Phantom_0000_pred_label.nii.gz");
    let regions = out.join("Phantom_0000_pred_regions.nii.gz");

    // Our own reader first: shape and affine of the input, BraTS label values only.
    let input = read_nifti(&t1).unwrap();
    let written = read_nifti(&label).unwrap();
    assert_eq!(written.shape(), [1, 50, 45, 37]);
    assert_eq!(written.affine(), input.affine());
    let values = written.into_u8_labels().unwrap();
    assert!(values.iter().all(|v| [0, 1, 2, 4].contains(v)));

    let json: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(dir.path().join("cases.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let text = json.to_string();
    assert!(
        text.contains("p_hgg") && text.contains("grade_pred"),
        "{text}"
    );

    // nibabel reads both files with the input's affine and shape, and the voxels we wrote.
    let Some((_tmp, dumped)) = common::dump(&[t1, label, regions]) else {
        return;
    };
    let input_affine = common::affine_of(&dumped[0].meta["affine"]);
    for d in &dumped[1..] {
        common::assert_affine_close(
            &common::affine_of(&d.meta["affine"]),
            &input_affine,
            1e-6,
            "prediction vs input",
        );
        assert_eq!(d.meta["axcodes"], dumped[0].meta["axcodes"]);
    }
    assert_eq!(
        dumped[0].meta["axcodes"],
        serde_json::json!(["L", "P", "S"])
    );
    let nib_label = dumped[1].array("scaled");
    assert_eq!(nib_label.shape, [1, 50, 45, 37]);
    let ours: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
    assert_eq!(nib_label.values, ours);
    let nib_regions = dumped[2].array("scaled");
    assert_eq!(nib_regions.shape, [3, 50, 45, 37]);
    // the label map and the region masks agree voxel by voxel: ET ⊂ TC-or-ET label, WT ⇔ > 0
    let n = 50 * 45 * 37;
    for (i, &l) in ours.iter().enumerate() {
        let wt = nib_regions.values[n + i] > 0.0;
        let et = nib_regions.values[2 * n + i] > 0.0;
        let tc = nib_regions.values[i] > 0.0;
        assert_eq!(l == 4.0, et, "voxel {i}");
        assert_eq!(l == 1.0, tc && !et, "voxel {i}");
        assert_eq!(l == 2.0, wt && !tc && !et, "voxel {i}");
    }
}

#[test]
fn a_missing_or_foreign_checkpoint_fails_at_build_time_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let registry = mtmed3d_stages::registry();
    let build = |ckpt: &Path| -> String {
        let yaml = format!(
            "
source:
  synthetic: {{cases: 1, shape: [32, 32, 32], channels: 4}}
stages:
  - infer: {{checkpoint: {}}}
sinks:
  - discard: {{}}
",
            ckpt.display()
        );
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, yaml).unwrap();
        let plan = config::load(&file, &[], &registry).unwrap();
        match runtime::run(&plan, &RunOptions::default()) {
            Ok(s) => panic!("ran: {}", s.render()),
            Err(e) => e.to_string(),
        }
    };
    let missing = dir.path().join("nowhere.mpk");
    let err = build(&missing);
    assert!(
        err.contains("nowhere.mpk") && err.contains("no such checkpoint"),
        "{err}"
    );
    let foreign = dir.path().join("foreign.mpk");
    std::fs::write(&foreign, b"not a checkpoint at all").unwrap();
    let err = build(&foreign);
    assert!(
        err.contains("foreign.mpk") && err.contains("MTM3DCK1"),
        "{err}"
    );
}

#[test]
fn the_demo_infer_pipeline_runs_and_writes_original_space_masks() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(dir.path());
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/demo-infer.yaml");
    let out = dir.path().join("out");
    let overrides = [
        "source.phantom.cases=1".to_string(),
        "source.phantom.shape=[40, 36, 34]".to_string(),
        format!("stages.infer.checkpoint={}", ckpt.display()),
        format!("sinks.json_write.path={}", out.join("p.jsonl").display()),
        format!("sinks.nifti_write.dir={}", out.join("masks").display()),
    ];
    let plan = config::load(&demo, &overrides, &mtmed3d_stages::registry()).unwrap();
    let summary = runtime::run(&plan, &RunOptions::default()).unwrap();
    assert!(summary.success(false), "{}", summary.render());
    let label = read_nifti(out.join("masks/Phantom_0000_pred_label.nii.gz")).unwrap();
    assert_eq!(label.shape(), [1, 40, 36, 34]);
    let regions = read_nifti(out.join("masks/Phantom_0000_pred_regions.nii.gz")).unwrap();
    assert_eq!(regions.shape(), [3, 40, 36, 34]);
    assert_eq!(label.affine(), regions.affine());
    // stored LPS, as the phantom source makes them: x and y axes point the other way
    let a = label.affine();
    assert!(a[0][0] < 0.0 && a[1][1] < 0.0 && a[2][2] > 0.0, "{a:?}");
    let line: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(out.join("p.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let p = line["fields"]["p_hgg"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p), "{line}");
    let grade = line["fields"]["grade_pred"].as_str().unwrap();
    assert_eq!(grade, if p >= 0.5 { "HGG" } else { "LGG" });
}
