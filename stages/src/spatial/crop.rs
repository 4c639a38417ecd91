//! Cropping: a fixed centre window, the foreground's bounding box, random training crops,
//! and sliding-window patches for inference.
//!
//! ```yaml
//! - crop: {mode: foreground, margin: 8}                       # tight box around the brain
//! - crop: {mode: foreground, size: [128, 128, 128], select: label}   # fixed size on the tumour
//! - crop: {mode: center, size: [96, 96, 96]}                  # the reference's fixed crop
//! - rand_crop: {size: [96, 96, 96], foreground_prob: 0.7, select: label}
//! - patches: {size: [96, 96, 96], overlap: 0.25}
//! ```
//!
//! Every crop moves all volume fields and box fields together, pads with zeros where the
//! window leaves the volume, updates the affine and records the crop so outputs can be put
//! back in the original space. Boxes are shifted and clipped to the window; a box left with no
//! extent is dropped (as MONAI's `spatial_crop_boxes`).

use mtmed3d_pipeline::{
    BuildContext, Component, Field, Problem, Sample, SpatialOp, Stage, StageConfig, StageContext,
    StageError,
};
use std::sync::Arc;

use ndarray::{ArrayD, IxDyn, SliceInfoElem};
use rand::RngExt;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::fields::{bounds_where, common_spatial_shape, map_boxes, shifted_affine, volume_fields};

/// Copies the window starting at `start` (negative or past the end = zero padding) with
/// spatial `size` out of a volume whose last three axes are spatial.
pub fn crop_array<T: Clone + Default>(
    volume: &ArrayD<T>,
    start: [i64; 3],
    size: [usize; 3],
) -> ArrayD<T> {
    let n = volume.ndim();
    let lead = n - 3;
    let mut shape = volume.shape().to_vec();
    shape[lead..].copy_from_slice(&size);
    if let Some(out) = crop_rows(volume, start, size, &shape) {
        return out;
    }
    let mut out = ArrayD::<T>::default(IxDyn(&shape));
    let mut src: Vec<SliceInfoElem> = vec![SliceInfoElem::from(..); lead];
    let mut dst = src.clone();
    for axis in 0..3 {
        let len = volume.shape()[lead + axis] as i64;
        let lo = start[axis].max(0);
        let hi = (start[axis] + size[axis] as i64).min(len);
        if lo >= hi {
            return out; // no overlap: all padding
        }
        src.push(SliceInfoElem::from(lo as isize..hi as isize));
        dst.push(SliceInfoElem::from(
            (lo - start[axis]) as isize..(hi - start[axis]) as isize,
        ));
    }
    out.slice_mut(dst.as_slice())
        .assign(&volume.slice(src.as_slice()));
    out
}

/// The part of a window (`start`, `size`) inside a volume of spatial shape `spatial`, as
/// input coordinates `[lo, hi)` per axis; `None` when they do not overlap.
pub(crate) fn overlap(
    start: [i64; 3],
    size: [usize; 3],
    spatial: [usize; 3],
) -> Option<([usize; 3], [usize; 3])> {
    let lo = [0, 1, 2].map(|a| start[a].clamp(0, spatial[a] as i64) as usize);
    let hi = [0, 1, 2].map(|a| (start[a] + size[a] as i64).clamp(0, spatial[a] as i64) as usize);
    (0..3).all(|a| lo[a] < hi[a]).then_some((lo, hi))
}

/// Crops a volume in its own buffer when nothing else shares it, else copies.
fn crop_shared_or_owned<T: Copy + Default>(
    volume: Arc<ArrayD<T>>,
    start: [i64; 3],
    size: [usize; 3],
) -> ArrayD<T> {
    match Arc::try_unwrap(volume) {
        Ok(owned) => crop_in_place(owned, start, size),
        Err(shared) => crop_array(&shared, start, size),
    }
}

