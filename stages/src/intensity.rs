//! Intensity normalisation for MRI and CT.
//!
//! ```yaml
//! - normalise: {}                                   # MRI: z-score over brain voxels, per channel
//! - normalise: {mode: window, window: [-1000, 400], out_range: [0, 1], clip: true}   # CT, HU
//! - normalise: {mode: percentile, percentiles: [0.5, 99.5], clip: true}
//! ```
//!
//! `zscore` is MONAI's `NormalizeIntensity`: with `nonzero`, mean and (population) standard
//! deviation come from the nonzero voxels only and zeros stay zero; a standard deviation of 0
//! is taken as 1. `window` is MONAI's `ScaleIntensityRange`; `percentile` its
//! `ScaleIntensityRangePercentiles`, with numpy's linear-interpolation percentiles.

use mtmed3d_pipeline::{
    BuildContext, Component, Problem, Sample, Stage, StageConfig, StageContext, StageError,
};
use ndarray::{ArrayViewMutD, Axis};
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NormaliseMode {
    /// (v − mean) / std.
    Zscore,
    /// Linear map of `window` to `out_range` (CT Hounsfield windows).
    Window,
    /// Linear map of the `percentiles` of the data to `out_range`.
    Percentile,
}

/// Normalises the intensities of an f32 field.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Normalise {
    /// The f32 field (C×X×Y×Z).
    #[serde(default = "default_image")]
    pub field: String,
    /// `zscore`, `window` or `percentile`.
    #[serde(default = "default_mode")]
    pub mode: NormaliseMode,
    /// Statistics from nonzero voxels only, and zeros left at zero (skull-stripped MRI).
    #[serde(default = "yes")]
    pub nonzero: bool,
    /// Statistics per channel (per modality) rather than over all channels.
    #[serde(default = "yes")]
    pub channel_wise: bool,
    /// `window` mode: the input range [low, high].
    #[serde(default)]
    pub window: Option<[f64; 2]>,
    /// `percentile` mode: the lower and upper percentiles (0–100).
    #[serde(default = "default_percentiles")]
    pub percentiles: [f64; 2],
    /// `window` and `percentile` modes: the output range.
    #[serde(default = "default_out_range")]
    pub out_range: [f64; 2],
    /// `window` and `percentile` modes: clip to `out_range`.
    #[serde(default)]
    pub clip: bool,
}

fn default_image() -> String {
    "image".into()
}
fn default_mode() -> NormaliseMode {
    NormaliseMode::Zscore
}
fn yes() -> bool {
    true
}
fn default_percentiles() -> [f64; 2] {
    [0.5, 99.5]
}
fn default_out_range() -> [f64; 2] {
    [0.0, 1.0]
}

impl Component for Normalise {
    const NAME: &'static str = "normalise";
    const DOC: &'static str = "Z-score (MONAI NormalizeIntensity), intensity window or percentile scaling of an f32 field.";

    fn reads(&self) -> Vec<String> {
        vec![self.field.clone()]
    }
    fn writes(&self) -> Vec<String> {
        vec![self.field.clone()]
    }
    fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        match (self.mode, self.window) {
            (NormaliseMode::Window, None) => problems.push(Problem::param(
                "mode",
                "`mode: window` needs `window: [low, high]`",
            )),
            (_, Some([lo, hi])) if !(lo.is_finite() && hi.is_finite() && lo < hi) => problems.push(
                Problem::param("window", "`window` must be [low, high] with low < high"),
            ),
            _ => {}
        }
        let [p0, p1] = self.percentiles;
        if !(0.0..=100.0).contains(&p0) || !(0.0..=100.0).contains(&p1) || p0 >= p1 {
            problems.push(Problem::param(
                "percentiles",
                "`percentiles` must be [low, high] within 0–100 with low < high",
            ));
        }
        if !self.out_range.iter().all(|v| v.is_finite()) {
            problems.push(Problem::param("out_range", "`out_range` must be finite"));
        }
        problems
    }
}

