//! One case flowing through a pipeline: an id, metadata, and named fields.
//!
//! Volumes sit behind `Arc`, so moving a sample between stages never copies voxels, and
//! fanning a sample out to several sinks shares them. A stage that modifies a volume gets it
//! through [`Sample::f32_mut`] / [`Sample::u8_mut`], which copy only when another holder
//! (another sink's branch) still shares it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use ndarray::ArrayD;
use serde::{Deserialize, Serialize};

use crate::error::StageError;
use crate::runtime::InFlightToken;

/// A 4×4 voxel-to-world matrix (RAS+ millimetres, as nibabel and NIfTI define it).
pub type Affine = [[f64; 4]; 4];

pub const IDENTITY: Affine = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
];

/// An axis-aligned box in voxels, `[x1, y1, z1, x2, y2, z2]` with `x2` = last index + 1 (as
/// MONAI's mask-to-box), with a class and an optional score (predictions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoundingBox {
    pub corners: [f64; 6],
    #[serde(default)]
    pub class: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
}

/// One spatial step applied to a sample, recorded so outputs can be mapped back to the
/// original image space. Shapes are spatial (X, Y, Z).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SpatialOp {
    /// Axes permuted then flipped: output axis `i` is input axis `perm[i]`, reversed when
    /// `flip[i]`.
    Reorient {
        perm: [usize; 3],
        flip: [bool; 3],
        shape_before: [usize; 3],
    },
    /// A crop (negative start or an end past the shape means padding).
    Crop {
        start: [i64; 3],
        shape_before: [usize; 3],
        shape_after: [usize; 3],
    },
    Flip {
        axes: Vec<usize>,
    },
    Rot90 {
        k: u8,
        plane: [usize; 2],
    },
    /// A resampling step that cannot be undone exactly (rotation, zoom).
    Resample {
        description: String,
        shape_before: [usize; 3],
    },
}

/// Case metadata that travels with the sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// Current voxel-to-world affine of the spatial fields.
    pub affine: Affine,
    /// Affine and spatial shape of the image as it was read.
    pub original_affine: Affine,
    pub original_shape: Option<[usize; 3]>,
    pub spacing: [f64; 3],
    /// Source files by role (`t1`, `seg`, …).
    pub sources: BTreeMap<String, PathBuf>,
    /// Spatial steps applied so far, oldest first.
    pub history: Vec<SpatialOp>,
    /// Anything else a stage wants to carry (grade, dataset name, …).
    pub attrs: BTreeMap<String, serde_json::Value>,
}

impl Default for Meta {
    fn default() -> Self {
        Meta {
            affine: IDENTITY,
            original_affine: IDENTITY,
            original_shape: None,
            spacing: [1.0; 3],
            sources: BTreeMap::new(),
            history: Vec::new(),
            attrs: BTreeMap::new(),
        }
    }
}

/// A named value carried by a sample.
#[derive(Debug, Clone)]
pub enum Field {
    /// An image-like volume (`C×X×Y×Z` for images).
    F32(Arc<ArrayD<f32>>),
    /// A label-like volume (`X×Y×Z` label map or `C×X×Y×Z` region masks).
    U8(Arc<ArrayD<u8>>),
    Boxes(Arc<Vec<BoundingBox>>),
    Number(f64),
    Text(String),
    Json(Arc<serde_json::Value>),
}

impl Field {
    pub fn f32(array: ArrayD<f32>) -> Self {
        Field::F32(Arc::new(array))
    }

    pub fn u8(array: ArrayD<u8>) -> Self {
        Field::U8(Arc::new(array))
    }

    /// A short description of the kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Field::F32(_) => "f32 volume",
            Field::U8(_) => "u8 volume",
            Field::Boxes(_) => "boxes",
            Field::Number(_) => "number",
            Field::Text(_) => "text",
            Field::Json(_) => "json",
        }
    }

    /// The shape of a volume field.
    pub fn shape(&self) -> Option<&[usize]> {
        match self {
            Field::F32(a) => Some(a.shape()),
            Field::U8(a) => Some(a.shape()),
            _ => None,
        }
    }
}

