//! `reorient`: flip and permute axes so voxel axes point along the requested directions.
//!
//! ```yaml
//! - reorient: {axcodes: RAS}     # nibabel's as_closest_canonical, MONAI's Orientationd
//! ```
//!
//! Only flips and permutations: an oblique affine stays oblique, and the voxels are moved,
//! never interpolated, so the step can be undone exactly (`nifti_write: {space: original}`).

use mtmed3d_pipeline::{
    BuildContext, Component, Field, Problem, Sample, SpatialOp, Stage, StageConfig, StageContext,
    StageError,
};
use ndarray::{ArrayD, Axis, Ix4};
use schemars::JsonSchema;
use serde::Deserialize;

use super::orientation::{
    AxCodes, Orientation, apply_orientation, flip_in_place, plan_reorientation,
};
use crate::fields::{common_spatial_shape, map_boxes, volume_fields};

/// Reorients every volume (and box) of a sample.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Reorient {
    /// Target axis codes, e.g. `RAS`, `LPS`, `PLI`.
    #[serde(default = "default_axcodes")]
    pub axcodes: String,
    /// Volumes to move (default: every volume field).
    #[serde(default)]
    pub fields: Option<Vec<String>>,
}

fn default_axcodes() -> String {
    "RAS".into()
}

impl Component for Reorient {
    const NAME: &'static str = "reorient";
    const DOC: &'static str = "Flips and permutes axes to the given axis codes (default RAS), exactly as nibabel's as_closest_canonical; updates the affine and records the step.";
    fn reads(&self) -> Vec<String> {
        self.fields.clone().unwrap_or_default()
    }
    fn check(&self) -> Vec<Problem> {
        match self.axcodes.parse::<AxCodes>() {
            Ok(_) => vec![],
            Err(e) => vec![Problem::param(
                "axcodes",
                format!("{e}: use three of L/R, P/A, I/S, one per axis, e.g. RAS"),
            )],
        }
    }
}

impl StageConfig for Reorient {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
        let target: AxCodes = self
            .axcodes
            .parse()
            .map_err(|e| StageError::new(format!("{e}")))?;
        Ok(Box::new(ReorientStage {
            target,
            fields: self.fields.clone(),
        }))
    }
}

struct ReorientStage {
    target: AxCodes,
    fields: Option<Vec<String>>,
}

fn reorient_volume<T: Clone + Send + Sync>(
    a: &ArrayD<T>,
    transform: &Orientation,
) -> Result<ArrayD<T>, StageError> {
    let three = a.ndim() == 3;
    let four = if three {
        a.view().insert_axis(Axis(0))
    } else {
        a.view()
    }
    .into_dimensionality::<Ix4>()
    .map_err(|_| StageError::new("reorient needs X×Y×Z or C×X×Y×Z volumes"))?;
    let out = apply_orientation(four, transform).into_dyn();
    Ok(if three {
        out.index_axis_move(Axis(0), 0)
    } else {
        out
    })
}

/// Flips a standard-layout volume field in place; false when the field is of another kind or
/// layout (the caller copies it then). Shared voxels are copied once by `make_mut` first.
fn flip_field_in_place(
    sample: &mut Sample,
    name: &str,
    flip: [bool; 3],
) -> Result<bool, StageError> {
    fn flip_array<T: Clone + Send>(a: &mut ArrayD<T>, flip: [bool; 3]) -> bool {
        let shape = match *a.shape() {
            [x, y, z] => [1, x, y, z],
            [c, x, y, z] => [c, x, y, z],
            _ => return false,
        };
        match a.as_slice_mut() {
            Some(data) => {
                flip_in_place(data, shape, flip);
                true
            }
            None => false,
        }
    }
    Ok(match sample.get(name) {
        Some(Field::F32(_)) => flip_array(sample.f32_mut(name)?, flip),
        Some(Field::U8(_)) => flip_array(sample.u8_mut(name)?, flip),
        _ => false,
    })
}

/// Moves a box with the axes: output axis `o` is input axis `perm[o]`, reversed if `flip[o]`.
fn reorient_box(
    corners: &[f64; 6],
    perm: [usize; 3],
    flip: [bool; 3],
    shape_before: [usize; 3],
) -> [f64; 6] {
    let mut c = [0.0; 6];
    for o in 0..3 {
        let i = perm[o];
        let (lo, hi) = (corners[i], corners[i + 3]);
        let n = shape_before[i] as f64;
        let (lo, hi) = if flip[o] { (n - hi, n - lo) } else { (lo, hi) };
        c[o] = lo;
        c[o + 3] = hi;
    }
    c
}

impl Stage for ReorientStage {
    fn process(&self, mut sample: Sample, _: &StageContext) -> Result<Sample, StageError> {
        let names = volume_fields(&sample, self.fields.as_deref());
        let shape = common_spatial_shape(&sample, &names)?;
        let (record, affine) = plan_reorientation(&sample.meta.affine, shape, self.target)
            .map_err(|e| StageError::new(format!("cannot reorient: {e}")))?;
        if record.transform.is_identity() {
            return Ok(sample);
        }
        let t = &record.transform;
        for name in &names {
            // Flips alone (LPS to RAS, the usual BraTS case) move voxels within the volume.
            if let Some(flip) = t.flips_only()
                && flip_field_in_place(&mut sample, name, flip)?
            {
                continue;
            }
            let moved = match sample.get(name) {
                Some(Field::F32(a)) => Field::f32(reorient_volume(a, t)?),
                Some(Field::U8(a)) => Field::u8(reorient_volume(a, t)?),
                _ => continue,
            };
            sample.insert(name.clone(), moved);
        }
        let mut perm = [0usize; 3];
        let mut flip = [false; 3];
        for (i, row) in t.0.iter().enumerate() {
            perm[row.axis] = i;
            flip[row.axis] = row.flip;
        }
        map_boxes(&mut sample, |c| Some(reorient_box(c, perm, flip, shape)))?;
        sample.meta.affine = affine;
        sample.meta.spacing = [0, 1, 2].map(|o| sample.meta.spacing[perm[o]]);
        sample.meta.history.push(SpatialOp::Reorient {
            perm,
            flip,
            shape_before: shape,
        });
        Ok(sample)
    }
}