impl StageConfig for Normalise {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

impl Stage for Normalise {
    fn process(&self, mut sample: Sample, _: &StageContext) -> Result<Sample, StageError> {
        let field = self.field.clone();
        let volume = sample.f32_mut(&field)?;
        if volume.ndim() == 0 {
            return Err(StageError::new(format!("field `{field}` is empty")));
        }
        if self.channel_wise && volume.ndim() == 4 {
            volume
                .axis_iter_mut(Axis(0))
                .into_par_iter()
                .for_each(|channel| self.normalise(channel));
        } else {
            self.normalise(volume.view_mut());
        }
        Ok(sample)
    }
}

impl Normalise {
    fn normalise(&self, mut values: ArrayViewMutD<'_, f32>) {
        let keep_zero = self.nonzero;
        let selected = |v: f32| !keep_zero || v != 0.0;
        match self.mode {
            NormaliseMode::Zscore => {
                let Some((mean, std)) = mean_std(&values, keep_zero) else {
                    return;
                };
                if let Some(slice) = values.as_slice_memory_order_mut() {
                    // Branch-free over a contiguous slice, so the compiler vectorises it; a
                    // product, as a division per voxel would bound the loop.
                    let inv_std = 1.0 / std;
                    for v in slice.iter_mut() {
                        let z = ((f64::from(*v) - mean) * inv_std) as f32;
                        *v = if keep_zero && *v == 0.0 { 0.0 } else { z };
                    }
                } else {
                    apply(&mut values, keep_zero, |v| (v - mean) / std);
                }
            }
            NormaliseMode::Window => {
                let [lo, hi] = self.window.unwrap_or([0.0, 1.0]);
                apply(&mut values, keep_zero, self.rescaler(lo, hi));
            }
            NormaliseMode::Percentile => {
                let mut data: Vec<f32> = values.iter().copied().filter(|v| selected(*v)).collect();
                if data.is_empty() {
                    return;
                }
                let lo = percentile(&mut data, self.percentiles[0]);
                let hi = percentile(&mut data, self.percentiles[1]);
                apply(&mut values, keep_zero, self.rescaler(lo, hi));
            }
        }
    }

