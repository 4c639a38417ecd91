//! The `metrics` sink: scores each case as it arrives and writes the aggregate at the end.
//!
//! ```yaml
//! sinks:
//!   - metrics: {path: runs/eval/metrics.json, csv: runs/eval/metrics.csv}
//! ```
//!
//! It reads the predicted label map (or region masks), the truth label, predicted boxes with
//! scores, the predicted grade and `p_hgg`, and the true grade from `meta.attrs["grade"]`.
//! Predictions from `infer` are in the original image space, while the truth label has
//! usually been reoriented and cropped: with `truth_space: original` (the default) the truth
//! is mapped back through the recorded spatial steps first, so both are compared on the grid
//! the image was read in, with its voxel spacing. The metrics JSON is written only when the
//! run completed; an interrupted run leaves `<path>.partial`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use mtmed3d_pipeline::{
    Affine, BuildContext, Component, Field, FinishContext, Problem, Sample, Sink, SinkConfig,
    StageContext, StageError,
};
use ndarray::{Array3, Array4, ArrayD, Axis, Ix4};
use schemars::JsonSchema;
use serde::Deserialize;

use super::classification::Grade;
use super::detection::{CaseBoxes, Detection};
use super::report::{CaseResult, Report, Settings, write_atomic};
use super::segmentation::{EVAL_REGIONS, RegionScore, region_score};
use crate::basic::partial_path;
use crate::io::nifti_stages::to_original_space;
use crate::io::sources::ATTR_GRADE;
use crate::labels::{BratsConvention, REGIONS, mask_box};

/// Which grid predictions and truth are compared on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TruthSpace {
    /// Map the truth back to the space the image was read in (where `infer` writes).
    Original,
    /// Compare on the sample's current grid.
    Current,
}

/// Dice, HD95, grade and detection metrics over the cases of a run.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Metrics JSON (aggregate, counts, settings, per-case values). `<path>.partial` when the
    /// run did not complete.
    pub path: PathBuf,
    /// Also write one CSV row per case and a `mean` row.
    #[serde(default)]
    pub csv: Option<PathBuf>,
    /// Predicted segmentation: a BraTS label map (X×Y×Z) or region masks (3×X×Y×Z, channels
    /// named in `label_channels`, else TC, WT, ET). `null` skips Dice and HD95.
    #[serde(default = "default_pred")]
    pub pred: Option<String>,
    /// Truth segmentation, label map or region masks.
    #[serde(default = "default_truth")]
    pub truth: String,
    /// Predicted boxes with scores. `null` skips detection.
    #[serde(default = "default_pred_boxes")]
    pub pred_boxes: Option<String>,
    /// Truth boxes in the compared space; by default the whole-tumour box of the truth.
    #[serde(default)]
    pub truth_boxes: Option<String>,
    /// Predicted grade (text HGG/LGG); the truth is `meta.attrs["grade"]`. `null` skips
    /// classification.
    #[serde(default = "default_grade_pred")]
    pub grade_pred: Option<String>,
    /// Predicted probability of HGG (a number), reported per case.
    #[serde(default = "default_p_hgg")]
    pub p_hgg: Option<String>,
    /// `brats2018` (enhancing tumour 4) or `brats2023` (3).
    #[serde(default = "default_convention")]
    pub label_convention: BratsConvention,
    /// `original` or `current`.
    #[serde(default = "default_truth_space")]
    pub truth_space: TruthSpace,
    /// Detections kept per case, highest scores first.
    #[serde(default = "default_max_detections")]
    pub max_detections: usize,
}

fn default_pred() -> Option<String> {
    Some("pred_label".into())
}
fn default_truth() -> String {
    "label".into()
}
fn default_pred_boxes() -> Option<String> {
    Some("pred_boxes".into())
}
fn default_grade_pred() -> Option<String> {
    Some("grade_pred".into())
}
fn default_p_hgg() -> Option<String> {
    Some("p_hgg".into())
}
fn default_convention() -> BratsConvention {
    BratsConvention::Brats2018
}
fn default_truth_space() -> TruthSpace {
    TruthSpace::Original
}
fn default_max_detections() -> usize {
    100
}

