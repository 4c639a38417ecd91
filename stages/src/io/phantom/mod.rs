//! Synthetic BraTS-like cases: four MRI modalities and a tumour segmentation, generated in memory.
//!
//! [`generate_case`] returns the arrays and metadata of one case; writing them out (NIfTI, zarr) is the
//! job of the writers. A case is a pure function of `(config, seed, index)`: it draws its parameters from
//! a ChaCha8 stream seeded by `(seed, index)`, and every per-voxel quantity is a function of position
//! (smooth fields) or of a counter-based hash of the voxel index (noise), so the output is bit-identical
//! whatever the thread count.
//!
//! # Layout and orientation
//! Arrays are standard-layout `[X, Y, Z]` and stored **LPS** like BraTS: voxel axis 0 runs towards the
//! patient's left, axis 1 towards posterior, axis 2 towards superior. The affine (voxel → RAS+ world mm,
//! the NIfTI convention) is `diag(-sx, -sy, sz)` with the origin at the centre of the volume.
//!
//! # What is modelled
//! - **Brain outline**: a smooth union of cerebrum (flat underneath, narrower frontally), temporal lobes,
//!   cerebellar hemispheres and brainstem, a midline groove between the hemispheres, and low-frequency
//!   irregularity of a few mm. Everything outside it is exactly 0 in every modality, like skull-stripped
//!   BraTS images; every voxel inside is ≥ 1.
//! - **Tissues**: a cortical grey-matter ribbon of 2.4–3 mm under the surface, sulci as CSF sheets (the
//!   zero set of two octaves of gradient noise, 8–20 mm deep) lined by cortex, Sylvian fissure, tentorial
//!   cleft, interhemispheric fissure with a falx down to the corpus callosum, patchy subarachnoid CSF over
//!   the convexity, white matter, deep grey matter (thalamus, lentiform nucleus, caudate head), lateral
//!   ventricles (frontal/occipital/temporal horns, variable size), third and fourth ventricles, and a
//!   choroid plexus in each atrium. Tissue boundaries have one-voxel partial-volume blending.
//! - **Tumour**: one glioma per case in the cerebral white matter of either hemisphere (centre drawn by
//!   rejection sampling so that the perturbed core plus a margin lies inside the cerebrum). The core is a
//!   randomly rotated ellipsoid (semi-axes ×0.8–1.25) whose radius is perturbed by low-frequency 3D noise.
//!   - HGG: necrosis (label 1) inside an irregular enhancing rim (label 4), 5–20 % of the rim
//!     non-enhancing (label 1); ET is typically 45–85 % of TC. Oedema (label 2) reaches 1.25–1.8× the
//!     core radius (+4 mm, at most +20 mm, at least a little beyond the core).
//!   - LGG: non-enhancing core (label 1); 20 % have a small cystic centre (label 1), 30 % a faint
//!     enhancing focus of about 1–3 % of the core, the rest none; oedema 1.1–1.5× the core radius (+3 mm).
//!   - Oedema spreads in white and deep grey matter, only marginally into cortex, never into CSF, with
//!     finger-like irregular borders. Mass effect (optional) pushes the surrounding anatomy (ventricles,
//!     sulci, midline) away from the tumour; the brain outline stays put.
//!   - Core radius (before perturbation) is drawn from `tumour_radius_mm` (default 10–24 mm), which gives
//!     tumour-core volumes of roughly 3–80 ml and whole-tumour volumes of roughly 10–300 ml in the
//!     full-size brain (the tests accept 2–100 and 6–350 ml). [`TumourInfo`] reports what was drawn.
//! - **Contrasts** (arbitrary units near BraTS ranges; per-case gain 0.85–1.2 per modality and ±5 %
//!   jitter per tissue): T1 WM > GM > CSF; T1ce like T1 with strong enhancement of the enhancing rim,
//!   choroid plexus and falx; T2 CSF and oedema bright, WM darker than GM; FLAIR CSF suppressed, oedema
//!   and non-enhancing tumour bright. Smooth tissue texture, stronger tumour heterogeneity.
//! - **Acquisition**: a smooth multiplicative bias field per modality (the exponential of a random
//!   quadratic polynomial, within ±`bias_field`), then Rician noise (`noise` × the white-matter level),
//!   rounded to integers.
//! - **Also returned**: a normal-tissue map ([`PhantomCase::tissue`]: CSF, cortical grey, white, deep grey
//!   matter) for tests and for tasks other than tumour segmentation.
//!
//! # Scale
//! Anatomy is defined in millimetres of an adult brain in a 240×240×155, 1 mm volume and is scaled
//! uniformly to fit the physical extent `shape × spacing` (so `[96, 96, 96]` holds a whole, smaller
//! brain). Thin structures (cortex, sulci, enhancing rim, smallest core) are widened to about one or two
//! voxels on coarse grids so that they remain visible.
//!
//! # Speed
//! Smooth fields are evaluated on a grid of every second voxel (every voxel when a voxel spans more than
//! 1.5 mm of the reference brain, e.g. 96³) and trilinearly interpolated; thin sheets are interpolated as
//! signed coordinates across the sheet and only thresholded per voxel, so they stay continuous. Outside
//! the brain only the outline is evaluated, and rows of voxels that cannot reach the brain are skipped.
//! Per brain voxel: one blend of the interpolated channels, a few square roots and eight hashed Gaussian
//! draws. About 0.6 s of CPU for a 240×240×155 case, 0.3 s for 96³, split across rayon threads.
//!
//! # Limits
//! Not a biophysical simulation: no skull, no vessels other than the choroid plexus and falx, no
//! hippocampus/insula detail, no cerebellar folia distinct from cortical sulci, one tumour per case, no
//! multifocal or midline-crossing (butterfly) gliomas, oedema does not follow real fibre tracts, mass
//! effect does not compress ventricles or shift the outline, no motion or ghosting artefacts, and no
//! slice-thickness anisotropy beyond what `spacing` gives. Intensities are plausible, not calibrated.
//! The gyral pattern is noise, not a real folding pattern; the brainstem is cut by the bottom of the
//! volume as in many BraTS scans. Small volumes (64×64×48) resolve the cortex and sulci only as partial
//! volume. Memory: the sampled grid holds 24 floats per node (about 110 MB at full size) while a case is
//! generated.

