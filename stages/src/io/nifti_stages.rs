//! `nifti_decode` (files named by the source → `image` and `label`) and the `nifti_write` sink.
//!
//! ```yaml
//! stages:
//!   - nifti_decode: {workers: 2}              # modalities stacked channel-first
//! sinks:
//!   - nifti_write: {dir: out/masks, fields: [label], space: original}
//! ```
//!
//! Modalities of a case are stacked after checking that their spatial shapes are equal and
//! their affines agree: every entry within `affine_tolerance` (default 1e-3: a thousandth of
//! a millimetre in the translations, far below any real misregistration, far above float
//! noise from scanner exports). NaN and infinite voxels fail the case by default
//! (`non_finite: error`), so no data is changed silently; `zero` replaces them with 0 (with a
//! warning giving their count), `keep` keeps them. An all-zero label fails the case unless
//! `allow_empty_label: true` (an empty tumour mask is far more often a broken export than a
//! tumour-free scan).

use std::path::PathBuf;

use mtmed3d_pipeline::{
    Affine, BuildContext, Component, Field, FinishContext, Problem, Sample, Sink, SinkConfig,
    SpatialOp, Stage, StageConfig, StageContext, StageError,
};
use ndarray::{Array4, ArrayD, Axis, Ix4};
use schemars::JsonSchema;
use serde::Deserialize;

use super::nifti::{
    NonFinitePolicy, ReadOptions, WriteOptions, open_nifti, read_nifti_with, write_nifti,
};
use super::sources::{ATTR_LABEL_ROLE, ATTR_MODALITIES};
use crate::spatial::crop::{Crop, crop_array};
use crate::spatial::orientation::{AxisOrientation, Orientation, apply_orientation};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NonFinite {
    /// Fail the case, naming the file and the count.
    Error,
    /// Replace with 0, with a warning.
    Zero,
    /// Keep NaN/Inf as stored.
    Keep,
}

/// Reads the NIfTI files a source names.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NiftiDecode {
    /// Modality roles in channel order (default: the order the source gives).
    #[serde(default)]
    pub modalities: Option<Vec<String>>,
    /// Field for the stacked image (C×X×Y×Z f32, scl_slope/scl_inter applied).
    #[serde(default = "default_image")]
    pub image: String,
    /// Field for the label map (X×Y×Z u8), when the case has a label file.
    #[serde(default = "default_label")]
    pub label: String,
    /// What to do with NaN/Inf voxels: `error`, `zero` or `keep`.
    #[serde(default = "default_non_finite")]
    pub non_finite: NonFinite,
    /// Largest difference allowed between the affines of a case's files (per entry).
    #[serde(default = "default_tolerance")]
    pub affine_tolerance: f64,
    /// Accept a label with no nonzero voxel.
    #[serde(default)]
    pub allow_empty_label: bool,
    /// A crop done by the decoding worker itself; the same parameters as the `crop` stage,
    /// e.g. `{mode: foreground, margin: 8}`. When the window depends on the image alone
    /// (`center`, or `foreground` of the image), the window is found in the files' stored
    /// bytes and only it is converted to f32: the full-size f32 volume (143 MB for a BraTS
    /// case) never exists. Otherwise the worker decodes everything and crops right after, so
    /// a full-size volume still never waits in a queue.
    #[serde(default)]
    pub crop: Option<Crop>,
}

fn default_image() -> String {
    "image".into()
}
fn default_label() -> String {
    "label".into()
}
fn default_non_finite() -> NonFinite {
    NonFinite::Error
}
fn default_tolerance() -> f64 {
    1e-3
}

impl Component for NiftiDecode {
    const NAME: &'static str = "nifti_decode";
    const DOC: &'static str = "Reads a case's NIfTI files (NIfTI-1/2, .nii/.nii.gz, any image datatype), checks shapes and affines agree, stacks modalities channel-first.";
    fn writes(&self) -> Vec<String> {
        vec![self.image.clone(), self.label.clone()]
    }
    fn check(&self) -> Vec<Problem> {
        let mut problems = match &self.crop {
            Some(crop) => crop
                .check()
                .into_iter()
                .map(|p| Problem::param("crop", format!("`crop`: {}", p.message)))
                .collect(),
            None => vec![],
        };
        if !(self.affine_tolerance.is_finite() && self.affine_tolerance >= 0.0) {
            problems.push(Problem::param(
                "affine_tolerance",
                "`affine_tolerance` must be a number ≥ 0",
            ));
        }
        problems
    }
}

