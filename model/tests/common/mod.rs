//! Synthetic brain-tumour phantoms for the model tests.

#![allow(dead_code)]

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use mtmed3d_model::Targets;
use mtmed3d_model::decoder::detection::BoxTargets;

/// The backend's random seed is process-wide: tests of one binary that draw random tensors take
/// turns through this guard, so a seeded draw gives the same tensors on every run.
pub fn seeding_turn() -> std::sync::MutexGuard<'static, ()> {
    static SEEDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SEEDING.lock().unwrap_or_else(|p| p.into_inner())
}

/// One phantom case: a 4-channel image, TC/WT/ET masks, the WT box and a grade.
pub struct Phantom {
    pub size: usize,
    pub image: Vec<f32>,
    pub masks: Vec<f32>,
    pub boxes: BoxTargets,
    pub grade: usize,
}

struct Lcg(u64);
impl Lcg {
    fn uniform(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32) / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform().max(1e-7), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f32::consts::PI * v).cos()
    }
}

/// A spherical tumour at `center` with whole-tumour radius `r_wt`; `enhancing` adds an ET shell inside the
/// core (a high-grade look), otherwise ET is empty (low grade).
pub fn phantom(size: usize, center: [f32; 3], r_wt: f32, enhancing: bool, seed: u64) -> Phantom {
    let mut rng = Lcg(seed);
    let n = size * size * size;
    let mut image = vec![0f32; 4 * n];
    let mut masks = vec![0f32; 3 * n];
    let r_tc = 0.6 * r_wt;
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    let half = size as f32 / 2.0;
    for x in 0..size {
        for y in 0..size {
            for z in 0..size {
                let i = (x * size + y) * size + z;
                let p = [x as f32 + 0.5, y as f32 + 0.5, z as f32 + 0.5];
                let brain = p
                    .iter()
                    .map(|v| ((v - half) / (0.45 * size as f32)).powi(2))
                    .sum::<f32>()
                    < 1.0;
                let d = (0..3)
                    .map(|a| (p[a] - center[a]).powi(2))
                    .sum::<f32>()
                    .sqrt();
                let wt = d < r_wt;
                let tc = d < r_tc;
                let et = enhancing && tc && d > 0.5 * r_tc;
                let base = if brain { 0.3 } else { 0.0 };
                let noise = 0.05;
                image[i] = base + 0.8 * wt as u8 as f32 + noise * rng.normal();
                image[n + i] = base + 0.9 * tc as u8 as f32 + noise * rng.normal();
                image[2 * n + i] = base + 1.2 * et as u8 as f32 + noise * rng.normal();
                image[3 * n + i] = base + 0.7 * (wt && !tc) as u8 as f32 + noise * rng.normal();
                masks[i] = tc as u8 as f32;
                masks[n + i] = wt as u8 as f32;
                masks[2 * n + i] = et as u8 as f32;
                if wt {
                    for (a, v) in [x, y, z].into_iter().enumerate() {
                        lo[a] = lo[a].min(v);
                        hi[a] = hi[a].max(v + 1);
                    }
                }
            }
        }
    }
    Phantom {
        size,
        image,
        masks,
        boxes: BoxTargets {
            boxes: vec![[
                lo[0] as f32,
                lo[1] as f32,
                lo[2] as f32,
                hi[0] as f32,
                hi[1] as f32,
                hi[2] as f32,
            ]],
            labels: vec![0],
        },
        grade: enhancing as usize,
    }
}

/// The two standard cases: a high-grade tumour and a low-grade one elsewhere.
pub fn two_cases(size: usize) -> Vec<Phantom> {
    let s = size as f32;
    vec![
        phantom(size, [0.4 * s, 0.45 * s, 0.55 * s], 0.22 * s, true, 7),
        phantom(size, [0.62 * s, 0.58 * s, 0.4 * s], 0.17 * s, false, 11),
    ]
}

/// Stacks cases into an image batch and targets.
pub fn batch<B: Backend>(cases: &[Phantom], device: &B::Device) -> (Tensor<B, 5>, Targets<B>) {
    let s = cases[0].size;
    let b = cases.len();
    let image: Vec<f32> = cases.iter().flat_map(|c| c.image.clone()).collect();
    let masks: Vec<f32> = cases.iter().flat_map(|c| c.masks.clone()).collect();
    let image = Tensor::from_data(TensorData::new(image, [b, 4, s, s, s]), device);
    let seg = Tensor::from_data(TensorData::new(masks, [b, 3, s, s, s]), device);
    (
        image,
        Targets {
            seg,
            grades: cases.iter().map(|c| c.grade).collect(),
            boxes: cases.iter().map(|c| c.boxes.clone()).collect(),
        },
    )
}

/// Dice of thresholded logits against a mask, per channel, for one case of a batch.
pub fn dice<B: Backend>(
    logits: &Tensor<B, 5>,
    target: &Tensor<B, 5>,
    case: usize,
    channel: usize,
) -> f32 {
    let [_, _, d, h, w] = logits.dims();
    let l: Vec<f32> = logits
        .clone()
        .slice([case..case + 1, channel..channel + 1, 0..d, 0..h, 0..w])
        .into_data()
        .iter::<f32>()
        .collect();
    let t: Vec<f32> = target
        .clone()
        .slice([case..case + 1, channel..channel + 1, 0..d, 0..h, 0..w])
        .into_data()
        .iter::<f32>()
        .collect();
    let (mut inter, mut ps, mut ts) = (0.0, 0.0, 0.0);
    for (a, b) in l.iter().zip(&t) {
        let p = (*a > 0.0) as u8 as f32;
        inter += p * b;
        ps += p;
        ts += b;
    }
    if ps + ts == 0.0 {
        1.0
    } else {
        2.0 * inter / (ps + ts)
    }
}

/// Asserts that `ours` equals `theirs` in shape and, element by element, to within `tolerance`
/// times the reference's largest magnitude (at least 1).
pub fn assert_close(ours: &TensorData, theirs: &TensorData, tolerance: f32, what: &str) {
    assert_eq!(ours.shape, theirs.shape, "{what}: shapes");
    let (a, b) = (
        ours.to_vec::<f32>().unwrap(),
        theirs.to_vec::<f32>().unwrap(),
    );
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    assert!(
        worst <= tolerance * scale,
        "{what}: largest difference {worst} (scale {scale})"
    );
}
