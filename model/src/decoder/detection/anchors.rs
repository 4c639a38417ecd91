//! Anchor boxes, `[x0, y0, z0, x1, y1, z1]` in input voxels (corner coordinates, MONAI's StandardMode).

use crate::config::AnchorConfig;

/// An axis-aligned box, `[x0, y0, z0, x1, y1, z1]`.
pub type Box3 = [f32; 6];

/// The anchors of every level, flattened location-major and anchor-minor like the heads' outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Anchors {
    /// All anchors.
    pub boxes: Vec<Box3>,
    /// Anchors per level.
    pub per_level: Vec<usize>,
    /// Anchors per location.
    pub per_location: usize,
}

/// Anchor shapes for one level: the configured shapes scaled so their geometric mean edge is `size`, each
/// edge clipped to the input's extent on its axis (no anchor is larger than the image).
pub fn level_shapes(config: &AnchorConfig, size: f64, input: [usize; 3]) -> Vec<[f64; 3]> {
    config
        .shapes
        .iter()
        .map(|s| {
            let g = (s[0] * s[1] * s[2]).cbrt();
            [0, 1, 2].map(|a| (s[a] / g * size).min(input[a] as f64))
        })
        .collect()
}

impl Anchors {
    /// Anchors centred on every cell of each level's map (cell `i` of a stride-`s` map covers
    /// `[i·s, (i+1)·s)`, so its centre is `(i + ½)·s`; the reference uses `i·s`, half a cell off).
    pub fn generate(config: &AnchorConfig, input: [usize; 3], level_sizes: &[[usize; 3]]) -> Self {
        let mut boxes = Vec::new();
        let mut per_level = Vec::new();
        for (level, &dims) in level_sizes.iter().enumerate() {
            let stride = [0, 1, 2].map(|a| input[a] as f64 / dims[a] as f64);
            let shapes = level_shapes(config, config.sizes[level], input);
            let before = boxes.len();
            for i in 0..dims[0] {
                for j in 0..dims[1] {
                    for k in 0..dims[2] {
                        let c = [
                            (i as f64 + 0.5) * stride[0],
                            (j as f64 + 0.5) * stride[1],
                            (k as f64 + 0.5) * stride[2],
                        ];
                        for s in &shapes {
                            boxes.push([
                                (c[0] - s[0] / 2.0) as f32,
                                (c[1] - s[1] / 2.0) as f32,
                                (c[2] - s[2] / 2.0) as f32,
                                (c[0] + s[0] / 2.0) as f32,
                                (c[1] + s[1] / 2.0) as f32,
                                (c[2] + s[2] / 2.0) as f32,
                            ]);
                        }
                    }
                }
            }
            per_level.push(boxes.len() - before);
        }
        Self {
            boxes,
            per_level,
            per_location: config.shapes.len(),
        }
    }

    /// Number of anchors.
    pub fn len(&self) -> usize {
        self.boxes.len()
    }

    /// Whether there is no anchor.
    pub fn is_empty(&self) -> bool {
        self.boxes.is_empty()
    }
}

/// Centre of a box.
pub fn center(b: &Box3) -> [f32; 3] {
    [
        (b[0] + b[3]) / 2.0,
        (b[1] + b[4]) / 2.0,
        (b[2] + b[5]) / 2.0,
    ]
}

/// Volume of a box (0 when degenerate).
pub fn volume(b: &Box3) -> f32 {
    (b[3] - b[0]).max(0.0) * (b[4] - b[1]).max(0.0) * (b[5] - b[2]).max(0.0)
}

/// Intersection over union of two boxes.
pub fn iou(a: &Box3, b: &Box3) -> f32 {
    let inter = [0, 1, 2]
        .map(|i| (a[i + 3].min(b[i + 3]) - a[i].max(b[i])).max(0.0))
        .iter()
        .product::<f32>();
    let union = volume(a) + volume(b) - inter;
    if union <= 0.0 { 0.0 } else { inter / union }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    #[test]
    fn reference_anchor_count_and_sizes_fit_the_input() {
        let cfg = ModelConfig::reference();
        let a = Anchors::generate(
            &cfg.detection.anchors,
            [96; 3],
            &[[24; 3], [12; 3], [6; 3], [3; 3]],
        );
        // 5 shapes × (24³ + 12³ + 6³ + 3³), as the reference
        assert_eq!(a.len(), 78_975);
        assert_eq!(a.per_level, vec![69_120, 8_640, 1_080, 135]);
        // every anchor is at most as large as the input on each axis (the reference's levels 1–3 are not)
        let biggest = a
            .boxes
            .iter()
            .map(|b| (b[3] - b[0]).max(b[4] - b[1]).max(b[5] - b[2]))
            .fold(0.0f32, f32::max);
        assert!(biggest <= 96.0, "largest anchor edge {biggest}");
        // the first anchor is centred on the first cell's centre (2, 2, 2)
        let c = center(&a.boxes[0]);
        assert!(c.iter().all(|v| (v - 2.0).abs() < 1e-5), "{c:?}");
    }

    #[test]
    fn iou_of_known_boxes() {
        let a = [0.0, 0.0, 0.0, 2.0, 2.0, 2.0];
        let b = [1.0, 0.0, 0.0, 3.0, 2.0, 2.0];
        assert!((iou(&a, &b) - 4.0 / 12.0).abs() < 1e-6);
        assert_eq!(iou(&a, &[5.0, 5.0, 5.0, 6.0, 6.0, 6.0]), 0.0);
        assert_eq!(iou(&a, &a), 1.0);
    }
}
