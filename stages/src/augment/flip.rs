//! Random mirror flips along spatial axes (MONAI's `RandFlipd`, once per axis).
//!
//! ```yaml
//! - rand_flip: {prob: 0.5, axes: [0, 1, 2]}
//! ```
//!
//! Each listed axis is flipped independently with probability `prob`, as the reference's
//! three `RandFlipBoxd` transforms (one per axis, p = 0.5 each) do.

use mtmed3d_pipeline::{
    BuildContext, Component, Problem, Sample, SpatialOp, Stage, StageConfig, StageContext,
    StageError,
};
use rand::RngExt;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{AxisOp, check_fields, check_prob, listed, permute_sample};

/// Flips volumes, boxes and the affine along randomly chosen spatial axes.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RandFlip {
    /// Probability of flipping each axis, drawn independently per axis.
    #[serde(default = "RandFlip::default_prob")]
    pub prob: f64,
    /// Spatial axes that may be flipped (0 = X, 1 = Y, 2 = Z).
    #[serde(default = "RandFlip::default_axes")]
    pub axes: Vec<usize>,
    /// Volume fields to flip; every 3D or 4D volume of the sample when left out. Box fields
    /// always move with them.
    #[serde(default)]
    pub fields: Option<Vec<String>>,
}

impl RandFlip {
    fn default_prob() -> f64 {
        0.5
    }
    fn default_axes() -> Vec<usize> {
        vec![0, 1, 2]
    }

    /// The axes to flip for one sample: one draw per listed axis, in the listed order, so
    /// the draws do not depend on the outcomes.
    pub fn draw(&self, rng: &mut impl rand::Rng) -> Vec<usize> {
        self.axes
            .iter()
            .copied()
            .filter(|_| rng.random::<f64>() < self.prob)
            .collect()
    }
}

impl Default for RandFlip {
    fn default() -> Self {
        RandFlip {
            prob: Self::default_prob(),
            axes: Self::default_axes(),
            fields: None,
        }
    }
}

impl Component for RandFlip {
    const NAME: &'static str = "rand_flip";
    const DOC: &'static str = "Randomly mirrors volumes and boxes along each spatial axis (independently, with probability `prob`), keeping the affine and history in step.";

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
        if self.axes.is_empty() {
            problems.push(Problem::param("axes", "`axes` must list at least one axis"));
        }
        if let Some(&a) = self.axes.iter().find(|&&a| a > 2) {
            problems.push(Problem::param(
                "axes",
                format!("spatial axes are 0, 1 and 2; got {a}"),
            ));
        }
        let mut sorted = self.axes.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            // A repeated axis would be flipped twice and come back unchanged.
            problems.push(Problem::param("axes", "`axes` lists an axis twice"));
        }
        problems.extend(check_fields(self.fields.as_deref()));
        problems
    }
}

impl StageConfig for RandFlip {
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

impl Stage for RandFlip {
    fn process(&self, mut sample: Sample, ctx: &StageContext) -> Result<Sample, StageError> {
        let axes = self.draw(&mut ctx.rng(&sample));
        let ops: Vec<AxisOp> = axes.iter().map(|&a| AxisOp::Flip(a)).collect();
        // Run even when nothing flips, so that a mismatched sample fails on every draw.
        permute_sample(&mut sample, self.fields.as_deref(), &ops)?;
        if !axes.is_empty() {
            sample.meta.history.push(SpatialOp::Flip { axes });
        }
        Ok(sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(prob: f64, axes: Vec<usize>) -> RandFlip {
        RandFlip {
            prob,
            axes,
            fields: None,
        }
    }

    #[test]
    fn defaults_match_the_reference() {
        let c: RandFlip = serde_json::from_str("{}").unwrap();
        assert_eq!(c.prob, 0.5);
        assert_eq!(c.axes, vec![0, 1, 2]);
        assert!(c.fields.is_none());
        assert!(c.check().is_empty());
        assert!(serde_json::from_str::<RandFlip>(r#"{"axis": [0]}"#).is_err());
    }

    #[test]
    fn check_names_the_parameter_at_fault() {
        let params = |c: RandFlip| -> Vec<String> {
            c.check().into_iter().filter_map(|p| p.param).collect()
        };
        assert_eq!(params(config(1.5, vec![0])), vec!["prob"]);
        assert_eq!(params(config(f64::NAN, vec![0])), vec!["prob"]);
        assert_eq!(params(config(0.5, vec![3])), vec!["axes"]);
        assert_eq!(params(config(0.5, vec![1, 1])), vec!["axes"]);
        assert_eq!(params(config(0.5, vec![])), vec!["axes"]);
        let mut c = config(0.5, vec![0]);
        c.fields = Some(vec![]);
        assert_eq!(params(c), vec!["fields"]);
    }

    #[test]
    fn probability_zero_and_one_are_never_and_always() {
        use rand_chacha::ChaCha8Rng;
        use rand_chacha::rand_core::SeedableRng;
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..50 {
            assert!(config(0.0, vec![0, 1, 2]).draw(&mut rng).is_empty());
            assert_eq!(config(1.0, vec![2, 0]).draw(&mut rng), vec![2, 0]);
        }
    }
}
