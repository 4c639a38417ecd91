//! `mtmed3d evaluate` end to end on phantom cases with hand-made predictions, and its errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mtmed3d_stages::io::nifti::{WriteOptions, read_nifti, write_nifti};
use serde_json::{Value, json};

fn mtmed3d(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mtmed3d"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Three phantom cases: (case id, grade, seg path).
fn phantoms(dir: &Path) -> Vec<(String, String, PathBuf)> {
    let truth = dir.join("truth");
    let o = mtmed3d(&[
        "phantom",
        "--out",
        truth.to_str().unwrap(),
        "--cases",
        "3",
        "--shape",
        "48,48,32",
        "--seed",
        "5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut cases = Vec::new();
    for grade in ["HGG", "LGG"] {
        let Ok(entries) = std::fs::read_dir(truth.join(grade)) else {
            continue;
        };
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let seg = e.path().join(format!("{id}_seg.nii.gz"));
            cases.push((id, grade.to_string(), seg));
        }
    }
    cases.sort();
    assert_eq!(cases.len(), 3);
    cases
}

/// The truth as the prediction: same label map, the whole-tumour box, the right grade.
fn perfect_predictions(pred: &Path, cases: &[(String, String, PathBuf)]) {
    std::fs::create_dir_all(pred).unwrap();
    for (id, grade, seg) in cases {
        std::fs::copy(seg, pred.join(format!("{id}.nii.gz"))).unwrap();
        let labels = read_nifti(seg).unwrap().into_u8_labels().unwrap();
        let mut lo = [usize::MAX; 3];
        let mut hi = [0; 3];
        for ((_, x, y, z), &v) in labels.indexed_iter() {
            if v != 0 {
                lo = [lo[0].min(x), lo[1].min(y), lo[2].min(z)];
                hi = [hi[0].max(x + 1), hi[1].max(y + 1), hi[2].max(z + 1)];
            }
        }
        let doc = json!({
            "boxes": [{"box": [lo[0], lo[1], lo[2], hi[0], hi[1], hi[2]], "score": 0.9}],
            "grade": grade, "p_hgg": if grade == "HGG" { 0.9 } else { 0.1 },
        });
        std::fs::write(pred.join(format!("{id}.json")), doc.to_string()).unwrap();
    }
}

fn evaluate(dir: &Path, extra: &[&str]) -> (Output, Option<Value>) {
    let out = dir.join("metrics.json");
    let _ = std::fs::remove_file(&out);
    let mut args: Vec<String> = ["evaluate", "--pred"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(dir.join("pred").display().to_string());
    args.push("--truth".into());
    args.push(dir.join("truth").display().to_string());
    args.push("--out".into());
    args.push(out.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = mtmed3d(&args);
    let v = std::fs::read_to_string(&out)
        .ok()
        .map(|t| serde_json::from_str(&t).unwrap());
    (o, v)
}

#[test]
fn the_truth_scores_perfectly_and_an_empty_prediction_scores_zero() {
    let dir = tempfile::tempdir().unwrap();
    let cases = phantoms(dir.path());
    let pred = dir.path().join("pred");
    perfect_predictions(&pred, &cases);
    let csv = dir.path().join("metrics.csv");
    let (o, m) = evaluate(dir.path(), &["--csv", csv.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = m.unwrap();
    for key in [
        "dice_wt",
        "dice_tc",
        "dice_et",
        "accuracy",
        "map_10_50",
        "mar_10_50",
        "map_50",
        "mar_50",
    ] {
        assert_eq!(m["aggregate"][key], 1.0, "{key}");
    }
    for key in ["hd95_wt", "hd95_tc", "hd95_et"] {
        assert_eq!(m["aggregate"][key], 0.0, "{key}");
    }
    assert_eq!(m["cases"].as_array().unwrap().len(), 3);
    let csv = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(csv.lines().count(), 5, "header, 3 cases, mean:\n{csv}");
    assert!(csv.starts_with("case,dice_wt,dice_tc,dice_et,hd95_wt"));

    // One case predicted empty: Dice 0 and HD95 373.13 for it, so the means move by a third.
    let (id, _, seg) = &cases[1];
    let img = read_nifti(seg).unwrap();
    let zeros = ndarray::Array4::<u8>::zeros(img.shape());
    write_nifti(
        pred.join(format!("{id}.nii.gz")),
        zeros.view(),
        &img.affine(),
        &WriteOptions::default(),
    )
    .unwrap();
    let (o, m) = evaluate(dir.path(), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = m.unwrap();
    let case = m["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["case"] == id.as_str())
        .unwrap();
    assert_eq!(case["dice_wt"], 0.0);
    assert_eq!(case["hd95_wt"], 373.13);
    let dice = m["aggregate"]["dice_wt"].as_f64().unwrap();
    assert!((dice - 2.0 / 3.0).abs() < 1e-12, "{dice}");
    let hd = m["aggregate"]["hd95_wt"].as_f64().unwrap();
    assert!((hd - 373.13 / 3.0).abs() < 1e-9, "{hd}");
}

#[test]
fn a_missing_prediction_is_an_error_naming_the_case_unless_scored_empty() {
    let dir = tempfile::tempdir().unwrap();
    let cases = phantoms(dir.path());
    let pred = dir.path().join("pred");
    perfect_predictions(&pred, &cases);
    let id = &cases[2].0;
    std::fs::remove_file(pred.join(format!("{id}.nii.gz"))).unwrap();
    std::fs::remove_file(pred.join(format!("{id}.json"))).unwrap();
    let (o, m) = evaluate(dir.path(), &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(m.is_none());
    let e = stderr(&o);
    assert!(
        e.contains(&format!("case `{id}` has no prediction: expected")),
        "{e}"
    );
    assert!(e.contains("--missing-as-empty"), "{e}");

    let (o, m) = evaluate(dir.path(), &["--missing-as-empty"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = m.unwrap();
    assert!((m["aggregate"]["dice_wt"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);
    assert!(
        (m["aggregate"]["accuracy"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12,
        "the missing grade counts as wrong"
    );
    assert!((m["aggregate"]["mar_50"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-6);
    assert_eq!(
        m["settings"]["missing_predictions_scored_empty"],
        json!([id])
    );
}

#[test]
fn a_prediction_of_another_shape_is_refused_with_both_files_named() {
    let dir = tempfile::tempdir().unwrap();
    let cases = phantoms(dir.path());
    let pred = dir.path().join("pred");
    perfect_predictions(&pred, &cases);
    let (id, _, seg) = &cases[0];
    let img = read_nifti(seg).unwrap();
    let small = ndarray::Array4::<u8>::zeros((1, 40, 48, 32));
    let path = pred.join(format!("{id}.nii.gz"));
    write_nifti(&path, small.view(), &img.affine(), &WriteOptions::default()).unwrap();
    let (o, _) = evaluate(dir.path(), &[]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains(&format!(
            "case `{id}`: prediction {} has shape [40, 48, 32] but the truth",
            path.display()
        )),
        "{e}"
    );
    assert!(e.contains("has [48, 48, 32]"), "{e}");
}
