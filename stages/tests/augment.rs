//! Augmentation stages on whole samples: voxels, labels, boxes and the affine must move
//! together, draws must come from the sample alone, and the numbers must match numpy's and
//! MONAI's definitions.

use std::collections::BTreeSet;
use std::sync::Arc;

use mtmed3d_pipeline::{
    Affine, BoundingBox, BuildContext, Field, Sample, SpatialOp, Stage, StageConfig, StageContext,
};
use mtmed3d_stages::augment::rot90::rot90_ops;
use mtmed3d_stages::augment::rotate::{Padding, rotate_sample};
use mtmed3d_stages::augment::{
    RandFlip, RandIntensity, RandRot90, RandRotate, permute_sample, shape_after,
};
use ndarray::{Array3, ArrayD, Dimension, IxDyn, array};

const SHAPE: [usize; 3] = [9, 7, 5];
/// A voxel marked in both the image and the label, off every symmetry axis.
const MARK: [usize; 3] = [1, 5, 3];
const MARK_VALUE: f32 = 1000.0;

/// An oblique, anisotropic affine, so that a wrong column or offset shows.
const AFFINE: Affine = [
    [0.5, 0.25, 0.0, -30.0],
    [0.0, 1.5, -0.25, 12.0],
    [0.125, 0.0, 2.0, 7.5],
    [0.0, 0.0, 0.0, 1.0],
];

/// Two image channels, a label map with a tumour blob and the marked voxel, a box field
/// computed from the label, and an oblique affine.
fn sample(id: &str) -> Sample {
    let [nx, ny, nz] = SHAPE;
    let mut image = ArrayD::from_shape_fn(IxDyn(&[2, nx, ny, nz]), |d| {
        (d[0] * 1000 + d[1] * 100 + d[2] * 10 + d[3]) as f32 / 7.0
    });
    image[[1, MARK[0], MARK[1], MARK[2]]] = MARK_VALUE;
    let mut label = Array3::<u8>::zeros((nx, ny, nz));
    for x in 4..7 {
        for y in 1..3 {
            for z in 0..4 {
                label[[x, y, z]] = 2;
            }
        }
    }
    label[[5, 2, 1]] = 4;
    label[MARK] = 1;
    let label = label.into_dyn();
    let mut s = Sample::new(id);
    s.insert("image", Field::f32(image));
    let boxes = vec![BoundingBox {
        corners: mask_to_box(&label),
        class: 0,
        score: None,
    }];
    s.insert("label", Field::u8(label));
    s.insert("boxes", Field::Boxes(Arc::new(boxes)));
    s.meta.affine = AFFINE;
    s
}

/// MONAI's mask-to-box: first nonzero index and last nonzero index + 1 per spatial axis.
fn mask_to_box(label: &ArrayD<u8>) -> [f64; 6] {
    let mut lo = [usize::MAX; 3];
    let mut hi = [0; 3];
    for (idx, &v) in label.indexed_iter() {
        if v != 0 {
            let n = idx.ndim();
            for a in 0..3 {
                lo[a] = lo[a].min(idx[n - 3 + a]);
                hi[a] = hi[a].max(idx[n - 3 + a] + 1);
            }
        }
    }
    [
        lo[0] as f64,
        lo[1] as f64,
        lo[2] as f64,
        hi[0] as f64,
        hi[1] as f64,
        hi[2] as f64,
    ]
}

fn world(a: &Affine, v: [usize; 3]) -> [f64; 3] {
    std::array::from_fn(|r| a[r][3] + (0..3).map(|c| a[r][c] * v[c] as f64).sum::<f64>())
}

fn assert_close(a: [f64; 3], b: [f64; 3], tol: f64) {
    for r in 0..3 {
        assert!((a[r] - b[r]).abs() < tol, "{a:?} vs {b:?}");
    }
}

fn assert_affine_close(a: &Affine, b: &Affine, tol: f64) {
    let close = a
        .iter()
        .flatten()
        .zip(b.iter().flatten())
        .all(|(x, y)| (x - y).abs() < tol);
    assert!(close, "{a:?} vs {b:?}");
}

fn positions<T: PartialEq + Copy>(a: &ArrayD<T>, value: T) -> Vec<Vec<usize>> {
    a.indexed_iter()
        .filter(|(_, v)| **v == value)
        .map(|(i, _)| i.slice().to_vec())
        .collect()
}

fn build(config: &impl StageConfig) -> Box<dyn Stage> {
    assert!(config.check().is_empty());
    config.build(&BuildContext::default()).unwrap()
}

