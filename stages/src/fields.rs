//! Which fields a spatial stage moves, and the geometry shared by spatial stages: affine
//! updates and box arithmetic.
//!
//! Conventions: images are `C×X×Y×Z` f32, labels `X×Y×Z` (label map) or `C×X×Y×Z` (region
//! masks) u8; the last three axes are spatial. Boxes are `[x1, y1, z1, x2, y2, z2]` in voxels
//! with `x2` = last index + 1.

use std::sync::Arc;

use mtmed3d_pipeline::{Affine, BoundingBox, Field, Sample, StageError};

/// Names of the volume fields to move: the listed ones, or every volume (3D or 4D, f32 or u8)
/// when no list is given.
pub fn volume_fields(sample: &Sample, listed: Option<&[String]>) -> Vec<String> {
    match listed {
        Some(names) => names.to_vec(),
        None => sample
            .fields()
            .filter(|(_, f)| matches!(f.shape(), Some(s) if s.len() == 3 || s.len() == 4))
            .map(|(n, _)| n.to_string())
            .collect(),
    }
}

/// Moves every box field of a sample with a spatial step: `corners` maps a box's corners to
/// their new place, or `None` when the box leaves the volume (it is then dropped). Class and
/// score are kept.
pub fn map_boxes(
    sample: &mut Sample,
    corners: impl Fn(&[f64; 6]) -> Option<[f64; 6]>,
) -> Result<(), StageError> {
    let names: Vec<String> = sample
        .fields()
        .filter(|(_, f)| matches!(f, Field::Boxes(_)))
        .map(|(n, _)| n.to_string())
        .collect();
    for name in names {
        let moved: Vec<BoundingBox> = sample
            .boxes(&name)?
            .iter()
            .filter_map(|b| {
                corners(&b.corners).map(|c| BoundingBox {
                    corners: c,
                    ..b.clone()
                })
            })
            .collect();
        sample.insert(name, Field::Boxes(Arc::new(moved)));
    }
    Ok(())
}

/// The spatial shape (last three axes) of a volume field.
pub fn spatial_shape(sample: &Sample, field: &str) -> Result<[usize; 3], StageError> {
    let shape = sample
        .get(field)
        .ok_or_else(|| StageError::new(format!("field `{field}` is missing")))?
        .shape()
        .ok_or_else(|| StageError::new(format!("field `{field}` is not a volume")))?;
    match shape.len() {
        3 | 4 => {
            let n = shape.len();
            Ok([shape[n - 3], shape[n - 2], shape[n - 1]])
        }
        _ => Err(StageError::new(format!(
            "field `{field}` has shape {shape:?}; spatial stages need X×Y×Z or C×X×Y×Z"
        ))),
    }
}

/// The common spatial shape of the given fields; an error naming the fields if they differ.
pub fn common_spatial_shape(sample: &Sample, fields: &[String]) -> Result<[usize; 3], StageError> {
    let mut shape: Option<([usize; 3], &str)> = None;
    for f in fields {
        let s = spatial_shape(sample, f)?;
        match shape {
            None => shape = Some((s, f)),
            Some((first, name)) if first != s => {
                return Err(StageError::new(format!(
                    "fields `{name}` ({first:?}) and `{f}` ({s:?}) have different spatial shapes"
                )));
            }
            _ => {}
        }
    }
    shape
        .map(|(s, _)| s)
        .ok_or_else(|| StageError::new("the sample has no volume to transform"))
}

/// The smallest box `[lo, hi)` holding both boxes (either may be absent).
pub fn union_of_bounds(
    a: Option<([usize; 3], [usize; 3])>,
    b: Option<([usize; 3], [usize; 3])>,
) -> Option<([usize; 3], [usize; 3])> {
    match (a, b) {
        (Some((alo, ahi)), Some((blo, bhi))) => Some((
            [0, 1, 2].map(|i| alo[i].min(blo[i])),
            [0, 1, 2].map(|i| ahi[i].max(bhi[i])),
        )),
        (x, None) | (None, x) => x,
    }
}

/// Spatial bounds `[lo, hi)` of the voxels where `inside` holds, over every leading
/// (channel) index, in one pass over memory: whole rows along the last axis are tested, and
/// only a row's ends are scanned for the last axis's bounds.
pub fn bounds_where<T: Clone>(
    volume: ndarray::ArrayViewD<'_, T>,
    inside: impl Fn(&T) -> bool,
) -> Option<([usize; 3], [usize; 3])> {
    let n = volume.ndim();
    if n < 3 {
        return None;
    }
    let shape = volume.shape();
    let (nx, ny, nz) = (shape[n - 3], shape[n - 2], shape[n - 1]);
    let standard = volume.as_standard_layout();
    let data = standard.as_slice()?;
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    if nz == 0 {
        return None;
    }
    for (row_index, row) in data.chunks_exact(nz).enumerate() {
        let Some(first) = first_inside(row, &inside) else {
            continue;
        };
        let last = row.iter().rposition(&inside).unwrap_or(first);
        let y = row_index % ny;
        let x = (row_index / ny) % nx;
        lo = [lo[0].min(x), lo[1].min(y), lo[2].min(first)];
        hi = [hi[0].max(x + 1), hi[1].max(y + 1), hi[2].max(last + 1)];
    }
    (lo[0] != usize::MAX).then_some((lo, hi))
}

