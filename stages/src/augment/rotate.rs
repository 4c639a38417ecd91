//! Random small rotations about the volume centre (MONAI's `RandRotated` with
//! `keep_size=True`).
//!
//! ```yaml
//! - rand_rotate: {prob: 0.2, range_x: 0.0, range_y: 0.0, range_z: 0.26, padding: zeros}
//! - boxes: {from: WT}    # exact boxes again from the rotated label
//! ```
//!
//! Angles are in radians, drawn uniformly from `[-range, range]` per axis. The rotation is
//! `R = Rz · Ry · Rx` (x applied first), right-handed in voxel index space: a positive angle
//! about z carries the X axis towards Y, about x carries Y towards Z and about y carries Z
//! towards X. So +90° about z on a cube equals `rand_rot90` with `k = 1, plane = [0, 1]`
//! (`np.rot90`'s direction). The rotation acts on voxel indices, as MONAI's does: on
//! anisotropic voxels it is not a rigid motion in millimetres, so resample to isotropic
//! spacing first.
//!
//! Output voxel `p` takes the input value at `R⁻¹ (p − c) + c`, `c` the centre of the volume:
//! trilinear for f32 volumes, nearest for u8 volumes (labels keep their values). Outside the
//! input, `padding` decides: `zeros`, or `border` (repeat the edge voxel).
//!
//! Boxes cannot stay exact under a rotation. Each box is handled conservatively: its 8 corners
//! are rotated, the axis-aligned bounds taken and clipped to the volume; a box rotated entirely
//! out of the volume is dropped. The result contains the rotated object but is usually larger;
//! recompute boxes from the rotated label (the `boxes` stage) where exact boxes matter.

use mtmed3d_pipeline::{
    Affine, BuildContext, Component, Field, Problem, Sample, SpatialOp, Stage, StageConfig,
    StageContext, StageError,
};
use ndarray::{ArrayD, IxDyn};
use rand::RngExt;
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{check_fields, check_prob, listed, symmetric};
use crate::fields::{common_spatial_shape, compose, map_boxes, volume_fields};

/// What a rotated voxel sees where it falls outside the input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    /// Zero.
    #[default]
    Zeros,
    /// The nearest edge voxel.
    Border,
}

/// A 3×3 matrix, rows first.
pub type Mat3 = [[f64; 3]; 3];

/// Rotates volumes about their centre by small random angles; boxes are enlarged to contain
/// the rotated box.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RandRotate {
    /// Probability of rotating at all.
    #[serde(default = "RandRotate::default_prob")]
    pub prob: f64,
    /// Largest angle about the X axis, in radians (drawn from [-range_x, range_x]).
    #[serde(default)]
    pub range_x: f64,
    /// Largest angle about the Y axis, in radians.
    #[serde(default)]
    pub range_y: f64,
    /// Largest angle about the Z axis, in radians (0.26 ≈ 15°).
    #[serde(default = "RandRotate::default_range_z")]
    pub range_z: f64,
    /// Volume fields to rotate; every 3D or 4D volume of the sample when left out. f32 volumes
    /// are interpolated trilinearly, u8 volumes by nearest neighbour. Box fields always move
    /// with them (conservatively).
    #[serde(default)]
    pub fields: Option<Vec<String>>,
    /// Value outside the input: `zeros` or `border` (the nearest edge voxel).
    #[serde(default)]
    pub padding: Padding,
}

impl RandRotate {
    fn default_prob() -> f64 {
        0.1
    }
    fn default_range_z() -> f64 {
        0.26
    }

    /// The angles about X, Y and Z for one sample, or `None` when it is left alone.
    pub fn draw(&self, rng: &mut impl rand::Rng) -> Option<[f64; 3]> {
        if rng.random::<f64>() >= self.prob {
            return None;
        }
        Some([
            symmetric(rng, self.range_x),
            symmetric(rng, self.range_y),
            symmetric(rng, self.range_z),
        ])
    }
}

impl Default for RandRotate {
    fn default() -> Self {
        RandRotate {
            prob: Self::default_prob(),
            range_x: 0.0,
            range_y: 0.0,
            range_z: Self::default_range_z(),
            fields: None,
            padding: Padding::Zeros,
        }
    }
}