/// [`crop_array`] in the volume's own buffer: the window's rows are moved to the front (and
/// padding zeroed) instead of allocating, and faulting in, a second volume. Windows that
/// pad are done this way too when every output row ends before the first voxel still to be
/// read, which holds whenever the window is smaller than the volume along x and y (the usual
/// crop to the brain). Otherwise, or for a non-standard layout, it copies as `crop_array`.
pub fn crop_in_place<T: Copy + Default>(
    volume: ArrayD<T>,
    start: [i64; 3],
    size: [usize; 3],
) -> ArrayD<T> {
    let n = volume.ndim();
    if !volume.is_standard_layout() || size.contains(&0) {
        return crop_array(&volume, start, size);
    }
    let spatial = [0, 1, 2].map(|a| volume.shape()[n - 3 + a]);
    let Some((lo, hi)) = overlap(start, size, spatial) else {
        return crop_array(&volume, start, size); // all padding
    };
    let leading: usize = volume.shape()[..n - 3].iter().product();
    let [ny, nz] = [spatial[1], spatial[2]];
    let plane = spatial[0] * ny * nz;
    let local = |i: usize, axis: usize| (i as i64 - start[axis]) as usize;
    let run = hi[2] - lo[2];
    let pad_before = local(lo[2], 2);
    let (x_range, y_range) = (lo[0]..hi[0], lo[1]..hi[1]);
    let original = volume.shape().to_vec();
    let mut shape = original.clone();
    shape[n - 3..].copy_from_slice(&size);
    let (mut data, offset) = volume.into_raw_vec_and_offset();
    // Where the first element sits in the buffer (not 0 for an array sliced before).
    let base = offset.unwrap_or(0);
    let rows = leading * size[0] * size[1];
    // Output row r (channel c, window x and y) reads input row (c, x, y) if inside the volume.
    let source = |r: usize| -> Option<usize> {
        let (c, rest) = (r / (size[0] * size[1]), r % (size[0] * size[1]));
        let inside = |offset: usize, axis: usize, range: &std::ops::Range<usize>| {
            usize::try_from(offset as i64 + start[axis])
                .ok()
                .filter(|i| range.contains(i))
        };
        let x = inside(rest / size[1], 0, &x_range)?;
        let y = inside(rest % size[1], 1, &y_range)?;
        Some(base + c * plane + (x * ny + y) * nz + lo[2])
    };
    // Rows are written in increasing order, so in place is safe when each output row ends
    // at or before the first source voxel of itself and of every later row (sources rise
    // with the row index): then no write lands on a voxel still to be read.
    let mut next_source = usize::MAX;
    let mut safe = rows * size[2] <= data.len();
    for r in (0..rows).rev() {
        if let Some(src) = source(r) {
            next_source = src;
        }
        if (r + 1) * size[2] > next_source {
            safe = false;
            break;
        }
    }
    if !safe {
        // Untouched so far: rebuild the volume and copy instead.
        data.drain(..base);
        data.truncate(original.iter().product());
        let volume =
            ArrayD::from_shape_vec(IxDyn(&original), data).expect("the buffer was this volume");
        return crop_array(&volume, start, size);
    }
    for r in 0..rows {
        let dst = r * size[2];
        match source(r) {
            Some(src) => {
                data.copy_within(src..src + run, dst + pad_before);
                data[dst..dst + pad_before].fill(T::default());
                data[dst + pad_before + run..dst + size[2]].fill(T::default());
            }
            None => data[dst..dst + size[2]].fill(T::default()),
        }
    }
    data.truncate(rows * size[2]);
    // Hands the tail back to the allocator (for large buffers a remap, not a copy).
    data.shrink_to_fit();
    ArrayD::from_shape_vec(IxDyn(&shape), data).expect("the rows fill the window exactly")
}

/// A window of a standard-layout volume, inside it or reaching outside: a zeroed output
/// (fresh memory, no pass to fill it) into which the overlapping runs along the last axis
/// are copied; `None` for other layouts.
fn crop_rows<T: Clone + Default>(
    volume: &ArrayD<T>,
    start: [i64; 3],
    size: [usize; 3],
    out_shape: &[usize],
) -> Option<ArrayD<T>> {
    let data = volume.as_slice()?;
    let n = volume.ndim();
    let spatial = [0, 1, 2].map(|a| volume.shape()[n - 3 + a]);
    let leading: usize = volume.shape()[..n - 3].iter().product();
    let mut out = crate::memory::zeroed::<T>(leading * size.iter().product::<usize>());
    if let Some((lo, hi)) = overlap(start, size, spatial) {
        let [ny, nz] = [spatial[1], spatial[2]];
        let plane = spatial[0] * ny * nz;
        let out_plane = size.iter().product::<usize>();
        // Output coordinate of input coordinate `i` along `axis`: never negative, as the
        // overlap starts at or after the window.
        let local = |i: usize, axis: usize| (i as i64 - start[axis]) as usize;
        let run = hi[2] - lo[2];
        for c in 0..leading {
            for x in lo[0]..hi[0] {
                for y in lo[1]..hi[1] {
                    let src = c * plane + (x * ny + y) * nz + lo[2];
                    let dst = c * out_plane
                        + (local(x, 0) * size[1] + local(y, 1)) * size[2]
                        + local(lo[2], 2);
                    out[dst..dst + run].clone_from_slice(&data[src..src + run]);
                }
            }
        }
    }
    ArrayD::from_shape_vec(IxDyn(out_shape), out).ok()
}

