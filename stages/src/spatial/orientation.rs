//! Axis codes and reorientation by flips and permutations.
//!
//! ```
//! use mtmed3d_stages::spatial::orientation::{aff2axcodes, reorient, AxCodes};
//! use ndarray::Array4;
//!
//! // An LPS-stored volume (the usual BraTS layout): x runs to the left, y to the back.
//! let affine = [
//!     [-1.0, 0.0, 0.0, 120.0],
//!     [0.0, -1.0, 0.0, 120.0],
//!     [0.0, 0.0, 1.0, -60.0],
//!     [0.0, 0.0, 0.0, 1.0],
//! ];
//! assert_eq!(aff2axcodes(&affine), [Some('L'), Some('P'), Some('S')]);
//!
//! let image = Array4::from_shape_fn((1, 4, 3, 2), |(_, x, y, z)| (100 * x + 10 * y + z) as f32);
//! let ras = reorient(image.view(), &affine, "RAS".parse::<AxCodes>().unwrap()).unwrap();
//! assert_eq!(ras.array[[0, 0, 0, 0]], 320.0); // old voxel (3, 2, 0) is now the first one
//! assert_eq!(aff2axcodes(&ras.affine), [Some('R'), Some('A'), Some('S')]);
//!
//! // The record maps the result back to the stored layout, bit for bit.
//! let back = ras.record.undo(ras.array.view());
//! assert_eq!(back, image);
//! ```
//!
//! The algorithms are nibabel's (`io_orientation`, `ornt_transform`, `apply_orientation`,
//! `inv_ornt_aff`), so `reorient(.., "RAS")` gives the same array and affine as
//! `nibabel.as_closest_canonical` and MONAI's `Orientationd`: voxels are only flipped and
//! permuted, never resampled, so an oblique affine stays oblique.

use std::fmt;
use std::str::FromStr;

use ndarray::{Array4, ArrayView4, Axis, Zip};
use rayon::prelude::*;

/// A 4×4 voxel-to-world (RAS+ millimetre) affine, row-major: `world = A · [i, j, k, 1]`.
pub type Affine = [[f64; 4]; 4];

/// The identity affine.
pub const IDENTITY_AFFINE: Affine = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
];

/// Errors from orientation code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum OrientationError {
    /// Axis codes that do not name three distinct world axes.
    #[error("invalid axis codes {0:?}: expected three letters, one from each of L/R, P/A, I/S")]
    InvalidAxCodes(String),
    /// The affine's 3×3 part does not have rank 3, so some voxel axis has no world direction.
    #[error("affine has no world direction for voxel axis {axis} (rank-deficient 3x3 part)")]
    Degenerate {
        /// The first voxel axis that nibabel's `io_orientation` drops.
        axis: usize,
    },
    /// NaN or infinity in the affine.
    #[error("affine contains NaN or infinite values")]
    NonFinite,
    /// The array passed to [`ReorientRecord::undo`] does not have the reoriented shape.
    #[error("array spatial shape {found:?} is not the reoriented shape {expected:?}")]
    ShapeMismatch {
        /// Shape the record produced.
        expected: [usize; 3],
        /// Shape it was given.
        found: [usize; 3],
    },
}

/// Where one input (voxel) axis goes: nibabel's orientation row `[axis, ±1]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AxisOrientation {
    /// Output axis (for an affine's orientation: world axis 0 = x/R, 1 = y/A, 2 = z/S).
    pub axis: usize,
    /// True when the input axis runs against the output axis (nibabel's `-1`).
    pub flip: bool,
}

/// A full orientation: row `i` says where input axis `i` goes. This is nibabel's `ornt`
/// array with no dropped axes. It is either the orientation of an affine (input = voxel axis,
/// output = world axis) or a transform between two voxel layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Orientation(pub [AxisOrientation; 3]);

const LABELS: [(char, char); 3] = [('L', 'R'), ('P', 'A'), ('I', 'S')];

/// Three axis codes such as `RAS` or `LPS`: the world direction each voxel axis points to
/// (nibabel's convention: `R` means "increasing index goes to the Right").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AxCodes(pub [char; 3]);

impl AxCodes {
    /// `RAS`, nibabel's canonical orientation.
    pub const RAS: AxCodes = AxCodes(['R', 'A', 'S']);
    /// `LPS`, DICOM's and ITK's world convention.
    pub const LPS: AxCodes = AxCodes(['L', 'P', 'S']);
}

