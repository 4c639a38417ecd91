//! Mapping a whole sample back to the original image space: every volume through
//! [`to_original_space`], every box through the same recorded steps, and the metadata reset
//! so that later stages and sinks see one consistent space.

use std::sync::Arc;

use mtmed3d_pipeline::{BoundingBox, Field, Sample, SpatialOp, StageError};
use ndarray::{ArrayD, Axis, Ix4};

use crate::augment::rot90::rot90_ops;
use crate::augment::{permute_box, shape_after};
use crate::fields::{common_spatial_shape, volume_fields};
use crate::io::nifti_stages::to_original_space;
use crate::spatial::orientation::voxel_sizes;

/// A box (`[x1, y1, z1, x2, y2, z2]`, end exclusive) of a volume of spatial shape `shape`
/// mapped back through `history`, newest step first; `None` when nothing of it lies in the
/// original volume (a box found only in padding).
pub fn box_to_original(
    corners: &[f64; 6],
    shape: [usize; 3],
    history: &[SpatialOp],
) -> Result<Option<[f64; 6]>, StageError> {
    let mut c = *corners;
    let mut shape = shape;
    for op in history.iter().rev() {
        match op {
            SpatialOp::Crop {
                start,
                shape_before,
                ..
            } => {
                for a in 0..3 {
                    let n = shape_before[a] as f64;
                    c[a] = (c[a] + start[a] as f64).clamp(0.0, n);
                    c[a + 3] = (c[a + 3] + start[a] as f64).clamp(0.0, n);
                }
                if (0..3).any(|a| c[a + 3] <= c[a]) {
                    return Ok(None);
                }
                shape = *shape_before;
            }
            SpatialOp::Reorient {
                perm,
                flip,
                shape_before,
            } => {
                // Forward: output axis o is input axis perm[o], reversed when flip[o].
                let mut back = [0.0; 6];
                for o in 0..3 {
                    let i = perm[o];
                    let n = shape_before[i] as f64;
                    let (lo, hi) = if flip[o] {
                        (n - c[o + 3], n - c[o])
                    } else {
                        (c[o], c[o + 3])
                    };
                    back[i] = lo;
                    back[i + 3] = hi;
                }
                c = back;
                shape = *shape_before;
            }
            SpatialOp::Flip { axes } => {
                for &a in axes {
                    let n = shape[a] as f64;
                    (c[a], c[a + 3]) = (n - c[a + 3], n - c[a]);
                }
            }
            SpatialOp::Rot90 { k, plane } => {
                // Undo k quarter turns with 4 − k more in the same plane.
                let ops = rot90_ops((4 - k % 4) % 4, *plane);
                c = permute_box(&c, shape, &ops);
                shape = shape_after(shape, &ops);
            }
            SpatialOp::Resample { description, .. } => {
                return Err(StageError::new(format!(
                    "cannot map boxes back to the original space exactly through `{description}`; \
                     infer with `space: current`"
                )));
            }
        }
    }
    Ok(Some(c))
}

/// Every box of `boxes` through [`box_to_original`]; boxes found only in padding are left out.
pub fn boxes_to_original(
    boxes: &[BoundingBox],
    shape: [usize; 3],
    history: &[SpatialOp],
) -> Result<Vec<BoundingBox>, StageError> {
    let mut moved = Vec::with_capacity(boxes.len());
    for b in boxes {
        if let Some(corners) = box_to_original(&b.corners, shape, history)? {
            moved.push(BoundingBox {
                corners,
                ..b.clone()
            });
        }
    }
    Ok(moved)
}

/// Maps every volume and box field of `sample` back to the space the image was read in,
/// then sets `meta.affine` to the original affine, the spacing to its voxel sizes and
/// empties the history.
pub fn sample_to_original(sample: &mut Sample) -> Result<(), StageError> {
    if sample.meta.history.is_empty() {
        return Ok(());
    }
    let history = sample.meta.history.clone();
    let names = volume_fields(sample, None);
    let shape = common_spatial_shape(sample, &names)?;
    for name in &names {
        let moved = match sample.get(name) {
            Some(Field::F32(a)) => Field::f32(back(a, &history)?),
            Some(Field::U8(a)) => Field::u8(back(a, &history)?),
            _ => continue,
        };
        sample.insert(name.clone(), moved);
    }
    let box_fields: Vec<String> = sample
        .fields()
        .filter(|(_, f)| matches!(f, Field::Boxes(_)))
        .map(|(n, _)| n.to_string())
        .collect();
    for name in box_fields {
        let moved = boxes_to_original(sample.boxes(&name)?, shape, &history)?;
        sample.insert(name, Field::Boxes(Arc::new(moved)));
    }
    sample.meta.affine = sample.meta.original_affine;
    sample.meta.spacing = voxel_sizes(&sample.meta.original_affine);
    sample.meta.history.clear();
    Ok(())
}

