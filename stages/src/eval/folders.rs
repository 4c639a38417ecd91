//! Scoring a folder of predictions against a BraTS-layout truth folder (`mtmed3d evaluate`).
//!
//! Truth: `<truth>/HGG/<case>/<case>_seg.nii.gz` and `<truth>/LGG/…` (the grade is the
//! folder), or `<truth>/<case>/<case>_seg.nii.gz` without grades; `-seg` (BraTS 2023 naming)
//! and `.nii` are accepted too. The truth box of a case is the bounding box of its whole
//! tumour (`x2` = last index + 1).
//!
//! Predictions: `<pred>/<case>.nii.gz` (or `.nii`), a label map (0/1/2/4, or 0/1/2/3 under
//! BraTS 2023) in the truth's voxel space, and optionally `<pred>/<case>.json`:
//! `{"boxes": [{"box": [x1, y1, z1, x2, y2, z2], "score": s}], "grade": "HGG", "p_hgg": p}`.
//! A truth case without prediction is an error naming it, unless `missing_as_empty` scores
//! it as an empty prediction (no tumour, no box, and the wrong grade).

use std::path::{Path, PathBuf};

use ndarray::{Array3, Axis};
use rayon::prelude::*;
use serde::Deserialize;

use super::classification::Grade;
use super::detection::{CaseBoxes, Detection};
use super::report::{CaseResult, Report, Settings};
use super::segmentation::score_label_maps;
use crate::io::nifti::read_nifti;
use crate::labels::{BratsConvention, mask_box};

/// Options of [`evaluate_folders`].
#[derive(Debug, Clone)]
pub struct EvaluateOptions {
    pub convention: BratsConvention,
    /// Score a truth case without prediction files as an empty prediction instead of failing.
    pub missing_as_empty: bool,
    /// Detections kept per case, highest scores first (COCO's 100).
    pub max_detections: usize,
    /// Largest difference allowed between the prediction's and the truth's affine entries.
    pub affine_tolerance: f64,
}

impl Default for EvaluateOptions {
    fn default() -> Self {
        EvaluateOptions {
            convention: BratsConvention::Brats2018,
            missing_as_empty: false,
            max_detections: 100,
            affine_tolerance: 1e-3,
        }
    }
}

/// A truth case found in the folder.
#[derive(Debug, Clone)]
pub struct TruthCase {
    pub id: String,
    pub grade: Option<Grade>,
    pub seg: PathBuf,
}

/// One box of a prediction file.
#[derive(Debug, Clone, Deserialize)]
pub struct PredictedBox {
    #[serde(rename = "box")]
    pub corners: [f64; 6],
    pub score: f64,
}

/// The prediction file `<case>.json` (other keys are ignored).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PredictionFile {
    pub boxes: Option<Vec<PredictedBox>>,
    pub grade: Option<String>,
    pub p_hgg: Option<f64>,
}

fn seg_file(dir: &Path, id: &str) -> Option<PathBuf> {
    ["_seg.nii.gz", "_seg.nii", "-seg.nii.gz", "-seg.nii"]
        .iter()
        .map(|suffix| dir.join(format!("{id}{suffix}")))
        .find(|p| p.is_file())
}