impl Component for RandRotate {
    const NAME: &'static str = "rand_rotate";
    const DOC: &'static str = "Randomly rotates volumes about their centre by small angles (trilinear for f32, nearest for u8, same shape); boxes become the clipped bounds of their rotated corners.";

    fn random(&self) -> bool {
        true
    }

    fn reads(&self) -> Vec<String> {
        listed(self.fields.as_deref())
    }
    fn writes(&self) -> Vec<String> {
        listed(self.fields.as_deref())
    }
    fn check(&self) -> Vec<Problem> {
        let mut problems: Vec<Problem> = check_prob(self.prob).into_iter().collect();
        for (name, range) in [
            ("range_x", self.range_x),
            ("range_y", self.range_y),
            ("range_z", self.range_z),
        ] {
            if !(range.is_finite() && range >= 0.0) {
                problems.push(Problem::param(
                    name,
                    format!("`{name}` must be a finite angle ≥ 0 in radians; got {range}"),
                ));
            }
        }
        problems.extend(check_fields(self.fields.as_deref()));
        problems
    }
}

impl StageConfig for RandRotate {
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

impl Stage for RandRotate {
    fn process(&self, mut sample: Sample, ctx: &StageContext) -> Result<Sample, StageError> {
        let angles = self.draw(&mut ctx.rng(&sample));
        let volumes = volume_fields(&sample, self.fields.as_deref());
        let shape = common_spatial_shape(&sample, &volumes)?;
        let Some(angles) = angles else {
            return Ok(sample);
        };
        rotate_sample(&mut sample, &volumes, shape, angles, self.padding)?;
        let [x, y, z] = angles;
        sample.meta.history.push(SpatialOp::Resample {
            description: format!(
                "rotate about the volume centre by x={x:.6} y={y:.6} z={z:.6} rad (R = Rz·Ry·Rx)"
            ),
            shape_before: shape,
        });
        Ok(sample)
    }
}

/// Rotates `volumes` (all of spatial `shape`), every box field and `meta.affine` by `angles`
/// (about X, Y, Z, radians).
pub fn rotate_sample(
    sample: &mut Sample,
    volumes: &[String],
    shape: [usize; 3],
    angles: [f64; 3],
    padding: Padding,
) -> Result<(), StageError> {
    let r = rotation(angles);
    let inv = transpose(&r);
    let centre = shape.map(|n| (n as f64 - 1.0) / 2.0);
    for name in volumes {
        let moved = match sample.get(name) {
            Some(Field::F32(a)) => Field::f32(resample(a, &inv, centre, padding, trilinear)),
            Some(Field::U8(a)) => Field::u8(resample(a, &inv, centre, padding, nearest)),
            _ => unreachable!("common_spatial_shape accepted only volumes"),
        };
        sample.insert(name.clone(), moved);
    }
    map_boxes(sample, |c| rotate_box(c, shape, &r))?;
    sample.meta.affine = compose(&sample.meta.affine, &sampling_affine(&inv, centre));
    Ok(())
}

/// `Rz(z) · Ry(y) · Rx(x)`, each right-handed.
pub fn rotation(angles: [f64; 3]) -> Mat3 {
    let [(sx, cx), (sy, cy), (sz, cz)] = angles.map(f64::sin_cos);
    let rx = [[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]];
    let ry = [[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]];
    let rz = [[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]];
    mul(&rz, &mul(&ry, &rx))
}

fn mul(a: &Mat3, b: &Mat3) -> Mat3 {
    std::array::from_fn(|i| std::array::from_fn(|j| (0..3).map(|k| a[i][k] * b[k][j]).sum()))
}

fn transpose(a: &Mat3) -> Mat3 {
    std::array::from_fn(|i| std::array::from_fn(|j| a[j][i]))
}

fn apply(m: &Mat3, v: [f64; 3]) -> [f64; 3] {
    std::array::from_fn(|i| (0..3).map(|k| m[i][k] * v[k]).sum())
}

/// Output voxel index → input voxel index, as a 4×4 affine: `inv · (p − c) + c`. Composed
/// after the current affine, an output voxel lands where the input point it was sampled from
/// was.
fn sampling_affine(inv: &Mat3, centre: [f64; 3]) -> Affine {
    let shift = apply(inv, centre);
    let mut m = [[0.0; 4]; 4];
    for r in 0..3 {
        m[r][..3].copy_from_slice(&inv[r]);
        m[r][3] = centre[r] - shift[r];
    }
    m[3][3] = 1.0;
    m
}

/// The bounds of a rotated box, clipped to the volume; `None` when nothing is left.
///
/// Works on voxel edges (voxel `i` spans `[i, i + 1)`), where the box is exactly its corners
/// and the centre of rotation is `n / 2`.
pub fn rotate_box(corners: &[f64; 6], shape: [usize; 3], r: &Mat3) -> Option<[f64; 6]> {
    // Rounding noise (sin π = 1e-16) must not widen a box by a whole voxel.
    const SNAP: f64 = 1e-6;
    let centre = shape.map(|n| n as f64 / 2.0);
    let mut lo = [f64::INFINITY; 3];
    let mut hi = [f64::NEG_INFINITY; 3];
    for mask in 0..8 {
        let p: [f64; 3] = std::array::from_fn(|a| {
            corners[if mask >> a & 1 == 0 { a } else { a + 3 }] - centre[a]
        });
        let q = apply(r, p);
        for a in 0..3 {
            lo[a] = lo[a].min(q[a] + centre[a]);
            hi[a] = hi[a].max(q[a] + centre[a]);
        }
    }
    let mut out = [0.0; 6];
    for a in 0..3 {
        let n = shape[a] as f64;
        out[a] = (lo[a] + SNAP).floor().clamp(0.0, n);
        out[a + 3] = (hi[a] - SNAP).ceil().clamp(0.0, n);
        if out[a + 3] <= out[a] {
            return None;
        }
    }
    Some(out)
}

/// Samples `volume` (`X×Y×Z` or `C×X×Y×Z`) at `inv · (p − c) + c` for every output voxel `p`,
/// in parallel over channels and X slices.
fn resample<T, F>(
    volume: &ArrayD<T>,
    inv: &Mat3,
    centre: [f64; 3],
    padding: Padding,
    sample_at: F,
) -> ArrayD<T>
where
    T: Copy + Default + Send + Sync,
    F: Fn(&[T], [usize; 3], [f64; 3], Padding) -> T + Sync,
{
    let shape = volume.shape().to_vec();
    let n = shape.len();
    let dims = [shape[n - 3], shape[n - 2], shape[n - 1]];
    let [nx, ny, nz] = dims;
    let per_channel = nx * ny * nz;
    let input = volume.as_standard_layout();
    let data = input.as_slice().expect("standard layout is contiguous");
    let mut out = vec![T::default(); data.len()];
    // The input point moves by one column of `inv` per output step along each axis.
    let step_y = [inv[0][1], inv[1][1], inv[2][1]];
    let step_z = [inv[0][2], inv[1][2], inv[2][2]];
    if ny * nz > 0 {
        out.par_chunks_mut(ny * nz)
            .enumerate()
            .for_each(|(slice, row)| {
                let channel = &data[(slice / nx) * per_channel..][..per_channel];
                let x = (slice % nx) as f64 - centre[0];
                let start: [f64; 3] = std::array::from_fn(|a| {
                    centre[a] + inv[a][0] * x - inv[a][1] * centre[1] - inv[a][2] * centre[2]
                });
                for y in 0..ny {
                    let base: [f64; 3] = std::array::from_fn(|a| start[a] + step_y[a] * y as f64);
                    for z in 0..nz {
                        let p = std::array::from_fn(|a| base[a] + step_z[a] * z as f64);
                        row[y * nz + z] = sample_at(channel, dims, p, padding);
                    }
                }
            });
    }
    ArrayD::from_shape_vec(IxDyn(&shape), out).expect("same shape as the input")
}

/// Trilinear interpolation at `p` (voxel indices).
fn trilinear(data: &[f32], dims: [usize; 3], p: [f64; 3], padding: Padding) -> f32 {
    let mut p = p;
    for a in 0..3 {
        let last = dims[a] as f64 - 1.0;
        match padding {
            // A point a voxel or more outside has no input neighbour at all.
            Padding::Zeros if p[a] <= -1.0 || p[a] >= last + 1.0 => return 0.0,
            Padding::Zeros => {}
            Padding::Border => p[a] = p[a].clamp(0.0, last),
        }
    }
    let base = p.map(f64::floor);
    let frac: [f64; 3] = std::array::from_fn(|a| p[a] - base[a]);
    let [nx, ny, nz] = dims;
    let [x, y, z] = base.map(|b| b as i64);
    if x >= 0 && y >= 0 && z >= 0 && x + 1 < nx as i64 && y + 1 < ny as i64 && z + 1 < nz as i64 {
        // Most voxels: all eight neighbours inside, no bounds to check.
        let (sx, sy) = (ny * nz, nz);
        let i = x as usize * sx + y as usize * sy + z as usize;
        let v = |o: usize| f64::from(data[i + o]);
        let [fx, fy, fz] = frac;
        let lerp = |a: f64, b: f64, t: f64| a + (b - a) * t;
        let y0 = lerp(lerp(v(0), v(1), fz), lerp(v(sy), v(sy + 1), fz), fy);
        let y1 = lerp(
            lerp(v(sx), v(sx + 1), fz),
            lerp(v(sx + sy), v(sx + sy + 1), fz),
            fy,
        );
        return lerp(y0, y1, fx) as f32;
    }
    let mut acc = 0.0f64;
    for corner in 0..8 {
        let mut weight = 1.0;
        let mut offset = 0;
        let mut inside = true;
        for a in 0..3 {
            let upper = corner >> a & 1 == 1;
            let w = if upper { frac[a] } else { 1.0 - frac[a] };
            weight *= w;
            let i = base[a] as i64 + i64::from(upper);
            if i < 0 || i >= dims[a] as i64 {
                inside = false;
            }
            offset = offset * dims[a] + i.max(0) as usize;
        }
        if weight != 0.0 && inside {
            acc += weight * f64::from(data[offset]);
        }
    }
    acc as f32
}

/// The nearest voxel's value at `p` (voxel indices).
fn nearest(data: &[u8], dims: [usize; 3], p: [f64; 3], padding: Padding) -> u8 {
    let mut offset = 0;
    for a in 0..3 {
        let mut i = (p[a] + 0.5).floor();
        let last = dims[a] as f64 - 1.0;
        if !(0.0..=last).contains(&i) {
            match padding {
                Padding::Zeros => return 0,
                Padding::Border => i = i.clamp(0.0, last),
            }
        }
        offset = offset * dims[a] + i as usize;
    }
    data[offset]
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn rotation_follows_the_documented_direction() {
        let q = std::f64::consts::FRAC_PI_2;
        let close = |a: [f64; 3], b: [f64; 3]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12);
        assert!(close(
            apply(&rotation([0.0, 0.0, q]), [1.0, 0.0, 0.0]),
            [0.0, 1.0, 0.0]
        ));
        assert!(close(
            apply(&rotation([q, 0.0, 0.0]), [0.0, 1.0, 0.0]),
            [0.0, 0.0, 1.0]
        ));
        assert!(close(
            apply(&rotation([0.0, q, 0.0]), [0.0, 0.0, 1.0]),
            [1.0, 0.0, 0.0]
        ));
        // x is applied first: x then z sends Y to Z, and Z stays put under z.
        let r = rotation([q, 0.0, q]);
        assert!(close(apply(&r, [0.0, 1.0, 0.0]), [0.0, 0.0, 1.0]));
    }

