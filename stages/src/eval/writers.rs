//! Writers of evaluation outputs: `boxes_json` (per-case predictions in the format
//! `mtmed3d evaluate` reads) and `png_overlay` (slices through the tumour with its regions
//! and boxes).
//!
//! ```yaml
//! sinks:
//!   - boxes_json: {dir: runs/pred}              # runs/pred/<case>.json, boxes in the input's grid
//!   - png_overlay: {dir: runs/png, mask: pred_label, boxes: [boxes, pred_boxes], modality: flair}
//! ```
//!
//! Each file is written under a temporary name and renamed, so an interrupted run leaves
//! fewer files, never a truncated one.

use std::path::PathBuf;

use mtmed3d_pipeline::{
    BoundingBox, BuildContext, Component, FinishContext, Problem, Sample, Sink, SinkConfig,
    StageContext, StageError,
};
use ndarray::{Array2, Array3, ArrayView3, Axis, Ix3, Ix4};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::report::write_atomic;
use super::segmentation::percentile;
use super::sink::region_masks;
use crate::fields::{common_spatial_shape, volume_fields};
use crate::io::nifti_stages::WriteSpace;
use crate::io::sources::ATTR_MODALITIES;
use crate::labels::{BratsConvention, mask_box};
use crate::spatial::original_space::boxes_to_original;

fn default_pred_boxes() -> String {
    "pred_boxes".into()
}
fn default_grade_pred() -> Option<String> {
    Some("grade_pred".into())
}
fn default_p_hgg() -> Option<String> {
    Some("p_hgg".into())
}
fn default_box_space() -> WriteSpace {
    WriteSpace::Original
}

/// Writes `<dir>/<case>.json` with the predicted boxes, grade and p_hgg.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BoxesJson {
    /// Output folder.
    pub dir: PathBuf,
    /// Predicted boxes (each with a score).
    #[serde(default = "default_pred_boxes")]
    pub pred_boxes: String,
    /// Predicted grade (text HGG/LGG); `null` to leave it out.
    #[serde(default = "default_grade_pred")]
    pub grade_pred: Option<String>,
    /// Predicted probability of HGG; `null` to leave it out.
    #[serde(default = "default_p_hgg")]
    pub p_hgg: Option<String>,
    /// `original` (default): boxes in voxels of the grid the image was read in, mapped back
    /// through reorientation, crops, flips and quarter turns, as `mtmed3d evaluate` compares
    /// them with the truth files; `current`: the sample's grid as it reaches the sink.
    #[serde(default = "default_box_space")]
    pub space: WriteSpace,
}

impl Component for BoxesJson {
    const NAME: &'static str = "boxes_json";
    const DOC: &'static str = "Writes <dir>/<case>.json: boxes with scores, grade and p_hgg, the prediction format `mtmed3d evaluate` reads.";
    fn reads(&self) -> Vec<String> {
        let mut r = vec![self.pred_boxes.clone()];
        r.extend(self.grade_pred.clone());
        r.extend(self.p_hgg.clone());
        r
    }
    fn outputs(&self) -> Vec<PathBuf> {
        // shares its folder with the label maps in the layout `mtmed3d evaluate` reads
        vec![self.dir.join("*.json")]
    }
}

impl SinkConfig for BoxesJson {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Sink>, StageError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| StageError::file(&self.dir, e))?;
        Ok(Box::new(self.clone()))
    }
}

/// The prediction document of one case.
pub fn prediction_json(
    boxes: &[BoundingBox],
    grade: Option<&str>,
    p_hgg: Option<f64>,
) -> Result<serde_json::Value, StageError> {
    let boxes = boxes
        .iter()
        .map(|b| {
            let score = b
                .score
                .ok_or_else(|| StageError::new("a predicted box has no score"))?;
            Ok(json!({"box": b.corners, "score": score}))
        })
        .collect::<Result<Vec<_>, StageError>>()?;
    let mut doc = serde_json::Map::new();
    doc.insert("boxes".into(), json!(boxes));
    if let Some(g) = grade {
        doc.insert("grade".into(), json!(g));
    }
    if let Some(p) = p_hgg {
        doc.insert("p_hgg".into(), json!(p));
    }
    Ok(serde_json::Value::Object(doc))
}