/// The invariants every exact spatial move must keep: the label's box is the moved box, the
/// marked voxel is at the same place in image and label, and it keeps its world position.
fn assert_moved_consistently(s: &Sample) {
    let label = s.u8("label").unwrap();
    assert_eq!(
        s.boxes("boxes").unwrap()[0].corners,
        mask_to_box(label),
        "box no longer bounds the label"
    );
    let in_label = positions(label, 1);
    assert_eq!(in_label.len(), 1);
    let v = [in_label[0][0], in_label[0][1], in_label[0][2]];
    let image = s.f32("image").unwrap();
    assert_eq!(
        positions(image, MARK_VALUE),
        vec![vec![1, v[0], v[1], v[2]]]
    );
    assert_close(world(&s.meta.affine, v), world(&AFFINE, MARK), 1e-9);
    assert!(image.is_standard_layout() && label.is_standard_layout());
}

fn flip_all() -> RandFlip {
    RandFlip {
        prob: 1.0,
        ..RandFlip::default()
    }
}

/// Named after the stage family, so that `cargo test augment` selects these tests.
mod augment {
    use super::*;

    #[test]
    fn flip_moves_image_label_boxes_and_affine_together() {
        let stage = build(&flip_all());
        let ctx = StageContext::new("rand_flip", 3, 42);
        let before = sample("case_001");
        let s = stage.process(before.clone(), &ctx).unwrap();
        assert_moved_consistently(&s);
        assert_eq!(s.u8("label").unwrap()[[9 - 1 - 1, 7 - 1 - 5, 5 - 1 - 3]], 1);
        // The label's box [1,1,0, 7,6,4] mirrored in a 9×7×5 volume.
        let b = &s.boxes("boxes").unwrap()[0];
        assert_eq!(b.corners, [2.0, 1.0, 1.0, 8.0, 6.0, 5.0]);
        assert_eq!(b.class, 0);
        assert_eq!(
            s.meta.history,
            vec![SpatialOp::Flip {
                axes: vec![0, 1, 2]
            }]
        );
        // The first channel moved too: voxel (0, x, y, z) came from (0, 8-x, 6-y, 4-z).
        let (a, out) = (before.f32("image").unwrap(), s.f32("image").unwrap());
        assert_eq!(out[[0, 2, 3, 4]], a[[0, 6, 3, 0]]);
    }

    #[test]
    fn flip_on_each_axis_keeps_boxes_and_world_positions() {
        for axis in 0..3 {
            let stage = build(&RandFlip {
                prob: 1.0,
                axes: vec![axis],
                fields: None,
            });
            let s = stage
                .process(sample("case_001"), &StageContext::new("rand_flip", 3, 42))
                .unwrap();
            assert_moved_consistently(&s);
            assert_eq!(s.meta.history, vec![SpatialOp::Flip { axes: vec![axis] }]);
        }
    }

    #[test]
    fn the_same_flip_twice_restores_the_sample_exactly() {
        let stage = build(&RandFlip::default());
        let ctx = StageContext::new("rand_flip", 3, 42);
        let mut flipped_any = 0;
        for i in 0..12 {
            let original = sample(&format!("case_{i:03}"));
            let once = stage.process(original.clone(), &ctx).unwrap();
            // Same id, same stage, same seed: the same axes are drawn again.
            let twice = stage.process(once.clone(), &ctx).unwrap();
            assert_eq!(twice.f32("image").unwrap(), original.f32("image").unwrap());
            assert_eq!(twice.u8("label").unwrap(), original.u8("label").unwrap());
            assert_eq!(
                twice.boxes("boxes").unwrap(),
                original.boxes("boxes").unwrap()
            );
            assert_affine_close(&twice.meta.affine, &AFFINE, 1e-12);
            if !once.meta.history.is_empty() {
                flipped_any += 1;
                assert_ne!(once.f32("image").unwrap(), original.f32("image").unwrap());
            }
        }
        assert!(flipped_any >= 8, "{flipped_any} of 12 flipped anything");
    }

    #[test]
    fn flip_only_moves_the_listed_fields_but_always_the_boxes() {
        let stage = build(&RandFlip {
            prob: 1.0,
            axes: vec![0],
            fields: Some(vec!["label".into()]),
        });
        let before = sample("case_001");
        let s = stage
            .process(before.clone(), &StageContext::new("rand_flip", 3, 42))
            .unwrap();
        assert_eq!(s.f32("image").unwrap(), before.f32("image").unwrap());
        assert_eq!(
            s.boxes("boxes").unwrap()[0].corners,
            mask_to_box(s.u8("label").unwrap())
        );
    }