/// One case (or one piece of a case, such as a patch) in flight.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Case id; pieces of a case append a suffix (`Case_001#p3`).
    pub id: String,
    /// Epoch the sample belongs to (0 for single-pass pipelines).
    pub epoch: u32,
    /// Position in the run's feed order (epoch-major, counting from 0), set by the runtime.
    /// Samples arrive at later stages in an order that depends on thread timing; a consumer
    /// that must see a fixed order (training) sorts by `seq`. Pieces keep their case's `seq`.
    pub seq: u64,
    /// The cache key of this case when the pipeline has a `cache` stage and the source could
    /// identify the case's inputs (set by the runtime before the source loads it).
    pub cache_key: Option<String>,
    /// True when the sample was read from the cache and skipped the stages before it.
    pub cache_hit: bool,
    pub meta: Meta,
    fields: BTreeMap<String, Field>,
    pub(crate) token: Option<Arc<InFlightToken>>,
}

impl Sample {
    pub fn new(id: impl Into<String>) -> Self {
        Sample {
            id: id.into(),
            epoch: 0,
            seq: 0,
            cache_key: None,
            cache_hit: false,
            meta: Meta::default(),
            fields: BTreeMap::new(),
            token: None,
        }
    }

    /// A copy sharing the volumes but not the run's bookkeeping, for a component that keeps
    /// samples beyond their trip through the pipeline (a cache, a background writer): the
    /// original still completes when it leaves the pipeline.
    pub fn detached(&self) -> Sample {
        let mut copy = self.clone();
        copy.token = None;
        copy
    }

    /// The case this sample belongs to (the id without any piece suffix).
    pub fn case_id(&self) -> &str {
        self.id.split('#').next().unwrap_or(&self.id)
    }

    /// A new sample for a piece of this case (a patch, a crop), sharing its bookkeeping so
    /// that the case counts as done only when every piece is.
    pub fn derive(&self, suffix: impl std::fmt::Display) -> Sample {
        let mut piece = self.clone();
        piece.id = format!("{}#{suffix}", self.case_id());
        piece
    }

    pub fn insert(&mut self, name: impl Into<String>, field: Field) -> Option<Field> {
        self.fields.insert(name.into(), field)
    }

    pub fn remove(&mut self, name: &str) -> Option<Field> {
        self.fields.remove(name)
    }

    pub fn get(&self, name: &str) -> Option<&Field> {
        self.fields.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.fields.contains_key(name)
    }

    pub fn field_names(&self) -> impl Iterator<Item = &str> {
        self.fields.keys().map(String::as_str)
    }

    pub fn fields(&self) -> impl Iterator<Item = (&str, &Field)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Bytes held by the sample's volumes and boxes (what `max_in_flight_bytes` budgets).
    /// A volume shared with another holder counts in full for each.
    pub fn volume_bytes(&self) -> u64 {
        self.fields
            .values()
            .map(|f| match f {
                Field::F32(a) => a.len() * std::mem::size_of::<f32>(),
                Field::U8(a) => a.len(),
                Field::Boxes(b) => b.len() * std::mem::size_of::<BoundingBox>(),
                Field::Number(_) | Field::Text(_) | Field::Json(_) => 0,
            } as u64)
            .sum()
    }

    fn field(&self, name: &str) -> Result<&Field, StageError> {
        self.fields.get(name).ok_or_else(|| {
            StageError::new(format!(
                "field `{name}` is missing (present: {})",
                self.present()
            ))
        })
    }