fn subfolders(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read folder {}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(|e| format!("cannot read folder {}: {e}", dir.display()))?;
        if e.path().is_dir() {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// The truth cases of a BraTS-layout folder, sorted by id.
pub fn truth_cases(root: &Path) -> Result<Vec<TruthCase>, String> {
    if !root.is_dir() {
        return Err(format!(
            "truth folder {} does not exist (expected HGG/ and LGG/ case folders)",
            root.display()
        ));
    }
    let graded: Vec<(Grade, PathBuf)> = [(Grade::Hgg, "HGG"), (Grade::Lgg, "LGG")]
        .into_iter()
        .map(|(g, name)| (g, root.join(name)))
        .filter(|(_, p)| p.is_dir())
        .collect();
    let folders: Vec<(Option<Grade>, PathBuf)> = if graded.is_empty() {
        subfolders(root)?.into_iter().map(|p| (None, p)).collect()
    } else {
        let mut all = Vec::new();
        for (g, dir) in graded {
            all.extend(subfolders(&dir)?.into_iter().map(|p| (Some(g), p)));
        }
        all
    };
    let mut cases = Vec::new();
    for (grade, dir) in folders {
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let seg = seg_file(&dir, &id).ok_or_else(|| {
            format!(
                "truth case `{id}` has no segmentation: expected {}",
                dir.join(format!("{id}_seg.nii.gz")).display()
            )
        })?;
        cases.push(TruthCase { id, grade, seg });
    }
    cases.sort_by(|a, b| a.id.cmp(&b.id));
    if let Some(w) = cases.windows(2).find(|w| w[0].id == w[1].id) {
        return Err(format!(
            "case `{}` is in the truth folder twice ({} and {})",
            w[0].id,
            w[0].seg.display(),
            w[1].seg.display()
        ));
    }
    if cases.is_empty() {
        return Err(format!(
            "no case in truth folder {} (expected HGG/<case>/<case>_seg.nii.gz)",
            root.display()
        ));
    }
    Ok(cases)
}

/// A label map with its voxel-to-world affine and voxel sizes.
type LabelFile = (Array3<u8>, [[f64; 4]; 4], [f64; 3]);

fn read_labels(path: &Path) -> Result<LabelFile, String> {
    let img = read_nifti(path).map_err(|e| e.to_string())?;
    let (affine, spacing) = (img.affine(), img.spacing());
    let shape = img.shape();
    if shape[0] != 1 {
        return Err(format!(
            "{}: a label map has one volume, this file has {}",
            path.display(),
            shape[0]
        ));
    }
    let labels = img
        .into_u8_labels()
        .map_err(|e| e.to_string())?
        .index_axis_move(Axis(0), 0);
    Ok((labels, affine, spacing))
}

/// Fails on label values outside the convention, suggesting the other convention when it
/// fits.
pub fn check_labels(
    labels: &Array3<u8>,
    convention: BratsConvention,
    what: &str,
) -> Result<(), String> {
    let mut seen = [false; 256];
    labels.iter().for_each(|&v| seen[usize::from(v)] = true);
    let et = convention.enhancing();
    let bad: Vec<usize> = (0..256)
        .filter(|&v| seen[v] && ![0, 1, 2, usize::from(et)].contains(&v))
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    let hint = match (convention, bad.as_slice()) {
        (BratsConvention::Brats2018, [3]) => {
            " (BraTS 2023 labels? use --label-convention brats2023)"
        }
        (BratsConvention::Brats2023, [4]) => {
            " (BraTS 2018–2020 labels? use --label-convention brats2018)"
        }
        _ => "",
    };
    Err(format!(
        "{what} has label values {bad:?}, not BraTS labels (0, 1, 2, {et}){hint}"
    ))
}

/// Reads and checks `<case>.json`.
pub fn read_prediction_file(path: &Path) -> Result<PredictionFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let p: PredictionFile = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}: {e} (expected {{\"boxes\": [{{\"box\": [x1, y1, z1, x2, y2, z2], \"score\": s}}], \"grade\": \"HGG\"|\"LGG\", \"p_hgg\": p}})",
            path.display()
        )
    })?;
    for (i, b) in p.boxes.iter().flatten().enumerate() {
        let c = &b.corners;
        if !c.iter().all(|v| v.is_finite()) || !b.score.is_finite() {
            return Err(format!(
                "{}: box {i} has a non-finite value",
                path.display()
            ));
        }
        if (0..3).any(|d| c[d + 3] < c[d]) {
            return Err(format!(
                "{}: box {i} {c:?} has x2 < x1 (boxes are [x1, y1, z1, x2, y2, z2])",
                path.display()
            ));
        }
    }
    if let Some(g) = &p.grade
        && Grade::parse(g).is_none()
    {
        return Err(format!(
            "{}: grade `{g}` is neither HGG nor LGG",
            path.display()
        ));
    }
    if let Some(q) = p.p_hgg
        && !(0.0..=1.0).contains(&q)
    {
        return Err(format!(
            "{}: p_hgg {q} is not a probability",
            path.display()
        ));
    }
    Ok(p)
}

