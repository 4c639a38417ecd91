//! Per-case results, their aggregation, and the metrics JSON and CSV.
//!
//! ```json
//! {"aggregate": {"dice_wt": 0.91, "dice_tc": …, "dice_et": …, "hd95_wt": 3.2, "hd95_tc": …,
//!                "hd95_et": …, "accuracy": 0.8, "sensitivity": 0.9, "specificity": 0.6,
//!                "map_10_50": 0.7, "mar_10_50": 0.8, "map_50": 0.6, "mar_50": 0.7},
//!  "counts": {"cases": 40, "tp": 27, "fp": 3, "tn": 5, "fn": 5, "truth_boxes": 40, "detections": 52},
//!  "settings": {…},
//!  "cases": [{"case": "Brats18_…", "dice_wt": …, …, "grade": "HGG", "grade_pred": "HGG",
//!             "p_hgg": 0.93, "truth_boxes": 1, "detections": 2, "top_iou": 0.81}, …]}
//! ```
//!
//! Aggregates are means over cases (Dice, HD95), pooled counts (classification) and COCO
//! values over all detections; a value that cannot be computed (no grades given, no truth
//! box anywhere, no HGG case for sensitivity) is `null`, never 0.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::classification::{Confusion, Grade};
use super::detection::{CaseBoxes, box_iou, coco_summary, iou_thresholds};
use super::segmentation::{HD95_EMPTY, RegionScore};
use crate::labels::BratsConvention;

/// Everything scored for one case; `None` parts were not evaluated.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseResult {
    pub case: String,
    /// WT, TC, ET.
    pub regions: Option<[RegionScore; 3]>,
    pub grade: Option<Grade>,
    pub grade_pred: Option<Grade>,
    pub p_hgg: Option<f64>,
    pub boxes: Option<CaseBoxes>,
}

impl CaseResult {
    pub fn new(case: impl Into<String>) -> Self {
        CaseResult {
            case: case.into(),
            regions: None,
            grade: None,
            grade_pred: None,
            p_hgg: None,
            boxes: None,
        }
    }

    /// IoU of the highest-scoring detection with the truth box it overlaps most.
    pub fn top_iou(&self) -> Option<f64> {
        let b = self.boxes.as_ref()?;
        let top = b
            .predicted
            .iter()
            .reduce(|a, d| if d.score > a.score { d } else { a })?;
        b.truth
            .iter()
            .map(|g| box_iou(&top.corners, g))
            .reduce(f64::max)
    }
}

/// How the metrics were computed, written next to them.
#[derive(Debug, Clone)]
pub struct Settings {
    pub convention: BratsConvention,
    pub max_detections: usize,
    /// Set when missing predictions were scored as empty.
    pub missing_as_empty: Vec<String>,
}

/// The aggregated metrics of a set of cases.
#[derive(Debug, Clone)]
pub struct Report {
    pub cases: Vec<CaseResult>,
    pub settings: Settings,
    pub aggregate: serde_json::Map<String, Value>,
    pub confusion: Option<Confusion>,
}

/// Errors when parts were scored for some cases and not for others: a mean over the cases
/// that happen to have them would silently drop the rest.
fn all_or_none(
    cases: &[CaseResult],
    what: &str,
    has: impl Fn(&CaseResult) -> bool,
) -> Result<bool, String> {
    let with = cases.iter().filter(|c| has(c)).count();
    if with == 0 {
        return Ok(false);
    }
    if let Some(missing) = cases.iter().find(|c| !has(c)) {
        return Err(format!(
            "case `{}` has no {what} while {with} other cases have one; every case needs it, or none",
            missing.case
        ));
    }
    Ok(true)
}

fn opt(v: Option<f64>) -> Value {
    v.map_or(Value::Null, |x| json!(x))
}

