//! Random augmentations for training: flips, quarter turns, small rotations and intensity
//! jitter.
//!
//! ```yaml
//! stages:
//!   - rand_flip: {prob: 0.5, axes: [0, 1, 2]}
//!   - rand_rot90: {prob: 0.75, plane: [0, 1], max_k: 3}
//!   - rand_rotate: {prob: 0.1, range_z: 0.26}
//!   - rand_intensity: {field: image, scale: 0.1, shift: 0.1}
//! ```
//!
//! The spatial stages move every volume of the sample together (or the listed `fields`),
//! together with every box field, update `meta.affine` so that a voxel keeps its world
//! position, and record what they did in `meta.history`. Every draw comes from the sample's
//! own generator (`StageContext::rng`), so a case is augmented the same way whatever the
//! thread count or arrival order, and differently in each epoch.
//!
//! `meta.affine` describes the moved volumes: a volume left out of `fields` keeps its voxels
//! but no longer matches the affine, so list a subset only for fields that are not in the
//! sample's voxel grid.
//!
//! Flips and quarter turns are exact permutations of voxels, so they are expressed as a short
//! list of [`AxisOp`]s (reverse an axis, swap two axes) applied alike to voxels, boxes and the
//! affine; that keeps the three consistent by construction.

pub mod flip;
pub mod intensity;
pub mod rot90;
pub mod rotate;

pub use flip::RandFlip;
pub use intensity::RandIntensity;
pub use rot90::RandRot90;
pub use rotate::RandRotate;

use mtmed3d_pipeline::{Affine, Field, Problem, Sample, StageError};
use ndarray::{ArrayD, Axis};

use crate::fields::{common_spatial_shape, flipped_affine, map_boxes, volume_fields};

/// One exact voxel permutation on the spatial axes (0 = X, 1 = Y, 2 = Z).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AxisOp {
    /// Reverse a spatial axis.
    Flip(usize),
    /// Exchange two spatial axes.
    Swap(usize, usize),
}

/// The spatial shape after `ops`.
pub fn shape_after(shape: [usize; 3], ops: &[AxisOp]) -> [usize; 3] {
    let mut shape = shape;
    for op in ops {
        if let AxisOp::Swap(p, q) = *op {
            shape.swap(p, q);
        }
    }
    shape
}

/// A volume (`X×Y×Z` or `C×X×Y×Z`) after `ops`, in standard layout.
pub fn permute_volume<T: Clone>(volume: &ArrayD<T>, ops: &[AxisOp]) -> ArrayD<T> {
    let offset = volume.ndim() - 3;
    let mut view = volume.view();
    for op in ops {
        match *op {
            AxisOp::Flip(a) => view.invert_axis(Axis(offset + a)),
            AxisOp::Swap(p, q) => view.swap_axes(offset + p, offset + q),
        }
    }
    view.as_standard_layout().into_owned()
}

/// Box corners (`[x1, y1, z1, x2, y2, z2]`, end exclusive) after `ops` on a volume of
/// spatial `shape`.
pub fn permute_box(corners: &[f64; 6], shape: [usize; 3], ops: &[AxisOp]) -> [f64; 6] {
    let mut c = *corners;
    let mut shape = shape;
    for op in ops {
        match *op {
            AxisOp::Flip(a) => {
                // Voxel i goes to n-1-i, so the half-open [lo, hi) becomes [n-hi, n-lo).
                let n = shape[a] as f64;
                (c[a], c[a + 3]) = (n - c[a + 3], n - c[a]);
            }
            AxisOp::Swap(p, q) => {
                c.swap(p, q);
                c.swap(p + 3, q + 3);
                shape.swap(p, q);
            }
        }
    }
    c
}

/// The voxel-to-world affine after `ops` on a volume of spatial `shape`: new voxel indices
/// map to the world point their voxel had before.
pub fn permute_affine(affine: &Affine, shape: [usize; 3], ops: &[AxisOp]) -> Affine {
    let mut out = *affine;
    let mut shape = shape;
    for op in ops {
        match *op {
            AxisOp::Flip(a) => out = flipped_affine(&out, a, shape[a]),
            AxisOp::Swap(p, q) => {
                // New index (.., i, .., j, ..) is old index (.., j, .., i, ..): swap columns.
                for row in out.iter_mut().take(3) {
                    row.swap(p, q);
                }
                shape.swap(p, q);
            }
        }
    }
    out
}

/// Applies `ops` to the selected volumes (every 3D/4D volume when `fields` is `None`), to
/// every box field and to `meta.affine`. The caller records the step in `meta.history`.
pub fn permute_sample(
    sample: &mut Sample,
    fields: Option<&[String]>,
    ops: &[AxisOp],
) -> Result<(), StageError> {
    let volumes = volume_fields(sample, fields);
    let shape = common_spatial_shape(sample, &volumes)?;
    if ops.is_empty() {
        return Ok(());
    }
    for name in &volumes {
        let moved = match sample.get(name) {
            Some(Field::F32(a)) => Field::f32(permute_volume(a, ops)),
            Some(Field::U8(a)) => Field::u8(permute_volume(a, ops)),
            _ => unreachable!("common_spatial_shape accepted only volumes"),
        };
        sample.insert(name.clone(), moved);
    }
    map_boxes(sample, |c| Some(permute_box(c, shape, ops)))?;
    sample.meta.affine = permute_affine(&sample.meta.affine, shape, ops);
    Ok(())
}