impl Component for Metrics {
    const NAME: &'static str = "metrics";
    const DOC: &'static str = "Dice/HD95 per region, grade accuracy/sensitivity/specificity and COCO detection mAP/mAR; metrics JSON (and CSV) written when the run completes.";
    fn reads(&self) -> Vec<String> {
        let mut r = vec![self.truth.clone()];
        for f in [
            &self.pred,
            &self.pred_boxes,
            &self.truth_boxes,
            &self.grade_pred,
            &self.p_hgg,
        ]
        .into_iter()
        .flatten()
        {
            r.push(f.clone());
        }
        r
    }
    fn outputs(&self) -> Vec<PathBuf> {
        let mut o = vec![self.path.clone()];
        o.extend(self.csv.clone());
        o
    }
    fn check(&self) -> Vec<Problem> {
        if self.max_detections == 0 {
            vec![Problem::param(
                "max_detections",
                "`max_detections` must be at least 1",
            )]
        } else {
            vec![]
        }
    }
}

impl SinkConfig for Metrics {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Sink>, StageError> {
        Ok(Box::new(MetricsSink {
            config: self.clone(),
            cases: Mutex::new(BTreeMap::new()),
        }))
    }
}

struct MetricsSink {
    config: Metrics,
    cases: Mutex<BTreeMap<String, (u32, CaseResult)>>,
}

/// Voxel sizes: the lengths of the affine's columns.
fn spacing_of(affine: &Affine) -> [f64; 3] {
    [0, 1, 2].map(|c| {
        (0..3)
            .map(|r| affine[r][c] * affine[r][c])
            .sum::<f64>()
            .sqrt()
    })
}

/// WT, TC and ET masks of a label map or a region-mask stack.
pub fn region_masks(
    volume: &Array4<u8>,
    channels: &[String],
    convention: BratsConvention,
    what: &str,
) -> Result<[Array3<bool>; 3], StageError> {
    let masks: Vec<Array3<bool>> = if volume.shape()[0] == 1 {
        let labels = volume.index_axis(Axis(0), 0);
        if let Some(bad) = labels
            .iter()
            .find(|&&v| ![0, 1, 2, convention.enhancing()].contains(&v))
        {
            return Err(StageError::new(format!(
                "`{what}` holds label {bad}, not a BraTS label (0, 1, 2, {}); set `label_convention`",
                convention.enhancing()
            )));
        }
        EVAL_REGIONS
            .iter()
            .map(|r| labels.mapv(|v| convention.in_region(r, v)))
            .collect()
    } else {
        let names: Vec<String> = if channels.is_empty() {
            REGIONS.iter().map(|s| s.to_string()).collect()
        } else {
            channels.to_vec()
        };
        if names.len() != volume.shape()[0] {
            return Err(StageError::new(format!(
                "`{what}` has {} channels but {} channel names ({})",
                volume.shape()[0],
                names.len(),
                names.join(", ")
            )));
        }
        EVAL_REGIONS
            .iter()
            .map(|r| {
                let c = names.iter().position(|n| n == r).ok_or_else(|| {
                    StageError::new(format!(
                        "`{what}` has no `{r}` channel (channels: {})",
                        names.join(", ")
                    ))
                })?;
                Ok(volume.index_axis(Axis(0), c).mapv(|v| v != 0))
            })
            .collect::<Result<_, StageError>>()?
    };
    let [wt, tc, et]: [Array3<bool>; 3] = masks.try_into().expect("three regions");
    Ok([wt, tc, et])
}

fn as_4d(a: &ArrayD<u8>, what: &str) -> Result<Array4<u8>, StageError> {
    let a = if a.ndim() == 3 {
        a.clone().insert_axis(Axis(0))
    } else {
        a.clone()
    };
    a.into_dimensionality::<Ix4>().map_err(|_| {
        StageError::new(format!(
            "`{what}` must be a label map (X×Y×Z) or region masks (C×X×Y×Z)"
        ))
    })
}

