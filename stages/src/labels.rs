//! Label conventions: BraTS labels to tumour regions, and boxes from masks.
//!
//! ```yaml
//! - brats_regions: {}                          # label 0/1/2/4 → channels TC, WT, ET
//! - brats_regions: {convention: brats2023}     # enhancing tumour is 3
//! - boxes: {from: WT}                          # after every spatial transform
//! ```
//!
//! Regions: WT = {1, 2, ET}, TC = {1, ET}, ET = {4} (2018–2020) or {3} (2023+). The channel
//! order is [TC, WT, ET], as in the reference and MONAI's BraTS transform; the names are kept
//! in `meta.attrs["label_channels"]`.
//!
//! `boxes` computes the box of a region from the mask as it is when the stage runs, so placed
//! after cropping and augmentation it is exact (the reference took boxes from a file and
//! never moved them with the image). Boxes are `[x1, y1, z1, x2, y2, z2]` in voxels with
//! `x2` = last index + 1, as MONAI's mask-to-box; an empty region gives no box.

use std::sync::Arc;

use mtmed3d_pipeline::{
    BoundingBox, BuildContext, Component, Field, Sample, Stage, StageConfig, StageContext,
    StageError,
};
use ndarray::{ArrayD, Axis, IxDyn};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::fields::{bounds_where, box_to_world};

/// Which value marks enhancing tumour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BratsConvention {
    /// BraTS 2018–2020: 1 necrosis/non-enhancing core, 2 oedema, 4 enhancing.
    Brats2018,
    /// BraTS 2023+: 1 necrosis, 2 oedema, 3 enhancing.
    Brats2023,
}

impl BratsConvention {
    pub fn enhancing(&self) -> u8 {
        match self {
            BratsConvention::Brats2018 => 4,
            BratsConvention::Brats2023 => 3,
        }
    }

    /// Whether label value `v` belongs to region `name` (TC, WT or ET).
    pub fn in_region(&self, name: &str, v: u8) -> bool {
        let et = self.enhancing();
        match name {
            "TC" => v == 1 || v == et,
            "WT" => v == 1 || v == 2 || v == et,
            "ET" => v == et,
            _ => false,
        }
    }
}

pub const REGIONS: [&str; 3] = ["TC", "WT", "ET"];

/// BraTS label map → region masks [TC, WT, ET].
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BratsRegions {
    /// The label map (X×Y×Z, u8).
    #[serde(default = "default_label")]
    pub field: String,
    /// Where to write the 3×X×Y×Z masks (the label map is replaced when equal to `field`).
    #[serde(default = "default_label")]
    pub into: String,
    /// `brats2018` (enhancing = 4) or `brats2023` (enhancing = 3).
    #[serde(default = "default_convention")]
    pub convention: BratsConvention,
}

fn default_label() -> String {
    "label".into()
}
fn default_convention() -> BratsConvention {
    BratsConvention::Brats2018
}

impl Component for BratsRegions {
    const NAME: &'static str = "brats_regions";
    const DOC: &'static str =
        "BraTS label map → three region masks [TC, WT, ET]; rejects values outside the convention.";
    fn reads(&self) -> Vec<String> {
        vec![self.field.clone()]
    }
    fn writes(&self) -> Vec<String> {
        vec![self.into.clone()]
    }
}

