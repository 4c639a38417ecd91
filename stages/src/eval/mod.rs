//! Evaluation: segmentation (Dice, HD95), classification (accuracy, sensitivity,
//! specificity) and detection (COCO mAP/mAR) metrics, the `metrics` sink, and writers of
//! predictions (`boxes_json`) and pictures (`png_overlay`, training curves as SVG).
//!
//! The metrics follow MONAI's definitions (checked against scipy, scikit-learn and MONAI's
//! own COCO code in `tests/oracles/metrics_oracle.py`), with the BraTS rules for empty masks
//! instead of MONAI's NaN, so a missed tumour is never dropped from a mean.

pub mod classification;
pub mod curves;
pub mod detection;
pub mod edt;
pub mod folders;
pub mod report;
pub mod segmentation;
pub mod sink;
pub mod writers;

pub use classification::{Confusion, Grade};
pub use detection::{CaseBoxes, Detection, DetectionSummary, box_iou, coco_summary};
pub use folders::{EvaluateOptions, evaluate_folders};
pub use report::{CaseResult, Report, Settings};
pub use segmentation::{HD95_EMPTY, RegionScore, region_score, score_label_maps};