mod anatomy;
mod noise;
mod tumour;

use anatomy::{Anatomy, FALX_CLEARANCE, FALX_HALF_WIDTH, V3, Widths, sheet_distance};
use ndarray::Array3;
use noise::{fmix64, gauss};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tumour::Tumour;

/// Modality order of [`PhantomCase::modalities`] (BraTS file suffixes).
pub const MODALITIES: [&str; 4] = ["t1", "t1ce", "t2", "flair"];

/// BraTS 2018–2020 labels.
pub const LABEL_NECROSIS: u8 = 1;
pub const LABEL_OEDEMA: u8 = 2;
pub const LABEL_ENHANCING: u8 = 4;

/// Codes of [`PhantomCase::tissue`] (normal anatomy, ignoring the tumour).
pub const TISSUE_BACKGROUND: u8 = 0;
pub const TISSUE_CSF: u8 = 1;
pub const TISSUE_GREY: u8 = 2;
pub const TISSUE_WHITE: u8 = 3;
pub const TISSUE_DEEP_GREY: u8 = 4;

/// Shape and spacing of the BraTS volumes the anatomy is defined for.
const REFERENCE_SHAPE: [f64; 3] = [240.0, 240.0, 155.0];

/// Generator settings. Every field has a default, so `{}` is a valid configuration.
/// Changes whenever the generator would produce different voxels for the same parameters,
/// so caches keyed on a phantom case miss instead of serving an old rendering.
pub const GENERATOR_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PhantomConfig {
    /// Volume shape [X, Y, Z] in voxels (each at least 16).
    pub shape: [usize; 3],
    /// Voxel size in mm, written into the affine.
    pub spacing: [f64; 3],
    /// Fraction of high-grade cases. Grades are spread evenly over the case indices (a golden-ratio
    /// sequence with a per-seed offset), so any run of n consecutive cases holds n·fraction HGG
    /// cases give or take one or two: a small validation or test series is not left without LGG
    /// cases by chance.
    pub hgg_fraction: f64,
    /// Range of tumour-core radii in mm of the reference (full-size) brain.
    pub tumour_radius_mm: [f64; 2],
    /// Rician noise standard deviation relative to the white-matter intensity (each case draws 0.6–1.4×).
    pub noise: f64,
    /// Peak relative amplitude of the multiplicative bias field (each case draws 0.5–1×).
    pub bias_field: f64,
    /// Relative per-case jitter of each tissue's intensity in each modality.
    pub intensity_jitter: f64,
    /// Whether the tumour displaces surrounding anatomy.
    pub mass_effect: bool,
}

impl Default for PhantomConfig {
    fn default() -> Self {
        Self {
            shape: [240, 240, 155],
            spacing: [1.0, 1.0, 1.0],
            hgg_fraction: 0.7,
            tumour_radius_mm: [10.0, 24.0],
            noise: 0.03,
            bias_field: 0.15,
            intensity_jitter: 0.05,
            mass_effect: true,
        }
    }
}

/// An invalid [`PhantomConfig`].
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PhantomError {
    #[error("phantom shape {0:?}: every axis must be at least 16 voxels")]
    ShapeTooSmall([usize; 3]),
    #[error("phantom spacing {0:?}: every voxel size must be finite and positive")]
    BadSpacing([f64; 3]),
    #[error("phantom {name} = {value}: must be in {range}")]
    OutOfRange {
        name: &'static str,
        value: f64,
        range: &'static str,
    },
}