impl FromStr for AxCodes {
    type Err = OrientationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let chars: Vec<char> = s.chars().map(|c| c.to_ascii_uppercase()).collect();
        let codes = match chars.as_slice() {
            [a, b, c] => AxCodes([*a, *b, *c]),
            _ => return Err(OrientationError::InvalidAxCodes(s.to_string())),
        };
        // Validation is shared with `Orientation::from_axcodes`.
        Orientation::from_axcodes(codes)
            .map_err(|_| OrientationError::InvalidAxCodes(s.to_string()))?;
        Ok(codes)
    }
}

impl fmt::Display for AxCodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.0[0], self.0[1], self.0[2])
    }
}

impl Orientation {
    /// No flip, no permutation (the orientation of `RAS`).
    pub const IDENTITY: Orientation = Orientation([
        AxisOrientation {
            axis: 0,
            flip: false,
        },
        AxisOrientation {
            axis: 1,
            flip: false,
        },
        AxisOrientation {
            axis: 2,
            flip: false,
        },
    ]);

    /// nibabel's `axcodes2ornt`: the orientation (voxel axis → world axis) that `codes` name.
    pub fn from_axcodes(codes: AxCodes) -> Result<Orientation, OrientationError> {
        let mut rows = [AxisOrientation {
            axis: 0,
            flip: false,
        }; 3];
        let mut seen = [false; 3];
        for (row, &code) in rows.iter_mut().zip(codes.0.iter()) {
            let code = code.to_ascii_uppercase();
            let (axis, flip) = LABELS
                .iter()
                .enumerate()
                .find_map(|(axis, &(neg, pos))| match code {
                    c if c == neg => Some((axis, true)),
                    c if c == pos => Some((axis, false)),
                    _ => None,
                })
                .ok_or_else(|| OrientationError::InvalidAxCodes(codes.to_string()))?;
            if std::mem::replace(&mut seen[axis], true) {
                return Err(OrientationError::InvalidAxCodes(codes.to_string()));
            }
            *row = AxisOrientation { axis, flip };
        }
        Ok(Orientation(rows))
    }

    /// nibabel's `ornt2axcodes`.
    pub fn axcodes(&self) -> AxCodes {
        AxCodes(self.0.map(|r| {
            let (neg, pos) = LABELS[r.axis];
            if r.flip { neg } else { pos }
        }))
    }

    /// nibabel's `ornt_transform(self, end)`: the voxel-layout transform that takes an array
    /// whose affine has orientation `self` to one whose affine has orientation `end`.
    pub fn transform_to(&self, end: &Orientation) -> Orientation {
        let mut result = Orientation::IDENTITY;
        for (end_in, end_row) in end.0.iter().enumerate() {
            // Both are permutations of 0..3, so exactly one start row matches.
            for (start_in, start_row) in self.0.iter().enumerate() {
                if start_row.axis == end_row.axis {
                    result.0[start_in] = AxisOrientation {
                        axis: end_in,
                        flip: start_row.flip != end_row.flip,
                    };
                }
            }
        }
        result
    }

    /// The transform that undoes `self`: applying `self` then `self.inverse()` gives back the
    /// original array exactly.
    pub fn inverse(&self) -> Orientation {
        let mut inv = Orientation::IDENTITY;
        for (i, r) in self.0.iter().enumerate() {
            inv.0[r.axis] = AxisOrientation {
                axis: i,
                flip: r.flip,
            };
        }
        inv
    }

    /// True when applying the transform changes nothing.
    pub fn is_identity(&self) -> bool {
        *self == Orientation::IDENTITY
    }

    /// The spatial shape after applying this transform to an array of spatial shape `shape`.
    pub fn apply_to_shape(&self, shape: [usize; 3]) -> [usize; 3] {
        let mut out = [0; 3];
        for (i, r) in self.0.iter().enumerate() {
            out[r.axis] = shape[i];
        }
        out
    }