/// Shifts a box into a window and clips it to it; `None` when less than a voxel is left.
pub fn crop_box(corners: &[f64; 6], start: [i64; 3], size: [usize; 3]) -> Option<[f64; 6]> {
    let mut c = *corners;
    for axis in 0..3 {
        let s = start[axis] as f64;
        c[axis] = (c[axis] - s).clamp(0.0, size[axis] as f64);
        c[axis + 3] = (c[axis + 3] - s).clamp(0.0, size[axis] as f64);
    }
    (0..3).all(|a| c[a + 3] - c[a] >= 1.0).then_some(c)
}

/// Crops every selected volume and every box field of a sample to one window.
pub fn crop_sample(
    sample: &mut Sample,
    listed: Option<&[String]>,
    start: [i64; 3],
    size: [usize; 3],
) -> Result<(), StageError> {
    let names = volume_fields(sample, listed);
    let shape = common_spatial_shape(sample, &names)?;
    crop_fields_and_record(sample, &names, start, size, shape)
}

/// [`crop_sample`] for a sample whose volume `cropped` already is the window of a volume of
/// spatial `shape` (a reader cropped it while decoding): the other volumes, the boxes, the
/// affine and the history follow as if it had been cropped here.
pub fn crop_sample_after(
    sample: &mut Sample,
    listed: Option<&[String]>,
    cropped: &str,
    start: [i64; 3],
    size: [usize; 3],
    shape: [usize; 3],
) -> Result<(), StageError> {
    let names: Vec<String> = volume_fields(sample, listed)
        .into_iter()
        .filter(|n| n != cropped)
        .collect();
    if !names.is_empty() {
        let others = common_spatial_shape(sample, &names)?;
        if others != shape {
            return Err(StageError::new(format!(
                "fields {names:?} have the spatial shape {others:?}, `{cropped}` had {shape:?}"
            )));
        }
    }
    crop_fields_and_record(sample, &names, start, size, shape)
}

/// Crops the volumes `names` (of spatial `shape`) and every box field to the window, and
/// records the crop in the affine and the history.
fn crop_fields_and_record(
    sample: &mut Sample,
    names: &[String],
    start: [i64; 3],
    size: [usize; 3],
    shape: [usize; 3],
) -> Result<(), StageError> {
    for name in names {
        let cropped = match sample.remove(name) {
            Some(Field::F32(a)) => Field::f32(crop_shared_or_owned(a, start, size)),
            Some(Field::U8(a)) => Field::u8(crop_shared_or_owned(a, start, size)),
            Some(other) => other,
            None => continue,
        };
        sample.insert(name.clone(), cropped);
    }
    map_boxes(sample, |c| crop_box(c, start, size))?;
    sample.meta.affine = shifted_affine(&sample.meta.affine, start);
    sample.meta.history.push(SpatialOp::Crop {
        start,
        shape_before: shape,
        shape_after: size,
    });
    Ok(())
}

/// A spatial bounding box `[lo, hi)` in voxels.
pub type Bounds = ([usize; 3], [usize; 3]);