impl PhantomConfig {
    /// Checks the configuration; [`generate_case`] panics on what this rejects.
    pub fn validate(&self) -> Result<(), PhantomError> {
        if self.shape.iter().any(|&n| n < 16) {
            return Err(PhantomError::ShapeTooSmall(self.shape));
        }
        if self.spacing.iter().any(|&s| !(s.is_finite() && s > 0.0)) {
            return Err(PhantomError::BadSpacing(self.spacing));
        }
        let check = |name, value: f64, ok: bool, range| {
            if ok && value.is_finite() {
                Ok(())
            } else {
                Err(PhantomError::OutOfRange { name, value, range })
            }
        };
        check(
            "hgg_fraction",
            self.hgg_fraction,
            (0.0..=1.0).contains(&self.hgg_fraction),
            "[0, 1]",
        )?;
        let [lo, hi] = self.tumour_radius_mm;
        check("tumour_radius_mm[0]", lo, lo > 0.0 && lo <= 40.0, "(0, 40]")?;
        check(
            "tumour_radius_mm[1]",
            hi,
            hi >= lo && hi <= 40.0,
            "[tumour_radius_mm[0], 40]",
        )?;
        check(
            "noise",
            self.noise,
            (0.0..=0.5).contains(&self.noise),
            "[0, 0.5]",
        )?;
        check(
            "bias_field",
            self.bias_field,
            (0.0..=0.5).contains(&self.bias_field),
            "[0, 0.5]",
        )?;
        check(
            "intensity_jitter",
            self.intensity_jitter,
            (0.0..=0.2).contains(&self.intensity_jitter),
            "[0, 0.2]",
        )?;
        Ok(())
    }
}

/// Tumour grade; HGG is the positive class (1) of the grading task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Grade {
    Hgg,
    Lgg,
}

impl Grade {
    pub fn as_str(self) -> &'static str {
        match self {
            Grade::Hgg => "HGG",
            Grade::Lgg => "LGG",
        }
    }

    /// Class index of the grading task: HGG = 1, LGG = 0.
    pub fn class_index(self) -> u8 {
        match self {
            Grade::Hgg => 1,
            Grade::Lgg => 0,
        }
    }
}

/// The patient's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hemisphere {
    Left,
    Right,
}

impl Hemisphere {
    /// +1 for left: the direction of increasing voxel axis 0 in LPS storage.
    pub(crate) fn sign(self) -> f32 {
        match self {
            Hemisphere::Left => 1.0,
            Hemisphere::Right => -1.0,
        }
    }
}

/// Where the tumour was placed (the drawn parameters, not measured from the mask).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TumourInfo {
    pub hemisphere: Hemisphere,
    /// Centre of the core in voxel coordinates (axis order X, Y, Z).
    pub centre_voxel: [f64; 3],
    /// Core radius before shape perturbation, in physical mm.
    pub core_radius_mm: f64,
    /// Oedema radius before perturbation, in physical mm.
    pub oedema_radius_mm: f64,
}

/// One generated case.
#[derive(Debug, Clone)]
pub struct PhantomCase {
    /// `Phantom_0007` for index 7.
    pub id: String,
    pub grade: Grade,
    /// t1, t1ce, t2, flair (see [`MODALITIES`]), each `[X, Y, Z]`, 0 outside the brain.
    pub modalities: [Array3<f32>; 4],
    /// BraTS labels 0, 1 (necrosis / non-enhancing core), 2 (oedema), 4 (enhancing tumour).
    pub seg: Array3<u8>,
    /// Normal-tissue classes (`TISSUE_*`), as if there were no tumour; background 0.
    pub tissue: Array3<u8>,
    /// Voxel → RAS+ world (mm), LPS storage.
    pub affine: [[f64; 4]; 4],
    pub spacing: [f64; 3],
    pub tumour: TumourInfo,
}

/// Generates case `index` of the series `seed`.
///
/// # Panics
/// If `config` fails [`PhantomConfig::validate`].
pub fn generate_case(config: &PhantomConfig, seed: u64, index: usize) -> PhantomCase {
    try_generate_case(config, seed, index).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`generate_case`] but returns configuration errors.
