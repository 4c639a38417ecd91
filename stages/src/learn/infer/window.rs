//! Sliding-window inference over a whole volume, independent of the model: window layout,
//! importance maps and blending.
//!
//! Windows follow the `patches` stage's layout ([`tile_starts`]): every `size·(1 − overlap)`
//! voxels, the last window flush with the end, and one centred, zero-padded window along an
//! axis shorter than the patch. Each window's prediction is accumulated with an importance
//! weight and the sum is divided by the accumulated weight, as MONAI's
//! `sliding_window_inference`: with a Gaussian importance map the centre of a window, where the
//! network sees the most context, counts more than its edges, which hides the seams between
//! windows.

use ndarray::{Array3, Array4, ArrayD, ArrayView4, Axis, IxDyn, s};

use crate::spatial::crop::{crop_array, tile_starts};

/// How overlapping window predictions are weighted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Blend {
    /// Every voxel of a window counts the same (MONAI `constant`).
    Constant,
    /// A Gaussian centred on the window with σ = `sigma_scale` × the patch edge on each axis
    /// (MONAI `gaussian`, whose default scale is 0.125).
    Gaussian { sigma_scale: f64 },
}

/// The windows covering a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowPlan {
    /// Spatial shape of the volume.
    pub volume: [usize; 3],
    /// Spatial shape of a window.
    pub patch: [usize; 3],
    /// Start of every window (negative when the window is padded), x slowest.
    pub starts: Vec<[i64; 3]>,
}

impl WindowPlan {
    /// Windows of `patch` voxels overlapping by the fraction `overlap` (0 ≤ overlap < 1).
    pub fn new(volume: [usize; 3], patch: [usize; 3], overlap: f64) -> Self {
        let axes: Vec<Vec<i64>> = (0..3)
            .map(|a| tile_starts(volume[a], patch[a], overlap))
            .collect();
        let mut starts = Vec::with_capacity(axes.iter().map(Vec::len).product());
        for &x in &axes[0] {
            for &y in &axes[1] {
                for &z in &axes[2] {
                    starts.push([x, y, z]);
                }
            }
        }
        WindowPlan {
            volume,
            patch,
            starts,
        }
    }

    /// The part of window `start` that lies inside the volume, as `(lo, hi)` in volume
    /// coordinates.
    pub fn inside(&self, start: [i64; 3]) -> ([usize; 3], [usize; 3]) {
        let lo = [0, 1, 2].map(|a| start[a].max(0) as usize);
        let hi = [0, 1, 2]
            .map(|a| ((start[a] + self.patch[a] as i64).max(0) as usize).min(self.volume[a]));
        (lo, hi)
    }
}

/// The importance map of a window (`patch` voxels), as MONAI's `compute_importance_map`:
/// a product of 1D Gaussians over centred coordinates `i − (n − 1)/2`, with the smallest
/// weight raised to at least 1e-3 so that no voxel of the volume is left without weight.
pub fn importance_map(patch: [usize; 3], blend: Blend) -> Array3<f32> {
    match blend {
        Blend::Constant => Array3::ones(patch),
        Blend::Gaussian { sigma_scale } => {
            let axis = |a: usize| -> Vec<f64> {
                let n = patch[a];
                let sigma = n as f64 * sigma_scale;
                (0..n)
                    .map(|i| {
                        let x = i as f64 - (n as f64 - 1.0) / 2.0;
                        (-(x * x) / (2.0 * sigma * sigma)).exp()
                    })
                    .collect()
            };
            let (gx, gy, gz) = (axis(0), axis(1), axis(2));
            let map = Array3::from_shape_fn(patch, |(i, j, k)| (gx[i] * gy[j] * gz[k]) as f32);
            let floor = map.iter().copied().fold(f32::INFINITY, f32::min).max(1e-3);
            map.mapv(|v| v.max(floor))
        }
    }
}

/// Accumulates weighted window predictions (`C×patch`) into a `C×volume` result.
#[derive(Debug, Clone)]
pub struct Blender {
    plan_volume: [usize; 3],
    patch: [usize; 3],
    importance: Array3<f32>,
    sum: Array4<f32>,
    weight: Array3<f32>,
}