/// One volume (`X×Y×Z` or `C×X×Y×Z`) through [`to_original_space`].
fn back<T: Clone + Default + Send + Sync>(
    a: &ArrayD<T>,
    history: &[SpatialOp],
) -> Result<ArrayD<T>, StageError> {
    let three = a.ndim() == 3;
    let four = if three {
        a.clone().insert_axis(Axis(0))
    } else {
        a.clone()
    }
    .into_dimensionality::<Ix4>()
    .map_err(|_| StageError::new("only X×Y×Z and C×X×Y×Z volumes can be mapped back"))?;
    let out = to_original_space(four, history)?.into_dyn();
    Ok(if three {
        out.index_axis_move(Axis(0), 0)
    } else {
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::mask_box;
    use mtmed3d_pipeline::{BuildContext, StageConfig, StageContext};
    use ndarray::{Array3, IxDyn};

    fn run<C: StageConfig>(config: serde_json::Value, sample: Sample) -> Sample {
        let stage: C = serde_json::from_value(config).unwrap();
        stage
            .build(&BuildContext::default())
            .unwrap()
            .process(sample, &StageContext::new(C::NAME, 1, 3))
            .unwrap()
    }

    #[test]
    fn boxes_and_masks_map_back_together_through_every_exact_step() {
        // an LPS volume of non-multiple size with a blob in one corner
        let shape = [21, 17, 13];
        let mut original = Sample::new("case");
        let mask = Array3::from_shape_fn(shape, |(x, y, z)| {
            u8::from((3..9).contains(&x) && (10..15).contains(&y) && (2..6).contains(&z))
        });
        let mut affine = mtmed3d_pipeline::sample::IDENTITY;
        affine[0][0] = -1.0;
        affine[1][1] = -1.2;
        affine[2][2] = 2.5;
        original.meta.affine = affine;
        original.meta.original_affine = affine;
        original.meta.original_shape = Some(shape);
        original.meta.spacing = [1.0, 1.2, 2.5];
        original.insert("mask", Field::u8(mask.clone().into_dyn()));
        original.insert(
            "image",
            Field::f32(ArrayD::from_shape_fn(IxDyn(&[2, 21, 17, 13]), |i| {
                (i[0] * 10_000 + i[1] * 400 + i[2] * 20 + i[3]) as f32
            })),
        );

        let mut s = run::<crate::spatial::reorient::Reorient>(
            serde_json::json!({"axcodes": "RAS"}),
            original.clone(),
        );
        s = run::<crate::spatial::crop::Crop>(
            serde_json::json!({"mode": "center", "size": [15, 20, 11]}),
            s,
        );
        s = run::<crate::augment::RandFlip>(serde_json::json!({"prob": 1.0, "axes": [0, 2]}), s);
        s = run::<crate::augment::RandRot90>(
            serde_json::json!({"prob": 1.0, "plane": [0, 1], "max_k": 3}),
            s,
        );
        assert_eq!(s.meta.history.len(), 4, "{:?}", s.meta.history);

        // the box of the mask in the current space, as a prediction would be
        let current = mask_box(s.u8("mask").unwrap().view(), |v| *v != 0).unwrap();
        s.insert(
            "pred_boxes",
            Field::Boxes(Arc::new(vec![BoundingBox {
                corners: current,
                class: 0,
                score: Some(0.9),
            }])),
        );
        sample_to_original(&mut s).unwrap();

        assert!(s.meta.history.is_empty());
        assert_eq!(s.meta.affine, affine);
        for (got, want) in s.meta.spacing.iter().zip([1.0, 1.2, 2.5]) {
            assert!((got - want).abs() < 1e-12, "{:?}", s.meta.spacing);
        }
        let back = s.u8("mask").unwrap();
        assert_eq!(back.shape(), &shape);
        let boxes = s.boxes("pred_boxes").unwrap();
        assert_eq!(boxes.len(), 1);
        assert_eq!(boxes[0].score, Some(0.9));
        // the box mapped back equals the box of the mask mapped back, and of the input mask
        // (the crop kept the whole blob)
        let expected = mask_box(back.view(), |v| *v != 0).unwrap();
        assert_eq!(boxes[0].corners, expected);
        assert_eq!(expected, [3.0, 10.0, 2.0, 9.0, 15.0, 6.0]);
        assert_eq!(back, &mask.into_dyn());
    }

    #[test]
    fn a_box_only_in_padding_is_dropped_and_resampling_is_refused() {
        let history = vec![SpatialOp::Crop {
            start: [-4, 0, 0],
            shape_before: [10, 10, 10],
            shape_after: [14, 10, 10],
        }];
        let padding = [0.0, 2.0, 2.0, 3.0, 5.0, 5.0];
        assert_eq!(
            box_to_original(&padding, [14, 10, 10], &history).unwrap(),
            None
        );
        let straddling = [2.0, 2.0, 2.0, 7.0, 5.0, 5.0];
        assert_eq!(
            box_to_original(&straddling, [14, 10, 10], &history).unwrap(),
            Some([0.0, 2.0, 2.0, 3.0, 5.0, 5.0])
        );
        let rotated = vec![SpatialOp::Resample {
            description: "rand_rotate".into(),
            shape_before: [10, 10, 10],
        }];
        let err = box_to_original(&padding, [10, 10, 10], &rotated).unwrap_err();
        assert!(err.to_string().contains("rand_rotate"), "{err}");
    }
}
