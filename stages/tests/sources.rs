//! Sources: BraTS layouts (graded folders, flat with a grade CSV, 2023 naming), manifests and
//! file lists give the right cases, files, grades and modality order; missing files fail the
//! case alone, by name.

use std::path::{Path, PathBuf};

use mtmed3d_pipeline::{BuildContext, Source, SourceConfig, StageContext};
use mtmed3d_stages::io::sources::{BratsSource, ManifestSource, NiftiFilesSource};

fn touch(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, b"").unwrap();
}

fn build<C: SourceConfig>(yaml_json: &str) -> Box<dyn Source> {
    let config: C = serde_json::from_str(yaml_json).unwrap();
    config
        .build(&BuildContext::default())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn ctx() -> StageContext {
    StageContext::new("source", 0, 0)
}

fn modalities(sample: &mtmed3d_pipeline::Sample) -> Vec<String> {
    serde_json::from_value(sample.meta.attrs["modalities"].clone()).unwrap()
}

#[test]
fn brats_graded_folders_give_grade_files_and_order() {
    let dir = tempfile::tempdir().unwrap();
    for (grade, case) in [("HGG", "B_001"), ("LGG", "B_002")] {
        for m in ["t1", "t1ce", "t2", "flair", "seg"] {
            touch(&dir.path().join(format!("{grade}/{case}/{case}_{m}.nii.gz")));
        }
    }
    // B_003 lacks its t2: listed, and fails alone naming the file.
    for m in ["t1", "t1ce", "flair", "seg"] {
        touch(&dir.path().join(format!("HGG/B_003/B_003_{m}.nii")));
    }
    let root = dir.path().display();
    let source = build::<BratsSource>(&format!(r#"{{"root": "{root}"}}"#));
    assert_eq!(source.cases().unwrap(), ["B_001", "B_002", "B_003"]);
    let s = source.load("B_002", &ctx()).unwrap();
    assert_eq!(s.text("grade").unwrap(), "LGG");
    assert_eq!(modalities(&s), ["t1", "t1ce", "t2", "flair"]);
    assert!(s.meta.sources["t1ce"].ends_with("LGG/B_002/B_002_t1ce.nii.gz"));
    assert!(s.meta.sources["label"].ends_with("B_002_seg.nii.gz"));
    let e = source.load("B_003", &ctx()).unwrap_err();
    assert!(e.message.contains("B_003_t2.nii.gz"), "{e}");
    assert!(e.message.contains("case `B_003` has no `t2` file"), "{e}");
}

#[test]
fn brats_flat_layout_takes_grades_from_a_csv() {
    let dir = tempfile::tempdir().unwrap();
    for case in ["C_1", "C_2"] {
        for m in ["t1", "t1ce", "t2", "flair", "seg"] {
            touch(&dir.path().join(format!("data/{case}/{case}_{m}.nii.gz")));
        }
    }
    let csv = dir.path().join("name_mapping.csv");
    std::fs::write(
        &csv,
        "Grade,BraTS_2017_subject_ID,BraTS_2019_subject_ID\nHGG,old1,C_1\nLGG,old2,C_2\n",
    )
    .unwrap();
    let source = build::<BratsSource>(&format!(
        r#"{{"root": "{}", "grades": "{}"}}"#,
        dir.path().join("data").display(),
        csv.display()
    ));
    assert_eq!(
        source.load("C_1", &ctx()).unwrap().text("grade").unwrap(),
        "HGG"
    );
    assert_eq!(
        source.load("C_2", &ctx()).unwrap().text("grade").unwrap(),
        "LGG"
    );

    std::fs::write(&csv, "Grade,ID\nGBM,C_1\n").unwrap();
    let config: BratsSource = serde_json::from_str(&format!(
        r#"{{"root": "{}", "grades": "{}"}}"#,
        dir.path().join("data").display(),
        csv.display()
    ))
    .unwrap();
    let e = config.build(&BuildContext::default()).err().unwrap();
    assert!(
        e.message.contains("line 2: grade `GBM` is not HGG or LGG"),
        "{e}"
    );
}

#[test]
fn brats_2023_naming() {
    let dir = tempfile::tempdir().unwrap();
    for m in ["t1n", "t1c", "t2w", "t2f", "seg"] {
        touch(&dir.path().join(format!(
            "BraTS-GLI-00000-000/BraTS-GLI-00000-000-{m}.nii.gz"
        )));
    }
    let source = build::<BratsSource>(&format!(
        r#"{{"root": "{}", "naming": "brats2023"}}"#,
        dir.path().display()
    ));
    let s = source.load("BraTS-GLI-00000-000", &ctx()).unwrap();
    assert_eq!(modalities(&s), ["t1n", "t1c", "t2w", "t2f"]);
    assert!(s.meta.sources["label"].ends_with("BraTS-GLI-00000-000-seg.nii.gz"));
    assert!(s.get("grade").is_none(), "2023 data has no grade");
}

#[test]
fn a_missing_root_names_the_folder_and_the_fix() {
    let config: BratsSource = serde_json::from_str(r#"{"root": "/no/such/brats"}"#).unwrap();
    let e = config.build(&BuildContext::default()).err().unwrap();
    assert!(
        e.message.starts_with("/no/such/brats: no such folder"),
        "{e}"
    );
}

#[test]
fn manifests_in_csv_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("cases.csv");
    std::fs::write(
        &csv,
        "id,flair,t1,label,grade\nA,a/flair.nii.gz,a/t1.nii.gz,a/seg.nii.gz,hgg\nB,/abs/flair.nii,/abs/t1.nii,,\n",
    )
    .unwrap();
    let source = build::<ManifestSource>(&format!(r#"{{"path": "{}"}}"#, csv.display()));
    let a = source.load("A", &ctx()).unwrap();
    assert_eq!(
        modalities(&a),
        ["flair", "t1"],
        "CSV column order is channel order"
    );
    assert_eq!(a.meta.sources["flair"], dir.path().join("a/flair.nii.gz"));
    assert_eq!(a.meta.sources["label"], dir.path().join("a/seg.nii.gz"));
    assert_eq!(a.text("grade").unwrap(), "HGG");
    let b = source.load("B", &ctx()).unwrap();
    assert_eq!(b.meta.sources["t1"], PathBuf::from("/abs/t1.nii"));
    assert!(!b.meta.sources.contains_key("label"));

    let json = dir.path().join("cases.json");
    std::fs::write(
        &json,
        r#"[{"id": "J", "modalities": {"t2": "j/t2.nii.gz", "t1": "j/t1.nii.gz"}, "grade": "LGG"}]"#,
    )
    .unwrap();
    let source = build::<ManifestSource>(&format!(
        r#"{{"path": "{}", "modalities": ["t2", "t1"]}}"#,
        json.display()
    ));
    let j = source.load("J", &ctx()).unwrap();
    assert_eq!(modalities(&j), ["t2", "t1"]);
    assert_eq!(j.text("grade").unwrap(), "LGG");

    std::fs::write(&csv, "id,t1\nA,x\nA,y\n").unwrap();
    let config: ManifestSource =
        serde_json::from_str(&format!(r#"{{"path": "{}"}}"#, csv.display())).unwrap();
    let e = config.build(&BuildContext::default()).err().unwrap();
    assert!(e.message.contains("case `A` is listed twice"), "{e}");
}

#[test]
fn nifti_files_from_globs_with_label_patterns() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["ct_01", "ct_02"] {
        touch(&dir.path().join(format!("scans/{name}.nii.gz")));
    }
    let pattern = dir.path().join("scans/*.nii.gz");
    let source = build::<NiftiFilesSource>(&format!(
        r#"{{"files": ["{}"], "label": "{{dir}}/../labels/{{name}}_seg.nii.gz"}}"#,
        pattern.display()
    ));
    assert_eq!(source.cases().unwrap(), ["ct_01", "ct_02"]);
    let s = source.load("ct_02", &ctx()).unwrap();
    assert_eq!(modalities(&s), ["image"]);
    assert_eq!(
        s.meta.sources["label"],
        dir.path().join("scans/../labels/ct_02_seg.nii.gz")
    );

    let config: NiftiFilesSource = serde_json::from_str(&format!(
        r#"{{"files": ["{}/none/*.nii"]}}"#,
        dir.path().display()
    ))
    .unwrap();
    let e = config.build(&BuildContext::default()).err().unwrap();
    assert!(e.message.contains("matches no file"), "{e}");
}