impl StageConfig for NiftiDecode {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

fn max_difference(a: &Affine, b: &Affine) -> f64 {
    (0..3)
        .flat_map(|r| (0..4).map(move |c| (r, c)))
        .map(|(r, c)| (a[r][c] - b[r][c]).abs())
        .fold(0.0, f64::max)
}

impl Stage for NiftiDecode {
    fn process(&self, sample: Sample, ctx: &StageContext) -> Result<Sample, StageError> {
        match &self.crop {
            None => self.decode_case(sample, None),
            // The window depends on the image alone: decode only the window of every file.
            Some(crop) if crop.crops_while_decoding(&self.image) => {
                self.decode_case(sample, Some(crop))
            }
            Some(crop) => crop.process(self.decode_case(sample, None)?, ctx),
        }
    }
}

impl NiftiDecode {
    /// Decodes a case; with `crop` (one that [`Crop::crops_while_decoding`] the image), the
    /// image is decoded only inside the crop's window and the rest of the sample cropped to it.
    fn decode_case(&self, mut sample: Sample, crop: Option<&Crop>) -> Result<Sample, StageError> {
        let roles: Vec<String> = match &self.modalities {
            Some(m) => m.clone(),
            None => sample
                .meta
                .attrs
                .get(ATTR_MODALITIES)
                .and_then(|m| serde_json::from_value(m.clone()).ok())
                .ok_or_else(|| StageError::new("the source names no modalities; list them in `nifti_decode: {modalities: [...]}`"))?,
        };
        let options = ReadOptions {
            non_finite: match self.non_finite {
                NonFinite::Error => NonFinitePolicy::Error,
                NonFinite::Zero => NonFinitePolicy::ReplaceWithZero,
                NonFinite::Keep => NonFinitePolicy::Keep,
            },
            ..ReadOptions::default()
        };
        // Images decode straight to scaled f32 in one pass; labels keep their stored type so
        // they can be checked to be whole numbers.
        let image_options = ReadOptions {
            to_f32: true,
            ..options
        };
        // Every file is read and checked against the first before any is decoded.
        let mut files = Vec::with_capacity(roles.len());
        let mut reference: Option<(PathBuf, [usize; 3], Affine, [f64; 3])> = None;
        for role in &roles {
            let path = sample.meta.sources.get(role).cloned().ok_or_else(|| {
                StageError::new(format!("case `{}` has no `{role}` file", sample.id))
            })?;
            let file =
                open_nifti(&path, &image_options).map_err(|e| StageError::new(e.to_string()))?;
            let [_, x, y, z] = file.shape();
            let spatial = [x, y, z];
            let affine = file.affine();
            match &reference {
                None => reference = Some((path.clone(), spatial, affine, file.spacing())),
                Some((first, s, a, _)) => {
                    if *s != spatial {
                        return Err(StageError::file(
                            &path,
                            format!("shape {spatial:?} differs from {} ({s:?})", first.display()),
                        ));
                    }
                    let d = max_difference(a, &affine);
                    if d > self.affine_tolerance {
                        return Err(StageError::file(
                            &path,
                            format!(
                                "affine differs from {} by up to {d:.3e} (tolerance {:.1e}); the modalities are not in one space",
                                first.display(),
                                self.affine_tolerance
                            ),
                        ));
                    }
                }
            }
            files.push((path, file));
        }
        let (first, spatial, affine, spacing) =
            reference.ok_or_else(|| StageError::new("no modality to read"))?;
        let channels: usize = files.iter().map(|(_, f)| f.shape()[0]).sum();
        let mut voxels = Vec::with_capacity(files.len());
        for (path, file) in files {
            let v = file
                .into_voxels()
                .map_err(|e| StageError::new(e.to_string()))?;
            voxels.push((path, v));
        }
        // With a crop, the window comes from the nonzero voxels of all modalities, found in
        // their stored bytes; only the window is ever converted to f32.
        let window = match crop {
            None => None,
            Some(crop) => {
                let mut foreground = None;
                for (_, v) in &voxels {
                    let scan = v.scan_f32().map_err(|e| StageError::new(e.to_string()))?;
                    foreground = crate::fields::union_of_bounds(foreground, scan.nonzero);
                }
                Some(crop.window(&sample.id, spatial, foreground))
            }
        };
        let (start, size) = window.unwrap_or(([0; 3], spatial));
        // Every modality decodes straight into its channels of one stacked buffer: no
        // per-modality array to copy from. Zeroed memory comes fresh from the system, so it
        // costs no pass of its own.
        let n = size.iter().product::<usize>();
        let mut stacked: Vec<f32> = crate::memory::zeroed(channels * n);
        let mut at = 0;
        for (path, v) in &voxels {
            let len = v.shape()[0] * n;
            let count = v
                .read_f32_window_into(start, size, &mut stacked[at..at + len])
                .map_err(|e| StageError::new(e.to_string()))?;
            if count > 0 && self.non_finite == NonFinite::Zero {
                tracing::warn!(case = %sample.id, file = %path.display(), count, "NaN/Inf voxels set to 0");
            }
            at += len;
        }
        // The inflated files go back to this thread's spare buffers before the label is read.
        drop(voxels);
        let image = Array4::from_shape_vec((channels, size[0], size[1], size[2]), stacked)
            .expect("the buffer holds exactly the decoded channels");
        sample.insert(self.image.clone(), Field::f32(image.into_dyn()));

        let label_role = sample
            .meta
            .attrs
            .get(ATTR_LABEL_ROLE)
            .and_then(|r| r.as_str())
            .map(str::to_string);
        if let Some(path) = label_role.and_then(|r| sample.meta.sources.get(&r).cloned()) {
            let img =
                read_nifti_with(&path, &options).map_err(|e| StageError::new(e.to_string()))?;
            let shape = img.shape();
            if [shape[1], shape[2], shape[3]] != spatial || shape[0] != 1 {
                return Err(StageError::file(
                    &path,
                    format!(
                        "label shape {:?} does not match the image {spatial:?} ({})",
                        &shape[1..],
                        first.display()
                    ),
                ));
            }
            let d = max_difference(&affine, &img.affine());
            if d > self.affine_tolerance {
                return Err(StageError::file(
                    &path,
                    format!(
                        "label affine differs from {} by up to {d:.3e}",
                        first.display()
                    ),
                ));
            }
            let label = img
                .into_u8_labels()
                .map_err(|e| StageError::new(e.to_string()))?
                .index_axis_move(Axis(0), 0);
            if !self.allow_empty_label && label.iter().all(|v| *v == 0) {
                return Err(StageError::file(
                    &path,
                    "the label is empty (no nonzero voxel); set `allow_empty_label: true` if that is expected",
                ));
            }
            sample.insert(self.label.clone(), Field::u8(label.into_dyn()));
        }
        sample.meta.affine = affine;
        sample.meta.original_affine = affine;
        sample.meta.original_shape = Some(spatial);
        sample.meta.spacing = spacing;
        sample.meta.history.clear();
        if let (Some(crop), Some((start, size))) = (crop, window) {
            crate::spatial::crop::crop_sample_after(
                &mut sample,
                crop.fields.as_deref(),
                &self.image,
                start,
                size,
                spatial,
            )?;
        }
        Ok(sample)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WriteSpace {
    /// The sample's current grid and affine.
    Current,
    /// Mapped back through every recorded spatial step to the grid the image was read in.
    Original,
}

/// Writes volume fields as NIfTI files.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NiftiWrite {
    /// Output folder; files are `<dir>/<case>_<field>.nii.gz` (`<case>.nii.gz` for one field
    /// with `plain_names: true`).
    pub dir: PathBuf,
    /// Volume fields to write.
    #[serde(default = "default_write_fields")]
    pub fields: Vec<String>,
    /// `current` or `original` (undo reorientation, crops, flips, rotations by 90°).
    #[serde(default = "default_space")]
    pub space: WriteSpace,
    /// Name files `<case>.nii.gz` (only with one field), as `mtmed3d evaluate` expects.
    #[serde(default)]
    pub plain_names: bool,
    /// gzip level (0–9).
    #[serde(default = "default_level")]
    pub compression: u32,
}

fn default_write_fields() -> Vec<String> {
    vec!["label".into()]
}
fn default_space() -> WriteSpace {
    WriteSpace::Current
}
fn default_level() -> u32 {
    6
}

impl Component for NiftiWrite {
    const NAME: &'static str = "nifti_write";
    const DOC: &'static str = "Writes volume fields as .nii.gz with the right affine, in the current space or mapped back to the original image space.";
    fn reads(&self) -> Vec<String> {
        self.fields.clone()
    }
    fn outputs(&self) -> Vec<PathBuf> {
        // may share its folder with `boxes_json` (the layout `mtmed3d evaluate` reads)
        vec![self.dir.join("*.nii.gz")]
    }
    fn check(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if self.plain_names && self.fields.len() != 1 {
            p.push(Problem::param(
                "plain_names",
                "`plain_names` needs exactly one field",
            ));
        }
        if self.compression > 9 {
            p.push(Problem::param(
                "compression",
                "`compression` is a gzip level, 0–9",
            ));
        }
        p
    }
}

impl SinkConfig for NiftiWrite {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Sink>, StageError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| StageError::file(&self.dir, e))?;
        Ok(Box::new(self.clone()))
    }
}

