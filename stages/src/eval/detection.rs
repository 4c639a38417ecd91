//! COCO-style 3D detection mAP and mAR, computed exactly as MONAI's
//! `monai/apps/detection/metrics/coco.py` (`COCOMetric`) and `matching.py` (`matching_batch`)
//! do for one class.
//!
//! Per case: detections sorted by score (stable, as numpy's mergesort), the first
//! `max_detections` kept, then for each IoU threshold each detection in turn takes the
//! unmatched truth box of highest IoU ≥ the threshold. Over all cases: detections pooled
//! and sorted by score (stable), cumulative true and false positives, precision made
//! monotone, sampled at 101 recall points (0, 0.01, …, 1; the first detection whose recall
//! reaches the point, 0 past the last). AP is the mean of those samples; AR is the final
//! recall. IoU thresholds are `linspace(0.1, 0.5, 9)` and compared with `>=`. Boxes are
//! `[x1, y1, z1, x2, y2, z2]` with volume `(x2 − x1)(y2 − y1)(z2 − z1)` (no +1), and IoU has
//! MONAI's `box_iou` epsilon (float32's) in the denominator.

/// One detection: corners and score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    pub corners: [f64; 6],
    pub score: f64,
}

/// The detections and truth boxes of one case.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CaseBoxes {
    pub predicted: Vec<Detection>,
    pub truth: Vec<[f64; 6]>,
}

/// COCO summary values; `None` when no case has a truth box (MONAI reports −1 then).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectionSummary {
    /// Mean AP over IoU 0.10:0.50:0.05.
    pub map_10_50: Option<f64>,
    /// Mean final recall over IoU 0.10:0.50:0.05.
    pub mar_10_50: Option<f64>,
    pub map_50: Option<f64>,
    pub mar_50: Option<f64>,
}

/// MONAI's `box_iou` for two 3D boxes (its epsilon is float32's).
pub fn box_iou(a: &[f64; 6], b: &[f64; 6]) -> f64 {
    let volume = |c: &[f64; 6]| (c[3] - c[0]) * (c[4] - c[1]) * (c[5] - c[2]);
    let mut inter = 1.0;
    for d in 0..3 {
        let lo = a[d].max(b[d]);
        let hi = a[d + 3].min(b[d + 3]);
        inter *= (hi - lo).max(0.0);
    }
    let union = volume(a) + volume(b) - inter;
    inter / (union + f64::from(f32::EPSILON))
}

/// numpy's `linspace(start, stop, num)`: `i * step + start`, the last point exactly `stop`.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// The IoU thresholds of MONAI's `COCOMetric(iou_range=(0.1, 0.5, 0.05))`.
pub fn iou_thresholds() -> Vec<f64> {
    let num = ((0.5f64 - 0.1) / 0.05).round() as usize + 1;
    linspace(0.1, 0.5, num)
}

/// Matches of one case at every threshold: `(scores sorted, matched[t][d], truth count)`.
fn match_case(
    case: &CaseBoxes,
    thresholds: &[f64],
    max_detections: usize,
) -> (Vec<f64>, Vec<Vec<bool>>) {
    let mut order: Vec<usize> = (0..case.predicted.len()).collect();
    // Stable: equal scores keep their input order, as numpy's mergesort.
    order.sort_by(|&a, &b| case.predicted[b].score.total_cmp(&case.predicted[a].score));
    order.truncate(max_detections);
    let dets: Vec<&Detection> = order.iter().map(|&i| &case.predicted[i]).collect();
    let ious: Vec<Vec<f64>> = dets
        .iter()
        .map(|d| case.truth.iter().map(|g| box_iou(&d.corners, g)).collect())
        .collect();
    let matched = thresholds
        .iter()
        .map(|&t| {
            let mut truth_taken = vec![false; case.truth.len()];
            dets.iter()
                .enumerate()
                .map(|(d, _)| {
                    let mut best = t.min(1.0 - 1e-10);
                    let mut m = None;
                    for (g, taken) in truth_taken.iter().enumerate() {
                        if *taken || ious[d][g] < best {
                            continue;
                        }
                        best = ious[d][g];
                        m = Some(g);
                    }
                    if let Some(g) = m {
                        truth_taken[g] = true;
                    }
                    m.is_some()
                })
                .collect()
        })
        .collect();
    (dets.iter().map(|d| d.score).collect(), matched)
}

