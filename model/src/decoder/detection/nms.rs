//! Greedy 3D non-maximum suppression.

use super::anchors::{Box3, iou};

/// Indices of the kept boxes, by decreasing score: a box is dropped when it overlaps a kept box of the
/// same label with IoU above `threshold`. At most `max_keep` are returned.
pub fn nms(
    boxes: &[Box3],
    scores: &[f32],
    labels: &[usize],
    threshold: f32,
    max_keep: usize,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut keep: Vec<usize> = Vec::new();
    for i in order {
        if keep.len() == max_keep {
            break;
        }
        if keep
            .iter()
            .all(|&k| labels[k] != labels[i] || iou(&boxes[k], &boxes[i]) <= threshold)
        {
            keep.push(i);
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suppresses_overlaps_and_keeps_separate_boxes() {
        let boxes = [
            [0.0, 0.0, 0.0, 10.0, 10.0, 10.0],
            [1.0, 0.0, 0.0, 11.0, 10.0, 10.0],
            [20.0, 20.0, 20.0, 30.0, 30.0, 30.0],
            [1.0, 1.0, 1.0, 10.0, 10.0, 10.0],
        ];
        let scores = [0.9, 0.8, 0.7, 0.95];
        let keep = nms(&boxes, &scores, &[0, 0, 0, 1], 0.5, 10);
        // box 3 has another label, so it suppresses nothing; box 1 overlaps box 0
        assert_eq!(keep, vec![3, 0, 2]);
        assert_eq!(nms(&boxes, &scores, &[0; 4], 0.5, 1), vec![3]);
    }
}