    /// The linear map of [lo, hi] onto `out_range`, clipped if asked.
    fn rescaler(&self, lo: f64, hi: f64) -> impl Fn(f64) -> f64 {
        let [b0, b1] = self.out_range;
        let width = hi - lo;
        let clip = self.clip;
        move |v| {
            // A constant input maps to the low end, as MONAI does.
            let scaled = if width > 0.0 {
                (v - lo) / width * (b1 - b0) + b0
            } else {
                b0
            };
            if clip {
                scaled.clamp(b0.min(b1), b0.max(b1))
            } else {
                scaled
            }
        }
    }
}

/// Mean and standard deviation (population, as numpy's `std`) of the selected voxels (all,
/// or the nonzero ones), in f64. `None` when nothing is selected; a constant input has std 1.
fn mean_std(values: &ArrayViewMutD<'_, f32>, nonzero_only: bool) -> Option<(f64, f64)> {
    const LANES: usize = 8;
    let (n, mean, var_sum) = if let Some(slice) = values.as_slice_memory_order() {
        // One pass over the sums of d = v − shift and d², in eight f64 lanes so the loop
        // vectorises. The shift is the mean of a sparse sample of the selected voxels: the sums
        // then stay on the scale of the spread, and Σd² − (Σd)²/n loses no precision worth
        // naming (the tests compare with two passes on MR-like values far from zero).
        let selected = |v: f32| !nonzero_only || v != 0.0;
        let (sample_sum, sample_n) = slice
            .iter()
            .step_by(4099)
            .filter(|v| selected(**v))
            .fold((0.0f64, 0u32), |(s, k), &v| (s + f64::from(v), k + 1));
        let shift = if sample_n > 0 {
            sample_sum / f64::from(sample_n)
        } else {
            0.0
        };
        let chunks = slice.chunks_exact(LANES);
        let tail = chunks.remainder();
        let mut sums = [0.0f64; LANES];
        let mut squares = [0.0f64; LANES];
        // Counted in f64 too (exact below 2^53), so every lane operation is one vector op.
        let mut counts = [0.0f64; LANES];
        for chunk in chunks {
            for i in 0..LANES {
                let keep = f64::from(u8::from(selected(chunk[i])));
                let d = (f64::from(chunk[i]) - shift) * keep;
                sums[i] += d;
                squares[i] += d * d;
                counts[i] += keep;
            }
        }
        let mut sum: f64 = sums.iter().sum();
        let mut square_sum: f64 = squares.iter().sum();
        let mut n = counts.iter().sum::<f64>() as u64;
        for &v in tail.iter().filter(|v| selected(**v)) {
            let d = f64::from(v) - shift;
            sum += d;
            square_sum += d * d;
            n += 1;
        }
        if n == 0 {
            return None;
        }
        let mean_d = sum / n as f64;
        (n, shift + mean_d, (square_sum - sum * mean_d).max(0.0))
    } else {
        let selected = |v: f32| !nonzero_only || v != 0.0;
        let (mut n, mut sum) = (0u64, 0.0f64);
        for &v in values.iter().filter(|v| selected(**v)) {
            n += 1;
            sum += f64::from(v);
        }
        if n == 0 {
            return None;
        }
        let mean = sum / n as f64;
        let var_sum = values
            .iter()
            .filter(|v| selected(**v))
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>();
        (n, mean, var_sum)
    };
    let var = var_sum / n as f64;
    Some((mean, if var > 0.0 { var.sqrt() } else { 1.0 }))
}

/// Applies `f` to every voxel, or only to nonzero voxels when `keep_zero`.
fn apply(values: &mut ArrayViewMutD<'_, f32>, keep_zero: bool, f: impl Fn(f64) -> f64) {
    values.mapv_inplace(|v| {
        if keep_zero && v == 0.0 {
            v
        } else {
            f(f64::from(v)) as f32
        }
    });
}

/// numpy's default percentile (linear interpolation between closest ranks), in O(n).
pub fn percentile(data: &mut [f32], q: f64) -> f64 {
    let n = data.len();
    let rank = (q / 100.0).clamp(0.0, 1.0) * (n - 1) as f64;
    let lower = rank.floor() as usize;
    let frac = rank - lower as f64;
    let (_, &mut low, upper_part) = data.select_nth_unstable_by(lower, f32::total_cmp);
    let low = f64::from(low);
    if frac == 0.0 || upper_part.is_empty() {
        return low;
    }
    let high = upper_part.iter().copied().fold(f32::INFINITY, f32::min);
    low + frac * (f64::from(high) - low)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mtmed3d_pipeline::Field;
    use ndarray::{ArrayD, IxDyn};

    fn run(config: &str, data: Vec<f32>, shape: &[usize]) -> Vec<f32> {
        let cfg: Normalise = serde_json::from_str(config).unwrap();
        assert!(cfg.check().is_empty(), "{:?}", cfg.check());
        let mut s = Sample::new("c");
        s.insert(
            "image",
            Field::f32(ArrayD::from_shape_vec(IxDyn(shape), data).unwrap()),
        );
        let out = cfg
            .process(s, &StageContext::new("normalise", 1, 0))
            .unwrap();
        out.f32("image").unwrap().iter().copied().collect()
    }

    #[test]
    fn zscore_over_nonzero_voxels_per_channel_keeps_background() {
        // Channel 0: nonzero values 1, 2, 3 (mean 2, population std sqrt(2/3)); channel 1 constant.
        let out = run(
            r#"{}"#,
            vec![0.0, 1.0, 2.0, 3.0, 0.0, 5.0, 5.0, 5.0],
            &[2, 1, 2, 2],
        );
        let s = (2.0f64 / 3.0).sqrt();
        let expected = [0.0, -1.0 / s, 0.0, 1.0 / s, 0.0, 0.0, 0.0, 0.0];
        for (o, e) in out.iter().zip(expected) {
            assert!((f64::from(*o) - e).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn one_pass_statistics_equal_two_passes_on_values_far_from_zero() {
        // MR-like intensities: a large offset, a small spread, background zeros.
        let data: Vec<f32> = (0..100_003u32)
            .map(|i| {
                if i % 7 == 0 {
                    0.0
                } else {
                    20_000.0 + ((i * 7919) % 1000) as f32 * 0.01
                }
            })
            .collect();
        for nonzero in [true, false] {
            let selected: Vec<f64> = data
                .iter()
                .filter(|v| !nonzero || **v != 0.0)
                .map(|&v| f64::from(v))
                .collect();
            let mean = selected.iter().sum::<f64>() / selected.len() as f64;
            let var =
                selected.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / selected.len() as f64;
            let mut copy = data.clone();
            let view = ndarray::ArrayViewMut::from_shape(IxDyn(&[copy.len()]), &mut copy).unwrap();
            let (m, s) = mean_std(&view, nonzero).unwrap();
            assert!((m - mean).abs() <= 1e-12 * mean.abs(), "{m} vs {mean}");
            assert!(
                (s - var.sqrt()).abs() <= 1e-9 * var.sqrt(),
                "{s} vs {}",
                var.sqrt()
            );
        }
    }

    #[test]
    fn zscore_over_all_voxels_includes_zeros() {
        let out = run(
            r#"{"nonzero": false, "channel_wise": false}"#,
            vec![0.0, 2.0],
            &[1, 1, 1, 2],
        );
        assert_eq!(out, vec![-1.0, 1.0]);
    }

    #[test]
    fn window_maps_and_clips() {
        let out = run(
            r#"{"mode": "window", "window": [-1000, 400], "clip": true, "nonzero": false}"#,
            vec![-2000.0, -1000.0, -300.0, 400.0, 3000.0],
            &[1, 1, 1, 5],
        );
        assert_eq!(out, vec![0.0, 0.0, 0.5, 1.0, 1.0]);
    }

    #[test]
    fn percentiles_match_numpy_linear_interpolation() {
        // numpy.percentile([1, 2, 3, 4, 10], [10, 90]) == [1.4, 7.6]
        let mut data = vec![10.0, 2.0, 4.0, 1.0, 3.0];
        assert!((percentile(&mut data, 10.0) - 1.4).abs() < 1e-9);
        assert!((percentile(&mut data, 90.0) - 7.6).abs() < 1e-6);
        assert_eq!(percentile(&mut data, 0.0), 1.0);
        assert_eq!(percentile(&mut data, 100.0), 10.0);
    }

    #[test]
    fn window_mode_needs_a_window() {
        let cfg: Normalise = serde_json::from_str(r#"{"mode": "window"}"#).unwrap();
        assert_eq!(cfg.check()[0].param.as_deref(), Some("mode"));
    }
}