impl StageConfig for BratsRegions {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

impl Stage for BratsRegions {
    fn process(&self, mut sample: Sample, _: &StageContext) -> Result<Sample, StageError> {
        let label = sample.u8(&self.field)?;
        if label.ndim() != 3 {
            return Err(StageError::new(format!(
                "`brats_regions` needs an X×Y×Z label map in `{}`, found shape {:?}",
                self.field,
                label.shape()
            )));
        }
        let et = self.convention.enhancing();
        let mut seen = [false; 256];
        for &v in label.iter() {
            seen[usize::from(v)] = true;
        }
        let unexpected: Vec<usize> = (0..256)
            .filter(|&v| seen[v] && ![0, 1, 2, usize::from(et)].contains(&v))
            .collect();
        if !unexpected.is_empty() {
            let hint = match (self.convention, unexpected.as_slice()) {
                (BratsConvention::Brats2018, [3]) => {
                    " (set `convention: brats2023`, where enhancing tumour is 3)"
                }
                (BratsConvention::Brats2023, [4]) => {
                    " (set `convention: brats2018`, where enhancing tumour is 4)"
                }
                _ => "",
            };
            return Err(StageError::new(format!(
                "label values {unexpected:?} in `{}` are not BraTS labels (0, 1, 2, {et}){hint}",
                self.field
            )));
        }
        let shape = label.shape().to_vec();
        let mut masks = ArrayD::<u8>::zeros(IxDyn(&[3, shape[0], shape[1], shape[2]]));
        for (c, name) in REGIONS.iter().enumerate() {
            let mut channel = masks.index_axis_mut(Axis(0), c);
            ndarray::Zip::from(&mut channel)
                .and(label)
                .for_each(|m, &v| *m = u8::from(self.convention.in_region(name, v)));
        }
        sample.insert(self.into.clone(), Field::u8(masks));
        sample
            .meta
            .attrs
            .insert("label_channels".into(), serde_json::json!(REGIONS));
        sample.meta.attrs.insert(
            "label_convention".into(),
            serde_json::json!(match self.convention {
                BratsConvention::Brats2018 => "brats2018",
                BratsConvention::Brats2023 => "brats2023",
            }),
        );
        Ok(sample)
    }
}

/// Boxes of a region, computed from its mask where the stage runs.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Boxes {
    /// The mask field: region masks (C×X×Y×Z, channels named in `label_channels`), or a label
    /// map (X×Y×Z).
    #[serde(default = "default_label")]
    pub field: String,
    /// The region: a channel name (`WT`, `TC`, `ET`) or `nonzero` (any nonzero voxel).
    #[serde(default = "default_region")]
    pub from: String,
    /// Label convention, when `field` is a BraTS label map.
    #[serde(default = "default_convention")]
    pub convention: BratsConvention,
    /// Field for the voxel boxes.
    #[serde(default = "default_boxes")]
    pub into: String,
    /// Field for the same boxes in world millimetres (omit with `null`).
    #[serde(default = "default_world")]
    pub world_into: Option<String>,
}

fn default_region() -> String {
    "WT".into()
}
fn default_boxes() -> String {
    "boxes".into()
}
fn default_world() -> Option<String> {
    Some("boxes_mm".into())
}

impl Component for Boxes {
    const NAME: &'static str = "boxes";
    const DOC: &'static str = "Bounding box of a region from its mask, after all spatial transforms (MONAI mask-to-box: x2 = last index + 1), in voxels and mm.";
    fn reads(&self) -> Vec<String> {
        vec![self.field.clone()]
    }
    fn writes(&self) -> Vec<String> {
        let mut w = vec![self.into.clone()];
        w.extend(self.world_into.clone());
        w
    }
}