    /// nibabel's `inv_ornt_aff(ornt, shape)`: the affine from voxel indices of the transformed
    /// array to voxel indices of the original array of spatial shape `shape`. The transformed
    /// array's affine is `affine · inv_ornt_aff`.
    pub fn inv_ornt_aff(&self, shape: [usize; 3]) -> Affine {
        // undo_flip · undo_reorder, written out: row i of the result maps new voxel index
        // `axis(i)` back to old index i, mirrored about the centre when flipped.
        let mut out = [[0.0; 4]; 4];
        out[3][3] = 1.0;
        for (i, r) in self.0.iter().enumerate() {
            if r.flip {
                out[i][r.axis] = -1.0;
                out[i][3] = shape[i] as f64 - 1.0;
            } else {
                out[i][r.axis] = 1.0;
            }
        }
        out
    }
}

impl fmt::Display for Orientation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: Vec<String> = self
            .0
            .iter()
            .map(|r| format!("[{}, {}]", r.axis, if r.flip { -1 } else { 1 }))
            .collect();
        write!(f, "[{}]", rows.join(", "))
    }
}

/// Matrix product of two affines.
pub fn matmul(a: &Affine, b: &Affine) -> Affine {
    let mut out = [[0.0; 4]; 4];
    for (i, row) in out.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = (0..4).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    out
}

/// nibabel's `voxel_sizes`: the length of each voxel axis in world units (column norms of
/// the 3×3 part). Unlike the header's pixdim, this follows reorientation.
pub fn voxel_sizes(affine: &Affine) -> [f64; 3] {
    std::array::from_fn(|j| {
        (0..3)
            .map(|i| affine[i][j] * affine[i][j])
            .sum::<f64>()
            .sqrt()
    })
}