/// Maps a volume (C×X×Y×Z) back through the recorded spatial steps, newest first.
pub fn to_original_space<T: Clone + Default + Send + Sync>(
    volume: Array4<T>,
    history: &[SpatialOp],
) -> Result<Array4<T>, StageError> {
    let mut v = volume;
    for op in history.iter().rev() {
        v = match op {
            SpatialOp::Crop {
                start,
                shape_before,
                ..
            } => {
                let back = start.map(|s| -s);
                crop_array(&v.into_dyn(), back, *shape_before)
                    .into_dimensionality::<Ix4>()
                    .map_err(|e| StageError::new(e.to_string()))?
            }
            SpatialOp::Reorient { perm, flip, .. } => {
                // Forward: output axis i = input axis perm[i], flipped when flip[i]. As a
                // nibabel transform, input axis perm[i] goes to output axis i.
                let mut rows = [AxisOrientation {
                    axis: 0,
                    flip: false,
                }; 3];
                for i in 0..3 {
                    rows[perm[i]] = AxisOrientation {
                        axis: i,
                        flip: flip[i],
                    };
                }
                apply_orientation(v.view(), &Orientation(rows).inverse())
            }
            SpatialOp::Flip { axes } => {
                let mut view = v.view();
                for a in axes {
                    view.invert_axis(Axis(a + 1));
                }
                view.as_standard_layout().into_owned()
            }
            SpatialOp::Rot90 { k, plane } => {
                // Undo k quarter turns with 4 − k more in the same plane.
                let mut out = v;
                for _ in 0..(4 - u32::from(*k % 4)) % 4 {
                    out = rot90_once(out, *plane);
                }
                out
            }
            SpatialOp::Resample { description, .. } => {
                return Err(StageError::new(format!(
                    "cannot map back to the original space exactly through `{description}`; write with `space: current`"
                )));
            }
        };
    }
    Ok(v)
}