    #[test]
    fn flip_rejects_volumes_of_different_shapes() {
        let mut s = sample("case_001");
        s.insert("other", Field::u8(ArrayD::zeros(IxDyn(&[3, 3, 3]))));
        let err = build(&flip_all())
            .process(s, &StageContext::new("rand_flip", 3, 42))
            .unwrap_err()
            .to_string();
        assert!(err.contains("different spatial shapes"), "{err}");
    }

    #[test]
    fn flip_rates_follow_prob_and_depend_only_on_the_sample() {
        let stage = build(&RandFlip::default());
        let ctx = StageContext::new("rand_flip", 3, 42);
        let mut counts = [0usize; 3];
        let mut patterns = BTreeSet::new();
        for i in 0..200 {
            let id = format!("case_{i:03}");
            let a = stage.process(sample(&id), &ctx).unwrap();
            // A fresh context (another worker thread) draws the same.
            let b = stage
                .process(sample(&id), &StageContext::new("rand_flip", 3, 42))
                .unwrap();
            assert_eq!(a.meta.history, b.meta.history);
            assert_eq!(a.f32("image").unwrap(), b.f32("image").unwrap());
            let axes = match a.meta.history.as_slice() {
                [] => vec![],
                [SpatialOp::Flip { axes }] => axes.clone(),
                other => panic!("unexpected history {other:?}"),
            };
            for &axis in &axes {
                counts[axis] += 1;
            }
            patterns.insert(axes);
        }
        for (axis, &n) in counts.iter().enumerate() {
            let rate = n as f64 / 200.0;
            assert!(
                (rate - 0.5).abs() <= 0.1,
                "axis {axis} flipped at rate {rate}"
            );
        }
        assert_eq!(patterns.len(), 8, "every combination of axes occurs");

        // Another seed or another epoch draws differently.
        let draws = |ctx: &StageContext, epoch: u32| -> Vec<Vec<SpatialOp>> {
            (0..40)
                .map(|i| {
                    let mut s = sample(&format!("case_{i:03}"));
                    s.epoch = epoch;
                    stage.process(s, ctx).unwrap().meta.history
                })
                .collect()
        };
        let base = draws(&ctx, 0);
        assert_ne!(base, draws(&StageContext::new("rand_flip", 3, 43), 0));
        assert_ne!(base, draws(&ctx, 1));
    }

    #[test]
    fn rot90_matches_numpy_on_a_hand_computed_array() {
        // m[x, y, 0] = 10 x + y on a 2×3×1 volume: [[0, 1, 2], [10, 11, 12]].
        // np.rot90(m, 1, axes=(0, 1))[i, j] = m[j, 2 - i] = [[2, 12], [1, 11], [0, 10]].
        let m = array![[[0u8], [1], [2]], [[10], [11], [12]]].into_dyn();
        let mut s = Sample::new("case_001");
        s.insert("label", Field::u8(m));
        s.insert(
            "boxes",
            Field::Boxes(Arc::new(vec![BoundingBox {
                // Only voxel (1, 0): value 10.
                corners: [1.0, 0.0, 0.0, 2.0, 1.0, 1.0],
                class: 3,
                score: Some(0.5),
            }])),
        );
        let stage = build(&RandRot90 {
            prob: 1.0,
            max_k: 1,
            ..RandRot90::default()
        });
        let out = stage
            .process(s, &StageContext::new("rand_rot90", 4, 42))
            .unwrap();
        assert_eq!(
            out.u8("label").unwrap(),
            &array![[[2u8], [12]], [[1], [11]], [[0], [10]]].into_dyn()
        );
        // Value 10 now sits at (2, 1).
        let b = &out.boxes("boxes").unwrap()[0];
        assert_eq!(b.corners, [2.0, 1.0, 0.0, 3.0, 2.0, 1.0]);
        assert_eq!((b.class, b.score), (3, Some(0.5)));
        assert_eq!(
            out.meta.history,
            vec![SpatialOp::Rot90 {
                k: 1,
                plane: [0, 1]
            }]
        );
    }

