//! Random intensity scaling and shifting (MONAI's `RandScaleIntensityd` then
//! `RandShiftIntensityd`).
//!
//! ```yaml
//! - rand_intensity: {field: image, scale: 0.1, shift: 0.1, channel_wise: false}
//! ```
//!
//! Every voxel becomes `v · (1 + s) + o` with `s ~ U(-scale, scale)` and
//! `o ~ U(-shift, shift)`: one pair for the whole volume, as the reference draws them, or one
//! pair per channel with `channel_wise`. With `nonzero`, voxels that are exactly zero (the
//! background left by a nonzero normalisation) stay zero; the reference shifts them too.

use mtmed3d_pipeline::{
    BuildContext, Component, Problem, Sample, Stage, StageConfig, StageContext, StageError,
};
use ndarray::Axis;
use rand::RngExt;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{check_prob, symmetric};

/// Scales and shifts an f32 volume by small random amounts.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RandIntensity {
    /// The f32 volume to change (`C×X×Y×Z`, or `X×Y×Z` as one channel).
    #[serde(default = "RandIntensity::default_field")]
    pub field: String,
    /// Largest relative scale change: voxels are multiplied by 1 + U(-scale, scale).
    #[serde(default = "RandIntensity::default_amount")]
    pub scale: f64,
    /// Largest offset: U(-shift, shift) is added after scaling.
    #[serde(default = "RandIntensity::default_amount")]
    pub shift: f64,
    /// Probability of changing the sample at all.
    #[serde(default = "RandIntensity::default_prob")]
    pub prob: f64,
    /// Draw a scale and an offset per channel instead of one pair for the volume.
    #[serde(default)]
    pub channel_wise: bool,
    /// Leave voxels that are exactly zero unchanged.
    #[serde(default)]
    pub nonzero: bool,
}

impl RandIntensity {
    fn default_field() -> String {
        "image".into()
    }
    fn default_amount() -> f64 {
        0.1
    }
    fn default_prob() -> f64 {
        1.0
    }

    /// `(1 + s, o)` for each of `channels` channels (the same pair repeated unless
    /// `channel_wise`), or `None` when the sample is left alone.
    pub fn draw(&self, rng: &mut impl rand::Rng, channels: usize) -> Option<Vec<(f32, f32)>> {
        if rng.random::<f64>() >= self.prob {
            return None;
        }
        let mut pair = || {
            let s = symmetric(rng, self.scale);
            let o = symmetric(rng, self.shift);
            ((1.0 + s) as f32, o as f32)
        };
        Some(if self.channel_wise {
            (0..channels).map(|_| pair()).collect()
        } else {
            vec![pair(); channels]
        })
    }
}

impl Default for RandIntensity {
    fn default() -> Self {
        RandIntensity {
            field: Self::default_field(),
            scale: Self::default_amount(),
            shift: Self::default_amount(),
            prob: Self::default_prob(),
            channel_wise: false,
            nonzero: false,
        }
    }
}

impl Component for RandIntensity {
    const NAME: &'static str = "rand_intensity";
    const DOC: &'static str = "Randomly scales and shifts an f32 volume: v·(1+s) + o with s ~ U(-scale, scale), o ~ U(-shift, shift), per volume or per channel.";

    fn random(&self) -> bool {
        true
    }

    fn reads(&self) -> Vec<String> {
        vec![self.field.clone()]
    }
    fn writes(&self) -> Vec<String> {
        vec![self.field.clone()]
    }
    fn check(&self) -> Vec<Problem> {
        let mut problems: Vec<Problem> = check_prob(self.prob).into_iter().collect();
        for (name, amount) in [("scale", self.scale), ("shift", self.shift)] {
            if !(amount.is_finite() && amount >= 0.0) {
                problems.push(Problem::param(
                    name,
                    format!("`{name}` must be a finite number ≥ 0; got {amount}"),
                ));
            }
        }
        problems
    }
}

impl StageConfig for RandIntensity {
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

impl Stage for RandIntensity {
    fn process(&self, mut sample: Sample, ctx: &StageContext) -> Result<Sample, StageError> {
        let mut rng = ctx.rng(&sample);
        let volume = sample.f32(&self.field)?;
        let channels = match volume.ndim() {
            3 => 1,
            4 => volume.shape()[0],
            _ => {
                return Err(StageError::new(format!(
                    "field `{}` has shape {:?}; expected X×Y×Z or C×X×Y×Z",
                    self.field,
                    volume.shape()
                )));
            }
        };
        let Some(pairs) = self.draw(&mut rng, channels) else {
            return Ok(sample);
        };
        let volume = sample.f32_mut(&self.field)?;
        let nonzero = self.nonzero;
        let apply = move |v: &mut f32, (a, b): (f32, f32)| {
            if !(nonzero && *v == 0.0) {
                *v = *v * a + b;
            }
        };
        if volume.ndim() == 3 {
            volume.par_map_inplace(|v| apply(v, pairs[0]));
        } else {
            for (mut channel, &pair) in volume.axis_iter_mut(Axis(0)).zip(&pairs) {
                channel.par_map_inplace(|v| apply(v, pair));
            }
        }
        Ok(sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_reference() {
        let c: RandIntensity = serde_json::from_str("{}").unwrap();
        assert_eq!(
            (c.field.as_str(), c.scale, c.shift, c.prob),
            ("image", 0.1, 0.1, 1.0)
        );
        assert!(!c.channel_wise && !c.nonzero);
        assert!(c.check().is_empty());
        assert!(serde_json::from_str::<RandIntensity>(r#"{"factor": 0.1}"#).is_err());
    }

    #[test]
    fn check_rejects_negative_amounts() {
        let c = RandIntensity {
            scale: -1.0,
            shift: f64::NAN,
            prob: 1.1,
            ..RandIntensity::default()
        };
        let params: Vec<String> = c.check().into_iter().filter_map(|p| p.param).collect();
        assert_eq!(params, vec!["prob", "scale", "shift"]);
    }

    #[test]
    fn draws_stay_in_range_and_share_a_pair_unless_channel_wise() {
        use rand_chacha::ChaCha8Rng;
        use rand_chacha::rand_core::SeedableRng;
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let shared = RandIntensity::default();
        let per = RandIntensity {
            channel_wise: true,
            ..RandIntensity::default()
        };
        for _ in 0..200 {
            let p = shared.draw(&mut rng, 4).unwrap();
            assert!(p.iter().all(|&q| q == p[0]));
            let p = per.draw(&mut rng, 4).unwrap();
            assert!(p.iter().any(|&q| q != p[0]));
            for (a, b) in p {
                assert!((0.9..=1.1).contains(&a) && (-0.1..=0.1).contains(&b));
            }
        }
    }
}