    #[test]
    fn trilinear_interpolates_and_pads() {
        // v = x + 10 y + 100 z is linear, so trilinear reproduces it exactly inside.
        let a = Array3::from_shape_fn((3, 3, 3), |(x, y, z)| (x + 10 * y + 100 * z) as f32);
        let data = a.as_slice().unwrap();
        let v = trilinear(data, [3, 3, 3], [0.5, 1.25, 1.5], Padding::Zeros);
        assert!((v - (0.5 + 12.5 + 150.0)).abs() < 1e-4, "{v}");
        // Half a voxel outside: half the edge value with zeros, the edge value with border.
        assert_eq!(
            trilinear(data, [3, 3, 3], [-0.5, 0.0, 0.0], Padding::Zeros),
            0.0
        );
        let edge = trilinear(data, [3, 3, 3], [2.5, 0.0, 0.0], Padding::Zeros);
        assert!((edge - 1.0).abs() < 1e-6, "{edge}");
        assert_eq!(
            trilinear(data, [3, 3, 3], [2.5, 0.0, 0.0], Padding::Border),
            2.0
        );
        assert_eq!(
            trilinear(data, [3, 3, 3], [9.0, 0.0, 0.0], Padding::Zeros),
            0.0
        );
    }

    #[test]
    fn nearest_rounds_and_pads() {
        let a = Array3::from_shape_fn((2, 2, 2), |(x, y, z)| (1 + x + 2 * y + 4 * z) as u8);
        let data = a.as_slice().unwrap();
        assert_eq!(nearest(data, [2, 2, 2], [0.4, 0.6, 0.0], Padding::Zeros), 3);
        assert_eq!(
            nearest(data, [2, 2, 2], [-0.6, 0.0, 0.0], Padding::Zeros),
            0
        );
        assert_eq!(
            nearest(data, [2, 2, 2], [-0.6, 0.0, 0.0], Padding::Border),
            1
        );
    }