/// Bounding box of the nonzero voxels of a volume (any channel), or `None`.
pub fn nonzero_bounds(sample: &Sample, field: &str) -> Result<Option<Bounds>, StageError> {
    match sample.get(field) {
        Some(Field::F32(a)) if a.ndim() >= 3 => Ok(bounds_where(a.view(), |v| *v != 0.0)),
        Some(Field::U8(a)) if a.ndim() >= 3 => Ok(bounds_where(a.view(), |v| *v != 0)),
        Some(other) => Err(StageError::new(format!(
            "field `{field}` is a {}, expected a volume",
            other.kind()
        ))),
        None => Err(StageError::new(format!("field `{field}` is missing"))),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CropMode {
    /// A window of `size` at the volume's centre (start = shape//2 − size//2).
    Center,
    /// The bounding box of the nonzero voxels of `select`, plus `margin`; or, with `size`, a
    /// window of that size centred on it.
    Foreground,
}

/// Crops all volumes (and boxes) of a sample to one window.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Crop {
    /// `center` or `foreground`.
    pub mode: CropMode,
    /// Output spatial size; pads with zeros where the window leaves the volume. Required for
    /// `center`.
    #[serde(default)]
    pub size: Option<[usize; 3]>,
    /// `foreground`: voxels added on every side of the bounding box.
    #[serde(default)]
    pub margin: usize,
    /// `foreground`: the field whose nonzero voxels define the foreground.
    #[serde(default = "default_image")]
    pub select: String,
    /// Volumes to crop (default: every volume field).
    #[serde(default)]
    pub fields: Option<Vec<String>>,
}

fn default_image() -> String {
    "image".into()
}

fn check_size(size: &Option<[usize; 3]>) -> Vec<Problem> {
    match size {
        Some(s) if s.contains(&0) => vec![Problem::param(
            "size",
            "every entry of `size` must be at least 1",
        )],
        _ => vec![],
    }
}

impl Component for Crop {
    const NAME: &'static str = "crop";
    const DOC: &'static str = "Crops volumes and boxes to a centre window or to the foreground's bounding box (+ margin), padding as needed.";
    fn reads(&self) -> Vec<String> {
        let mut r = self.fields.clone().unwrap_or_default();
        if self.mode == CropMode::Foreground {
            r.push(self.select.clone());
        }
        r
    }
    fn check(&self) -> Vec<Problem> {
        let mut p = check_size(&self.size);
        if self.mode == CropMode::Center && self.size.is_none() {
            p.push(Problem::param(
                "mode",
                "`mode: center` needs `size: [x, y, z]`",
            ));
        }
        p
    }
}

impl StageConfig for Crop {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

impl Crop {
    /// The window (`start`, spatial `size`) for a volume of spatial `shape` whose `select`
    /// field has its nonzero voxels in `foreground` (used only in `foreground` mode).
    pub fn window(
        &self,
        case: &str,
        shape: [usize; 3],
        foreground: Option<Bounds>,
    ) -> ([i64; 3], [usize; 3]) {
        let at_centre = || {
            let size = self.size.unwrap_or(shape);
            (centred(shape.map(|s| s as i64 / 2), size), size)
        };
        match self.mode {
            CropMode::Center => at_centre(),
            CropMode::Foreground => match foreground {
                None => {
                    // Nothing to centre on: keep the centre (and say so) rather than fail.
                    tracing::warn!(case = %case, field = %self.select, "no foreground; cropping at the centre");
                    at_centre()
                }
                Some((lo, hi)) => match self.size {
                    Some(size) => {
                        let centre = [0, 1, 2].map(|a| (lo[a] + hi[a]) as i64 / 2);
                        (centred(centre, size), size)
                    }
                    None => {
                        let m = self.margin as i64;
                        let start = lo.map(|v| v as i64 - m);
                        let size = [0, 1, 2].map(|a| (hi[a] - lo[a]) + 2 * self.margin);
                        (start, size)
                    }
                },
            },
        }
    }

    /// Whether the window depends on no volume but `field` (or none), and `field` is cropped:
    /// then a reader can crop `field` as it decodes it.
    pub fn crops_while_decoding(&self, field: &str) -> bool {
        let crops_field = self
            .fields
            .as_ref()
            .is_none_or(|f| f.iter().any(|n| n == field));
        crops_field && (self.mode == CropMode::Center || self.select == field)
    }
}

impl Stage for Crop {
    fn process(&self, mut sample: Sample, _: &StageContext) -> Result<Sample, StageError> {
        let names = volume_fields(&sample, self.fields.as_deref());
        let shape = common_spatial_shape(&sample, &names)?;
        let foreground = match self.mode {
            CropMode::Center => None,
            CropMode::Foreground => nonzero_bounds(&sample, &self.select)?,
        };
        let (start, size) = self.window(&sample.id, shape, foreground);
        crop_sample(&mut sample, self.fields.as_deref(), start, size)?;
        Ok(sample)
    }
}

fn centred(centre: [i64; 3], size: [usize; 3]) -> [i64; 3] {
    [0, 1, 2].map(|a| centre[a] - size[a] as i64 / 2)
}

/// The window start that centres `size` on `centre` but stays inside `shape` where it fits.
fn centred_inside(centre: [i64; 3], size: [usize; 3], shape: [usize; 3]) -> [i64; 3] {
    [0, 1, 2].map(|a| {
        let start = centre[a] - size[a] as i64 / 2;
        let max_start = shape[a] as i64 - size[a] as i64;
        if max_start >= 0 {
            start.clamp(0, max_start)
        } else {
            max_start / 2
        }
    })
}

/// Random training crops, centred on a foreground voxel with probability `foreground_prob`
/// (MONAI's `RandCropByPosNegLabel` idea), otherwise anywhere.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RandCrop {
    /// Crop size (X, Y, Z).
    pub size: [usize; 3],
    /// Probability that the crop is centred on a foreground voxel of `select`.
    #[serde(default = "default_fg_prob")]
    pub foreground_prob: f64,
    /// The field whose nonzero voxels are foreground.
    #[serde(default = "default_label")]
    pub select: String,
    /// Crops per case; more than one emits pieces `<case>#c<i>`.
    #[serde(default = "one")]
    pub num_samples: usize,
    /// Volumes to crop (default: every volume field).
    #[serde(default)]
    pub fields: Option<Vec<String>>,
}

fn default_fg_prob() -> f64 {
    0.5
}
fn default_label() -> String {
    "label".into()
}
fn one() -> usize {
    1
}

impl Component for RandCrop {
    const NAME: &'static str = "rand_crop";
    const DOC: &'static str = "Random crops of a fixed size, centred on foreground with a given probability; several per case if asked.";

    fn random(&self) -> bool {
        true
    }
    fn reads(&self) -> Vec<String> {
        let mut r = self.fields.clone().unwrap_or_default();
        r.push(self.select.clone());
        r
    }
    fn check(&self) -> Vec<Problem> {
        let mut p = check_size(&Some(self.size));
        if !(0.0..=1.0).contains(&self.foreground_prob) {
            p.push(Problem::param(
                "foreground_prob",
                "`foreground_prob` must be within [0, 1]",
            ));
        }
        if self.num_samples == 0 {
            p.push(Problem::param(
                "num_samples",
                "`num_samples` must be at least 1",
            ));
        }
        p
    }
}

impl StageConfig for RandCrop {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

/// The `k`-th nonzero voxel's spatial index (any channel counts).
fn nth_foreground(
    sample: &Sample,
    field: &str,
    k: usize,
) -> Result<Option<[usize; 3]>, StageError> {
    fn nth<T: Copy + PartialEq + Default>(a: &ArrayD<T>, k: usize) -> Option<[usize; 3]> {
        let n = a.ndim();
        let shape = a.shape();
        let (ny, nz) = (shape[n - 2], shape[n - 1]);
        let nx = shape[n - 3];
        let standard = a.as_standard_layout();
        let flat = standard
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != T::default())
            .nth(k)?
            .0;
        Some([(flat / (ny * nz)) % nx, (flat / nz) % ny, flat % nz])
    }
    match sample.get(field) {
        Some(Field::U8(a)) if a.ndim() >= 3 => Ok(nth(a, k)),
        Some(Field::F32(a)) if a.ndim() >= 3 => Ok(nth(a, k)),
        _ => Err(StageError::new(format!("field `{field}` is not a volume"))),
    }
}

fn count_foreground(sample: &Sample, field: &str) -> Result<usize, StageError> {
    match sample.get(field) {
        Some(Field::U8(a)) => Ok(a.iter().filter(|v| **v != 0).count()),
        Some(Field::F32(a)) => Ok(a.iter().filter(|v| **v != 0.0).count()),
        _ => Err(StageError::new(format!(
            "field `{field}` is missing or not a volume"
        ))),
    }
}

impl Stage for RandCrop {
    fn process(&self, sample: Sample, ctx: &StageContext) -> Result<Sample, StageError> {
        let mut out = self.expand(sample, ctx)?;
        Ok(out.remove(0))
    }

    fn expand(&self, sample: Sample, ctx: &StageContext) -> Result<Vec<Sample>, StageError> {
        let names = volume_fields(&sample, self.fields.as_deref());
        let shape = common_spatial_shape(&sample, &names)?;
        let mut rng = ctx.rng(&sample);
        let foreground = count_foreground(&sample, &self.select)?;
        let mut pieces = Vec::with_capacity(self.num_samples);
        for i in 0..self.num_samples {
            let centre = if foreground > 0 && rng.random::<f64>() < self.foreground_prob {
                let k = rng.random_range(0..foreground);
                nth_foreground(&sample, &self.select, k)?.unwrap_or(shape.map(|s| s / 2))
            } else {
                [0, 1, 2].map(|a| rng.random_range(0..shape[a].max(1)))
            };
            let start = centred_inside(centre.map(|c| c as i64), self.size, shape);
            let mut piece = if self.num_samples == 1 {
                sample.clone()
            } else {
                sample.derive(format!("c{i}"))
            };
            crop_sample(&mut piece, self.fields.as_deref(), start, self.size)?;
            pieces.push(piece);
        }
        Ok(pieces)
    }
}

/// Sliding-window tiles covering the whole volume, for inference.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Patches {
    /// Tile size (X, Y, Z).
    pub size: [usize; 3],
    /// Fraction of a tile shared with its neighbour (0 ≤ overlap < 1).
    #[serde(default = "default_overlap")]
    pub overlap: f64,
    /// Volumes to tile (default: every volume field).
    #[serde(default)]
    pub fields: Option<Vec<String>>,
}