impl StageConfig for Boxes {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

/// MONAI's mask-to-box for one spatial mask: `[lo, hi)` of the voxels where `inside` holds.
pub fn mask_box<T: Clone>(
    mask: ndarray::ArrayViewD<'_, T>,
    inside: impl Fn(&T) -> bool,
) -> Option<[f64; 6]> {
    bounds_where(mask, inside)
        .map(|(lo, hi)| [lo[0], lo[1], lo[2], hi[0], hi[1], hi[2]].map(|v| v as f64))
}

impl Stage for Boxes {
    fn process(&self, mut sample: Sample, _: &StageContext) -> Result<Sample, StageError> {
        let mask = sample.u8(&self.field)?;
        let corners = match mask.ndim() {
            4 => {
                let channels: Vec<String> = sample
                    .meta
                    .attrs
                    .get("label_channels")
                    .and_then(|c| serde_json::from_value(c.clone()).ok())
                    .unwrap_or_default();
                if self.from == "nonzero" {
                    let any = mask.map_axis(Axis(0), |v| v.iter().any(|x| *x != 0));
                    mask_box(any.view(), |v| *v)
                } else {
                    let c = channels
                        .iter()
                        .position(|n| *n == self.from)
                        .ok_or_else(|| {
                            StageError::new(format!(
                                "`{}` has no channel `{}` (channels: {})",
                                self.field,
                                self.from,
                                if channels.is_empty() {
                                    "unnamed".into()
                                } else {
                                    channels.join(", ")
                                }
                            ))
                        })?;
                    mask_box(mask.index_axis(Axis(0), c), |v| *v != 0)
                }
            }
            3 => {
                if self.from == "nonzero" {
                    mask_box(mask.view(), |v| *v != 0)
                } else if REGIONS.contains(&self.from.as_str()) {
                    let conv = self.convention;
                    let region = self.from.clone();
                    mask_box(mask.view(), move |v| conv.in_region(&region, *v))
                } else {
                    return Err(StageError::new(format!(
                        "unknown region `{}`: use WT, TC, ET or nonzero",
                        self.from
                    )));
                }
            }
            _ => {
                return Err(StageError::new(format!(
                    "`{}` has shape {:?}; expected X×Y×Z or C×X×Y×Z",
                    self.field,
                    mask.shape()
                )));
            }
        };
        let boxes: Vec<BoundingBox> = corners
            .into_iter()
            .map(|corners| BoundingBox {
                corners,
                class: 0,
                score: None,
            })
            .collect();
        if let Some(world) = &self.world_into {
            let affine = sample.meta.affine;
            let mm = boxes
                .iter()
                .map(|b| BoundingBox {
                    corners: box_to_world(&b.corners, &affine),
                    ..b.clone()
                })
                .collect();
            sample.insert(world.clone(), Field::Boxes(Arc::new(mm)));
        }
        sample.insert(self.into.clone(), Field::Boxes(Arc::new(boxes)));
        Ok(sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    fn label() -> Sample {
        let mut l = Array3::<u8>::zeros([6, 5, 4]);
        l[[1, 1, 1]] = 2;
        l[[2, 2, 1]] = 1;
        l[[3, 2, 2]] = 4;
        l[[4, 3, 3]] = 2;
        let mut s = Sample::new("c");
        s.insert("label", Field::u8(l.into_dyn()));
        s
    }

    #[test]
    fn regions_follow_the_brats_definitions() {
        let stage: BratsRegions = serde_json::from_str("{}").unwrap();
        let out = stage
            .process(label(), &StageContext::new("brats_regions", 1, 0))
            .unwrap();
        let m = out.u8("label").unwrap();
        assert_eq!(m.shape(), &[3, 6, 5, 4]);
        let count = |c: usize| m.index_axis(Axis(0), c).iter().filter(|v| **v == 1).count();
        assert_eq!((count(0), count(1), count(2)), (2, 4, 1)); // TC, WT, ET
        assert_eq!(m[[2, 3, 2, 2]], 1);
        assert_eq!(m[[0, 1, 1, 1]], 0, "oedema is not tumour core");
    }

    #[test]
    fn a_label_outside_the_convention_is_refused_with_the_fix() {
        let mut s = label();
        s.u8_mut("label").unwrap()[[0, 0, 0]] = 3;
        let stage: BratsRegions = serde_json::from_str("{}").unwrap();
        let e = stage
            .process(s, &StageContext::new("brats_regions", 1, 0))
            .unwrap_err();
        assert_eq!(
            e.message,
            "label values [3] in `label` are not BraTS labels (0, 1, 2, 4) (set `convention: brats2023`, where enhancing tumour is 3)"
        );
    }

    #[test]
    fn boxes_from_regions_and_label_maps_agree() {
        let ctx = StageContext::new("boxes", 2, 0);
        let from_map: Boxes = serde_json::from_str(r#"{"from": "WT"}"#).unwrap();
        let a = from_map.process(label(), &ctx).unwrap();
        assert_eq!(
            a.boxes("boxes").unwrap()[0].corners,
            [1.0, 1.0, 1.0, 5.0, 4.0, 4.0]
        );

        let regions: BratsRegions = serde_json::from_str("{}").unwrap();
        let r = regions
            .process(label(), &StageContext::new("brats_regions", 1, 0))
            .unwrap();
        let b = from_map.process(r.clone(), &ctx).unwrap();
        assert_eq!(a.boxes("boxes").unwrap(), b.boxes("boxes").unwrap());

        let et: Boxes = serde_json::from_str(r#"{"from": "ET"}"#).unwrap();
        let e = et.process(r, &ctx).unwrap();
        assert_eq!(
            e.boxes("boxes").unwrap()[0].corners,
            [3.0, 2.0, 2.0, 4.0, 3.0, 3.0]
        );
        assert_eq!(
            e.boxes("boxes_mm").unwrap()[0].corners,
            [3.0, 2.0, 2.0, 3.0, 2.0, 2.0]
        );
    }

    #[test]
    fn an_empty_region_has_no_box() {
        let mut s = Sample::new("c");
        s.insert(
            "label",
            Field::u8(Array3::<u8>::zeros([3, 3, 3]).into_dyn()),
        );
        let stage: Boxes = serde_json::from_str("{}").unwrap();
        let out = stage.process(s, &StageContext::new("boxes", 1, 0)).unwrap();
        assert!(out.boxes("boxes").unwrap().is_empty());
    }
}
