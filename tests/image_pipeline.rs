//! Image pipelines end to end through the CLI: bad cases fail alone with clear errors, NIfTI
//! files reoriented by a YAML pipeline equal nibabel's `as_closest_canonical`, and outputs
//! mapped back to the original space equal the input exactly.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mtmed3d_stages::io::nifti::{WriteOptions, read_nifti, write_nifti};
use mtmed3d_stages::io::phantom::PhantomConfig;
use mtmed3d_stages::io::phantom_dataset::write_case;
use ndarray::Array4;

fn mtmed3d(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mtmed3d"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "error")
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn small_phantoms(dir: &Path, cases: usize) -> PathBuf {
    let root = dir.join("data");
    let config = PhantomConfig {
        shape: [32, 32, 24],
        hgg_fraction: 1.0,
        ..PhantomConfig::default()
    };
    for i in 0..cases {
        write_case(&root, &config, 5, i).unwrap();
    }
    root
}

fn case_file(root: &Path, i: usize, role: &str) -> PathBuf {
    let id = format!("Phantom_{i:04}");
    root.join("HGG")
        .join(&id)
        .join(format!("{id}_{role}.nii.gz"))
}

const PREPROCESS: &str = "
source:
  brats: {root: data}
stages:
  - nifti_decode: {workers: 2}
  - reorient: {axcodes: RAS}
  - normalise: {}
  - brats_regions: {}
  - crop: {mode: foreground, margin: 2}
  - boxes: {from: WT}
sinks:
  - json_write: {path: out/cases.jsonl}
";

#[test]
fn each_bad_case_fails_alone_naming_its_file_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let root = small_phantoms(dir.path(), 9);
    let affine = read_nifti(case_file(&root, 0, "t1")).unwrap().affine();
    let opts = WriteOptions::default();

    // 0: truncated gzip stream
    let t1 = case_file(&root, 0, "t1");
    let bytes = std::fs::read(&t1).unwrap();
    std::fs::write(&t1, &bytes[..bytes.len() / 2]).unwrap();
    // 1: a header of garbage
    std::fs::write(case_file(&root, 1, "t2"), vec![0x5a; 400]).unwrap();
    // 2: a modality of another shape
    write_nifti(
        case_file(&root, 2, "flair"),
        Array4::<i16>::ones((1, 30, 32, 24)).view(),
        &affine,
        &opts,
    )
    .unwrap();
    // 3: a modality in another space
    let mut moved = affine;
    moved[0][3] += 5.0;
    write_nifti(
        case_file(&root, 3, "t1ce"),
        Array4::<i16>::ones((1, 32, 32, 24)).view(),
        &moved,
        &opts,
    )
    .unwrap();
    // 4: NaN voxels
    let mut nan = Array4::<f32>::ones((1, 32, 32, 24));
    nan[[0, 3, 3, 3]] = f32::NAN;
    nan[[0, 4, 3, 3]] = f32::INFINITY;
    write_nifti(case_file(&root, 4, "t1"), nan.view(), &affine, &opts).unwrap();
    // 5: an empty label
    write_nifti(
        case_file(&root, 5, "seg"),
        Array4::<u8>::zeros((1, 32, 32, 24)).view(),
        &affine,
        &opts,
    )
    .unwrap();
    // 6: a missing file
    std::fs::remove_file(case_file(&root, 6, "t2")).unwrap();

    std::fs::write(dir.path().join("p.yaml"), PREPROCESS).unwrap();
    let out = mtmed3d(
        &["run", "p.yaml", "--summary", "out/summary.json"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["done"], 2, "{summary:#}");
    assert_eq!(summary["failed"], 7);
    let failures = summary["failures"].as_array().unwrap();
    let expected: [(&str, &str, &[&str]); 7] = [
        (
            "Phantom_0000",
            "nifti_decode",
            &["Phantom_0000_t1.nii.gz", "truncated"],
        ),
        (
            "Phantom_0001",
            "nifti_decode",
            &["Phantom_0001_t2.nii.gz", "not a NIfTI file"],
        ),
        (
            "Phantom_0002",
            "nifti_decode",
            &[
                "Phantom_0002_flair.nii.gz",
                "shape [30, 32, 24] differs from",
                "Phantom_0002_t1.nii.gz",
            ],
        ),
        (
            "Phantom_0003",
            "nifti_decode",
            &[
                "Phantom_0003_t1ce.nii.gz",
                "affine differs",
                "not in one space",
            ],
        ),
        (
            "Phantom_0004",
            "nifti_decode",
            &["Phantom_0004_t1.nii.gz", "2 NaN or infinite voxels"],
        ),
        (
            "Phantom_0005",
            "nifti_decode",
            &["Phantom_0005_seg.nii.gz", "the label is empty"],
        ),
        (
            "Phantom_0006",
            "brats",
            &["Phantom_0006_t2.nii.gz", "has no `t2` file"],
        ),
    ];
    assert_eq!(failures.len(), expected.len());
    for (failure, (case, stage, phrases)) in failures.iter().zip(expected) {
        assert_eq!(failure["case"], case);
        assert_eq!(failure["stage"], stage, "{failure}");
        let reason = failure["reason"].as_str().unwrap();
        for phrase in phrases {
            assert!(
                reason.contains(phrase),
                "`{phrase}` missing from the reason for {case}: {reason}"
            );
        }
    }
    assert!(
        !text(&out.stderr).contains("panic"),
        "{}",
        text(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("out/cases.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["Phantom_0007", "Phantom_0008"]);
    // The surviving cases are complete: 4 normalised channels, 3 regions, a whole-tumour box.
    for r in &rows {
        assert_eq!(r["fields"]["image"]["shape"][0], 4);
        assert_eq!(r["fields"]["label"]["shape"][0], 3);
        assert_eq!(r["fields"]["boxes"].as_array().unwrap().len(), 1);
    }
}

#[test]
fn outputs_mapped_back_to_the_original_space_equal_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let root = small_phantoms(dir.path(), 2);
    let pipeline = "
source:
  brats: {root: data}
stages:
  - nifti_decode: {}
  - reorient: {axcodes: RAS}
  - crop: {mode: foreground, margin: 1}
  - rand_flip: {prob: 1.0, axes: [0, 2]}
  - rand_rot90: {prob: 1.0, plane: [0, 1]}
sinks:
  - nifti_write: {dir: out/original, fields: [image, label], space: original}
  - nifti_write: {dir: out/current, fields: [label], space: current}
";
    std::fs::write(dir.path().join("p.yaml"), pipeline).unwrap();
    let out = mtmed3d(&["run", "p.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for i in 0..2 {
        let id = format!("Phantom_{i:04}");
        let seg = read_nifti(case_file(&root, i, "seg")).unwrap();
        let back = read_nifti(dir.path().join(format!("out/original/{id}_label.nii.gz"))).unwrap();
        assert_eq!(back.affine(), seg.affine(), "affine of the original space");
        assert_eq!(
            back.into_u8_labels().unwrap(),
            seg.into_u8_labels().unwrap(),
            "labels restored exactly"
        );

        let t1 = read_nifti(case_file(&root, i, "t1")).unwrap().into_f32();
        let image = read_nifti(dir.path().join(format!("out/original/{id}_image.nii.gz"))).unwrap();
        assert_eq!(image.shape(), [4, 32, 32, 24]);
        let image = image.into_f32();
        assert_eq!(
            image.slice(ndarray::s![0..1, .., .., ..]),
            t1.view(),
            "t1 restored exactly"
        );

        // The current-space file is RAS (phantoms are stored LPS) and cropped.
        let current =
            read_nifti(dir.path().join(format!("out/current/{id}_label.nii.gz"))).unwrap();
        assert_ne!(current.affine(), seg_affine(&root, i));
        assert!(current.shape()[1] < 32 || current.shape()[3] < 24);
    }
}

fn seg_affine(root: &Path, i: usize) -> [[f64; 4]; 4] {
    read_nifti(case_file(root, i, "seg")).unwrap().affine()
}

/// Where nibabel keeps its test files, or `None` (with a message) when oracles are skipped.
fn nibabel_data() -> Option<PathBuf> {
    if std::env::var("MTMED3D_SKIP_ORACLES").is_ok_and(|v| v == "1") {
        eprintln!("MTMED3D_SKIP_ORACLES=1: nibabel comparison skipped");
        return None;
    }
    let out = Command::new(std::env::var("MTMED3D_PYTHON").unwrap_or_else(|_| "python3".into()))
        .args(["-c", "import nibabel, os; print(os.path.join(os.path.dirname(nibabel.__file__), 'tests', 'data'))"])
        .output()
        .expect("python3 runs (install it, or set MTMED3D_SKIP_ORACLES=1)");
    assert!(
        out.status.success(),
        "nibabel is needed: pip install nibabel numpy (or set MTMED3D_SKIP_ORACLES=1)\n{}",
        text(&out.stderr)
    );
    Some(PathBuf::from(text(&out.stdout).trim()))
}

#[test]
fn a_yaml_reorient_pipeline_matches_nibabel_on_real_files() {
    let Some(data) = nibabel_data() else { return };
    let names = [
        "anatomical.nii",
        "functional.nii",
        "example4d.nii.gz",
        "example_nifti2.nii.gz",
        "reoriented_anat_moved.nii",
        "resampled_anat_moved.nii",
        "standard.nii.gz",
    ];
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<String> = names
        .iter()
        .map(|n| data.join(n).display().to_string())
        .collect();
    let list = serde_json::to_string(&files).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = mtmed3d(
        &[
            "run",
            root.join("configs/nifti-reorient.yaml").to_str().unwrap(),
            "--set",
            &format!("source.nifti_files.files={list}"),
            "--set",
            "stages.nifti_decode.non_finite=keep",
            "--set",
            "sinks.nifti_write.dir=out",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let mut args = vec![
        root.join("tests/oracles/compare_canonical.py")
            .display()
            .to_string(),
    ];
    for (name, file) in names.iter().zip(&files) {
        let stem = name.trim_end_matches(".gz").trim_end_matches(".nii");
        args.push(file.clone());
        args.push(
            dir.path()
                .join(format!("out/{stem}_image.nii.gz"))
                .display()
                .to_string(),
        );
    }
    let check = Command::new(std::env::var("MTMED3D_PYTHON").unwrap_or_else(|_| "python3".into()))
        .args(&args)
        .output()
        .unwrap();
    let report = text(&check.stdout);
    assert!(
        check.status.success(),
        "nibabel disagrees:\n{report}\n{}",
        text(&check.stderr)
    );
    assert_eq!(report.lines().count(), names.len());
    for line in report.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(r["ok"], true, "{r}");
        assert!(r["affine_max_diff"].as_f64().unwrap() <= 1e-5);
    }
}

#[test]
fn a_crop_inside_nifti_decode_equals_the_crop_stage_after_it() {
    let dir = tempfile::tempdir().unwrap();
    // Cases of different sizes: the fused crop decodes only the window of each file, found
    // from the stored bytes, and must give what decoding everything and cropping after does.
    let shapes = [[32, 32, 24], [40, 36, 28], [28, 32, 20]];
    for (i, shape) in shapes.iter().enumerate() {
        let config = PhantomConfig {
            shape: *shape,
            hgg_fraction: 1.0,
            ..PhantomConfig::default()
        };
        write_case(&dir.path().join("data"), &config, 5, i).unwrap();
    }
    let pipeline = |decode: &str, crop: &str, out: &str| {
        format!(
            "source:\n  brats: {{root: data}}\nstages:\n  - nifti_decode: {decode}\n{crop}  - reorient: {{axcodes: RAS}}\nsinks:\n  - nifti_write: {{dir: {out}, fields: [image, label], space: current}}\n  - nifti_write: {{dir: {out}-original, fields: [label], space: original}}\n"
        )
    };
    std::fs::write(
        dir.path().join("stage.yaml"),
        pipeline(
            "{}",
            "  - crop: {mode: foreground, margin: 3}\n",
            "out/stage",
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("fused.yaml"),
        pipeline("{crop: {mode: foreground, margin: 3}}", "", "out/fused"),
    )
    .unwrap();
    for file in ["stage.yaml", "fused.yaml"] {
        let out = mtmed3d(&["run", file], dir.path());
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    for (i, shape) in shapes.iter().enumerate() {
        let id = format!("Phantom_{i:04}");
        for name in ["image", "label"] {
            let a = read_nifti(dir.path().join(format!("out/stage/{id}_{name}.nii.gz"))).unwrap();
            let b = read_nifti(dir.path().join(format!("out/fused/{id}_{name}.nii.gz"))).unwrap();
            assert_eq!(a.affine(), b.affine(), "{id} {name}");
            assert_eq!(a.shape(), b.shape(), "{id} {name}");
            assert!(a.shape()[1] < shape[0], "cropped: {:?}", a.shape());
            assert_eq!(a.into_f32(), b.into_f32(), "{id} {name}");
        }
        // The crop is in the history: masks map back to the input's grid.
        let back = read_nifti(
            dir.path()
                .join(format!("out/fused-original/{id}_label.nii.gz")),
        )
        .unwrap();
        assert_eq!(back.shape(), [1, shape[0], shape[1], shape[2]]);
    }
    // Its parameters are checked like the stage's.
    std::fs::write(
        dir.path().join("bad.yaml"),
        pipeline("{crop: {mode: center}}", "", "out/bad"),
    )
    .unwrap();
    let out = mtmed3d(&["validate", "bad.yaml"], dir.path());
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("`mode: center` needs `size: [x, y, z]`"),
        "{}",
        text(&out.stderr)
    );
}