fn default_overlap() -> f64 {
    0.25
}

/// Tile starts along one axis: every `interval`, the last one flush with the end (MONAI's
/// dense patch layout), or one padded tile when the volume is smaller than the tile.
pub fn tile_starts(len: usize, size: usize, overlap: f64) -> Vec<i64> {
    if len <= size {
        return vec![-(((size - len) / 2) as i64)];
    }
    let interval = ((size as f64 * (1.0 - overlap)).round() as usize).max(1);
    let mut starts: Vec<i64> = (0..)
        .map(|i| (i * interval) as i64)
        .take_while(|s| *s + size as i64 <= len as i64)
        .collect();
    let last = (len - size) as i64;
    if starts.last() != Some(&last) {
        starts.push(last);
    }
    starts
}

impl Component for Patches {
    const NAME: &'static str = "patches";
    const DOC: &'static str = "Splits each case into overlapping tiles covering the whole volume (sliding-window inference); pieces are `<case>#p<i>`.";
    fn reads(&self) -> Vec<String> {
        self.fields.clone().unwrap_or_default()
    }
    fn check(&self) -> Vec<Problem> {
        let mut p = check_size(&Some(self.size));
        if !(0.0..1.0).contains(&self.overlap) {
            p.push(Problem::param("overlap", "`overlap` must be within [0, 1)"));
        }
        p
    }
}