impl Blender {
    /// An empty accumulator for `channels` output channels.
    pub fn new(plan: &WindowPlan, channels: usize, blend: Blend) -> Self {
        let [x, y, z] = plan.volume;
        Blender {
            plan_volume: plan.volume,
            patch: plan.patch,
            importance: importance_map(plan.patch, blend),
            sum: Array4::zeros((channels, x, y, z)),
            weight: Array3::zeros((x, y, z)),
        }
    }

    /// Adds the prediction of the window at `start`; the part outside the volume (padding)
    /// is ignored.
    pub fn add(&mut self, start: [i64; 3], prediction: ArrayView4<'_, f32>) {
        let plan = WindowPlan {
            volume: self.plan_volume,
            patch: self.patch,
            starts: Vec::new(),
        };
        let (lo, hi) = plan.inside(start);
        if (0..3).any(|a| lo[a] >= hi[a]) {
            return;
        }
        let off = [0, 1, 2].map(|a| (lo[a] as i64 - start[a]) as usize);
        let src = |a: usize| off[a]..off[a] + hi[a] - lo[a];
        let w = self.importance.slice(s![src(0), src(1), src(2)]);
        let mut acc = self
            .weight
            .slice_mut(s![lo[0]..hi[0], lo[1]..hi[1], lo[2]..hi[2]]);
        acc += &w;
        for (c, pred) in prediction.axis_iter(Axis(0)).enumerate() {
            let p = pred.slice(s![src(0), src(1), src(2)]);
            let mut out = self
                .sum
                .slice_mut(s![c, lo[0]..hi[0], lo[1]..hi[1], lo[2]..hi[2]]);
            ndarray::Zip::from(&mut out)
                .and(&p)
                .and(&w)
                .for_each(|o, &p, &w| *o += p * w);
        }
    }

    /// The blended prediction: the weighted sum divided by the accumulated weight.
    pub fn finish(self) -> Array4<f32> {
        let mut sum = self.sum;
        for mut channel in sum.axis_iter_mut(Axis(0)) {
            ndarray::Zip::from(&mut channel)
                .and(&self.weight)
                .for_each(|v, &w| {
                    if w > 0.0 {
                        *v /= w
                    }
                });
        }
        sum
    }
}