pub fn try_generate_case(
    config: &PhantomConfig,
    seed: u64,
    index: usize,
) -> Result<PhantomCase, PhantomError> {
    config.validate()?;
    let mut rng = case_rng(seed, index);
    let frame = Frame::new(config);
    let grade = if spread_draw(seed, index) < config.hgg_fraction {
        Grade::Hgg
    } else {
        Grade::Lgg
    };
    let anatomy = Anatomy::sample(&mut rng, frame.voxel_mm);
    let radius = [
        config.tumour_radius_mm[0] as f32,
        config.tumour_radius_mm[1] as f32,
    ];
    let tumour = Tumour::sample(
        &mut rng,
        grade,
        radius,
        frame.voxel_mm,
        config.mass_effect,
        &anatomy,
    );
    let look = Appearance::sample(&mut rng, config, anatomy.widths());
    let bias = Bias::sample(&mut rng, config);
    let noise_seed: u64 = rng.random();

    let grid = Grid::build(&frame, &anatomy, &tumour, &bias);
    let (modalities, seg, tissue) = render(&frame, &grid, &look, noise_seed);

    let c = tumour.centre;
    let s = frame.scale;
    Ok(PhantomCase {
        id: format!("Phantom_{index:04}"),
        grade,
        modalities,
        seg,
        tissue,
        affine: frame.affine(),
        spacing: config.spacing,
        tumour: TumourInfo {
            hemisphere: tumour.hemisphere,
            centre_voxel: frame.to_voxel(c),
            core_radius_mm: tumour.r_core as f64 * s,
            oedema_radius_mm: tumour.r_oedema as f64 * s,
        },
    })
}

/// The `index`-th point of a golden-ratio (Weyl) sequence in [0, 1), offset per seed: its first n
/// points fall into any interval of length f about n·f times, with an error that stays within a
/// couple of points, unlike independent draws (which leave 6 cases at f = 0.6 without an LGG case
/// one time in twenty).
fn spread_draw(seed: u64, index: usize) -> f64 {
    const GOLDEN_FRACTION: f64 = 0.618_033_988_749_894_9;
    let offset = case_rng(seed, usize::MAX).random::<f64>();
    (offset + index as f64 * GOLDEN_FRACTION).fract()
}

/// Per-case random stream: the seed and the index fill distinct words of the ChaCha key, so every
/// `(seed, index)` pair has its own stream.
fn case_rng(seed: u64, index: usize) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(index as u64).to_le_bytes());
    key[16..24].copy_from_slice(b"phantom1");
    ChaCha8Rng::from_seed(key)
}

/// Mapping between voxels and the reference anatomy frame.
#[derive(Debug, Clone)]
struct Frame {
    shape: [usize; 3],
    spacing: [f64; 3],
    /// Physical mm per reference mm (1 for a 240×240×155 1 mm volume).
    scale: f64,
    /// Reference mm per voxel along each axis.
    h: [f32; 3],
    /// Largest of `h`.
    voxel_mm: f32,
    /// Voxel coordinates of the reference origin.
    origin: [f32; 3],
}

impl Frame {
    fn new(config: &PhantomConfig) -> Self {
        let shape = config.shape;
        let spacing = config.spacing;
        let scale = (0..3)
            .map(|a| shape[a] as f64 * spacing[a] / REFERENCE_SHAPE[a])
            .fold(f64::INFINITY, f64::min);
        let h = [0, 1, 2].map(|a| (spacing[a] / scale) as f32);
        let voxel_mm = h[0].max(h[1]).max(h[2]);
        let origin = [0, 1, 2].map(|a| (shape[a] as f32 - 1.0) * 0.5);
        Self {
            shape,
            spacing,
            scale,
            h,
            voxel_mm,
            origin,
        }
    }

    #[inline]
    fn to_ref(&self, i: f32, j: f32, k: f32) -> V3 {
        [
            (i - self.origin[0]) * self.h[0],
            (j - self.origin[1]) * self.h[1],
            (k - self.origin[2]) * self.h[2],
        ]
    }

    fn to_voxel(&self, q: V3) -> [f64; 3] {
        [0, 1, 2].map(|a| (q[a] / self.h[a] + self.origin[a]) as f64)
    }

    /// LPS storage: world x (towards the right) decreases along axis 0, y (anterior) along axis 1.
    fn affine(&self) -> [[f64; 4]; 4] {
        let [sx, sy, sz] = self.spacing;
        let c = [0, 1, 2].map(|a| (self.shape[a] as f64 - 1.0) * 0.5);
        [
            [-sx, 0.0, 0.0, sx * c[0]],
            [0.0, -sy, 0.0, sy * c[1]],
            [0.0, 0.0, sz, -sz * c[2]],
            [0.0, 0.0, 0.0, 1.0],
        ]
    }
}

// Tissue classes of the intensity model.
const CSF: usize = 0;
const GM: usize = 1;
const WM: usize = 2;
const DGM: usize = 3;
const CHOROID: usize = 4;
const FALX: usize = 5;
const NECROSIS: usize = 6;
const ENHANCING: usize = 7;
const NON_ENHANCING: usize = 8;
const OEDEMA: usize = 9;
const N_CLASSES: usize = 10;