    #[test]
    fn rot90_in_every_plane_keeps_boxes_alignment_and_world_positions() {
        for plane in [[0, 1], [1, 2], [2, 0], [1, 0]] {
            for k in 1..=3u8 {
                let mut s = sample("case_001");
                let ops = rot90_ops(k, plane);
                permute_sample(&mut s, None, &ops).unwrap();
                assert_moved_consistently(&s);
                let shape = &s.u8("label").unwrap().shape().to_vec();
                assert_eq!(shape.as_slice(), shape_after(SHAPE, &ops));
                if k % 2 == 1 {
                    assert_ne!(shape.as_slice(), SHAPE, "odd turns trade the plane's sizes");
                }
            }
        }
    }

    #[test]
    fn rot90_k_then_four_minus_k_restores_the_sample_exactly() {
        for plane in [[0, 1], [1, 2], [2, 0]] {
            for k in 1..=3u8 {
                let original = sample("case_001");
                let mut s = original.clone();
                permute_sample(&mut s, None, &rot90_ops(k, plane)).unwrap();
                permute_sample(&mut s, None, &rot90_ops(4 - k, plane)).unwrap();
                assert_eq!(s.f32("image").unwrap(), original.f32("image").unwrap());
                assert_eq!(s.u8("label").unwrap(), original.u8("label").unwrap());
                assert_eq!(s.boxes("boxes").unwrap(), original.boxes("boxes").unwrap());
                assert_affine_close(&s.meta.affine, &AFFINE, 1e-12);
            }
        }
    }

    #[test]
    fn rand_rot90_draws_follow_prob_and_k_is_uniform() {
        let stage = build(&RandRot90::default());
        let ctx = StageContext::new("rand_rot90", 4, 42);
        let mut ks = [0usize; 4];
        for i in 0..300 {
            let id = format!("case_{i:03}");
            let s = stage.process(sample(&id), &ctx).unwrap();
            let again = stage.process(sample(&id), &ctx).unwrap();
            assert_eq!(s.u8("label").unwrap(), again.u8("label").unwrap());
            assert_moved_consistently(&s);
            match s.meta.history.as_slice() {
                [] => ks[0] += 1,
                [SpatialOp::Rot90 { k, plane: [0, 1] }] => ks[*k as usize] += 1,
                other => panic!("unexpected history {other:?}"),
            }
        }
        let rate = 1.0 - ks[0] as f64 / 300.0;
        assert!((rate - 0.75).abs() <= 0.1, "turned at rate {rate}");
        for (k, &n) in ks.iter().enumerate().skip(1) {
            let share = n as f64 / (300 - ks[0]) as f64;
            assert!((share - 1.0 / 3.0).abs() <= 0.1, "k = {k} share {share}");
        }
    }

    #[test]
    fn rotate_by_zero_is_the_identity() {
        let stage = build(&RandRotate {
            prob: 1.0,
            range_z: 0.0,
            ..RandRotate::default()
        });
        let before = sample("case_001");
        let s = stage
            .process(before.clone(), &StageContext::new("rand_rotate", 5, 42))
            .unwrap();
        assert_eq!(s.f32("image").unwrap(), before.f32("image").unwrap());
        assert_eq!(s.u8("label").unwrap(), before.u8("label").unwrap());
        assert_eq!(s.boxes("boxes").unwrap(), before.boxes("boxes").unwrap());
        assert_moved_consistently(&s);
        assert!(matches!(
            s.meta.history.as_slice(),
            [SpatialOp::Resample { shape_before, .. }] if *shape_before == SHAPE
        ));
    }