impl Report {
    /// Aggregates the cases (sorted by id).
    pub fn new(mut cases: Vec<CaseResult>, settings: Settings) -> Result<Report, String> {
        if cases.is_empty() {
            return Err("no case to evaluate".into());
        }
        cases.sort_by(|a, b| a.case.cmp(&b.case));
        let mut agg = serde_json::Map::new();
        let n = cases.len() as f64;
        let seg = all_or_none(&cases, "segmentation", |c| c.regions.is_some())?;
        for (r, name) in ["wt", "tc", "et"].iter().enumerate() {
            let mean = |f: fn(&RegionScore) -> f64| {
                seg.then(|| {
                    cases
                        .iter()
                        .filter_map(|c| c.regions.as_ref())
                        .map(|s| f(&s[r]))
                        .sum::<f64>()
                        / n
                })
            };
            agg.insert(format!("dice_{name}"), opt(mean(|s| s.dice)));
            agg.insert(format!("hd95_{name}"), opt(mean(|s| s.hd95)));
        }
        let graded = all_or_none(&cases, "predicted grade", |c| c.grade_pred.is_some())?;
        let confusion = if graded {
            if let Some(c) = cases.iter().find(|c| c.grade.is_none()) {
                return Err(format!(
                    "case `{}` has a predicted grade but no true grade (put cases in HGG/ and LGG/ folders, or set the `grade` attribute)",
                    c.case
                ));
            }
            Some(Confusion::from_pairs(
                cases.iter().filter_map(|c| Some((c.grade?, c.grade_pred?))),
            ))
        } else {
            None
        };
        agg.insert("accuracy".into(), opt(confusion.and_then(|c| c.accuracy())));
        agg.insert(
            "sensitivity".into(),
            opt(confusion.and_then(|c| c.sensitivity())),
        );
        agg.insert(
            "specificity".into(),
            opt(confusion.and_then(|c| c.specificity())),
        );
        let detected = all_or_none(&cases, "box list", |c| c.boxes.is_some())?;
        let det = detected.then(|| {
            let boxes: Vec<CaseBoxes> = cases.iter().filter_map(|c| c.boxes.clone()).collect();
            coco_summary(&boxes, settings.max_detections)
        });
        agg.insert("map_10_50".into(), opt(det.and_then(|d| d.map_10_50)));
        agg.insert("mar_10_50".into(), opt(det.and_then(|d| d.mar_10_50)));
        agg.insert("map_50".into(), opt(det.and_then(|d| d.map_50)));
        agg.insert("mar_50".into(), opt(det.and_then(|d| d.mar_50)));
        Ok(Report {
            cases,
            settings,
            aggregate: agg,
            confusion,
        })
    }