impl Sink for BoxesJson {
    fn write(&self, sample: Sample, _: &StageContext) -> Result<(), StageError> {
        let grade = match &self.grade_pred {
            Some(f) => Some(sample.text(f)?),
            None => None,
        };
        let p = match &self.p_hgg {
            Some(f) => Some(sample.number(f)?),
            None => None,
        };
        let boxes = sample.boxes(&self.pred_boxes)?;
        let boxes = match self.space {
            WriteSpace::Current => boxes.to_vec(),
            WriteSpace::Original => boxes_in_original_space(&sample, boxes)?,
        };
        let doc = prediction_json(&boxes, grade, p)?;
        let path = self.dir.join(format!("{}.json", sample.id));
        let text =
            serde_json::to_string_pretty(&doc).map_err(|e| StageError::new(e.to_string()))?;
        write_atomic(&path, (text + "\n").as_bytes()).map_err(|e| StageError::file(&path, e))
    }

    fn finish(&self, ctx: &FinishContext) -> Result<(), StageError> {
        if !ctx.complete {
            tracing::warn!(dir = %self.dir.display(), "run interrupted: not every case was written");
        }
        Ok(())
    }
}

/// `boxes` of `sample` mapped back through its spatial history; a box that lies wholly in
/// padding added after reading has no place in the original grid and is left out.
fn boxes_in_original_space(
    sample: &Sample,
    boxes: &[BoundingBox],
) -> Result<Vec<BoundingBox>, StageError> {
    let history = &sample.meta.history;
    if history.is_empty() {
        return Ok(boxes.to_vec());
    }
    let volumes = volume_fields(sample, None);
    if volumes.is_empty() {
        return Err(StageError::new(
            "`boxes_json` with `space: original` needs a volume field in the sample to map the boxes back through its spatial history; write with `space: current`",
        ));
    }
    boxes_to_original(boxes, common_spatial_shape(sample, &volumes)?, history)
}

/// A modality by channel number or by name (as the source lists them).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Modality {
    Index(usize),
    Name(String),
}

fn default_image() -> String {
    "image".into()
}
fn default_mask() -> Option<String> {
    Some("label".into())
}
fn default_boxes() -> Vec<String> {
    vec!["boxes".into()]
}
fn default_modality() -> Modality {
    Modality::Index(0)
}
fn default_alpha() -> f32 {
    0.45
}
fn default_convention() -> BratsConvention {
    BratsConvention::Brats2018
}

/// PNG of axial, coronal and sagittal slices through the tumour centre, side by side.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PngOverlay {
    /// Output folder; files are `<dir>/<case>.png`.
    pub dir: PathBuf,
    /// The image (C×X×Y×Z or X×Y×Z f32).
    #[serde(default = "default_image")]
    pub image: String,
    /// The grey background: a channel number or a modality name (`flair`).
    #[serde(default = "default_modality")]
    pub modality: Modality,
    /// Regions to colour: a BraTS label map or region masks (WT green, TC yellow, ET red);
    /// `null` for none. The slices go through the centre of its whole tumour.
    #[serde(default = "default_mask")]
    pub mask: Option<String>,
    /// Box fields drawn as rectangles where a slice cuts them (cyan, magenta, white, …).
    #[serde(default = "default_boxes")]
    pub boxes: Vec<String>,
    /// Opacity of the region colours (0–1).
    #[serde(default = "default_alpha")]
    pub alpha: f32,
    /// Label convention of a label-map `mask`.
    #[serde(default = "default_convention")]
    pub label_convention: BratsConvention,
    /// Each voxel drawn as a `zoom`×`zoom` square (1–8), so small volumes stay legible.
    #[serde(default = "default_zoom")]
    pub zoom: usize,
}

fn default_zoom() -> usize {
    1
}

impl Component for PngOverlay {
    const NAME: &'static str = "png_overlay";
    const DOC: &'static str = "PNG per case: axial, coronal and sagittal slices through the tumour centre, regions alpha-blended on a grey modality, boxes as rectangles.";
    fn reads(&self) -> Vec<String> {
        let mut r = vec![self.image.clone()];
        r.extend(self.mask.clone());
        r.extend(self.boxes.iter().cloned());
        r
    }
    fn outputs(&self) -> Vec<PathBuf> {
        vec![self.dir.join("*.png")]
    }
    fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if !(1..=8).contains(&self.zoom) {
            problems.push(Problem::param(
                "zoom",
                format!("`zoom` must be 1 to 8 (got {})", self.zoom),
            ));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            problems.push(Problem::param(
                "alpha",
                "`alpha` is an opacity between 0 and 1",
            ));
        }
        problems
    }
}