/// Mean intensity per class, in the order t1, t1ce, t2, flair.
const BASE_INTENSITY: [[f32; 4]; N_CLASSES] = [
    [180.0, 170.0, 950.0, 90.0],  // CSF: dark T1, bright T2, suppressed FLAIR
    [480.0, 470.0, 520.0, 520.0], // cortical grey matter
    [700.0, 680.0, 360.0, 400.0], // white matter
    [580.0, 570.0, 450.0, 470.0], // deep grey matter
    [450.0, 850.0, 600.0, 350.0], // choroid plexus: enhances
    [150.0, 420.0, 150.0, 150.0], // falx (dura): dark, mildly enhancing
    [220.0, 240.0, 880.0, 380.0], // necrosis: fluid-like
    [480.0, 1050.0, 620.0, 700.0], // enhancing tumour
    [380.0, 390.0, 800.0, 760.0], // non-enhancing tumour
    [460.0, 450.0, 780.0, 820.0], // oedema
];

/// Per-case intensities and noise levels.
#[derive(Debug, Clone)]
struct Appearance {
    mean: [[f32; 4]; N_CLASSES],
    sigma: [f32; 4],
    widths: Widths,
}

impl Appearance {
    fn sample(rng: &mut ChaCha8Rng, config: &PhantomConfig, widths: Widths) -> Self {
        let j = config.intensity_jitter as f32;
        let gain: [f32; 4] = std::array::from_fn(|_| rng.random_range(0.85..1.2));
        let mut mean = BASE_INTENSITY;
        for row in mean.iter_mut() {
            for (m, v) in row.iter_mut().enumerate() {
                let jitter = if j > 0.0 {
                    rng.random_range(-j..j)
                } else {
                    0.0
                };
                *v *= gain[m] * (1.0 + jitter);
            }
        }
        let level = config.noise as f32 * rng.random_range(0.6..1.4);
        let sigma = std::array::from_fn(|m| level * mean[WM][m]);
        Self {
            mean,
            sigma,
            widths,
        }
    }
}

/// Smooth multiplicative bias fields, one per modality: the exponential of a random quadratic
/// polynomial over the head, the usual low-order model of receive-coil inhomogeneity.
#[derive(Debug, Clone)]
struct Bias {
    strength: [f32; 4],
    linear: [V3; 4],
    /// Upper triangle of a symmetric quadratic form: xx, yy, zz, xy, yz, zx.
    quadratic: [[f32; 6]; 4],
}

impl Bias {
    fn sample(rng: &mut ChaCha8Rng, config: &PhantomConfig) -> Self {
        let b = config.bias_field as f32;
        let strength = std::array::from_fn(|_| b * rng.random_range(0.5..1.0));
        let linear = std::array::from_fn(|_| std::array::from_fn(|_| rng.random_range(-0.7..0.7)));
        let quadratic =
            std::array::from_fn(|_| std::array::from_fn(|_| rng.random_range(-0.6..0.6)));
        Self {
            strength,
            linear,
            quadratic,
        }
    }

    fn factor(&self, m: usize, q: V3) -> f32 {
        // Coordinates over the head's half-size, so the polynomial stays O(1) inside the brain.
        let x = [q[0] / 80.0, q[1] / 90.0, q[2] / 70.0];
        let g = self.linear[m];
        let a = self.quadratic[m];
        let t = g[0] * x[0]
            + g[1] * x[1]
            + g[2] * x[2]
            + a[0] * x[0] * x[0]
            + a[1] * x[1] * x[1]
            + a[2] * x[2] * x[2]
            + a[3] * x[0] * x[1]
            + a[4] * x[1] * x[2]
            + a[5] * x[2] * x[0];
        (self.strength[m] * t.clamp(-1.0, 1.0)).exp()
    }
}

// Channels of the coarse grid.
const CH_BRAIN: usize = 0;
const CH_SULCUS: usize = 1;
const CH_SULCUS_FUNDUS: usize = 2;
const CH_CLEFT: usize = 3;
const CH_CLEFT_FUNDUS: usize = 4;
const CH_MIDLINE: usize = 5;
const CH_FISSURE_UNDER: usize = 6;
const CH_SURFACE_CSF: usize = 7;
const CH_CORTEX: usize = 8;
const CH_VENTRICLES: usize = 9;
const CH_DGM: usize = 10;
const CH_CHOROID: usize = 11;
const CH_CORE: usize = 12;
const CH_NECROSIS: usize = 13;
const CH_NON_ENH: usize = 14;
const CH_OEDEMA: usize = 15;
const CH_TEX: usize = 16;
const CH_TEX_TUMOUR: usize = 17;
const CH_BIAS: usize = 18;
const NCH: usize = 24;

type Node = [f32; NCH];

/// Values far outside every structure: interpolating with them near the brain edge only touches
/// background voxels, because the margin keeps real values around every brain voxel.
const FAR: Node = {
    let mut v = [-50.0f32; NCH];
    v[CH_BRAIN] = -100.0;
    v[CH_SULCUS] = 50.0;
    v[CH_CLEFT] = 50.0;
    v[CH_MIDLINE] = 50.0;
    v[CH_NON_ENH] = 50.0;
    v[CH_TEX] = 0.0;
    v[CH_TEX_TUMOUR] = 0.0;
    let mut m = 0;
    while m < 4 {
        v[CH_BIAS + m] = 1.0;
        m += 1;
    }
    v
};