impl StageConfig for Patches {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

impl Stage for Patches {
    fn process(&self, sample: Sample, ctx: &StageContext) -> Result<Sample, StageError> {
        let mut out = self.expand(sample, ctx)?;
        Ok(out.remove(0))
    }

    fn expand(&self, sample: Sample, _: &StageContext) -> Result<Vec<Sample>, StageError> {
        let names = volume_fields(&sample, self.fields.as_deref());
        let shape = common_spatial_shape(&sample, &names)?;
        let axes: Vec<Vec<i64>> = (0..3)
            .map(|a| tile_starts(shape[a], self.size[a], self.overlap))
            .collect();
        let count = axes.iter().map(Vec::len).product::<usize>();
        let mut tiles = Vec::with_capacity(count);
        for &x in &axes[0] {
            for &y in &axes[1] {
                for &z in &axes[2] {
                    let index = tiles.len();
                    let mut tile = sample.derive(format!("p{index}"));
                    crop_sample(&mut tile, self.fields.as_deref(), [x, y, z], self.size)?;
                    tile.meta.attrs.insert(
                        "patch".into(),
                        serde_json::json!({"index": index, "count": count, "start": [x, y, z], "volume_shape": shape}),
                    );
                    tiles.push(tile);
                }
            }
        }
        Ok(tiles)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mtmed3d_pipeline::BoundingBox;
    use ndarray::Array3;
    use std::sync::Arc;

    #[test]
    fn row_copies_equal_slicing_inside_and_padding_at_the_edges() {
        let volume = ArrayD::from_shape_fn(IxDyn(&[2, 7, 6, 5]), |i| {
            (i[0] * 1000 + i[1] * 100 + i[2] * 10 + i[3]) as i32
        });
        let inside = crop_array(&volume, [1, 2, 0], [4, 3, 5]);
        let expected = volume.slice(ndarray::s![.., 1..5, 2..5, 0..5]).to_owned();
        assert_eq!(inside, expected.into_dyn());
        // A window that pads: the padded part is zero, the rest the same voxels.
        let padded = crop_array(&volume, [-1, 0, 3], [3, 6, 4]);
        assert_eq!(padded.shape(), &[2, 3, 6, 4]);
        assert_eq!(padded[[1, 0, 2, 1]], 0);
        assert_eq!(padded[[1, 1, 2, 1]], volume[[1, 0, 2, 4]]);
        assert_eq!(padded[[0, 2, 5, 0]], volume[[0, 1, 5, 3]]);
        assert_eq!(padded[[0, 2, 5, 2]], 0);
    }

    fn sample(shape: [usize; 3]) -> Sample {
        let mut s = Sample::new("case_1");
        let image = ArrayD::from_shape_fn(IxDyn(&[2, shape[0], shape[1], shape[2]]), |i| {
            (i[0] * 1000 + i[1] * 100 + i[2] * 10 + i[3]) as f32 + 1.0
        });
        s.insert("image", Field::f32(image));
        let mut label = Array3::<u8>::zeros(shape);
        label[[2, 3, 1]] = 1;
        label[[4, 5, 2]] = 2;
        s.insert("label", Field::u8(label.into_dyn()));
        s.insert(
            "boxes",
            Field::Boxes(Arc::new(vec![BoundingBox {
                corners: [2.0, 3.0, 1.0, 5.0, 6.0, 3.0],
                class: 0,
                score: None,
            }])),
        );
        s
    }

    #[test]
    fn crops_equal_voxel_by_voxel_lookup_for_windows_anywhere() {
        let volume = ArrayD::from_shape_fn(IxDyn(&[2, 7, 6, 5]), |i| {
            (1 + i[0] * 1000 + i[1] * 100 + i[2] * 10 + i[3]) as i32
        });
        let lookup = |c: usize, p: [i64; 3]| -> i32 {
            let inside = (0..3).all(|a| p[a] >= 0 && p[a] < volume.shape()[a + 1] as i64);
            if inside {
                volume[[c, p[0] as usize, p[1] as usize, p[2] as usize]]
            } else {
                0
            }
        };
        let starts = [-9, -3, -1, 0, 1, 4, 6, 8];
        for (k, &sx) in starts.iter().enumerate() {
            for &sy in &starts[k % 3..] {
                for &sz in &starts[(k + 1) % 4..] {
                    let start = [sx, sy, sz];
                    let size = [3 + k % 4, 8 - k % 5, 2 + k % 6];
                    let out = crop_array(&volume, start, size);
                    let expected =
                        ArrayD::from_shape_fn(IxDyn(&[2, size[0], size[1], size[2]]), |i| {
                            let p = [0, 1, 2].map(|a| start[a] + i[a + 1] as i64);
                            lookup(i[0], p)
                        });
                    assert_eq!(out, expected, "start {start:?} size {size:?}");
                    let moved = crop_in_place(volume.clone(), start, size);
                    assert_eq!(moved, expected, "in place: start {start:?} size {size:?}");
                }
            }
        }
    }

    #[test]
    fn a_crop_to_the_brain_that_pads_along_z_stays_in_the_buffer() {
        // Smaller along x and y, padded at both ends of z: the crop_to_brain shape of BraTS.
        let volume = ArrayD::from_shape_fn(IxDyn(&[2, 20, 20, 10]), |i| {
            (1 + i[0] * 10000 + i[1] * 500 + i[2] * 20 + i[3]) as i32
        });
        let (start, size) = ([3, 4, -2], [12, 10, 14]);
        let expected = crop_array(&volume, start, size);
        let buffer = volume.as_ptr();
        let moved = crop_in_place(volume, start, size);
        assert_eq!(moved, expected);
        assert_eq!(moved.as_ptr(), buffer, "cropped in the volume's own buffer");
    }

    #[test]
    fn crop_in_place_equals_the_copy_inside_outside_and_after_slicing() {
        let volume = ArrayD::from_shape_fn(IxDyn(&[2, 7, 6, 5]), |i| {
            (1000 * i[0] + 100 * i[1] + 10 * i[2] + i[3]) as i32
        });
        for (start, size) in [
            ([1, 2, 0], [4, 3, 5]),
            ([0, 0, 0], [7, 6, 5]),
            ([3, 1, 2], [1, 1, 1]),
            ([-1, 2, 3], [4, 4, 4]), // padding: falls back to the copy
        ] {
            let expected = crop_array(&volume, start, size);
            assert_eq!(
                crop_in_place(volume.clone(), start, size),
                expected,
                "{start:?}"
            );
        }
        // A standard-layout array that starts later in its buffer.
        let sliced = volume.slice_move(ndarray::s![1..2, .., .., ..]).into_dyn();
        assert!(sliced.is_standard_layout());
        let expected = crop_array(&sliced, [2, 1, 1], [3, 4, 2]);
        assert_eq!(crop_in_place(sliced, [2, 1, 1], [3, 4, 2]), expected);
    }

    #[test]
    fn crop_with_padding_copies_the_overlap_and_zero_fills() {
        let a = ArrayD::from_shape_fn(IxDyn(&[4, 4, 4]), |i| {
            (i[0] * 16 + i[1] * 4 + i[2]) as u8 + 1
        });
        let c = crop_array(&a, [-1, 2, 0], [3, 3, 4]);
        assert_eq!(c.shape(), &[3, 3, 4]);
        assert_eq!(c[[0, 0, 0]], 0, "padding");
        assert_eq!(c[[1, 0, 0]], a[[0, 2, 0]]);
        assert_eq!(c[[2, 1, 3]], a[[1, 3, 3]]);
        assert_eq!(c[[2, 2, 3]], 0, "past the end");
    }

    #[test]
    fn foreground_crop_keeps_every_labelled_voxel_and_moves_boxes() {
        let mut s = sample([8, 8, 6]);
        s.meta.affine[0][0] = 2.0;
        let crop: Crop =
            serde_json::from_str(r#"{"mode": "foreground", "select": "label", "margin": 1}"#)
                .unwrap();
        let out = crop.process(s, &StageContext::new("crop", 1, 0)).unwrap();
        let label = out.u8("label").unwrap();
        assert_eq!(label.shape(), &[5, 5, 4]); // x 1..6, y 2..7, z 0..4
        assert_eq!(label.iter().filter(|v| **v > 0).count(), 2);
        assert_eq!(label[[1, 1, 1]], 1);
        assert_eq!(out.f32("image").unwrap().shape(), &[2, 5, 5, 4]);
        assert_eq!(
            out.f32("image").unwrap()[[1, 0, 0, 0]],
            1000.0 + 100.0 + 20.0 + 0.0 + 1.0
        );
        assert_eq!(
            out.boxes("boxes").unwrap()[0].corners,
            [1.0, 1.0, 1.0, 4.0, 4.0, 3.0]
        );
        assert_eq!(
            out.meta.affine[0][3], 2.0,
            "origin moved by one voxel of 2 mm"
        );
        assert!(matches!(
            out.meta.history.last(),
            Some(SpatialOp::Crop {
                start: [1, 2, 0],
                ..
            })
        ));
    }

    #[test]
    fn center_crop_matches_the_reference_window() {
        // The reference's 96³ crop of 240×240×155 starts at (72, 72, 29).
        let start = centred([120, 120, 77], [96, 96, 96]);
        assert_eq!(start, [72, 72, 29]);
    }

    #[test]
    fn tiles_cover_the_volume_with_the_last_flush_to_the_end() {
        assert_eq!(tile_starts(240, 96, 0.25), vec![0, 72, 144]);
        assert_eq!(tile_starts(155, 96, 0.5), vec![0, 48, 59]);
        assert_eq!(tile_starts(96, 96, 0.25), vec![0]);
        assert_eq!(tile_starts(80, 96, 0.25), vec![-8]);
    }

    #[test]
    fn patches_cover_every_voxel() {
        let s = sample([10, 9, 7]);
        let p: Patches = serde_json::from_str(r#"{"size": [4, 4, 4], "overlap": 0.5}"#).unwrap();
        let tiles = p.expand(s, &StageContext::new("patches", 1, 0)).unwrap();
        let mut covered = Array3::<u8>::zeros([10, 9, 7]);
        for t in &tiles {
            let start = t.meta.attrs["patch"]["start"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap() as usize)
                .collect::<Vec<_>>();
            for x in 0..4 {
                for y in 0..4 {
                    for z in 0..4 {
                        covered[[start[0] + x, start[1] + y, start[2] + z]] = 1;
                    }
                }
            }
            assert!(t.id.starts_with("case_1#p"));
        }
        assert!(covered.iter().all(|v| *v == 1));
        assert_eq!(tiles.len(), 4 * 4 * 3);
    }

    #[test]
    fn rand_crop_centres_on_foreground_when_asked() {
        let crop: RandCrop =
            serde_json::from_str(r#"{"size": [3, 3, 3], "foreground_prob": 1.0}"#).unwrap();
        for i in 0..20 {
            let mut s = sample([12, 12, 8]);
            s.id = format!("case_{i}");
            let out = crop
                .process(s, &StageContext::new("rand_crop", 1, 7))
                .unwrap();
            assert!(
                out.u8("label").unwrap().iter().any(|v| *v > 0),
                "crop {i} missed the foreground"
            );
            assert_eq!(out.f32("image").unwrap().shape(), &[2, 3, 3, 3]);
        }
    }
}