    #[test]
    fn quarter_turn_of_a_box_matches_rot90() {
        let r = rotation([0.0, 0.0, std::f64::consts::FRAC_PI_2]);
        // rot90 k=1 plane (0,1) on N×N: x in [N-y2, N-y1), y in [x1, x2).
        let out = rotate_box(&[1.0, 2.0, 0.0, 3.0, 5.0, 4.0], [8, 8, 4], &r).unwrap();
        assert_eq!(out, [3.0, 1.0, 0.0, 6.0, 3.0, 4.0]);
        let identity = rotation([0.0; 3]);
        assert_eq!(
            rotate_box(&[1.0, 2.0, 0.0, 3.0, 5.0, 4.0], [8, 8, 4], &identity),
            Some([1.0, 2.0, 0.0, 3.0, 5.0, 4.0])
        );
    }

    #[test]
    fn small_rotations_enlarge_boxes_and_clip_them() {
        let r = rotation([0.0, 0.0, 0.2]);
        let b = [2.0, 2.0, 0.0, 6.0, 6.0, 3.0];
        let out = rotate_box(&b, [8, 8, 3], &r).unwrap();
        assert!(out[0] <= b[0] && out[1] <= b[1] && out[3] >= b[3] && out[4] >= b[4]);
        assert!(out[3] - out[0] > 4.0);
        let whole = rotate_box(&[0.0, 0.0, 0.0, 8.0, 8.0, 3.0], [8, 8, 3], &r).unwrap();
        assert_eq!(whole, [0.0, 0.0, 0.0, 8.0, 8.0, 3.0]);
        // A corner box on a long thin volume turns out of it.
        let r = rotation([0.0, 0.0, std::f64::consts::FRAC_PI_2]);
        assert_eq!(
            rotate_box(&[0.0, 0.0, 0.0, 2.0, 1.0, 1.0], [20, 2, 1], &r),
            None
        );
    }

    #[test]
    fn check_rejects_negative_or_infinite_ranges() {
        let c = RandRotate {
            range_x: -0.1,
            range_y: f64::INFINITY,
            prob: 2.0,
            ..RandRotate::default()
        };
        let params: Vec<String> = c.check().into_iter().filter_map(|p| p.param).collect();
        assert_eq!(params, vec!["prob", "range_x", "range_y"]);
        assert!(RandRotate::default().check().is_empty());
        let c: RandRotate = serde_json::from_str(r#"{"padding": "border"}"#).unwrap();
        assert_eq!(c.padding, Padding::Border);
        assert_eq!(c.range_z, 0.26);
        assert!(serde_json::from_str::<RandRotate>(r#"{"padding": "mirror"}"#).is_err());
    }
}
