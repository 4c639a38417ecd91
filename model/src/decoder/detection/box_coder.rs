//! Box coder: boxes as offsets from anchors (Faster R-CNN parameterisation, unit weights, as MONAI's
//! `BoxCoder(weights=(1,…,1))`).

use super::anchors::Box3;

/// Largest log-scale ratio decoded (MONAI and torchvision clamp at `ln(1000/16)`).
pub const MAX_LOG_RATIO: f32 = 4.135_166_6;

fn center_size(b: &Box3) -> ([f32; 3], [f32; 3]) {
    let size = [b[3] - b[0], b[4] - b[1], b[5] - b[2]];
    let c = [
        b[0] + size[0] / 2.0,
        b[1] + size[1] / 2.0,
        b[2] + size[2] / 2.0,
    ];
    (c, size)
}

/// Targets `(Δc / anchor size, ln(size / anchor size))` per axis: `[dx, dy, dz, dw, dh, dd]`.
pub fn encode(anchor: &Box3, gt: &Box3) -> [f32; 6] {
    let (ca, sa) = center_size(anchor);
    let (cg, sg) = center_size(gt);
    [
        (cg[0] - ca[0]) / sa[0],
        (cg[1] - ca[1]) / sa[1],
        (cg[2] - ca[2]) / sa[2],
        (sg[0] / sa[0]).ln(),
        (sg[1] / sa[1]).ln(),
        (sg[2] / sa[2]).ln(),
    ]
}

/// Inverse of [`encode`], with the log-ratios clamped.
pub fn decode(anchor: &Box3, delta: &[f32]) -> Box3 {
    let (ca, sa) = center_size(anchor);
    let mut out = [0.0; 6];
    for i in 0..3 {
        let c = ca[i] + delta[i] * sa[i];
        let s = delta[i + 3].min(MAX_LOG_RATIO).exp() * sa[i];
        out[i] = c - s / 2.0;
        out[i + 3] = c + s / 2.0;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_inverts_encode() {
        let anchor = [10.0, 12.0, 8.0, 30.0, 40.0, 20.0];
        let gt = [14.0, 10.0, 9.0, 41.0, 33.0, 25.0];
        let delta = encode(&anchor, &gt);
        let back = decode(&anchor, &delta);
        for i in 0..6 {
            assert!((back[i] - gt[i]).abs() < 1e-4, "{back:?} vs {gt:?}");
        }
        assert_eq!(encode(&anchor, &anchor), [0.0; 6]);
    }
}