fn existing(dir: &Path, names: &[String]) -> Option<PathBuf> {
    names.iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

/// Scores one truth case.
fn evaluate_case(
    truth: &TruthCase,
    pred_dir: &Path,
    options: &EvaluateOptions,
) -> Result<(CaseResult, bool), String> {
    let id = &truth.id;
    let (truth_labels, truth_affine, spacing) = read_labels(&truth.seg)?;
    check_labels(
        &truth_labels,
        options.convention,
        &truth.seg.display().to_string(),
    )?;
    let pred_nii = existing(pred_dir, &[format!("{id}.nii.gz"), format!("{id}.nii")]);
    let pred_json = pred_dir.join(format!("{id}.json"));
    let (pred_labels, file, missing) = match pred_nii {
        Some(path) => {
            let (labels, affine, _) = read_labels(&path)?;
            if labels.dim() != truth_labels.dim() {
                return Err(format!(
                    "case `{id}`: prediction {} has shape {:?} but the truth {} has {:?}; predictions must be in the truth's voxel space",
                    path.display(),
                    labels.shape(),
                    truth.seg.display(),
                    truth_labels.shape()
                ));
            }
            let d = (0..3)
                .flat_map(|r| (0..4).map(move |c| (r, c)))
                .map(|(r, c)| (affine[r][c] - truth_affine[r][c]).abs())
                .fold(0.0, f64::max);
            if d > options.affine_tolerance {
                return Err(format!(
                    "case `{id}`: the affine of prediction {} differs from the truth's ({}) by up to {d:.3e}; predictions must be in the truth's space (write them with `nifti_write: {{space: original}}`)",
                    path.display(),
                    truth.seg.display()
                ));
            }
            check_labels(&labels, options.convention, &path.display().to_string())?;
            let file = if pred_json.is_file() {
                Some(read_prediction_file(&pred_json)?)
            } else {
                None
            };
            (labels, file, false)
        }
        None if options.missing_as_empty => (
            Array3::zeros(truth_labels.dim()),
            Some(PredictionFile {
                boxes: Some(Vec::new()),
                grade: truth.grade.map(|g| g.other().as_str().to_string()),
                p_hgg: None,
            }),
            true,
        ),
        None => {
            return Err(format!(
                "case `{id}` has no prediction: expected {} (pass --missing-as-empty to score missing cases as empty predictions)",
                pred_dir.join(format!("{id}.nii.gz")).display()
            ));
        }
    };
    let regions = score_label_maps(
        pred_labels.view(),
        truth_labels.view(),
        spacing,
        options.convention,
    );
    let mut result = CaseResult {
        regions: Some(regions),
        grade: truth.grade,
        ..CaseResult::new(id.clone())
    };
    if let Some(f) = file {
        result.grade_pred = f.grade.as_deref().and_then(Grade::parse);
        result.p_hgg = f.p_hgg;
        result.boxes = f.boxes.map(|boxes| {
            let conv = options.convention;
            CaseBoxes {
                predicted: boxes
                    .iter()
                    .map(|b| Detection {
                        corners: b.corners,
                        score: b.score,
                    })
                    .collect(),
                truth: mask_box(truth_labels.view().into_dyn(), |v| conv.in_region("WT", *v))
                    .into_iter()
                    .collect(),
            }
        });
    }
    Ok((result, missing))
}

/// Scores every truth case against its prediction.
pub fn evaluate_folders(
    pred_dir: &Path,
    truth_dir: &Path,
    options: &EvaluateOptions,
) -> Result<Report, String> {
    if !pred_dir.is_dir() {
        return Err(format!(
            "prediction folder {} does not exist",
            pred_dir.display()
        ));
    }
    let truth = truth_cases(truth_dir)?;
    let results: Vec<(CaseResult, bool)> = truth
        .par_iter()
        .map(|t| evaluate_case(t, pred_dir, options))
        .collect::<Result<_, _>>()?;
    // A missing case stands in for the prediction a model gave nothing for: it gets boxes
    // and a grade only when the other predictions have them, so that detection and
    // classification are scored as they would be without it.
    let present = |f: fn(&CaseResult) -> bool| results.iter().any(|(c, m)| !m && f(c));
    let (with_boxes, with_grade) = (
        present(|c| c.boxes.is_some()),
        present(|c| c.grade_pred.is_some()),
    );
    let mut results = results;
    for (c, m) in results.iter_mut().filter(|(_, m)| *m) {
        debug_assert!(*m);
        if !with_boxes {
            c.boxes = None;
        }
        if !with_grade {
            c.grade_pred = None;
        }
    }
    let missing: Vec<String> = results
        .iter()
        .filter(|(_, m)| *m)
        .map(|(c, _)| c.case.clone())
        .collect();
    let settings = Settings {
        convention: options.convention,
        max_detections: options.max_detections,
        missing_as_empty: missing,
    };
    Report::new(results.into_iter().map(|(c, _)| c).collect(), settings)
}

/// Prediction files whose case is not in the truth folder (reported, not scored).
pub fn unmatched_predictions(pred_dir: &Path, truth: &[TruthCase]) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(pred_dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| {
            let stem = n
                .strip_suffix(".nii.gz")
                .or_else(|| n.strip_suffix(".nii"))
                .or_else(|| n.strip_suffix(".json"));
            stem.is_some_and(|s| truth.binary_search_by(|t| t.id.as_str().cmp(s)).is_err())
        })
        .collect();
    out.sort();
    out
}