impl SinkConfig for PngOverlay {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Sink>, StageError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| StageError::file(&self.dir, e))?;
        Ok(Box::new(self.clone()))
    }
}

const REGION_COLOURS: [[f32; 3]; 3] = [
    [40.0, 200.0, 40.0],
    [250.0, 220.0, 0.0],
    [230.0, 30.0, 30.0],
];
const BOX_COLOURS: [[u8; 3]; 4] = [[0, 230, 255], [255, 0, 255], [255, 255, 255], [255, 140, 0]];
/// Black columns between the views.
const GAP: usize = 4;

/// One view: a 2D slice with its regions and boxes, in voxel axes (first axis to the right,
/// second axis up).
struct View {
    grey: Array2<f32>,
    regions: [Array2<bool>; 3],
    /// In-plane rectangles `[a1, b1, a2, b2]` (inclusive voxel indices) with colours.
    rects: Vec<([usize; 4], [u8; 3])>,
}

impl PngOverlay {
    fn grey_volume(&self, sample: &Sample) -> Result<Array3<f32>, StageError> {
        let image = sample.f32(&self.image)?;
        if image.ndim() == 3 {
            return image
                .clone()
                .into_dimensionality::<Ix3>()
                .map_err(|e| StageError::new(e.to_string()));
        }
        let image = image
            .view()
            .into_dimensionality::<Ix4>()
            .map_err(|_| StageError::new(format!("`{}` must be X×Y×Z or C×X×Y×Z", self.image)))?;
        let channel = match &self.modality {
            Modality::Index(i) => *i,
            Modality::Name(name) => {
                let names: Vec<String> = sample
                    .meta
                    .attrs
                    .get(ATTR_MODALITIES)
                    .and_then(|m| serde_json::from_value(m.clone()).ok())
                    .unwrap_or_default();
                names.iter().position(|n| n == name).ok_or_else(|| {
                    StageError::new(format!(
                        "no modality `{name}` (the source names: {}); give a channel number instead",
                        if names.is_empty() { "none".into() } else { names.join(", ") }
                    ))
                })?
            }
        };
        if channel >= image.shape()[0] {
            return Err(StageError::new(format!(
                "`{}` has {} channels; modality {channel} does not exist",
                self.image,
                image.shape()[0]
            )));
        }
        Ok(image.index_axis(Axis(0), channel).to_owned())
    }