impl MetricsSink {
    fn score(&self, sample: &Sample) -> Result<CaseResult, StageError> {
        let c = &self.config;
        let channels: Vec<String> = sample
            .meta
            .attrs
            .get("label_channels")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        let mut truth = as_4d(sample.u8(&c.truth)?, &c.truth)?;
        let affine = match c.truth_space {
            TruthSpace::Original => {
                truth = to_original_space(truth, &sample.meta.history)?;
                sample.meta.original_affine
            }
            TruthSpace::Current => sample.meta.affine,
        };
        let spacing = spacing_of(&affine);
        let truth_masks = region_masks(&truth, &channels, c.label_convention, &c.truth)?;
        let mut result = CaseResult::new(sample.id.clone());
        if let Some(pred_name) = &c.pred {
            let pred = as_4d(sample.u8(pred_name)?, pred_name)?;
            if pred.shape()[1..] != truth.shape()[1..] {
                return Err(StageError::new(format!(
                    "`{pred_name}` has spatial shape {:?} but the truth `{}` has {:?} in the {} space; predictions must be on the same grid",
                    &pred.shape()[1..],
                    c.truth,
                    &truth.shape()[1..],
                    match c.truth_space {
                        TruthSpace::Original => "original",
                        TruthSpace::Current => "current",
                    }
                )));
            }
            // A predicted label map carries no channel names; region masks use the truth's.
            let pred_masks = region_masks(&pred, &channels, c.label_convention, pred_name)?;
            let scores: Vec<RegionScore> = (0..3)
                .map(|r| region_score(pred_masks[r].view(), truth_masks[r].view(), spacing))
                .collect();
            result.regions = Some([scores[0], scores[1], scores[2]]);
        }
        if let Some(name) = &c.pred_boxes {
            let predicted = sample
                .boxes(name)?
                .iter()
                .map(|b| {
                    b.score
                        .filter(|s| s.is_finite())
                        .map(|score| Detection {
                            corners: b.corners,
                            score,
                        })
                        .ok_or_else(|| {
                            StageError::new(format!("a box in `{name}` has no finite score"))
                        })
                })
                .collect::<Result<_, _>>()?;
            let truth_boxes = match &c.truth_boxes {
                Some(t) => sample.boxes(t)?.iter().map(|b| b.corners).collect(),
                None => mask_box(truth_masks[0].view().into_dyn(), |v| *v)
                    .into_iter()
                    .collect(),
            };
            result.boxes = Some(CaseBoxes {
                predicted,
                truth: truth_boxes,
            });
        }
        if let Some(name) = &c.grade_pred {
            let text = sample.text(name)?;
            result.grade_pred = Some(Grade::parse(text).ok_or_else(|| {
                StageError::new(format!("`{name}` is `{text}`, neither HGG nor LGG"))
            })?);
            let truth = sample.meta.attrs.get(ATTR_GRADE).and_then(|g| g.as_str());
            result.grade = Some(truth.and_then(Grade::parse).ok_or_else(|| {
                StageError::new(format!(
                    "case `{}` has no true grade (meta.attrs[\"{ATTR_GRADE}\"] = {truth:?}); use a source that knows grades, or set `grade_pred: null`",
                    sample.id
                ))
            })?);
        }
        if let Some(name) = &c.p_hgg
            && let Some(Field::Number(p)) = sample.get(name)
        {
            result.p_hgg = Some(*p);
        }
        Ok(result)
    }
}

impl Sink for MetricsSink {
    fn write(&self, sample: Sample, _: &StageContext) -> Result<(), StageError> {
        let result = self.score(&sample)?;
        let mut cases = self.cases.lock().unwrap_or_else(|p| p.into_inner());
        // With several epochs, the last epoch's prediction counts.
        let entry = cases
            .entry(sample.id.clone())
            .or_insert((sample.epoch, result.clone()));
        if sample.epoch >= entry.0 {
            *entry = (sample.epoch, result);
        }
        Ok(())
    }