/// Extra oedema depth (mm) needed before cortex counts as oedematous: oedema mostly spares the cortex.
const OEDEMA_CORTEX_MARGIN: f32 = 4.0;

/// Smooth fields sampled every `step` voxels.
struct Grid {
    step: usize,
    n: [usize; 3],
    nodes: Vec<Node>,
    /// Per grid column (a, b): the first and one-past-last node along z inside the brain (empty when
    /// `start >= end`). Voxels are convex blends of nodes, so outside these ranges they are background.
    columns: Vec<(usize, usize)>,
}

impl Grid {
    fn build(frame: &Frame, anatomy: &Anatomy, tumour: &Tumour, bias: &Bias) -> Self {
        // Two-voxel sampling resolves every field (finest features ~1.5 mm of the reference brain)
        // when voxels are small; coarser volumes are sampled at every voxel.
        let step = if frame.voxel_mm <= 1.5 { 2 } else { 1 };
        let n = [0, 1, 2].map(|a| (frame.shape[a] - 1) / step + 2);
        // A node may matter to an inside voxel up to a cell diagonal away; the outline is 1-Lipschitz
        // up to its gentle noise, so twice the diagonal is a safe margin.
        let margin = 2.0 * (step as f32) * frame.voxel_mm * 3f32.sqrt() + 1.0;
        let cell = step as f32 * frame.voxel_mm;
        let mut nodes = vec![FAR; n[0] * n[1] * n[2]];
        nodes
            .par_chunks_mut(n[1] * n[2])
            .enumerate()
            .for_each(|(a, slab)| {
                for b in 0..n[1] {
                    for c in 0..n[2] {
                        let q =
                            frame.to_ref((a * step) as f32, (b * step) as f32, (c * step) as f32);
                        slab[b * n[2] + c] = node(q, anatomy, tumour, bias, margin, cell);
                    }
                }
            });
        let columns = nodes
            .chunks(n[2])
            .map(|col| {
                let start = col.iter().position(|v| v[CH_BRAIN] > 0.0).unwrap_or(n[2]);
                let end = col
                    .iter()
                    .rposition(|v| v[CH_BRAIN] > 0.0)
                    .map_or(0, |e| e + 1);
                (start, end)
            })
            .collect();
        Self {
            step,
            n,
            nodes,
            columns,
        }
    }
}

fn node(q: V3, anatomy: &Anatomy, tumour: &Tumour, bias: &Bias, margin: f32, cell: f32) -> Node {
    let outline = anatomy.outline_sdf(q);
    let mut v = FAR;
    v[CH_BRAIN] = -outline.sdf;
    if -outline.sdf < -margin {
        return v;
    }
    let qw = tumour.displace(q);
    let t = anatomy.tissue(qw, &outline);
    v[CH_SULCUS] = t.sulcus;
    v[CH_SULCUS_FUNDUS] = t.sulcus_fundus;
    v[CH_CLEFT] = t.cleft;
    v[CH_CLEFT_FUNDUS] = t.cleft_fundus;
    v[CH_MIDLINE] = t.midline;
    v[CH_FISSURE_UNDER] = t.fissure_under;
    v[CH_SURFACE_CSF] = t.surface_csf;
    v[CH_CORTEX] = t.cortex;
    v[CH_VENTRICLES] = t.ventricles;
    v[CH_DGM] = t.deep_gm;
    v[CH_CHOROID] = t.choroid;
    if let Some(f) = tumour.fields(q, 2.0 * cell) {
        v[CH_CORE] = f.core;
        v[CH_NECROSIS] = f.necrosis;
        v[CH_NON_ENH] = f.non_enhancing;
        v[CH_OEDEMA] = f.oedema;
        v[CH_TEX_TUMOUR] = f.texture;
    }
    v[CH_TEX] = anatomy.texture(qw);
    for m in 0..4 {
        v[CH_BIAS + m] = bias.factor(m, q);
    }
    v
}

#[inline]
fn blend(a: &Node, b: &Node, t: f32) -> Node {
    let mut out = *a;
    for (o, (&x, &y)) in out.iter_mut().zip(a.iter().zip(b.iter())) {
        *o = x + (y - x) * t;
    }
    out
}

type Rendered = ([Array3<f32>; 4], Array3<u8>, Array3<u8>);