    #[test]
    fn a_quarter_turn_about_z_agrees_with_rot90() {
        // A cube, so the quarter turn keeps the shape.
        let mut label = Array3::<u8>::zeros((6, 6, 4));
        label.slice_mut(ndarray::s![1..3, 2..5, 1..3]).fill(2);
        label[[4, 1, 0]] = 1;
        let image = ArrayD::from_shape_fn(IxDyn(&[1, 6, 6, 4]), |d| {
            (d[1] * 36 + d[2] * 6 + d[3]) as f32
        });
        let label = label.into_dyn();
        let mut s = Sample::new("case_001");
        s.insert("image", Field::f32(image));
        s.insert(
            "boxes",
            Field::Boxes(Arc::new(vec![BoundingBox {
                corners: mask_to_box(&label),
                class: 0,
                score: None,
            }])),
        );
        s.insert("label", Field::u8(label));
        s.meta.affine = AFFINE;

        let mut turned = s.clone();
        permute_sample(&mut turned, None, &rot90_ops(1, [0, 1])).unwrap();
        let mut rotated = s.clone();
        let volumes = vec!["image".to_string(), "label".to_string()];
        let angles = [0.0, 0.0, std::f64::consts::FRAC_PI_2];
        rotate_sample(&mut rotated, &volumes, [6, 6, 4], angles, Padding::Zeros).unwrap();

        assert_eq!(rotated.u8("label").unwrap(), turned.u8("label").unwrap());
        let (a, b) = (rotated.f32("image").unwrap(), turned.f32("image").unwrap());
        assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-3));
        assert_eq!(
            rotated.boxes("boxes").unwrap(),
            turned.boxes("boxes").unwrap()
        );
        assert_affine_close(&rotated.meta.affine, &turned.meta.affine, 1e-9);
    }

    #[test]
    fn small_rotations_keep_label_values_and_contain_the_label_in_the_box() {
        let stage = build(&RandRotate {
            prob: 1.0,
            range_x: 0.1,
            range_y: 0.1,
            range_z: 0.26,
            ..RandRotate::default()
        });
        let ctx = StageContext::new("rand_rotate", 5, 42);
        let allowed: BTreeSet<u8> = [0, 1, 2, 4].into();
        let mut changed = 0;
        for i in 0..20 {
            let before = sample(&format!("case_{i:03}"));
            let s = stage.process(before.clone(), &ctx).unwrap();
            let label = s.u8("label").unwrap();
            assert_eq!(label.shape(), before.u8("label").unwrap().shape());
            assert!(label.iter().all(|v| allowed.contains(v)));
            assert_eq!(s.f32("image").unwrap().shape(), &[2, 9, 7, 5]);
            // Conservative boxes: the rotated label lies inside the rotated box.
            let tight = mask_to_box(label);
            let b = s.boxes("boxes").unwrap()[0].corners;
            for a in 0..3 {
                assert!(
                    b[a] <= tight[a] && tight[a + 3] <= b[a + 3],
                    "{b:?} ⊉ {tight:?}"
                );
                assert!(b[a] >= 0.0 && b[a + 3] <= SHAPE[a] as f64);
            }
            if label != before.u8("label").unwrap() {
                changed += 1;
            }
        }
        assert!(
            changed >= 5,
            "only {changed} of 20 rotations moved the label"
        );
    }

    #[test]
    fn rotated_voxels_keep_their_world_position() {
        // Channel a holds each voxel's own index along axis a. Trilinear interpolation reproduces
        // a linear image exactly, so after rotating, channel a at an output voxel is the input
        // point it was sampled from, and the new affine must send the voxel where that point was.
        let image = ArrayD::from_shape_fn(IxDyn(&[3, 12, 11, 10]), |d| d[1 + d[0]] as f32);
        let mut s = Sample::new("case_007");
        s.insert("image", Field::f32(image));
        s.meta.affine = AFFINE;
        let stage = build(&RandRotate {
            prob: 1.0,
            range_x: 0.2,
            range_y: 0.1,
            range_z: 0.3,
            ..RandRotate::default()
        });
        let s = stage
            .process(s, &StageContext::new("rand_rotate", 5, 42))
            .unwrap();
        let out = s.f32("image").unwrap();
        let mut checked = 0;
        for p in [[5, 5, 5], [4, 6, 3], [7, 4, 6], [6, 5, 4]] {
            let q: [f64; 3] = std::array::from_fn(|a| f64::from(out[[a, p[0], p[1], p[2]]]));
            // Only points well inside the input have all eight neighbours.
            if (0..3).all(|a| q[a] >= 1.0 && q[a] <= [12.0, 11.0, 10.0][a] - 2.0) {
                let w_old: [f64; 3] = std::array::from_fn(|r| {
                    AFFINE[r][3] + (0..3).map(|c| AFFINE[r][c] * q[c]).sum::<f64>()
                });
                assert_close(world(&s.meta.affine, p), w_old, 1e-4);
                checked += 1;
            }
        }
        assert_eq!(checked, 4);
        let moved = (0..3).any(|a| (f64::from(out[[a, 4, 6, 3]]) - [4.0, 6.0, 3.0][a]).abs() > 0.1);
        assert!(moved, "the draw did not rotate");
    }

    #[test]
    fn intensity_scales_and_shifts_within_bounds() {
        let stage = build(&RandIntensity::default());
        let ctx = StageContext::new("rand_intensity", 6, 42);
        let mut scales = Vec::new();
        for i in 0..200 {
            let mut s = Sample::new(format!("case_{i:03}"));
            let mut image = ArrayD::<f32>::zeros(IxDyn(&[2, 2, 2, 2]));
            image[[0, 1, 1, 1]] = 1.0;
            image[[1, 1, 1, 1]] = 3.0;
            s.insert("image", Field::f32(image));
            let out = stage.process(s, &ctx).unwrap();
            let v = out.f32("image").unwrap();
            let offset = v[[0, 0, 0, 0]];
            let scale = v[[0, 1, 1, 1]] - offset;
            assert!((0.9..=1.1).contains(&scale) && (-0.1..=0.1).contains(&offset));
            // One pair for every channel: 3 · (1 + s) + o; background shifted too.
            assert!((v[[1, 1, 1, 1]] - (3.0 * scale + offset)).abs() < 1e-5);
            assert_eq!(v[[1, 0, 0, 0]], offset);
            scales.push(f64::from(scale) - 1.0);
        }
        let mean = scales.iter().sum::<f64>() / 200.0;
        let var = scales.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / 200.0;
        // U(-0.1, 0.1): mean 0, standard deviation 0.1 / √3 ≈ 0.0577.
        assert!(mean.abs() < 0.015, "mean {mean}");
        assert!((var.sqrt() - 0.0577).abs() < 0.01, "std {}", var.sqrt());
    }

    #[test]
    fn intensity_nonzero_and_channel_wise() {
        let stage = build(&RandIntensity {
            nonzero: true,
            channel_wise: true,
            ..RandIntensity::default()
        });
        let mut image = ArrayD::<f32>::zeros(IxDyn(&[3, 4, 4, 4]));
        image.slice_mut(ndarray::s![.., 1..3, 1..3, 1..3]).fill(2.0);
        let mut s = Sample::new("case_001");
        s.insert("image", Field::f32(image.clone()));
        let out = stage
            .process(s, &StageContext::new("rand_intensity", 6, 42))
            .unwrap();
        let v = out.f32("image").unwrap();
        for (idx, &before) in image.indexed_iter() {
            if before == 0.0 {
                assert_eq!(v[idx.slice()], 0.0, "background at {idx:?} changed");
            } else {
                assert!((v[idx.slice()] - 2.0).abs() <= 2.0 * 0.1 + 0.1 + 1e-6);
            }
        }
        let per_channel: Vec<f32> = (0..3).map(|c| v[[c, 1, 1, 1]]).collect();
        assert!(per_channel[0] != per_channel[1] && per_channel[1] != per_channel[2]);
        // Within a channel every foreground voxel got the same pair.
        assert!(
            v.slice(ndarray::s![0, 1..3, 1..3, 1..3])
                .iter()
                .all(|&x| x == per_channel[0])
        );
    }

    #[test]
    fn intensity_with_prob_zero_changes_nothing() {
        let stage = build(&RandIntensity {
            prob: 0.0,
            ..RandIntensity::default()
        });
        let before = sample("case_001");
        let s = stage
            .process(before.clone(), &StageContext::new("rand_intensity", 6, 42))
            .unwrap();
        assert_eq!(s.f32("image").unwrap(), before.f32("image").unwrap());
    }

    #[test]
    fn the_stages_are_registered_with_documented_defaults() {
        let registry = mtmed3d_stages::registry();
        let expected: [(&str, &[(&str, serde_json::Value)]); 4] = [
            (
                "rand_flip",
                &[
                    ("prob", serde_json::json!(0.5)),
                    ("axes", serde_json::json!([0, 1, 2])),
                ],
            ),
            (
                "rand_rot90",
                &[
                    ("prob", serde_json::json!(0.75)),
                    ("plane", serde_json::json!([0, 1])),
                    ("max_k", serde_json::json!(3)),
                ],
            ),
            (
                "rand_rotate",
                &[
                    ("range_z", serde_json::json!(0.26)),
                    ("padding", serde_json::json!("zeros")),
                ],
            ),
            (
                "rand_intensity",
                &[
                    ("scale", serde_json::json!(0.1)),
                    ("shift", serde_json::json!(0.1)),
                    ("prob", serde_json::json!(1.0)),
                ],
            ),
        ];
        for (name, defaults) in expected {
            let entry = registry
                .get(name)
                .unwrap_or_else(|| panic!("{name} missing"));
            let params = entry.params();
            for (param, value) in defaults {
                let doc = params
                    .iter()
                    .find(|p| p.name == *param)
                    .unwrap_or_else(|| panic!("{name} has no parameter {param}"));
                assert_eq!(doc.default.as_ref(), Some(value), "{name}.{param}");
                assert!(!doc.doc.is_empty(), "{name}.{param} is undocumented");
            }
        }
    }
}