/// Singular value decomposition of a 3×3 matrix, `a = u · diag(s) · vᵀ`, by one-sided
/// (Hestenes) Jacobi rotations: accurate to a few ulps for any conditioning, which matters
/// because nibabel thresholds the singular values to find the rank.
///
/// Returns `(u, s, v)` with the columns of `u` and `v` as singular vectors. Columns of `u`
/// that belong to zero singular values are left zero.
pub(crate) fn svd3(a: &[[f64; 3]; 3]) -> ([[f64; 3]; 3], [f64; 3], [[f64; 3]; 3]) {
    let mut w = *a;
    let mut v = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    for _sweep in 0..64 {
        let mut rotated = false;
        for (p, q) in [(0, 1), (0, 2), (1, 2)] {
            let alpha: f64 = (0..3).map(|i| w[i][p] * w[i][p]).sum();
            let beta: f64 = (0..3).map(|i| w[i][q] * w[i][q]).sum();
            let gamma: f64 = (0..3).map(|i| w[i][p] * w[i][q]).sum();
            if gamma == 0.0 || gamma.abs() <= f64::EPSILON * (alpha * beta).sqrt() {
                continue;
            }
            rotated = true;
            let zeta = (beta - alpha) / (2.0 * gamma);
            let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
            let c = 1.0 / (1.0 + t * t).sqrt();
            let s = c * t;
            for m in [&mut w, &mut v] {
                for row in m.iter_mut() {
                    let (x, y) = (row[p], row[q]);
                    row[p] = c * x - s * y;
                    row[q] = s * x + c * y;
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let mut s = [0.0; 3];
    let mut u = [[0.0; 3]; 3];
    for j in 0..3 {
        s[j] = (0..3).map(|i| w[i][j] * w[i][j]).sum::<f64>().sqrt();
        if s[j] > 0.0 {
            for i in 0..3 {
                u[i][j] = w[i][j] / s[j];
            }
        }
    }
    (u, s, v)
}

/// nibabel's `io_orientation(affine)`: for each voxel axis, the world axis it is closest to
/// and whether it points the opposite way; `None` for an axis the affine collapses
/// (nibabel's `[nan, nan]` row).
///
/// Oblique affines are handled as nibabel does: shears are removed by a polar decomposition
/// (the closest orthogonal matrix, from an SVD), then axes are assigned greedily, the voxel
/// axis most aligned with a world axis first.
pub fn io_orientation(affine: &Affine) -> [Option<AxisOrientation>; 3] {
    let mut rs = [[0.0; 3]; 3];
    for j in 0..3 {
        let zoom = (0..3)
            .map(|i| affine[i][j] * affine[i][j])
            .sum::<f64>()
            .sqrt();
        // A zero column stays zero (nibabel sets such zooms to 1).
        let zoom = if zoom == 0.0 { 1.0 } else { zoom };
        for i in 0..3 {
            rs[i][j] = affine[i][j] / zoom;
        }
    }
    let (u, s, v) = svd3(&rs);
    let tol = s.iter().cloned().fold(0.0, f64::max) * 3.0 * f64::EPSILON;
    // r = Σ_kept u_k v_kᵀ: the orthogonal (partial isometry) factor of rs.
    let mut r = [[0.0; 3]; 3];
    for k in (0..3).filter(|&k| s[k] > tol) {
        for i in 0..3 {
            for j in 0..3 {
                r[i][j] += u[i][k] * v[j][k];
            }
        }
    }
    // Visit input axes by decreasing largest squared entry, stable in axis order for ties,
    // exactly like nibabel's `argsort(min(-(R**2), axis=0), kind='stable')`.
    let key = |j: usize| {
        (0..3)
            .map(|i| -(r[i][j] * r[i][j]))
            .fold(f64::INFINITY, f64::min)
    };
    let mut order = [0usize, 1, 2];
    let keys = [key(0), key(1), key(2)];
    order.sort_by(|&a, &b| {
        keys[a]
            .partial_cmp(&keys[b])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut out = [None; 3];
    for in_ax in order {
        let col = [r[0][in_ax], r[1][in_ax], r[2][in_ax]];
        // numpy.allclose(col, 0): every |x| <= 1e-8.
        if col.iter().all(|x| x.abs() <= 1e-8) {
            continue;
        }
        // numpy.argmax: the first index of the maximum.
        let mut out_ax = 0;
        for i in 1..3 {
            if col[i].abs() > col[out_ax].abs() {
                out_ax = i;
            }
        }
        out[in_ax] = Some(AxisOrientation {
            axis: out_ax,
            flip: col[out_ax] < 0.0,
        });
        r[out_ax] = [0.0; 3];
    }
    out
}

/// [`io_orientation`] for affines whose every voxel axis has a world direction.
pub fn affine_orientation(affine: &Affine) -> Result<Orientation, OrientationError> {
    if affine.iter().flatten().any(|v| !v.is_finite()) {
        return Err(OrientationError::NonFinite);
    }
    let rows = io_orientation(affine);
    let mut out = Orientation::IDENTITY;
    for (axis, row) in rows.iter().enumerate() {
        out.0[axis] = row.ok_or(OrientationError::Degenerate { axis })?;
    }
    Ok(out)
}

/// nibabel's `aff2axcodes(affine)`: the axis code of each voxel axis, `None` where the affine
/// collapses the axis.
pub fn aff2axcodes(affine: &Affine) -> [Option<char>; 3] {
    io_orientation(affine).map(|r| {
        r.map(|r| {
            let (neg, pos) = LABELS[r.axis];
            if r.flip { neg } else { pos }
        })
    })
}

/// nibabel's `apply_orientation` on the spatial axes of a channel-first `[C, X, Y, Z]` array:
/// flip the input axes marked `flip`, then move input axis `i` to position `transform[i].axis`.
/// The result is a standard-layout copy; only voxels move, their values are untouched.
pub fn apply_orientation<T: Clone + Send + Sync>(
    array: ArrayView4<'_, T>,
    transform: &Orientation,
) -> Array4<T> {
    let mut view = array;
    for (i, r) in transform.0.iter().enumerate() {
        if r.flip {
            view.invert_axis(Axis(i + 1));
        }
    }
    // Output axis `r.axis` is input axis `i`; permuted_axes wants, for each output axis,
    // the input axis it comes from.
    let mut perm = [0usize, 1, 2, 3];
    for (i, r) in transform.0.iter().enumerate() {
        perm[r.axis + 1] = i + 1;
    }
    let view = view.permuted_axes(perm);
    if view.is_standard_layout() {
        return view.to_owned();
    }
    let mut out = Array4::<T>::from_elem(view.raw_dim(), view[[0, 0, 0, 0]].clone());
    // One rayon task per output (channel, x) plane keeps the writes sequential.
    Zip::from(out.outer_iter_mut())
        .and(view.outer_iter())
        .for_each(|mut o, v| {
            Zip::from(o.outer_iter_mut())
                .and(v.outer_iter())
                .par_for_each(|mut o, v| o.assign(&v));
        });
    out
}

impl Orientation {
    /// The flips of a transform that keeps every axis in place (`None` when it permutes):
    /// such a transform can be applied in place with [`flip_in_place`].
    pub fn flips_only(&self) -> Option<[bool; 3]> {
        self.0
            .iter()
            .enumerate()
            .all(|(i, r)| r.axis == i)
            .then(|| self.0.map(|r| r.flip))
    }
}

/// Reverse the spatial axes marked in `flip` of `[C, X, Y, Z]` standard-layout data, in
/// place: the same values as [`apply_orientation`] with a transform of flips only, without
/// allocating (and faulting in) a second volume. Each z row is swapped with its mirror row,
/// reversed too when z flips.
///
/// # Panics
/// If `data` does not hold exactly `shape`'s number of values.
pub fn flip_in_place<T: Send>(data: &mut [T], shape: [usize; 4], flip: [bool; 3]) {
    let [_, nx, ny, nz] = shape;
    assert_eq!(
        data.len(),
        shape.iter().product::<usize>(),
        "data match the shape"
    );
    let n = nx * ny * nz;
    if n == 0 {
        return;
    }
    let mirror = |row: usize| {
        let (x, y) = (row / ny, row % ny);
        let x = if flip[0] { nx - 1 - x } else { x };
        let y = if flip[1] { ny - 1 - y } else { y };
        x * ny + y
    };
    data.par_chunks_mut(n).for_each(|volume| {
        for row in 0..nx * ny {
            let other = mirror(row);
            if other > row {
                let (head, tail) = volume.split_at_mut(other * nz);
                let a = &mut head[row * nz..(row + 1) * nz];
                let b = &mut tail[..nz];
                a.swap_with_slice(b);
                if flip[2] {
                    a.reverse();
                    b.reverse();
                }
            } else if other == row && flip[2] {
                volume[row * nz..(row + 1) * nz].reverse();
            }
        }
    });
}

/// What [`reorient`] did, kept so that a result computed in the new layout can be mapped back
/// to the original voxel grid exactly (e.g. a predicted mask written in the input's space).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReorientRecord {
    /// The transform that was applied (nibabel's `ornt_transform(start, end)`).
    pub transform: Orientation,
    /// Spatial shape before the transform.
    pub original_shape: [usize; 3],
    /// Affine before the transform.
    pub original_affine: Affine,
}

impl ReorientRecord {
    /// Spatial shape after the transform.
    pub fn reoriented_shape(&self) -> [usize; 3] {
        self.transform.apply_to_shape(self.original_shape)
    }

    /// Map an array in the reoriented layout back to the original layout (bit-exact: only
    /// flips and a permutation). Fails if its spatial shape is not the reoriented shape.
    pub fn try_undo<T: Clone + Send + Sync>(
        &self,
        array: ArrayView4<'_, T>,
    ) -> Result<Array4<T>, OrientationError> {
        let found = [array.shape()[1], array.shape()[2], array.shape()[3]];
        if found != self.reoriented_shape() {
            return Err(OrientationError::ShapeMismatch {
                expected: self.reoriented_shape(),
                found,
            });
        }
        Ok(apply_orientation(array, &self.transform.inverse()))
    }

    /// [`try_undo`](Self::try_undo) for arrays known to come from this record.
    ///
    /// # Panics
    /// If the array's spatial shape is not the reoriented shape (a programming error).
    pub fn undo<T: Clone + Send + Sync>(&self, array: ArrayView4<'_, T>) -> Array4<T> {
        match self.try_undo(array) {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        }
    }
}

/// An array reoriented by [`reorient`], with its new affine and the record to undo it.
#[derive(Debug, Clone)]
pub struct Reoriented<T> {
    /// The `[C, X, Y, Z]` array in the target orientation.
    pub array: Array4<T>,
    /// Its affine: `original · inv_ornt_aff(transform, original_shape)`.
    pub affine: Affine,
    /// How to get back.
    pub record: ReorientRecord,
}

/// The transform (and record) that reorients an array of spatial shape `shape` with `affine`
/// to `target`, without touching any voxels. Use it to reorient several fields of one sample
/// (image and label) identically.
pub fn plan_reorientation(
    affine: &Affine,
    shape: [usize; 3],
    target: AxCodes,
) -> Result<(ReorientRecord, Affine), OrientationError> {
    let start = affine_orientation(affine)?;
    let end = Orientation::from_axcodes(target)?;
    let transform = start.transform_to(&end);
    let new_affine = matmul(affine, &transform.inv_ornt_aff(shape));
    Ok((
        ReorientRecord {
            transform,
            original_shape: shape,
            original_affine: *affine,
        },
        new_affine,
    ))
}

/// Reorient a channel-first `[C, X, Y, Z]` array so that its voxel axes point along `target`
/// as closely as flips and permutations allow (MONAI's `Orientationd(axcodes=target)`;
/// with `RAS`, nibabel's `as_closest_canonical`).
pub fn reorient<T: Clone + Send + Sync>(
    array: ArrayView4<'_, T>,
    affine: &Affine,
    target: AxCodes,
) -> Result<Reoriented<T>, OrientationError> {
    let shape = [array.shape()[1], array.shape()[2], array.shape()[3]];
    let (record, new_affine) = plan_reorientation(affine, shape, target)?;
    let array = apply_orientation(array, &record.transform);
    Ok(Reoriented {
        array,
        affine: new_affine,
        record,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diag(x: f64, y: f64, z: f64) -> Affine {
        [
            [x, 0.0, 0.0, 0.0],
            [0.0, y, 0.0, 0.0],
            [0.0, 0.0, z, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    }

    #[test]
    fn axcodes_parse_and_reject() {
        assert_eq!("ras".parse::<AxCodes>().unwrap(), AxCodes::RAS);
        assert_eq!("LPS".parse::<AxCodes>().unwrap().to_string(), "LPS");
        for bad in ["RA", "RRS", "RLS", "XYZ", "RASS"] {
            assert!(
                matches!(
                    bad.parse::<AxCodes>(),
                    Err(OrientationError::InvalidAxCodes(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn axcodes_roundtrip_all_48() {
        let mut n = 0;
        for p in [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ] {
            for flips in 0..8 {
                let o = Orientation(std::array::from_fn(|i| AxisOrientation {
                    axis: p[i],
                    flip: flips >> i & 1 == 1,
                }));
                assert_eq!(Orientation::from_axcodes(o.axcodes()).unwrap(), o);
                assert_eq!(o.inverse().inverse(), o);
                n += 1;
            }
        }
        assert_eq!(n, 48);
    }

    #[test]
    fn aff2axcodes_of_simple_affines() {
        assert_eq!(
            aff2axcodes(&diag(-2.0, 1.0, 3.0)),
            [Some('L'), Some('A'), Some('S')]
        );
        let mut pir = [[0.0; 4]; 4];
        pir[1][0] = -1.0; // x → posterior
        pir[2][1] = -1.0; // y → inferior
        pir[0][2] = 1.0; // z → right
        pir[3][3] = 1.0;
        assert_eq!(aff2axcodes(&pir), [Some('P'), Some('I'), Some('R')]);
        // A collapsed axis is dropped, as nibabel does.
        assert_eq!(
            aff2axcodes(&diag(1.0, 0.0, 1.0)),
            [Some('R'), None, Some('S')]
        );
        assert_eq!(
            affine_orientation(&diag(1.0, 0.0, 1.0)),
            Err(OrientationError::Degenerate { axis: 1 })
        );
    }

    #[test]
    fn svd_reconstructs_and_is_orthogonal() {
        let a = [[0.3, -1.2, 2.0], [4.0, 0.5, -0.7], [1e-3, 2.5, 0.1]];
        let (u, s, v) = svd3(&a);
        for i in 0..3 {
            for j in 0..3 {
                let r: f64 = (0..3).map(|k| u[i][k] * s[k] * v[j][k]).sum();
                assert!((r - a[i][j]).abs() < 1e-13, "{r} vs {}", a[i][j]);
                let uu: f64 = (0..3).map(|k| u[k][i] * u[k][j]).sum();
                let vv: f64 = (0..3).map(|k| v[k][i] * v[k][j]).sum();
                let id = if i == j { 1.0 } else { 0.0 };
                assert!((uu - id).abs() < 1e-13 && (vv - id).abs() < 1e-13);
            }
        }
    }

    #[test]
    fn transform_inverse_and_affine_roundtrip() {
        // LPS stored, oblique by a small rotation about z.
        let (c, s) = (0.2f64.cos(), 0.2f64.sin());
        let affine = [
            [-c, s, 0.0, 10.0],
            [-s, -c, 0.0, 5.0],
            [0.0, 0.0, 2.0, -3.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let array = Array4::from_shape_fn((2, 5, 4, 3), |(c, x, y, z)| {
            (1000 * c + 100 * x + 10 * y + z) as i32
        });
        let r = reorient(array.view(), &affine, AxCodes::RAS).unwrap();
        assert_eq!(r.array.shape(), &[2, 5, 4, 3]);
        assert_eq!(aff2axcodes(&r.affine), [Some('R'), Some('A'), Some('S')]);
        // Voxel (x, y, z) of the result is voxel (4 - x, 3 - y, z) of the input.
        assert_eq!(r.array[[1, 0, 0, 2]], array[[1, 4, 3, 2]]);
        // Same world point for corresponding voxels.
        let world = |a: &Affine, p: [f64; 3]| -> [f64; 3] {
            std::array::from_fn(|i| a[i][0] * p[0] + a[i][1] * p[1] + a[i][2] * p[2] + a[i][3])
        };
        let (w0, w1) = (
            world(&affine, [4.0, 3.0, 2.0]),
            world(&r.affine, [0.0, 0.0, 2.0]),
        );
        for i in 0..3 {
            assert!((w0[i] - w1[i]).abs() < 1e-12);
        }
        assert_eq!(r.record.undo(r.array.view()), array);
        // The affine maps back too.
        let inv = r.record.transform.inverse();
        let back = matmul(&r.affine, &inv.inv_ornt_aff(r.record.reoriented_shape()));
        for i in 0..4 {
            for j in 0..4 {
                assert!((back[i][j] - affine[i][j]).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn permutation_roundtrip_every_target() {
        let affine = diag(-1.0, -1.0, 1.0);
        let array =
            Array4::from_shape_fn((1, 4, 3, 2), |(_, x, y, z)| (100 * x + 10 * y + z) as u8);
        for target in ["RAS", "LPS", "PIR", "SAL", "ILA", "ARI"] {
            let target: AxCodes = target.parse().unwrap();
            let r = reorient(array.view(), &affine, target).unwrap();
            assert_eq!(aff2axcodes(&r.affine).map(|c| c.unwrap()), target.0);
            assert_eq!(r.record.undo(r.array.view()), array, "{target}");
        }
        let r = reorient(array.view(), &affine, "PIR".parse().unwrap()).unwrap();
        assert_eq!(r.array.shape(), &[1, 3, 2, 4]);
        let bad = Array4::<u8>::zeros((1, 4, 3, 2));
        assert!(matches!(
            r.record.try_undo(bad.view()),
            Err(OrientationError::ShapeMismatch { .. })
        ));
    }

    #[test]
    fn in_place_flips_equal_the_copying_transform() {
        // Odd and even sizes, so rows that are their own mirror are covered.
        let array = Array4::from_shape_fn((2, 5, 4, 3), |(c, x, y, z)| {
            (1000 * c + 100 * x + 10 * y + z) as i32
        });
        for bits in 0..8 {
            let flip = [bits & 1 != 0, bits & 2 != 0, bits & 4 != 0];
            let transform = Orientation([0, 1, 2].map(|axis| AxisOrientation {
                axis,
                flip: flip[axis],
            }));
            assert_eq!(transform.flips_only(), Some(flip));
            let expected = apply_orientation(array.view(), &transform);
            let mut data = array.clone().into_raw_vec_and_offset().0;
            flip_in_place(&mut data, [2, 5, 4, 3], flip);
            assert_eq!(data, expected.into_raw_vec_and_offset().0, "flip {flip:?}");
        }
        let swap = Orientation([
            AxisOrientation {
                axis: 1,
                flip: false,
            },
            AxisOrientation {
                axis: 0,
                flip: false,
            },
            AxisOrientation {
                axis: 2,
                flip: false,
            },
        ]);
        assert_eq!(swap.flips_only(), None);
    }

    #[test]
    fn voxel_sizes_follow_columns() {
        assert_eq!(voxel_sizes(&diag(-2.0, 3.0, 0.5)), [2.0, 3.0, 0.5]);
    }
}