fn render(frame: &Frame, grid: &Grid, look: &Appearance, noise_seed: u64) -> Rendered {
    let [nx, ny, nz] = frame.shape;
    let plane = ny * nz;
    let total = nx * plane;
    let mut out: [Vec<f32>; 4] = std::array::from_fn(|_| vec![0.0f32; total]);
    let mut seg = vec![0u8; total];
    let mut tissue = vec![0u8; total];
    // Partial-volume ramp: a boundary blends over about one voxel.
    let inv_pv = 1.0 / frame.voxel_mm;
    let [o0, o1, o2, o3] = &mut out;
    o0.par_chunks_mut(plane)
        .zip(o1.par_chunks_mut(plane))
        .zip(o2.par_chunks_mut(plane))
        .zip(o3.par_chunks_mut(plane))
        .zip(seg.par_chunks_mut(plane))
        .zip(tissue.par_chunks_mut(plane))
        .enumerate()
        .for_each(|(i, (((((t1, t1ce), t2), flair), seg), tissue))| {
            let mut slab = Slab {
                t1,
                t1ce,
                t2,
                flair,
                seg,
                tissue,
            };
            render_slab(i, frame, grid, look, noise_seed, inv_pv, &mut slab);
        });
    let shape = (nx, ny, nz);
    let arr = |v: Vec<f32>| Array3::from_shape_vec(shape, v).expect("shape matches length");
    let [v0, v1, v2, v3] = out;
    (
        [arr(v0), arr(v1), arr(v2), arr(v3)],
        Array3::from_shape_vec(shape, seg).expect("shape matches length"),
        Array3::from_shape_vec(shape, tissue).expect("shape matches length"),
    )
}

struct Slab<'a> {
    t1: &'a mut [f32],
    t1ce: &'a mut [f32],
    t2: &'a mut [f32],
    flair: &'a mut [f32],
    seg: &'a mut [u8],
    tissue: &'a mut [u8],
}

fn render_slab(
    i: usize,
    frame: &Frame,
    grid: &Grid,
    look: &Appearance,
    seed: u64,
    inv_pv: f32,
    out: &mut Slab,
) {
    let [_, ny, nz] = frame.shape;
    let step = grid.step;
    let [_, gy, gz] = grid.n;
    let a0 = i / step;
    let fx = (i % step) as f32 / step as f32;
    let mut row: Vec<Node> = vec![FAR; gz];
    for j in 0..ny {
        let b0 = j / step;
        let fy = (j % step) as f32 / step as f32;
        // Interpolate in x and y once per grid column; along z each voxel is a single blend.
        let col = |a: usize, b: usize| a * gy + b;
        let cols = [
            col(a0, b0),
            col(a0 + 1, b0),
            col(a0, b0 + 1),
            col(a0 + 1, b0 + 1),
        ];
        // Nodes that can contribute to a brain voxel in this row: the union of the four columns'
        // inside ranges, widened by one node for the blend along z.
        let start = cols
            .iter()
            .map(|&c| grid.columns[c].0)
            .min()
            .unwrap_or(gz)
            .saturating_sub(1);
        let end = (cols.iter().map(|&c| grid.columns[c].1).max().unwrap_or(0) + 1).min(gz);
        if start >= end {
            continue;
        }
        let [p00, p10, p01, p11] = cols.map(|c| c * gz);
        for (c, r) in row.iter_mut().enumerate().take(end).skip(start) {
            let lo = blend(&grid.nodes[p00 + c], &grid.nodes[p10 + c], fx);
            let hi = blend(&grid.nodes[p01 + c], &grid.nodes[p11 + c], fx);
            *r = blend(&lo, &hi, fy);
        }
        // Voxels whose two z-neighbour nodes both lie in [start, end).
        let k_start = start * step;
        let k_end = ((end - 1) * step).min(nz);
        for k in k_start..k_end {
            let c0 = k / step;
            let v = blend(&row[c0], &row[c0 + 1], (k % step) as f32 / step as f32);
            if v[CH_BRAIN] <= 0.0 {
                continue;
            }
            let idx = j * nz + k;
            let lin = ((i * ny + j) * nz + k) as u64;
            let voxel = shade(&v, look, inv_pv, seed, lin);
            out.t1[idx] = voxel.values[0];
            out.t1ce[idx] = voxel.values[1];
            out.t2[idx] = voxel.values[2];
            out.flair[idx] = voxel.values[3];
            out.seg[idx] = voxel.label;
            out.tissue[idx] = voxel.tissue;
        }
    }
}

struct Voxel {
    values: [f32; 4],
    label: u8,
    tissue: u8,
}

#[inline]
fn ramp(x: f32, inv_pv: f32) -> f32 {
    (0.5 + x * inv_pv).clamp(0.0, 1.0)
}