    /// The value of an aggregate key (`dice_wt`, `map_50`, …), `None` when null.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.aggregate.get(key).and_then(Value::as_f64)
    }

    fn case_json(c: &CaseResult) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("case".into(), json!(c.case));
        for (r, name) in ["wt", "tc", "et"].iter().enumerate() {
            m.insert(format!("dice_{name}"), opt(c.regions.map(|s| s[r].dice)));
            m.insert(format!("hd95_{name}"), opt(c.regions.map(|s| s[r].hd95)));
        }
        m.insert("grade".into(), json!(c.grade.map(|g| g.as_str())));
        m.insert("grade_pred".into(), json!(c.grade_pred.map(|g| g.as_str())));
        m.insert("p_hgg".into(), opt(c.p_hgg));
        m.insert(
            "truth_boxes".into(),
            json!(c.boxes.as_ref().map(|b| b.truth.len())),
        );
        m.insert(
            "detections".into(),
            json!(c.boxes.as_ref().map(|b| b.predicted.len())),
        );
        m.insert("top_iou".into(), opt(c.top_iou()));
        Value::Object(m)
    }

    /// The metrics document (see the module docs).
    pub fn to_json(&self, complete: bool) -> Value {
        let mut counts = serde_json::Map::new();
        counts.insert("cases".into(), json!(self.cases.len()));
        if let Some(c) = self.confusion {
            for (k, v) in [("tp", c.tp), ("fp", c.fp), ("tn", c.tn), ("fn", c.fn_)] {
                counts.insert(k.into(), json!(v));
            }
        }
        let boxes: Vec<&CaseBoxes> = self.cases.iter().filter_map(|c| c.boxes.as_ref()).collect();
        if !boxes.is_empty() {
            counts.insert(
                "truth_boxes".into(),
                json!(boxes.iter().map(|b| b.truth.len()).sum::<usize>()),
            );
            counts.insert(
                "detections".into(),
                json!(boxes.iter().map(|b| b.predicted.len()).sum::<usize>()),
            );
        }
        let et = match self.settings.convention {
            BratsConvention::Brats2018 => 4,
            BratsConvention::Brats2023 => 3,
        };
        json!({
            "complete": complete,
            "aggregate": self.aggregate,
            "counts": counts,
            "settings": {
                "regions": {"WT": [1, 2, et], "TC": [1, et], "ET": [et]},
                "hd95": "MONAI: max of the two directed 95th percentiles of surface distances, mm",
                "empty_masks": format!("both empty: Dice 1, HD95 0; one empty: Dice 0, HD95 {HD95_EMPTY}"),
                "classification_positive": "HGG",
                "iou_thresholds": iou_thresholds(),
                "max_detections": self.settings.max_detections,
                "missing_predictions_scored_empty": self.settings.missing_as_empty,
            },
            "cases": self.cases.iter().map(Self::case_json).collect::<Vec<_>>(),
        })
    }

    /// One row per case, then a `mean` row with the aggregates.
    pub fn to_csv(&self) -> String {
        const COLUMNS: [&str; 12] = [
            "dice_wt",
            "dice_tc",
            "dice_et",
            "hd95_wt",
            "hd95_tc",
            "hd95_et",
            "grade",
            "grade_pred",
            "p_hgg",
            "truth_boxes",
            "detections",
            "top_iou",
        ];
        let cell = |v: &Value| match v {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let mut out = String::from("case");
        for c in COLUMNS {
            out.push(',');
            out.push_str(c);
        }
        out.push('\n');
        for case in &self.cases {
            let j = Self::case_json(case);
            // Case ids come from file names; quote them if they hold a comma or a quote.
            let id = if case.case.contains([',', '"']) {
                format!("\"{}\"", case.case.replace('"', "\"\""))
            } else {
                case.case.clone()
            };
            out.push_str(&id);
            for c in COLUMNS {
                let _ = write!(out, ",{}", cell(&j[c]));
            }
            out.push('\n');
        }
        out.push_str("mean");
        for c in COLUMNS {
            let _ = write!(
                out,
                ",{}",
                self.aggregate.get(c).map(cell).unwrap_or_default()
            );
        }
        out.push('\n');
        out
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// reader never sees a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::detection::Detection;

    fn settings() -> Settings {
        Settings {
            convention: BratsConvention::Brats2018,
            max_detections: 100,
            missing_as_empty: vec![],
        }
    }

    fn case(id: &str, dice: f64, grade: Grade, pred: Grade) -> CaseResult {
        let s = RegionScore {
            dice,
            hd95: 2.0 * dice,
        };
        CaseResult {
            regions: Some([s; 3]),
            grade: Some(grade),
            grade_pred: Some(pred),
            ..CaseResult::new(id)
        }
    }

    #[test]
    fn means_and_counts() {
        let r = Report::new(
            vec![
                case("b", 0.5, Grade::Hgg, Grade::Hgg),
                case("a", 1.0, Grade::Lgg, Grade::Hgg),
            ],
            settings(),
        )
        .unwrap();
        assert_eq!(r.cases[0].case, "a");
        assert_eq!(r.get("dice_wt"), Some(0.75));
        assert_eq!(r.get("hd95_et"), Some(1.5));
        assert_eq!(r.get("accuracy"), Some(0.5));
        assert_eq!(r.get("specificity"), Some(0.0));
        assert_eq!(r.get("map_50"), None, "no boxes given: null, not 0");
        let csv = r.to_csv();
        assert_eq!(csv.lines().count(), 4);
        assert!(
            csv.lines()
                .nth(3)
                .unwrap()
                .starts_with("mean,0.75,0.75,0.75,1.5,"),
            "{csv}"
        );
    }

    #[test]
    fn a_part_missing_for_one_case_is_an_error_naming_it() {
        let mut b = case("b", 0.5, Grade::Hgg, Grade::Hgg);
        b.grade_pred = None;
        let e =
            Report::new(vec![case("a", 1.0, Grade::Lgg, Grade::Lgg), b], settings()).unwrap_err();
        assert!(e.starts_with("case `b` has no predicted grade"), "{e}");
    }

    #[test]
    fn top_iou_uses_the_best_scoring_detection() {
        let g = [0.0, 0.0, 0.0, 2.0, 2.0, 2.0];
        let c = CaseResult {
            boxes: Some(CaseBoxes {
                predicted: vec![
                    Detection {
                        corners: g,
                        score: 0.2,
                    },
                    Detection {
                        corners: [1.0, 0.0, 0.0, 3.0, 2.0, 2.0],
                        score: 0.9,
                    },
                ],
                truth: vec![g],
            }),
            ..CaseResult::new("x")
        };
        assert!((c.top_iou().unwrap() - 1.0 / 3.0).abs() < 1e-6);
    }
}