/// Runs `predict` over every window of `image` (`C×X×Y×Z`, the spatial shape of `plan`), `batch` windows per call, and
/// blends the segmentation it returns.
///
/// `predict` receives a `B×C×patch` batch and the starts of its windows and returns one
/// `K×patch` prediction per window; anything else it computes (boxes, grades) it keeps
/// itself.
pub fn sliding_window<E>(
    image: &ArrayD<f32>,
    plan: &WindowPlan,
    blend: Blend,
    batch: usize,
    mut predict: impl FnMut(ArrayD<f32>, &[[i64; 3]]) -> Result<Vec<Array4<f32>>, E>,
) -> Result<Option<Array4<f32>>, E> {
    let channels = image.shape()[0];
    let [px, py, pz] = plan.patch;
    let mut blender: Option<Blender> = None;
    for starts in plan.starts.chunks(batch.max(1)) {
        let mut windows = ArrayD::<f32>::zeros(IxDyn(&[starts.len(), channels, px, py, pz]));
        for (i, &start) in starts.iter().enumerate() {
            windows
                .index_axis_mut(Axis(0), i)
                .assign(&crop_array(image, start, plan.patch));
        }
        let predictions = predict(windows, starts)?;
        for (&start, p) in starts.iter().zip(&predictions) {
            blender
                .get_or_insert_with(|| Blender::new(plan, p.shape()[0], blend))
                .add(start, p.view());
        }
    }
    Ok(blender.map(Blender::finish))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A smooth function of the volume position, so every window's view of it differs.
    fn field(c: usize, x: f64, y: f64, z: f64) -> f32 {
        ((c as f64 + 1.0) * (0.11 * x).sin() + 0.07 * y * y / 10.0 - (0.05 * z).cos() * (c as f64))
            as f32
    }

    /// Windows' predictions for a batch of windows starting at the given voxels.
    type Predictions = Result<Vec<Array4<f32>>, String>;

    /// A fake predictor that returns `field` at each window voxel's volume position (the
    /// padding included), so any misplaced window or weight shows in the blended result.
    fn predict_field(
        channels: usize,
        patch: [usize; 3],
    ) -> impl FnMut(ArrayD<f32>, &[[i64; 3]]) -> Predictions {
        move |batch, starts| {
            assert_eq!(batch.shape()[0], starts.len());
            Ok(starts
                .iter()
                .map(|st| {
                    Array4::from_shape_fn(
                        (channels, patch[0], patch[1], patch[2]),
                        |(c, i, j, k)| {
                            field(
                                c,
                                (st[0] + i as i64) as f64,
                                (st[1] + j as i64) as f64,
                                (st[2] + k as i64) as f64,
                            )
                        },
                    )
                })
                .collect())
        }
    }

    #[test]
    fn blending_reproduces_a_known_function_of_position() {
        // non-multiple sizes, an axis shorter than the patch (padded window), batches that do
        // not divide the window count
        for (volume, patch, overlap, batch) in [
            ([50, 45, 37], [32, 32, 32], 0.25, 1),
            ([50, 45, 20], [16, 24, 32], 0.5, 3),
            ([33, 17, 40], [8, 8, 8], 0.0, 4),
        ] {
            let plan = WindowPlan::new(volume, patch, overlap);
            let image = ArrayD::<f32>::zeros(IxDyn(&[2, volume[0], volume[1], volume[2]]));
            for blend in [Blend::Constant, Blend::Gaussian { sigma_scale: 0.125 }] {
                let out = sliding_window(&image, &plan, blend, batch, predict_field(3, patch))
                    .unwrap()
                    .unwrap();
                assert_eq!(out.shape(), &[3, volume[0], volume[1], volume[2]]);
                let worst = out
                    .indexed_iter()
                    .map(|((c, x, y, z), v)| (v - field(c, x as f64, y as f64, z as f64)).abs())
                    .fold(0.0f32, f32::max);
                assert!(
                    worst < 1e-5,
                    "{volume:?} {patch:?} {blend:?}: error {worst}"
                );
            }
        }
    }

    #[test]
    fn windows_cover_the_volume_and_the_last_is_flush_with_the_end() {
        let plan = WindowPlan::new([50, 45, 37], [32, 32, 32], 0.25);
        // interval round(32·0.75) = 24: x 0, 18; y 0, 13; z 0, 5
        assert_eq!(plan.starts.len(), 8);
        assert_eq!(plan.starts[0], [0, 0, 0]);
        assert_eq!(plan.starts[7], [18, 13, 5]);
        let padded = WindowPlan::new([50, 20, 32], [32, 32, 32], 0.25);
        assert_eq!(padded.starts[0], [0, -6, 0]);
        assert_eq!(padded.inside([0, -6, 0]), ([0, 0, 0], [32, 20, 32]));
    }

    #[test]
    fn gaussian_window_weights_the_centre_most() {
        let map = importance_map([9, 8, 7], Blend::Gaussian { sigma_scale: 0.125 });
        // odd axes peak at the centre voxel; the even axis at its two middle voxels
        let peak = map[[4, 3, 3]];
        assert_eq!(map[[4, 4, 3]], peak);
        assert!(map.iter().all(|&v| v <= peak && v >= 1e-3));
        // σ_x = 9·0.125 = 1.125: the weight one voxel off centre along x is exp(−1/(2σ²))
        let expected = (-1.0f64 / (2.0 * 1.125 * 1.125)).exp() as f32;
        assert!((map[[5, 3, 3]] / peak - expected).abs() < 1e-6);
        // the corners fall under 1e-3 and are raised to it
        assert_eq!(map[[0, 0, 0]], 1e-3);
    }

    #[test]
    fn one_window_gives_the_prediction_itself() {
        let plan = WindowPlan::new([16, 16, 16], [16, 16, 16], 0.25);
        assert_eq!(plan.starts, vec![[0, 0, 0]]);
        let image = ArrayD::<f32>::zeros(IxDyn(&[1, 16, 16, 16]));
        let out = sliding_window(
            &image,
            &plan,
            Blend::Gaussian { sigma_scale: 0.125 },
            2,
            predict_field(1, [16; 3]),
        )
        .unwrap()
        .unwrap();
        let direct =
            predict_field(1, [16; 3])(ArrayD::zeros(IxDyn(&[1, 1, 16, 16, 16])), &[[0; 3]])
                .unwrap()
                .remove(0);
        let worst = (&out - &direct).iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(worst < 1e-6, "{worst}");
    }
}
