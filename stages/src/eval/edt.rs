//! Exact squared Euclidean distance transform with anisotropic spacing (Felzenszwalb and
//! Huttenlocher's lower envelope of parabolas, one axis at a time).
//!
//! The separable form is exact: the squared distance to the nearest site is a sum of one
//! term per axis, and each pass takes the minimum along one axis of what the previous passes
//! left. Work is linear in the number of voxels; lines of each pass run in parallel.

use std::cell::RefCell;

use ndarray::{Array3, ArrayView3, Axis, Zip};

thread_local! {
    /// Per-thread scratch for one line (values, envelope vertices, boundaries, output).
    static SCRATCH: RefCell<LineScratch> = RefCell::new(LineScratch::default());
}

#[derive(Default)]
struct LineScratch {
    f: Vec<f64>,
    v: Vec<usize>,
    z: Vec<f64>,
    d: Vec<f64>,
}

/// Squared distance, in the units of `spacing`, from every voxel to the nearest voxel where
/// `sites` is true; `f64::INFINITY` everywhere when there is no site.
pub fn squared_edt(sites: ArrayView3<'_, bool>, spacing: [f64; 3]) -> Array3<f64> {
    let mut out = sites.mapv(|s| if s { 0.0 } else { f64::INFINITY });
    if out.is_empty() {
        return out;
    }
    // The last axis first: its lines are contiguous, and after it most lines of the other
    // passes already hold finite values.
    for axis in [2, 1, 0] {
        let w2 = spacing[axis] * spacing[axis];
        Zip::from(out.lanes_mut(Axis(axis))).par_for_each(|mut lane| {
            SCRATCH.with(|cell| {
                let mut s = cell.borrow_mut();
                let s = &mut *s;
                s.f.clear();
                s.f.extend(lane.iter().copied());
                transform_line(s, w2);
                for (o, &d) in lane.iter_mut().zip(&s.d) {
                    *o = d;
                }
            });
        });
    }
    out
}

/// d[q] = min_p w²(q − p)² + f[p] for one line held in `s.f`; result in `s.d`.
fn transform_line(s: &mut LineScratch, w2: f64) {
    let n = s.f.len();
    s.d.clear();
    s.d.resize(n, f64::INFINITY);
    let Some(first) = s.f.iter().position(|v| v.is_finite()) else {
        return;
    };
    s.v.clear();
    s.z.clear();
    s.v.push(first);
    s.z.push(f64::NEG_INFINITY);
    s.z.push(f64::INFINITY);
    let key = |f: &[f64], p: usize| f[p] + w2 * (p * p) as f64;
    for q in first + 1..n {
        if !s.f[q].is_finite() {
            continue;
        }
        let fq = key(&s.f, q);
        let mut k = s.v.len() - 1;
        let mut boundary;
        loop {
            let p = s.v[k];
            // Where the parabola rooted at q overtakes the one rooted at p.
            boundary = (fq - key(&s.f, p)) / (2.0 * w2 * (q - p) as f64);
            if boundary <= s.z[k] && k > 0 {
                s.v.pop();
                s.z.pop();
                k -= 1;
            } else {
                break;
            }
        }
        // z holds one more boundary than v has vertices: replace the trailing +∞.
        s.z.pop();
        s.z.push(boundary);
        s.z.push(f64::INFINITY);
        s.v.push(q);
    }
    let mut k = 0;
    for q in 0..n {
        while s.z[k + 1] < q as f64 {
            k += 1;
        }
        let p = s.v[k];
        let dq = q as f64 - p as f64;
        s.d[q] = w2 * dq * dq + s.f[p];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, by brute force.
    fn brute(sites: &Array3<bool>, spacing: [f64; 3]) -> Array3<f64> {
        let points: Vec<[usize; 3]> = sites
            .indexed_iter()
            .filter(|(_, s)| **s)
            .map(|((i, j, k), _)| [i, j, k])
            .collect();
        Array3::from_shape_fn(sites.dim(), |(i, j, k)| {
            points
                .iter()
                .map(|p| {
                    let d = [
                        i as f64 - p[0] as f64,
                        j as f64 - p[1] as f64,
                        k as f64 - p[2] as f64,
                    ];
                    (0..3).map(|a| (d[a] * spacing[a]).powi(2)).sum::<f64>()
                })
                .fold(f64::INFINITY, f64::min)
        })
    }

    #[test]
    fn matches_brute_force_with_anisotropic_spacing() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for (density, spacing) in [
            (0.02, [1.0, 1.0, 1.0]),
            (0.1, [0.7, 1.3, 2.9]),
            (0.003, [2.0, 0.5, 1.0]),
        ] {
            let sites = Array3::from_shape_simple_fn((13, 9, 11), || rng.random::<f64>() < density);
            let fast = squared_edt(sites.view(), spacing);
            let slow = brute(&sites, spacing);
            for (a, b) in fast.iter().zip(slow.iter()) {
                assert!(
                    (a - b).abs() < 1e-9 || (a.is_infinite() && b.is_infinite()),
                    "{a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn no_site_gives_infinity_and_one_site_gives_distances_to_it() {
        let none = Array3::from_elem((3, 4, 5), false);
        assert!(
            squared_edt(none.view(), [1.0; 3])
                .iter()
                .all(|v| v.is_infinite())
        );
        let mut one = none.clone();
        one[[0, 0, 0]] = true;
        let d = squared_edt(one.view(), [1.0, 2.0, 3.0]);
        assert_eq!(d[[2, 3, 4]], 4.0 + 36.0 + 144.0);
    }
}
