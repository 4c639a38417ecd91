//! Post-processing of predicted masks.
//!
//! ```yaml
//! - infer: {checkpoint: runs/demo/train/best.ckpt}
//! - keep_largest_component: {field: pred_label}      # drop stray false-positive islands
//! ```
//!
//! `keep_largest_component` is MONAI's `KeepLargestConnectedComponent` (and nnU-Net's
//! "remove all but the largest component") for a label map: every labelled voxel is
//! foreground, whatever its label, and the voxels outside the largest connected piece of
//! foreground become background. A tumour is one piece; islands elsewhere are false
//! positives of windows that saw no tumour, and they cost Dice and, far more, HD95. On a
//! `C×X×Y×Z` mask each channel is treated on its own. Ties go to the component met first in
//! memory order, so the result is deterministic.

use mtmed3d_pipeline::{
    BuildContext, Component, Problem, Sample, Stage, StageConfig, StageContext, StageError,
};
use ndarray::{ArrayViewMut3, Axis};
use schemars::JsonSchema;
use serde::Deserialize;

/// Keeps the largest connected component of a label map's foreground.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeepLargestComponent {
    /// The u8 label map (X×Y×Z) or masks (C×X×Y×Z) to clean.
    #[serde(default = "default_field")]
    pub field: String,
    /// Neighbours that connect: 6 (faces), 18 (faces and edges) or 26 (also corners; MONAI's
    /// default for 3D).
    #[serde(default = "default_connectivity")]
    pub connectivity: u8,
}

fn default_field() -> String {
    "pred_label".into()
}
fn default_connectivity() -> u8 {
    26
}

impl Component for KeepLargestComponent {
    const NAME: &'static str = "keep_largest_component";
    const DOC: &'static str = "Keeps the largest connected component of a predicted label map's foreground (any nonzero label) and clears the rest, as MONAI's KeepLargestConnectedComponent; C×X×Y×Z masks per channel.";
    fn reads(&self) -> Vec<String> {
        vec![self.field.clone()]
    }
    fn writes(&self) -> Vec<String> {
        vec![self.field.clone()]
    }
    fn check(&self) -> Vec<Problem> {
        if [6, 18, 26].contains(&self.connectivity) {
            vec![]
        } else {
            vec![Problem::param(
                "connectivity",
                format!("connectivity {} is not 6, 18 or 26", self.connectivity),
            )]
        }
    }
}

