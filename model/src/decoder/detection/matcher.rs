//! ATSS matching (Zhang et al. 2020, MONAI `ATSSMatcher`): per level the `k` anchors closest to a box's
//! centre are candidates; those whose IoU reaches mean + std of the candidates' IoUs are positives.

use super::anchors::{Anchors, Box3, center, iou};
use crate::config::MatcherConfig;

/// Matched ground-truth index per anchor; `None` for negatives.
pub fn atss_match(config: &MatcherConfig, anchors: &Anchors, gt: &[Box3]) -> Vec<Option<usize>> {
    let n = anchors.len();
    let mut best: Vec<(f32, Option<usize>)> = vec![(f32::NEG_INFINITY, None); n];
    for (g, gt_box) in gt.iter().enumerate() {
        let gc = center(gt_box);
        let mut candidates = Vec::new();
        let mut start = 0;
        for &count in &anchors.per_level {
            let k = (config.num_candidates * anchors.per_location).min(count);
            let mut dist: Vec<(f32, usize)> = (start..start + count)
                .map(|a| {
                    let ac = center(&anchors.boxes[a]);
                    let d2 = (0..3).map(|i| (ac[i] - gc[i]).powi(2)).sum::<f32>();
                    (d2, a)
                })
                .collect();
            if k < dist.len() {
                dist.select_nth_unstable_by(k, |a, b| a.0.total_cmp(&b.0));
            }
            candidates.extend(dist[..k].iter().map(|&(_, a)| a));
            start += count;
        }
        let ious: Vec<f32> = candidates
            .iter()
            .map(|&a| iou(&anchors.boxes[a], gt_box))
            .collect();
        let m = ious.len() as f32;
        let mean = ious.iter().sum::<f32>() / m;
        // unbiased standard deviation, as torch.std
        let std = if ious.len() > 1 {
            (ious.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / (m - 1.0)).sqrt()
        } else {
            0.0
        };
        let threshold = mean + std;
        for (&a, &v) in candidates.iter().zip(&ious) {
            if v <= 0.0 || v < threshold {
                continue;
            }
            if config.center_in_gt {
                let c = center(&anchors.boxes[a]);
                let inside = (0..3).all(|i| c[i] > gt_box[i] && c[i] < gt_box[i + 3]);
                if !inside {
                    continue;
                }
            }
            if v > best[a].0 {
                best[a] = (v, Some(g));
            }
        }
    }
    best.into_iter().map(|(_, g)| g).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    #[test]
    fn atss_finds_positives_around_each_box() {
        let cfg = ModelConfig::tiny();
        // anchors of 5.3–32 voxels on the tiny preset's grids, for boxes of 10–13 voxels
        let anchors = Anchors::generate(
            &crate::config::AnchorConfig::sized_to_input(32, 4),
            [32; 3],
            &[[8; 3], [4; 3], [2; 3], [1; 3]],
        );
        let gt = [
            [4.0, 4.0, 4.0, 14.0, 15.0, 13.0],
            [18.0, 16.0, 20.0, 30.0, 29.0, 31.0],
        ];
        let matches = atss_match(&cfg.detection.matcher, &anchors, &gt);
        assert_eq!(matches.len(), anchors.len());
        for (g, gt_box) in gt.iter().enumerate() {
            let pos: Vec<usize> = (0..anchors.len())
                .filter(|&a| matches[a] == Some(g))
                .collect();
            assert!(!pos.is_empty(), "box {g} has no positive anchor");
            for &a in &pos {
                assert!(iou(&anchors.boxes[a], gt_box) > 0.2);
            }
        }
        // at most 4·A candidates per level and box can be positive
        let total = matches.iter().filter(|m| m.is_some()).count();
        assert!(total <= 2 * 4 * 20);
    }
}