/// Intensities and labels of one brain voxel from its interpolated fields.
#[inline]
fn shade(v: &Node, look: &Appearance, inv_pv: f32, seed: u64, lin: u64) -> Voxel {
    // Thin sheets from their interpolated coordinates: CSF fills each sheet, cortex lines it.
    let w = &look.widths;
    let sulcus = sheet_distance(v[CH_SULCUS], v[CH_SULCUS_FUNDUS]);
    let cleft = sheet_distance(v[CH_CLEFT], v[CH_CLEFT_FUNDUS]);
    let fissure = sheet_distance(v[CH_MIDLINE], v[CH_FISSURE_UNDER]);
    let falx_field =
        FALX_HALF_WIDTH - sheet_distance(v[CH_MIDLINE], v[CH_FISSURE_UNDER] + FALX_CLEARANCE);
    let csf_field = (w.sulcus - sulcus)
        .max(w.cleft - cleft)
        .max(w.fissure - fissure)
        .max(v[CH_SURFACE_CSF])
        .max(v[CH_VENTRICLES]);
    let gm_field = v[CH_CORTEX]
        .max(w.sulcus + w.cortex - sulcus)
        .max(w.cleft + w.cortex - cleft)
        .max(w.fissure + w.cortex - fissure);

    // Normal anatomy: CSF takes precedence, then cortex, then deep grey matter, the rest is white matter.
    let csf = ramp(csf_field, inv_pv);
    let falx = ramp(falx_field, inv_pv) * csf;
    let choroid = (ramp(v[CH_CHOROID], inv_pv) * csf).min(csf - falx);
    let gm = ramp(gm_field, inv_pv) * (1.0 - csf);
    let dgm = ramp(v[CH_DGM], inv_pv) * (1.0 - csf - gm);
    let wm = (1.0 - csf - gm - dgm).max(0.0);

    // The tumour core replaces everything; oedema replaces white and deep grey matter, cortex only
    // deeper inside the oedema.
    let tc = ramp(v[CH_CORE], inv_pv);
    let nec = tc * ramp(v[CH_NECROSIS], inv_pv);
    let viable = tc - nec;
    let net = viable * ramp(v[CH_NON_ENH], inv_pv);
    let enh = viable - net;
    let normal = 1.0 - tc;
    let ow = ramp(v[CH_OEDEMA], inv_pv);
    let og = ramp(v[CH_OEDEMA] - OEDEMA_CORTEX_MARGIN, inv_pv);
    let oed = normal * (ow * (wm + dgm) + og * gm);

    let f_anat = [
        (CSF, normal * (csf - falx - choroid)),
        (CHOROID, normal * choroid),
        (FALX, normal * falx),
        (GM, normal * gm * (1.0 - og)),
        (WM, normal * wm * (1.0 - ow)),
        (DGM, normal * dgm * (1.0 - ow)),
    ];
    let f_tumour = [(NECROSIS, nec), (ENHANCING, enh), (NON_ENHANCING, net)];
    let tex_a = 1.0 + 0.035 * v[CH_TEX];
    let tex_t = v[CH_TEX_TUMOUR];

    let mut values = [0.0f32; 4];
    for (m, value) in values.iter_mut().enumerate() {
        let mut anat = 0.0;
        for &(c, f) in &f_anat {
            anat += f * look.mean[c][m];
        }
        let mut tum = 0.0;
        for &(c, f) in &f_tumour {
            tum += f * look.mean[c][m];
        }
        let clean = (anat * tex_a
            + tum * (1.0 + 0.1 * tex_t)
            + oed * look.mean[OEDEMA][m] * (1.0 + 0.06 * tex_t))
            * v[CH_BIAS + m];
        // Rician magnitude: the signal plus complex Gaussian noise, from two hashed draws per modality.
        let s = look.sigma[m];
        let n1 = gauss(fmix64(seed ^ (lin * 8 + 2 * m as u64)));
        let n2 = gauss(fmix64(seed ^ (lin * 8 + 2 * m as u64 + 1)));
        let re = clean + s * n1;
        let im = s * n2;
        // Round half up through an integer cast (the magnitude is non-negative; no libm call).
        *value = (((re * re + im * im).sqrt() + 0.5) as u32).max(1) as f32;
    }

    let tissue = if csf_field > 0.0 {
        TISSUE_CSF
    } else if gm_field > 0.0 {
        TISSUE_GREY
    } else if v[CH_DGM] > 0.0 {
        TISSUE_DEEP_GREY
    } else {
        TISSUE_WHITE
    };
    let label = if v[CH_CORE] > 0.0 {
        if v[CH_NECROSIS] > 0.0 || v[CH_NON_ENH] > 0.0 {
            LABEL_NECROSIS
        } else {
            LABEL_ENHANCING
        }
    } else {
        let oedema = match tissue {
            TISSUE_WHITE | TISSUE_DEEP_GREY => v[CH_OEDEMA] > 0.0,
            TISSUE_GREY => v[CH_OEDEMA] > OEDEMA_CORTEX_MARGIN,
            _ => false,
        };
        if oedema { LABEL_OEDEMA } else { 0 }
    };
    Voxel {
        values,
        label,
        tissue,
    }
}

#[cfg(test)]
mod tests;