    fn finish(&self, ctx: &FinishContext) -> Result<(), StageError> {
        let cases: Vec<CaseResult> = self
            .cases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|(_, c)| c.clone())
            .collect();
        let c = &self.config;
        if cases.is_empty() {
            tracing::warn!(path = %c.path.display(), "no case reached the metrics sink; nothing written");
            return Ok(());
        }
        let settings = Settings {
            convention: c.label_convention,
            max_detections: c.max_detections,
            missing_as_empty: vec![],
        };
        let report = Report::new(cases, settings).map_err(StageError::new)?;
        let target = |p: &PathBuf| {
            if ctx.complete {
                p.clone()
            } else {
                partial_path(p)
            }
        };
        let json = serde_json::to_string_pretty(&report.to_json(ctx.complete))
            .map_err(|e| StageError::new(e.to_string()))?;
        let path = target(&c.path);
        write_atomic(&path, (json + "\n").as_bytes()).map_err(|e| StageError::file(&path, e))?;
        if let Some(csv) = &c.csv {
            let csv_path = target(csv);
            write_atomic(&csv_path, report.to_csv().as_bytes())
                .map_err(|e| StageError::file(&csv_path, e))?;
        }
        if !ctx.complete {
            tracing::warn!(
                "run incomplete: {} holds metrics of the {} cases scored so far",
                path.display(),
                report.cases.len()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mtmed3d_pipeline::{BoundingBox, SpatialOp};
    use std::sync::Arc;

    /// A case whose truth was cropped by the pipeline while the prediction is in the
    /// original space, as `infer` writes it.
    fn sample(pred_shift: usize) -> Sample {
        let mut full = Array3::<u8>::zeros((12, 10, 8));
        for x in 4..8 {
            for y in 3..7 {
                for z in 2..6 {
                    full[[x, y, z]] = if x == 5 && y == 4 && z == 3 { 4 } else { 2 };
                }
            }
        }
        let mut s = Sample::new("c1");
        let cropped = full.slice(ndarray::s![2..10, 1..9, 1..7]).to_owned();
        s.meta.history.push(SpatialOp::Crop {
            start: [2, 1, 1],
            shape_before: [12, 10, 8],
            shape_after: [8, 8, 6],
        });
        s.meta.original_affine = [
            [2.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        s.insert("label", Field::u8(cropped.into_dyn()));
        let mut pred = Array3::<u8>::zeros((12, 10, 8));
        pred.slice_mut(ndarray::s![pred_shift.., .., ..])
            .assign(&full.slice(ndarray::s![..12 - pred_shift, .., ..]));
        s.insert("pred_label", Field::u8(pred.into_dyn()));
        s.insert(
            "pred_boxes",
            Field::Boxes(Arc::new(vec![BoundingBox {
                corners: [4.0, 3.0, 2.0, 8.0, 7.0, 6.0],
                class: 0,
                score: Some(0.9),
            }])),
        );
        s.insert("grade_pred", Field::Text("HGG".into()));
        s.insert("p_hgg", Field::Number(0.8));
        s.meta
            .attrs
            .insert(ATTR_GRADE.into(), serde_json::json!("HGG"));
        s
    }

    fn finish(sink: &dyn Sink, complete: bool) {
        sink.finish(&FinishContext {
            stage: "metrics".into(),
            complete,
            samples_done: 1,
            samples_failed: 0,
        })
        .unwrap();
    }

    #[test]
    fn truth_is_mapped_back_to_the_prediction_space_and_spacing_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        let config: Metrics = serde_json::from_value(
            serde_json::json!({"path": path, "csv": dir.path().join("m.csv")}),
        )
        .unwrap();
        let sink = config.build(&BuildContext::default()).unwrap();
        let ctx = StageContext::new("metrics", 3, 0);
        sink.write(sample(0), &ctx).unwrap();
        let mut shifted = sample(1);
        shifted.id = "c2".into();
        sink.write(shifted, &ctx).unwrap();
        finish(sink.as_ref(), true);
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(m["cases"][0]["dice_wt"], 1.0);
        assert_eq!(m["cases"][0]["hd95_wt"], 0.0);
        // shifted by one voxel along x, where voxels are 2 mm: Dice 3/4, HD95 2 mm
        assert_eq!(m["cases"][1]["dice_wt"], 0.75);
        assert_eq!(m["cases"][1]["hd95_wt"], 2.0);
        assert_eq!(m["aggregate"]["accuracy"], 1.0);
        assert_eq!(m["aggregate"]["map_50"], 1.0);
        assert_eq!(m["cases"][0]["p_hgg"], 0.8);
        assert!(dir.path().join("m.csv").is_file());
    }

    #[test]
    fn an_incomplete_run_leaves_only_a_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        let config: Metrics = serde_json::from_value(serde_json::json!({"path": path})).unwrap();
        let sink = config.build(&BuildContext::default()).unwrap();
        sink.write(sample(0), &StageContext::new("metrics", 3, 0))
            .unwrap();
        finish(sink.as_ref(), false);
        assert!(!path.exists());
        let partial: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("m.json.partial")).unwrap(),
        )
        .unwrap();
        assert_eq!(partial["complete"], false);
    }

    #[test]
    fn a_prediction_on_another_grid_is_an_error_naming_both_shapes() {
        let config: Metrics = serde_json::from_value(
            serde_json::json!({"path": "unused.json", "truth_space": "current"}),
        )
        .unwrap();
        let sink = config.build(&BuildContext::default()).unwrap();
        let e = sink
            .write(sample(0), &StageContext::new("metrics", 3, 0))
            .unwrap_err();
        assert!(
            e.message.starts_with("`pred_label` has spatial shape [12, 10, 8] but the truth `label` has [8, 8, 6] in the current space"),
            "{}",
            e.message
        );
    }
}
