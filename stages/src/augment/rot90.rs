//! Random quarter turns in a plane (MONAI's `RandRotate90d`).
//!
//! ```yaml
//! - rand_rot90: {prob: 0.75, plane: [0, 1], max_k: 3}
//! ```
//!
//! A turn by `k` quarters is exactly `np.rot90(m, k, axes=plane)` on the spatial axes (as
//! MONAI's `Rotate90`): for `k = 1`, `out[i, j] = m[j, N1 - 1 - i]` where `N1` is the size
//! along `plane[1]`, which carries the `plane[0]` axis onto the `plane[1]` axis. With odd `k`
//! the two sizes of the plane trade places.

use mtmed3d_pipeline::{
    BuildContext, Component, Problem, Sample, SpatialOp, Stage, StageConfig, StageContext,
    StageError,
};
use rand::RngExt;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{AxisOp, check_fields, check_prob, listed, permute_sample};

/// Turns volumes, boxes and the affine by a random number of quarter turns.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RandRot90 {
    /// Probability of turning at all.
    #[serde(default = "RandRot90::default_prob")]
    pub prob: f64,
    /// The two spatial axes of the plane of rotation, as numpy's `axes`: a quarter turn
    /// carries `plane[0]` onto `plane[1]`.
    #[serde(default = "RandRot90::default_plane")]
    pub plane: [usize; 2],
    /// The number of quarter turns is drawn uniformly from 1..=max_k.
    #[serde(default = "RandRot90::default_max_k")]
    pub max_k: u8,
    /// Volume fields to turn; every 3D or 4D volume of the sample when left out. Box fields
    /// always move with them.
    #[serde(default)]
    pub fields: Option<Vec<String>>,
}

impl RandRot90 {
    fn default_prob() -> f64 {
        0.75
    }
    fn default_plane() -> [usize; 2] {
        [0, 1]
    }
    fn default_max_k() -> u8 {
        3
    }

    /// The number of quarter turns for one sample (0: left alone).
    pub fn draw(&self, rng: &mut impl rand::Rng) -> u8 {
        if rng.random::<f64>() < self.prob {
            // `check` keeps max_k in 1..=3; never panic on an unchecked config.
            rng.random_range(1..=self.max_k.max(1))
        } else {
            0
        }
    }
}

impl Default for RandRot90 {
    fn default() -> Self {
        RandRot90 {
            prob: Self::default_prob(),
            plane: Self::default_plane(),
            max_k: Self::default_max_k(),
            fields: None,
        }
    }
}

/// `np.rot90(m, k, axes=plane)` as voxel permutations, following numpy's own definition.
pub fn rot90_ops(k: u8, plane: [usize; 2]) -> Vec<AxisOp> {
    let [a0, a1] = plane;
    match k % 4 {
        0 => vec![],
        1 => vec![AxisOp::Flip(a1), AxisOp::Swap(a0, a1)],
        2 => vec![AxisOp::Flip(a0), AxisOp::Flip(a1)],
        _ => vec![AxisOp::Swap(a0, a1), AxisOp::Flip(a1)],
    }
}

impl Component for RandRot90 {
    const NAME: &'static str = "rand_rot90";
    const DOC: &'static str = "Randomly turns volumes and boxes by k quarter turns (k uniform in 1..=max_k) in a plane, as np.rot90, keeping the affine and history in step.";

    fn random(&self) -> bool {
        true
    }

    fn reads(&self) -> Vec<String> {
        listed(self.fields.as_deref())
    }
    fn writes(&self) -> Vec<String> {
        listed(self.fields.as_deref())
    }
    fn check(&self) -> Vec<Problem> {
        let mut problems: Vec<Problem> = check_prob(self.prob).into_iter().collect();
        let [a0, a1] = self.plane;
        if a0 > 2 || a1 > 2 || a0 == a1 {
            problems.push(Problem::param(
                "plane",
                format!(
                    "`plane` must be two different spatial axes out of 0, 1, 2; got [{a0}, {a1}]"
                ),
            ));
        }
        if !(1..=3).contains(&self.max_k) {
            problems.push(Problem::param(
                "max_k",
                format!("`max_k` must be 1, 2 or 3; got {}", self.max_k),
            ));
        }
        problems.extend(check_fields(self.fields.as_deref()));
        problems
    }
}

impl StageConfig for RandRot90 {
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

impl Stage for RandRot90 {
    fn process(&self, mut sample: Sample, ctx: &StageContext) -> Result<Sample, StageError> {
        let k = self.draw(&mut ctx.rng(&sample));
        permute_sample(
            &mut sample,
            self.fields.as_deref(),
            &rot90_ops(k, self.plane),
        )?;
        if k != 0 {
            sample.meta.history.push(SpatialOp::Rot90 {
                k,
                plane: self.plane,
            });
        }
        Ok(sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::permute_volume;
    use ndarray::{Array3, array};

    #[test]
    fn matches_numpy_on_a_small_plane() {
        // m = np.arange(6).reshape(2, 3, 1); values written out from np.rot90's definition.
        let m = Array3::from_shape_vec((2, 3, 1), (0..6).collect::<Vec<u8>>())
            .unwrap()
            .into_dyn();
        let k1 = permute_volume(&m, &rot90_ops(1, [0, 1]));
        // np.rot90([[0,1,2],[3,4,5]]) == [[2,5],[1,4],[0,3]]
        assert_eq!(k1, array![[[2u8], [5]], [[1], [4]], [[0], [3]]].into_dyn());
        let k2 = permute_volume(&m, &rot90_ops(2, [0, 1]));
        assert_eq!(k2, array![[[5u8], [4], [3]], [[2], [1], [0]]].into_dyn());
        let k3 = permute_volume(&m, &rot90_ops(3, [0, 1]));
        assert_eq!(k3, array![[[3u8], [0]], [[4], [1]], [[5], [2]]].into_dyn());
        // Reversed axes turn the other way: np.rot90(m, 1, axes=(1, 0)) == np.rot90(m, 3).
        assert_eq!(permute_volume(&m, &rot90_ops(1, [1, 0])), k3);
    }

    #[test]
    fn check_rejects_bad_planes_and_turns() {
        let params = |c: RandRot90| -> Vec<String> {
            c.check().into_iter().filter_map(|p| p.param).collect()
        };
        assert!(RandRot90::default().check().is_empty());
        for plane in [[1, 1], [0, 3]] {
            let c = RandRot90 {
                plane,
                ..RandRot90::default()
            };
            assert_eq!(params(c), vec!["plane"]);
        }
        for max_k in [0, 4] {
            let c = RandRot90 {
                max_k,
                ..RandRot90::default()
            };
            assert_eq!(params(c), vec!["max_k"]);
        }
        let c = RandRot90 {
            prob: -0.1,
            ..RandRot90::default()
        };
        assert_eq!(params(c), vec!["prob"]);
    }

    #[test]
    fn turns_are_uniform_over_one_to_max_k() {
        use rand_chacha::ChaCha8Rng;
        use rand_chacha::rand_core::SeedableRng;
        let c = RandRot90 {
            prob: 1.0,
            ..RandRot90::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut counts = [0usize; 4];
        for _ in 0..3000 {
            counts[c.draw(&mut rng) as usize] += 1;
        }
        assert_eq!(counts[0], 0);
        for &n in &counts[1..] {
            assert!((900..=1100).contains(&n), "{counts:?}");
        }
    }
}