    fn render(&self, sample: &Sample) -> Result<Vec<u8>, StageError> {
        let grey = self.grey_volume(sample)?;
        let shape = grey.dim();
        let masks = match &self.mask {
            Some(name) => {
                let m = sample.u8(name)?;
                let m4 = if m.ndim() == 3 {
                    m.clone().insert_axis(Axis(0))
                } else {
                    m.clone()
                };
                let m4 = m4.into_dimensionality::<Ix4>().map_err(|_| {
                    StageError::new(format!("`{name}` must be a label map or region masks"))
                })?;
                if m4.shape()[1..] != [shape.0, shape.1, shape.2] {
                    return Err(StageError::new(format!(
                        "`{name}` has spatial shape {:?} but `{}` has {:?}",
                        &m4.shape()[1..],
                        self.image,
                        [shape.0, shape.1, shape.2]
                    )));
                }
                let channels: Vec<String> = sample
                    .meta
                    .attrs
                    .get("label_channels")
                    .and_then(|v| serde_json::from_value(v.clone()).ok())
                    .unwrap_or_default();
                Some(region_masks(&m4, &channels, self.label_convention, name)?)
            }
            None => None,
        };
        let centre = masks
            .as_ref()
            .and_then(|m| mask_box(m[0].view().into_dyn(), |v| *v))
            .map(|b| [0, 1, 2].map(|d| ((b[d] + b[d + 3] - 1.0) / 2.0).floor() as usize))
            .unwrap_or([shape.0 / 2, shape.1 / 2, shape.2 / 2]);
        let mut boxes = Vec::new();
        for (i, name) in self.boxes.iter().enumerate() {
            for b in sample.boxes(name)? {
                boxes.push((b.corners, BOX_COLOURS[i % BOX_COLOURS.len()]));
            }
        }
        // axial (fixed z), coronal (fixed y), sagittal (fixed x): (fixed axis, plane axes)
        let views: Vec<View> = [(2usize, [0usize, 1usize]), (1, [0, 2]), (0, [1, 2])]
            .iter()
            .map(|&(fixed, plane)| {
                let slice =
                    |v: ArrayView3<'_, bool>| v.index_axis(Axis(fixed), centre[fixed]).to_owned();
                let regions = match &masks {
                    Some(m) => [slice(m[0].view()), slice(m[1].view()), slice(m[2].view())],
                    None => {
                        let empty = Array2::from_elem(
                            (shape_of(shape, plane[0]), shape_of(shape, plane[1])),
                            false,
                        );
                        [empty.clone(), empty.clone(), empty]
                    }
                };
                let at = centre[fixed] as f64;
                let rects = boxes
                    .iter()
                    .filter(|(c, _)| c[fixed] <= at && at < c[fixed + 3])
                    .map(|(c, colour)| {
                        let lo = |d: usize| c[d].max(0.0) as usize;
                        let hi = |d: usize| {
                            ((c[d + 3] - 1.0).max(0.0) as usize).min(shape_of(shape, d) - 1)
                        };
                        (
                            [lo(plane[0]), lo(plane[1]), hi(plane[0]), hi(plane[1])],
                            *colour,
                        )
                    })
                    .collect();
                View {
                    grey: grey.index_axis(Axis(fixed), centre[fixed]).to_owned(),
                    regions,
                    rects,
                }
            })
            .collect();
        Ok(compose(&views, self.alpha, self.zoom))
    }
}

fn shape_of(shape: (usize, usize, usize), axis: usize) -> usize {
    [shape.0, shape.1, shape.2][axis]
}

/// The three views side by side as an RGB PNG, each voxel `zoom`×`zoom` pixels.
fn compose(views: &[View], alpha: f32, zoom: usize) -> Vec<u8> {
    let width: usize =
        views.iter().map(|v| v.grey.dim().0).sum::<usize>() + GAP * (views.len() - 1);
    let height = views
        .iter()
        .map(|v| v.grey.dim().1)
        .max()
        .unwrap_or(1)
        .max(1);
    let mut rgb = vec![0u8; width * height * 3];
    // One grey window for all views: the 1st–99th percentile of their voxels.
    let mut values: Vec<f64> = views
        .iter()
        .flat_map(|v| v.grey.iter().map(|&g| f64::from(g)))
        .filter(|g| g.is_finite())
        .collect();
    let lo = percentile(&mut values, 1.0);
    let hi = percentile(&mut values, 99.0);
    let scale = if hi > lo { 255.0 / (hi - lo) } else { 0.0 };
    let mut x0 = 0;
    for v in views {
        let (w, h) = v.grey.dim();
        let mut put = |a: usize, b: usize, px: [u8; 3]| {
            // the second axis points up
            let (x, y) = (x0 + a, h - 1 - b);
            let i = (y * width + x) * 3;
            rgb[i..i + 3].copy_from_slice(&px);
        };
        for a in 0..w {
            for b in 0..h {
                let g = ((f64::from(v.grey[[a, b]]) - lo) * scale).clamp(0.0, 255.0) as f32;
                let mut px = [g; 3];
                // innermost region last: ET over TC over WT
                for (r, colour) in REGION_COLOURS.iter().enumerate() {
                    if v.regions[r][[a, b]] {
                        for c in 0..3 {
                            px[c] = g * (1.0 - alpha) + colour[c] * alpha;
                        }
                    }
                }
                put(a, b, px.map(|c| c.round() as u8));
            }
        }
        for &([a1, b1, a2, b2], colour) in &v.rects {
            for a in a1..=a2.min(w - 1) {
                put(a, b1.min(h - 1), colour);
                put(a, b2.min(h - 1), colour);
            }
            for b in b1..=b2.min(h - 1) {
                put(a1.min(w - 1), b, colour);
                put(a2.min(w - 1), b, colour);
            }
        }
        x0 += w + GAP;
    }
    let zoom = zoom.max(1);
    if zoom == 1 {
        return encode_png(&rgb, width, height);
    }
    let mut zoomed = Vec::with_capacity(rgb.len() * zoom * zoom);
    for row in rgb.chunks_exact(width * 3) {
        let wide: Vec<u8> = row
            .chunks_exact(3)
            .flat_map(|px| std::iter::repeat_n(px, zoom).flatten().copied())
            .collect();
        for _ in 0..zoom {
            zoomed.extend_from_slice(&wide);
        }
    }
    encode_png(&zoomed, width * zoom, height * zoom)
}