impl StageConfig for KeepLargestComponent {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

impl Stage for KeepLargestComponent {
    fn process(&self, mut sample: Sample, _: &StageContext) -> Result<Sample, StageError> {
        let connectivity = self.connectivity;
        let field = self.field.clone();
        let mask = sample.u8_mut(&field)?;
        match mask.ndim() {
            3 => {
                keep_largest(
                    mask.view_mut()
                        .into_dimensionality()
                        .expect("three axes checked"),
                    connectivity,
                );
            }
            4 => {
                for channel in mask.axis_iter_mut(Axis(0)) {
                    keep_largest(
                        channel.into_dimensionality().expect("three axes left"),
                        connectivity,
                    );
                }
            }
            _ => {
                return Err(StageError::new(format!(
                    "`{field}` has shape {:?}; keep_largest_component needs X×Y×Z or C×X×Y×Z",
                    mask.shape()
                )));
            }
        }
        Ok(sample)
    }
}

/// The neighbour offsets of a connectivity (6, 18 or 26).
fn neighbours(connectivity: u8) -> Vec<[isize; 3]> {
    let mut offsets = Vec::new();
    for dx in -1isize..=1 {
        for dy in -1isize..=1 {
            for dz in -1isize..=1 {
                let steps = dx.abs() + dy.abs() + dz.abs();
                let connected = match connectivity {
                    6 => steps == 1,
                    18 => steps == 1 || steps == 2,
                    _ => steps >= 1,
                };
                if connected {
                    offsets.push([dx, dy, dz]);
                }
            }
        }
    }
    offsets
}

/// Labels the foreground's connected components and clears all but the largest. Returns the
/// number of components found.
pub fn keep_largest(mut mask: ArrayViewMut3<'_, u8>, connectivity: u8) -> usize {
    let [nx, ny, nz] = [mask.shape()[0], mask.shape()[1], mask.shape()[2]];
    let n = nx * ny * nz;
    // Component of each voxel, 0 for background; filled by a flood from each unlabelled voxel.
    let mut component = vec![0u32; n];
    let mut sizes: Vec<usize> = Vec::new();
    let offsets = neighbours(connectivity);
    let index = |x: usize, y: usize, z: usize| (x * ny + y) * nz + z;
    let mut stack = Vec::new();
    for x in 0..nx {
        for y in 0..ny {
            for z in 0..nz {
                if mask[[x, y, z]] == 0 || component[index(x, y, z)] != 0 {
                    continue;
                }
                let id = sizes.len() as u32 + 1;
                let mut size = 0;
                component[index(x, y, z)] = id;
                stack.push([x, y, z]);
                while let Some([cx, cy, cz]) = stack.pop() {
                    size += 1;
                    for [dx, dy, dz] in &offsets {
                        let (Some(px), Some(py), Some(pz)) = (
                            cx.checked_add_signed(*dx).filter(|&v| v < nx),
                            cy.checked_add_signed(*dy).filter(|&v| v < ny),
                            cz.checked_add_signed(*dz).filter(|&v| v < nz),
                        ) else {
                            continue;
                        };
                        let at = index(px, py, pz);
                        if mask[[px, py, pz]] != 0 && component[at] == 0 {
                            component[at] = id;
                            stack.push([px, py, pz]);
                        }
                    }
                }
                sizes.push(size);
            }
        }
    }
    if sizes.len() > 1 {
        // The first of the largest, so ties resolve the same way every run.
        let largest = sizes
            .iter()
            .enumerate()
            .fold(0, |best, (i, &s)| if s > sizes[best] { i } else { best })
            as u32
            + 1;
        for ((x, y, z), v) in mask.indexed_iter_mut() {
            if *v != 0 && component[index(x, y, z)] != largest {
                *v = 0;
            }
        }
    }
    sizes.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mtmed3d_pipeline::Field;
    use ndarray::{Array3, ArrayD, IxDyn};

    #[test]
    fn keeps_the_largest_island_with_its_labels() {
        let mut mask = Array3::<u8>::zeros([8, 8, 8]);
        // A 3×3×3 tumour with a core label, and two stray islands of 2 voxels and 1 voxel.
        for x in 1..4 {
            for y in 1..4 {
                for z in 1..4 {
                    mask[[x, y, z]] = 2;
                }
            }
        }
        mask[[2, 2, 2]] = 4;
        mask[[6, 6, 6]] = 2;
        mask[[6, 6, 7]] = 1;
        mask[[0, 7, 0]] = 4;
        let found = keep_largest(mask.view_mut(), 26);
        assert_eq!(found, 3);
        assert_eq!(mask.iter().filter(|&&v| v != 0).count(), 27);
        assert_eq!(
            mask[[2, 2, 2]],
            4,
            "labels inside the kept component are untouched"
        );
        assert_eq!(mask[[6, 6, 6]], 0);
        assert_eq!(mask[[0, 7, 0]], 0);
    }

    #[test]
    fn connectivity_decides_whether_diagonal_voxels_join() {
        // Two 2-voxel runs touching only at a corner, and a 3-voxel run apart.
        let make = || {
            let mut m = Array3::<u8>::zeros([6, 6, 6]);
            m[[0, 0, 0]] = 1;
            m[[0, 0, 1]] = 1;
            m[[1, 1, 2]] = 1;
            m[[1, 1, 3]] = 1;
            m[[4, 4, 0]] = 1;
            m[[4, 4, 1]] = 1;
            m[[4, 4, 2]] = 1;
            m
        };
        let mut corners = make();
        assert_eq!(keep_largest(corners.view_mut(), 26), 2);
        assert_eq!(corners.iter().filter(|&&v| v != 0).count(), 4);
        assert_eq!(corners[[4, 4, 0]], 0);
        let mut faces = make();
        assert_eq!(keep_largest(faces.view_mut(), 6), 3);
        assert_eq!(faces.iter().filter(|&&v| v != 0).count(), 3);
        assert_eq!(faces[[4, 4, 2]], 1);
        // An edge (two steps) joins at 18 but not at 6.
        let mut edge = Array3::<u8>::zeros([3, 3, 3]);
        edge[[0, 0, 0]] = 1;
        edge[[1, 1, 0]] = 1;
        assert_eq!(keep_largest(edge.clone().view_mut(), 18), 1);
        assert_eq!(keep_largest(edge.view_mut(), 6), 2);
    }

    #[test]
    fn the_stage_cleans_label_maps_and_each_channel_and_rejects_other_shapes() {
        let stage = KeepLargestComponent {
            field: "pred_label".into(),
            connectivity: 26,
        };
        let ctx = StageContext::new("keep_largest_component", 1, 0);
        let mut masks = ArrayD::<u8>::zeros(IxDyn(&[2, 5, 5, 5]));
        masks[[0, 0, 0, 0]] = 1;
        masks[[0, 3, 3, 3]] = 1;
        masks[[0, 3, 3, 4]] = 1;
        masks[[1, 0, 0, 0]] = 1;
        masks[[1, 0, 0, 1]] = 1;
        masks[[1, 4, 4, 4]] = 1;
        let mut sample = Sample::new("case");
        sample.insert("pred_label", Field::u8(masks));
        let out = stage.process(sample, &ctx).unwrap();
        let cleaned = out.u8("pred_label").unwrap();
        assert_eq!(cleaned[[0, 0, 0, 0]], 0);
        assert_eq!(cleaned[[0, 3, 3, 4]], 1);
        assert_eq!(cleaned[[1, 0, 0, 1]], 1);
        assert_eq!(cleaned[[1, 4, 4, 4]], 0);

        let mut flat = Sample::new("case");
        flat.insert("pred_label", Field::u8(ArrayD::zeros(IxDyn(&[4, 4]))));
        let e = stage.process(flat, &ctx).unwrap_err();
        assert!(
            e.message.contains("needs X×Y×Z or C×X×Y×Z"),
            "{}",
            e.message
        );
        let bad = KeepLargestComponent {
            connectivity: 8,
            ..stage.clone()
        };
        assert_eq!(bad.check()[0].param.as_deref(), Some("connectivity"));
    }
}