/// mAP and mAR over all cases, at most `max_detections` per case.
pub fn coco_summary(cases: &[CaseBoxes], max_detections: usize) -> DetectionSummary {
    let thresholds = iou_thresholds();
    let at_50 = thresholds
        .iter()
        .position(|&t| t == 0.5)
        .expect("0.5 is the last threshold");
    let num_truth: usize = cases.iter().map(|c| c.truth.len()).sum();
    if num_truth == 0 {
        return DetectionSummary {
            map_10_50: None,
            mar_10_50: None,
            map_50: None,
            mar_50: None,
        };
    }
    let mut scores = Vec::new();
    let mut matched: Vec<Vec<bool>> = vec![Vec::new(); thresholds.len()];
    for case in cases {
        // A case with neither detections nor truth adds nothing (MONAI's result is empty).
        let (s, m) = match_case(case, &thresholds, max_detections);
        scores.extend(s);
        for (all, case_m) in matched.iter_mut().zip(m) {
            all.extend(case_m);
        }
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let recall_points = linspace(0.0, 1.0, 101);
    let (mut precision, mut recall) = (Vec::new(), Vec::new());
    for m in &matched {
        let (ap, ar) = single_threshold(order.iter().map(|&i| m[i]), num_truth, &recall_points);
        precision.push(ap);
        recall.push(ar);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    DetectionSummary {
        map_10_50: Some(mean(&precision)),
        mar_10_50: Some(mean(&recall)),
        map_50: Some(precision[at_50]),
        mar_50: Some(recall[at_50]),
    }
}

/// `_compute_stats_single_threshold`: (mean interpolated precision, final recall).
fn single_threshold(
    matches: impl Iterator<Item = bool>,
    num_truth: usize,
    recall_points: &[f64],
) -> (f64, f64) {
    // MONAI accumulates in float32 and divides by the count in float32; the recall points
    // are compared against those float32 values, so the same rounding picks the same index.
    let (mut tp, mut fp) = (0f32, 0f32);
    let mut rc: Vec<f32> = Vec::new();
    let mut pr: Vec<f64> = Vec::new();
    for m in matches {
        if m {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        rc.push(tp / num_truth as f32);
        pr.push(f64::from(tp) / (f64::from(fp) + f64::from(tp) + f64::EPSILON));
    }
    let recall = rc.last().map_or(0.0, |&r| f64::from(r));
    for i in (1..pr.len()).rev() {
        if pr[i] > pr[i - 1] {
            pr[i - 1] = pr[i];
        }
    }
    let mut sum = 0.0;
    for &point in recall_points {
        // searchsorted(rc, point, side="left"): the first index with rc >= point.
        let index = rc.partition_point(|&r| f64::from(r) < point);
        match pr.get(index) {
            Some(p) => sum += p,
            // MONAI stops at the first point past the curve; the rest stay 0.
            None => break,
        }
    }
    (sum / recall_points.len() as f64, recall)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(corners: [f64; 6], score: f64) -> Detection {
        Detection { corners, score }
    }

    #[test]
    fn thresholds_are_monai_s() {
        let t = iou_thresholds();
        assert_eq!(t.len(), 9);
        assert_eq!((t[0], t[8]), (0.1, 0.5));
        assert!((t[4] - 0.3).abs() < 1e-15);
    }

    #[test]
    fn iou_of_half_overlapping_boxes() {
        let a = [0.0, 0.0, 0.0, 2.0, 2.0, 2.0];
        let b = [1.0, 0.0, 0.0, 3.0, 2.0, 2.0];
        assert!((box_iou(&a, &b) - 4.0 / 12.0).abs() < 1e-6);
        assert_eq!(box_iou(&a, &[5.0, 5.0, 5.0, 6.0, 6.0, 6.0]), 0.0);
    }

    #[test]
    fn perfect_detections_score_one_and_misses_lower_recall() {
        let g = [1.0, 1.0, 1.0, 5.0, 5.0, 5.0];
        let perfect = vec![
            CaseBoxes {
                predicted: vec![det(g, 0.9)],
                truth: vec![g]
            };
            3
        ];
        let s = coco_summary(&perfect, 100);
        assert_eq!((s.map_10_50, s.mar_10_50), (Some(1.0), Some(1.0)));
        let mut missed = perfect.clone();
        missed[2].predicted.clear();
        let s = coco_summary(&missed, 100);
        assert!((s.mar_50.unwrap() - 2.0 / 3.0).abs() < 1e-6);
        // precision 1 up to recall 2/3: points 0.00..=0.66 (67 of 101)
        assert!(
            (s.map_50.unwrap() - 67.0 / 101.0).abs() < 1e-9,
            "{:?}",
            s.map_50
        );
    }

    #[test]
    fn no_truth_box_anywhere_gives_no_value() {
        let c = vec![CaseBoxes {
            predicted: vec![det([0.0; 6], 0.5)],
            truth: vec![],
        }];
        assert_eq!(coco_summary(&c, 100).map_10_50, None);
    }
}