fn encode_png(rgb: &[u8], width: usize, height: usize) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width as u32, height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        // Writing to memory cannot fail; the sizes come from the arrays.
        let mut writer = encoder.write_header().expect("in-memory PNG header");
        writer.write_image_data(rgb).expect("in-memory PNG data");
    }
    out
}

impl Sink for PngOverlay {
    fn write(&self, sample: Sample, _: &StageContext) -> Result<(), StageError> {
        let bytes = self.render(&sample)?;
        let path = self.dir.join(format!("{}.png", sample.id));
        write_atomic(&path, &bytes).map_err(|e| StageError::file(&path, e))
    }

    fn finish(&self, ctx: &FinishContext) -> Result<(), StageError> {
        if !ctx.complete {
            tracing::warn!(dir = %self.dir.display(), "run interrupted: not every case was written");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mtmed3d_pipeline::{Field, SpatialOp};
    use ndarray::{Array3, Array4};
    use std::sync::Arc;

    /// A case reoriented by flipping x and then cropped, with one predicted box on the current grid.
    fn reoriented_prediction() -> Sample {
        let mut s = Sample::new("c1");
        s.insert(
            "image",
            Field::f32(Array4::<f32>::zeros((1, 6, 6, 4)).into_dyn()),
        );
        s.meta.history = vec![
            SpatialOp::Reorient {
                perm: [0, 1, 2],
                flip: [true, false, false],
                shape_before: [10, 6, 4],
            },
            SpatialOp::Crop {
                start: [2, 0, 0],
                shape_before: [10, 6, 4],
                shape_after: [6, 6, 4],
            },
        ];
        s.insert(
            "pred_boxes",
            Field::Boxes(Arc::new(vec![BoundingBox {
                corners: [1.0, 2.0, 0.0, 3.0, 5.0, 4.0],
                class: 0,
                score: Some(0.75),
            }])),
        );
        s.insert("grade_pred", Field::Text("HGG".into()));
        s.insert("p_hgg", Field::Number(0.8));
        s
    }

    fn written_boxes(space: &str) -> serde_json::Value {
        let dir = tempfile::tempdir().unwrap();
        let sink: BoxesJson =
            serde_json::from_value(json!({"dir": dir.path(), "space": space})).unwrap();
        sink.build(&BuildContext::default())
            .unwrap()
            .write(
                reoriented_prediction(),
                &StageContext::new("boxes_json", 3, 0),
            )
            .unwrap();
        let text = std::fs::read_to_string(dir.path().join("c1.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    }

    #[test]
    fn boxes_json_maps_boxes_back_to_the_grid_the_image_was_read_in() {
        // current x 1..3 → before the crop 3..5 → before the x flip of 10 voxels 5..7
        let original = written_boxes("original");
        assert_eq!(
            original["boxes"][0]["box"],
            json!([5.0, 2.0, 0.0, 7.0, 5.0, 4.0])
        );
        assert_eq!(original["boxes"][0]["score"], json!(0.75));
        assert_eq!(original["grade"], json!("HGG"));
        let current = written_boxes("current");
        assert_eq!(
            current["boxes"][0]["box"],
            json!([1.0, 2.0, 0.0, 3.0, 5.0, 4.0])
        );
    }

    #[test]
    fn boxes_json_refuses_to_guess_the_grid_without_a_volume() {
        let mut s = reoriented_prediction();
        s.remove("image");
        let dir = tempfile::tempdir().unwrap();
        let sink: BoxesJson = serde_json::from_value(json!({"dir": dir.path()})).unwrap();
        let err = sink
            .build(&BuildContext::default())
            .unwrap()
            .write(s, &StageContext::new("boxes_json", 3, 0))
            .unwrap_err();
        assert!(err.to_string().contains("space: current"), "{err}");
        assert!(!dir.path().join("c1.json").exists());
    }

    /// Writes `sample` through a `png_overlay` with `params` and decodes `<dir>/c1.png`.
    fn render(
        params: serde_json::Value,
        sample: Sample,
        dir: &std::path::Path,
    ) -> (png::OutputInfo, Vec<u8>) {
        let sink: PngOverlay = serde_json::from_value(params).unwrap();
        sink.build(&BuildContext::default())
            .unwrap()
            .write(sample, &StageContext::new("png_overlay", 3, 0))
            .unwrap();
        let file = std::fs::File::open(dir.join("c1.png")).unwrap();
        let mut reader = png::Decoder::new(std::io::BufReader::new(file))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        (info, buf)
    }

    #[test]
    fn overlay_has_three_views_coloured_regions_and_box_edges() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Sample::new("c1");
        s.insert(
            "image",
            Field::f32(
                Array4::<f32>::from_shape_fn((2, 20, 16, 12), |(_, x, y, z)| (x + y + z) as f32)
                    .into_dyn(),
            ),
        );
        let mut label = Array3::<u8>::zeros((20, 16, 12));
        for x in 8..12 {
            for y in 6..10 {
                for z in 4..8 {
                    label[[x, y, z]] = if x == 10 && y == 8 && z == 6 { 4 } else { 2 };
                }
            }
        }
        s.insert("label", Field::u8(label.into_dyn()));
        s.insert(
            "boxes",
            Field::Boxes(Arc::new(vec![BoundingBox {
                corners: [8.0, 6.0, 4.0, 12.0, 10.0, 8.0],
                class: 0,
                score: None,
            }])),
        );
        let s3 = s.clone();
        let (info, buf) = render(json!({"dir": dir.path()}), s, dir.path());
        // axial 20 wide, coronal 20, sagittal 16, two gaps; height = max(16, 12, 12)
        assert_eq!(
            (info.width, info.height),
            (20 + 20 + 16 + 2 * GAP as u32, 16)
        );
        let px = |x: usize, y: usize| {
            let i = (y * info.width as usize + x) * 3;
            [buf[i], buf[i + 1], buf[i + 2]]
        };
        // centre (9, 7, 5) of WT [8, 12)×[6, 10)×[4, 8): the axial box corner (8, 6) is cyan
        assert_eq!(px(8, 15 - 6), BOX_COLOURS[0]);
        // inside WT on the axial view: green dominates
        let p = px(9, 15 - 7);
        assert!(p[1] > p[0] && p[1] > p[2], "{p:?}");
        // outside the mask: grey
        let q = px(1, 15 - 1);
        assert!(q[0] == q[1] && q[1] == q[2], "{q:?}");
        // zoom 3: every pixel becomes a 3×3 square of the same colour
        let dir3 = tempfile::tempdir().unwrap();
        let (info3, buf3) = render(json!({"dir": dir3.path(), "zoom": 3}), s3, dir3.path());
        assert_eq!(
            (info3.width, info3.height),
            (3 * info.width, 3 * info.height)
        );
        for (x, y) in [(8, 15 - 6), (9, 15 - 7), (1, 14), (30, 3)] {
            for (dx, dy) in [(0, 0), (2, 2), (1, 0)] {
                let i = ((3 * y + dy) * info3.width as usize + 3 * x + dx) * 3;
                assert_eq!([buf3[i], buf3[i + 1], buf3[i + 2]], px(x, y), "({x}, {y})");
            }
        }
        let bad: PngOverlay = serde_json::from_value(json!({"dir": "x", "zoom": 9})).unwrap();
        assert!(bad.check()[0].message.contains("`zoom` must be 1 to 8"));
    }

    #[test]
    fn prediction_json_needs_scores() {
        let b = BoundingBox {
            corners: [0.0; 6],
            class: 0,
            score: None,
        };
        assert_eq!(
            prediction_json(&[b], None, None).unwrap_err().message,
            "a predicted box has no score"
        );
        let b = BoundingBox {
            corners: [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            class: 0,
            score: Some(0.5),
        };
        let j = prediction_json(&[b], Some("HGG"), Some(0.7)).unwrap();
        assert_eq!(
            j,
            json!({"boxes": [{"box": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "score": 0.5}], "grade": "HGG", "p_hgg": 0.7})
        );
    }
}