    fn present(&self) -> String {
        if self.fields.is_empty() {
            "none".into()
        } else {
            self.fields.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    }

    fn wrong_kind(&self, name: &str, expected: &str) -> StageError {
        let found = self.fields.get(name).map(Field::kind).unwrap_or("nothing");
        StageError::new(format!(
            "field `{name}` is a {found}, expected a {expected}"
        ))
    }

    pub fn f32(&self, name: &str) -> Result<&ArrayD<f32>, StageError> {
        match self.field(name)? {
            Field::F32(a) => Ok(a),
            _ => Err(self.wrong_kind(name, "f32 volume")),
        }
    }

    pub fn u8(&self, name: &str) -> Result<&ArrayD<u8>, StageError> {
        match self.field(name)? {
            Field::U8(a) => Ok(a),
            _ => Err(self.wrong_kind(name, "u8 volume")),
        }
    }

    /// Mutable access; copies the voxels only if another branch still shares them.
    pub fn f32_mut(&mut self, name: &str) -> Result<&mut ArrayD<f32>, StageError> {
        if !matches!(self.field(name)?, Field::F32(_)) {
            return Err(self.wrong_kind(name, "f32 volume"));
        }
        match self.fields.get_mut(name) {
            Some(Field::F32(a)) => Ok(Arc::make_mut(a)),
            _ => unreachable!("checked above"),
        }
    }

    /// Mutable access; copies the voxels only if another branch still shares them.
    pub fn u8_mut(&mut self, name: &str) -> Result<&mut ArrayD<u8>, StageError> {
        if !matches!(self.field(name)?, Field::U8(_)) {
            return Err(self.wrong_kind(name, "u8 volume"));
        }
        match self.fields.get_mut(name) {
            Some(Field::U8(a)) => Ok(Arc::make_mut(a)),
            _ => unreachable!("checked above"),
        }
    }

    pub fn boxes(&self, name: &str) -> Result<&[BoundingBox], StageError> {
        match self.field(name)? {
            Field::Boxes(b) => Ok(b),
            _ => Err(self.wrong_kind(name, "list of boxes")),
        }
    }

    pub fn number(&self, name: &str) -> Result<f64, StageError> {
        match self.field(name)? {
            Field::Number(x) => Ok(*x),
            _ => Err(self.wrong_kind(name, "number")),
        }
    }

    pub fn text(&self, name: &str) -> Result<&str, StageError> {
        match self.field(name)? {
            Field::Text(t) => Ok(t),
            _ => Err(self.wrong_kind(name, "text")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    #[test]
    fn cloning_shares_voxels_and_mutation_copies_only_when_shared() {
        let mut a = Sample::new("case_1");
        a.insert("image", Field::f32(ArrayD::zeros(IxDyn(&[1, 4, 4, 4]))));
        let b = a.clone();
        let pa = a.f32("image").unwrap().as_ptr();
        assert_eq!(pa, b.f32("image").unwrap().as_ptr(), "clone must share");
        a.f32_mut("image").unwrap()[[0, 1, 1, 1]] = 5.0;
        assert_ne!(
            a.f32("image").unwrap().as_ptr(),
            pa,
            "shared data was copied"
        );
        assert_eq!(b.f32("image").unwrap()[[0, 1, 1, 1]], 0.0);
        drop(b);
        let p = a.f32("image").unwrap().as_ptr();
        a.f32_mut("image").unwrap()[[0, 0, 0, 0]] = 1.0;
        assert_eq!(
            a.f32("image").unwrap().as_ptr(),
            p,
            "sole owner mutates in place"
        );
    }

    #[test]
    fn missing_and_mistyped_fields_name_the_field() {
        let mut s = Sample::new("c");
        s.insert("label", Field::u8(ArrayD::zeros(IxDyn(&[2, 2, 2]))));
        let e = s.f32("image").unwrap_err().to_string();
        assert_eq!(e, "field `image` is missing (present: label)");
        let e = s.f32("label").unwrap_err().to_string();
        assert_eq!(e, "field `label` is a u8 volume, expected a f32 volume");
    }

    #[test]
    fn pieces_keep_the_case_id() {
        let s = Sample::new("BraTS_001");
        let p = s.derive("p3");
        assert_eq!(p.id, "BraTS_001#p3");
        assert_eq!(p.case_id(), "BraTS_001");
        assert_eq!(p.derive("q").id, "BraTS_001#q");
    }
}