/// `prob` must be a probability.
pub(crate) fn check_prob(prob: f64) -> Option<Problem> {
    (!(0.0..=1.0).contains(&prob))
        .then(|| Problem::param("prob", format!("`prob` must be in [0, 1], got {prob}")))
}

/// An explicit `fields` list must name something.
pub(crate) fn check_fields(fields: Option<&[String]>) -> Option<Problem> {
    matches!(fields, Some([])).then(|| {
        Problem::param(
            "fields",
            "`fields` is empty; list the volumes to move, or leave it out to move every volume",
        )
    })
}

/// What a spatial stage reads and writes: the listed fields, or nothing declared when it
/// moves whatever volumes the sample has.
pub(crate) fn listed(fields: Option<&[String]>) -> Vec<String> {
    fields.map(<[String]>::to_vec).unwrap_or_default()
}

/// A uniform draw in `[-range, range]` that is always exactly one draw, so that a zero range
/// does not shift the draws that follow it.
pub(crate) fn symmetric(rng: &mut impl rand::Rng, range: f64) -> f64 {
    use rand::RngExt;
    range * (2.0 * rng.random::<f64>() - 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, IxDyn};

    fn cube() -> Array3<u16> {
        Array3::from_shape_fn((2, 3, 4), |(x, y, z)| (100 * x + 10 * y + z) as u16)
    }

    #[test]
    fn swap_then_flip_is_a_quarter_turn_as_numpy_writes_it() {
        // np.rot90(m, 3, axes=(0, 1)) == flip(transpose(m), 1): out[i, j] = m[N0-1-j, i].
        let m = cube().into_dyn();
        let out = permute_volume(&m, &[AxisOp::Swap(0, 1), AxisOp::Flip(1)]);
        assert_eq!(out.shape(), &[3, 2, 4]);
        for i in 0..3 {
            for j in 0..2 {
                for z in 0..4 {
                    assert_eq!(out[[i, j, z]], m[[1 - j, i, z]]);
                }
            }
        }
        assert!(out.is_standard_layout());
    }

    #[test]
    fn ops_act_on_the_last_three_axes_of_channel_first_volumes() {
        let m = ArrayD::from_shape_fn(IxDyn(&[2, 2, 3, 4]), |d| {
            (1000 * d[0] + 100 * d[1] + 10 * d[2] + d[3]) as u16
        });
        let out = permute_volume(&m, &[AxisOp::Flip(2)]);
        assert_eq!(out[[1, 0, 0, 0]], 1003);
        assert_eq!(out[[0, 1, 2, 3]], 120);
    }

    #[test]
    fn boxes_and_affine_follow_the_voxels() {
        let shape = [5, 7, 3];
        let ops = [AxisOp::Flip(1), AxisOp::Swap(0, 1), AxisOp::Flip(2)];
        // One voxel at (1, 2, 0): a box [1,2,0, 2,3,1].
        let moved = permute_box(&[1.0, 2.0, 0.0, 2.0, 3.0, 1.0], shape, &ops);
        // flip y: y 2 -> 4; swap: (4, 1, 0); flip z: z 0 -> 2.
        assert_eq!(moved, [4.0, 1.0, 2.0, 5.0, 2.0, 3.0]);
        assert_eq!(shape_after(shape, &ops), [7, 5, 3]);

        let a: Affine = [
            [2.0, 0.1, 0.0, -3.0],
            [0.0, 1.5, 0.2, 4.0],
            [0.3, 0.0, 1.0, 7.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let b = permute_affine(&a, shape, &ops);
        let world = |m: &Affine, v: [f64; 3]| -> [f64; 3] {
            std::array::from_fn(|r| m[r][3] + (0..3).map(|c| m[r][c] * v[c]).sum::<f64>())
        };
        let before = world(&a, [1.0, 2.0, 0.0]);
        let after = world(&b, [4.0, 1.0, 2.0]);
        for r in 0..3 {
            assert!(
                (before[r] - after[r]).abs() < 1e-12,
                "{before:?} vs {after:?}"
            );
        }
    }

    #[test]
    fn zero_range_still_draws_once() {
        use rand::RngExt;
        use rand_chacha::ChaCha8Rng;
        use rand_chacha::rand_core::SeedableRng;
        let mut a = ChaCha8Rng::seed_from_u64(7);
        let mut b = ChaCha8Rng::seed_from_u64(7);
        assert_eq!(symmetric(&mut a, 0.0), 0.0);
        let _ = symmetric(&mut b, 0.3);
        assert_eq!(a.random::<u64>(), b.random::<u64>());
        let x = symmetric(&mut a, 0.3);
        assert!((-0.3..=0.3).contains(&x));
    }
}