/// Index of the first element of `row` that is `inside`. Tests blocks of 16 without
/// branching first, so the long empty runs of background rows are scanned as vectors.
fn first_inside<T>(row: &[T], inside: impl Fn(&T) -> bool) -> Option<usize> {
    const BLOCK: usize = 16;
    let mut blocks = row.chunks_exact(BLOCK);
    for (b, block) in blocks.by_ref().enumerate() {
        if block.iter().fold(false, |any, v| any | inside(v)) {
            return block.iter().position(&inside).map(|i| b * BLOCK + i);
        }
    }
    let start = row.len() - blocks.remainder().len();
    row[start..].iter().position(&inside).map(|i| start + i)
}

/// Matrix product of two affines.
pub fn compose(a: &Affine, b: &Affine) -> Affine {
    let mut out = [[0.0; 4]; 4];
    for (i, row) in out.iter_mut().enumerate() {
        for (j, cell) in row.iter_mut().enumerate() {
            *cell = (0..4).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    out
}

/// The affine after shifting the voxel origin to `start` (a crop; negative = padding).
pub fn shifted_affine(affine: &Affine, start: [i64; 3]) -> Affine {
    let mut out = *affine;
    for (r, row) in out.iter_mut().enumerate().take(3) {
        row[3] = affine[r][3] + (0..3).map(|c| affine[r][c] * start[c] as f64).sum::<f64>();
    }
    out
}

/// The affine after reversing spatial `axis` of a volume with `size` voxels along it.
pub fn flipped_affine(affine: &Affine, axis: usize, size: usize) -> Affine {
    let mut out = *affine;
    for r in 0..3 {
        out[r][3] = affine[r][3] + affine[r][axis] * (size as f64 - 1.0);
        out[r][axis] = -affine[r][axis];
    }
    out
}

/// Box corners in world millimetres: the voxel box's extreme corners through the affine
/// (`x2` is exclusive, so the far corner is at `x2 - 1` voxel centres).
pub fn box_to_world(corners: &[f64; 6], affine: &Affine) -> [f64; 6] {
    let mut lo = [f64::INFINITY; 3];
    let mut hi = [f64::NEG_INFINITY; 3];
    for mask in 0..8 {
        let v = [
            if mask & 1 == 0 {
                corners[0]
            } else {
                corners[3] - 1.0
            },
            if mask & 2 == 0 {
                corners[1]
            } else {
                corners[4] - 1.0
            },
            if mask & 4 == 0 {
                corners[2]
            } else {
                corners[5] - 1.0
            },
        ];
        for r in 0..3 {
            let w = affine[r][3] + (0..3).map(|c| affine[r][c] * v[c]).sum::<f64>();
            lo[r] = lo[r].min(w);
            hi[r] = hi[r].max(w);
        }
    }
    [lo[0], lo[1], lo[2], hi[0], hi[1], hi[2]]
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Affine = [
        [-1.0, 0.0, 0.0, 10.0],
        [0.0, -2.0, 0.0, 20.0],
        [0.0, 0.0, 3.0, -5.0],
        [0.0, 0.0, 0.0, 1.0],
    ];

    fn apply(a: &Affine, v: [f64; 3]) -> [f64; 3] {
        let mut w = [0.0; 3];
        for r in 0..3 {
            w[r] = a[r][3] + (0..3).map(|c| a[r][c] * v[c]).sum::<f64>();
        }
        w
    }

    #[test]
    fn first_inside_finds_the_first_match_at_every_position() {
        for len in [0, 1, 15, 16, 17, 40] {
            for at in 0..len {
                let mut row = vec![0.0f32; len];
                row[at] = -2.0;
                if at + 3 < len {
                    row[at + 3] = 1.0;
                }
                assert_eq!(first_inside(&row, |v| *v != 0.0), Some(at), "len {len}");
            }
            assert_eq!(first_inside(&vec![0.0f32; len], |v| *v != 0.0), None);
        }
        // -0.0 is background, as `!= 0.0` says.
        assert_eq!(first_inside(&[-0.0f32; 20], |v| *v != 0.0), None);
    }

    #[test]
    fn flipped_affine_maps_new_indices_to_the_same_world_points() {
        let f = flipped_affine(&A, 1, 7);
        // new index j along axis 1 is old index 6 - j
        assert_eq!(apply(&f, [2.0, 0.0, 1.0]), apply(&A, [2.0, 6.0, 1.0]));
        assert_eq!(apply(&f, [2.0, 4.0, 1.0]), apply(&A, [2.0, 2.0, 1.0]));
    }

    #[test]
    fn shifted_affine_follows_a_crop() {
        let s = shifted_affine(&A, [3, -2, 1]);
        assert_eq!(apply(&s, [0.0, 0.0, 0.0]), apply(&A, [3.0, -2.0, 1.0]));
    }

    #[test]
    fn world_boxes_use_voxel_centres() {
        let w = box_to_world(&[1.0, 2.0, 3.0, 4.0, 6.0, 5.0], &A);
        // x: voxels 1..=3 → 10-1 = 9 … 10-3 = 7
        assert_eq!(w, [7.0, 10.0, 4.0, 9.0, 16.0, 7.0]);
    }
}