/// numpy's `rot90(m, 1, axes=plane)` on the spatial axes of a C×X×Y×Z array.
fn rot90_once<T: Clone>(v: Array4<T>, plane: [usize; 2]) -> Array4<T> {
    let (a, b) = (plane[0] + 1, plane[1] + 1);
    let mut view = v.view();
    view.invert_axis(Axis(b));
    let mut perm = [0, 1, 2, 3];
    perm.swap(a, b);
    view.permuted_axes(perm).as_standard_layout().into_owned()
}

fn as_4d<T: Clone>(a: &ArrayD<T>) -> Result<Array4<T>, StageError> {
    let a = if a.ndim() == 3 {
        a.clone().insert_axis(Axis(0))
    } else {
        a.clone()
    };
    a.into_dimensionality::<Ix4>()
        .map_err(|_| StageError::new("only 3D and 4D volumes can be written as NIfTI"))
}

impl Sink for NiftiWrite {
    fn write(&self, sample: Sample, _: &StageContext) -> Result<(), StageError> {
        let affine = match self.space {
            WriteSpace::Current => sample.meta.affine,
            WriteSpace::Original => sample.meta.original_affine,
        };
        for name in &self.fields {
            let path = if self.plain_names {
                self.dir.join(format!("{}.nii.gz", sample.id))
            } else {
                self.dir.join(format!("{}_{name}.nii.gz", sample.id))
            };
            let options = WriteOptions {
                compression_level: self.compression,
                descrip: format!("mtmed3d {name}"),
                ..WriteOptions::default()
            };
            let result = match sample.get(name) {
                Some(Field::F32(a)) => {
                    let mut v = as_4d(a)?;
                    if self.space == WriteSpace::Original {
                        v = to_original_space(v, &sample.meta.history)?;
                    }
                    write_nifti(&path, v.view(), &affine, &options)
                }
                Some(Field::U8(a)) => {
                    let mut v = as_4d(a)?;
                    if self.space == WriteSpace::Original {
                        v = to_original_space(v, &sample.meta.history)?;
                    }
                    write_nifti(&path, v.view(), &affine, &options)
                }
                Some(other) => {
                    return Err(StageError::new(format!(
                        "field `{name}` is a {}, not a volume",
                        other.kind()
                    )));
                }
                None => return Err(StageError::new(format!("field `{name}` is missing"))),
            };
            result.map_err(|e| StageError::new(e.to_string()))?;
        }
        Ok(())
    }

    fn finish(&self, ctx: &FinishContext) -> Result<(), StageError> {
        // Each file is complete when it appears (written under a temporary name, then
        // renamed); an interrupted run simply has fewer of them.
        if !ctx.complete {
            tracing::warn!(dir = %self.dir.display(), "run interrupted: not every case was written");
        }
        Ok(())
    }
}
