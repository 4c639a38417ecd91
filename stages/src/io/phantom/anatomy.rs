//! Normal brain anatomy as implicit functions of a position in the reference frame.
//!
//! The reference frame is millimetres of an adult brain in a 240×240×155 1 mm BraTS volume, with its
//! origin near the centre of the brain and axes L (+ towards the patient's left), P (+ posterior) and
//! S (+ superior), i.e. the same handedness as the LPS voxel axes. Smaller volumes see the same brain
//! shrunk (see `Frame` in the parent module).
//!
//! Geometry is built from signed-distance-like functions (negative inside) so that distances in mm are
//! meaningful: the cortex is a band of the depth below the outer surface, sulci are thin sheets around the
//! zero set of a smooth noise field, ventricles are tubes around curved centre lines.

use super::noise::Noise;
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

pub(crate) type V3 = [f32; 3];

#[inline]
pub(crate) fn len(p: V3) -> f32 {
    (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt()
}

#[inline]
pub(crate) fn sub(a: V3, b: V3) -> V3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

/// Approximate signed distance to an axis-aligned ellipsoid (Quilez's bound): exact on the surface,
/// close to the true distance nearby, which is where it is used.
#[inline]
pub(crate) fn sd_ellipsoid(p: V3, r: V3) -> f32 {
    let k0 = len([p[0] / r[0], p[1] / r[1], p[2] / r[2]]);
    let k1 = len([
        p[0] / (r[0] * r[0]),
        p[1] / (r[1] * r[1]),
        p[2] / (r[2] * r[2]),
    ]);
    if k1 < 1e-12 {
        return -r[0].min(r[1]).min(r[2]);
    }
    k0 * (k0 - 1.0) / k1
}

/// Signed distance to a capsule of radius interpolated linearly from `ra` at `a` to `rb` at `b`.
#[inline]
fn sd_tapered_segment(p: V3, a: V3, b: V3, ra: f32, rb: f32) -> f32 {
    let pa = sub(p, a);
    let ba = sub(b, a);
    let bb = ba[0] * ba[0] + ba[1] * ba[1] + ba[2] * ba[2];
    let t = ((pa[0] * ba[0] + pa[1] * ba[1] + pa[2] * ba[2]) / bb).clamp(0.0, 1.0);
    let d = len([pa[0] - ba[0] * t, pa[1] - ba[1] * t, pa[2] - ba[2] * t]);
    d - (ra + (rb - ra) * t)
}

/// Polynomial smooth minimum: a union of two shapes with a fillet of about `k` mm.
#[inline]
fn smin(a: f32, b: f32, k: f32) -> f32 {
    let h = (k - (a - b).abs()).max(0.0) / k;
    a.min(b) - h * h * k * 0.25
}

#[inline]
fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// The signed distances of the brain's parts at one point.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BrainSdf {
    /// Whole brain, outer surface perturbed (negative inside).
    pub sdf: f32,
    /// Cerebral hemispheres without temporal lobes.
    pub cerebrum: f32,
    pub temporal: f32,
    pub cerebellum: f32,
    pub stem: f32,
}

impl BrainSdf {
    /// Whether the point belongs to the cerebral hemispheres (where gliomas are placed).
    pub(crate) fn in_cerebrum(&self) -> bool {
        self.cerebrum.min(self.temporal) < self.cerebellum.min(self.stem)
    }
}

/// Fields of normal anatomy at one point, all smooth where it matters so that they can be sampled
/// coarsely and interpolated; the thin sheets (sulci, clefts, fissure) are given as signed coordinates
/// across the sheet plus the depth below its fundus, and turned into tissue per voxel by [`Widths`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct TissueFields {
    /// Signed distance-like coordinate across the nearest sulcal sheet (mm); 50 where there are none.
    pub sulcus: f32,
    /// How far below the sulcal fundus the point lies (mm, ≤ 0 above it).
    pub sulcus_fundus: f32,
    /// Same for the Sylvian fissure and the tentorial cleft.
    pub cleft: f32,
    pub cleft_fundus: f32,
    /// Left-right coordinate of the (displaced) midline sheet, and depth below the fissure floor.
    pub midline: f32,
    pub fissure_under: f32,
    /// Positive inside the CSF layer over the convexity.
    pub surface_csf: f32,
    /// Positive inside the outer cortical ribbon.
    pub cortex: f32,
    pub ventricles: f32,
    pub deep_gm: f32,
    pub choroid: f32,
}

/// Thicknesses that turn [`TissueFields`] into tissue (mm).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Widths {
    pub cortex: f32,
    pub sulcus: f32,
    pub cleft: f32,
    pub fissure: f32,
}

/// Distance to a sheet that ends at a fundus.
#[inline]
pub(crate) fn sheet_distance(across: f32, below: f32) -> f32 {
    let b = below.max(0.0);
    (across * across + b * b).sqrt()
}

/// Fissure floor offset of the falx: the falx ends a little above the corpus callosum.
pub(crate) const FALX_CLEARANCE: f32 = 5.0;
/// Half-thickness of the falx (mm).
pub(crate) const FALX_HALF_WIDTH: f32 = 0.35;

/// Per-case anatomical parameters.
#[derive(Debug, Clone)]
pub(crate) struct Anatomy {
    /// Overall size factor of the brain.
    size: f32,
    /// Lateral ventricle size factor (atrophy / ventricular enlargement varies a lot between people).
    vent: f32,
    /// Cortical thickness and sulcal CSF half-width, in mm (widened for coarse voxels so they stay visible).
    cortex: f32,
    sulcus_half_width: f32,
    fissure_half_width: f32,
    surface_csf: f32,
    gyri_wavelength: f32,
    outline_lo: Noise,
    outline_hi: Noise,
    gyri_a: Noise,
    gyri_b: Noise,
    sulcal_depth: Noise,
    surface_csf_noise: Noise,
    texture: Noise,
}

impl Anatomy {
    /// Draws a brain. `voxel_mm` is the largest voxel size in reference mm; thin structures are kept at
    /// least about one voxel wide so they do not vanish from small volumes.
    pub(crate) fn sample(rng: &mut ChaCha8Rng, voxel_mm: f32) -> Self {
        Self {
            size: rng.random_range(0.92..1.02),
            vent: rng.random_range(0.75..1.45),
            cortex: rng.random_range(2.4..3.0f32).max(1.3 * voxel_mm),
            sulcus_half_width: rng.random_range(0.6..0.9f32).max(0.3 * voxel_mm),
            fissure_half_width: rng.random_range(1.0..1.6f32).max(0.45 * voxel_mm),
            surface_csf: rng.random_range(0.6..1.4),
            gyri_wavelength: rng.random_range(15.0..19.0),
            outline_lo: Noise::new(rng.random()),
            outline_hi: Noise::new(rng.random()),
            gyri_a: Noise::new(rng.random()),
            gyri_b: Noise::new(rng.random()),
            sulcal_depth: Noise::new(rng.random()),
            surface_csf_noise: Noise::new(rng.random()),
            texture: Noise::new(rng.random()),
        }
    }

    /// Unit-std tissue texture (mottling of a few mm) at the displaced position.
    pub(crate) fn texture(&self, q: V3) -> f32 {
        self.texture.at_scaled(q, 1.0 / 6.0)
    }

    /// Signed distances of the brain outline and its parts at `q`.
    pub(crate) fn outline_sdf(&self, q: V3) -> BrainSdf {
        let g = self.size;
        let p = [q[0] / g, q[1] / g, q[2] / g];
        let (l, pp, s) = (p[0], p[1], p[2]);
        // Most of a volume is far outside the brain: the distance to a box holding every part (and its
        // perturbations) is a lower bound of the distance to the brain, and all that is needed there.
        let outside_box = (l.abs() - 85.0).max(pp.abs() - 100.0).max(s.abs() - 95.0);
        if outside_box > 5.0 {
            let far = outside_box * g;
            return BrainSdf {
                sdf: far,
                cerebrum: far,
                temporal: far,
                cerebellum: far,
                stem: far,
            };
        }

        // Cerebrum: an ellipsoid, flat underneath (skull base) and narrower at the frontal pole.
        let frontal = smoothstep(0.0, 80.0, -pp);
        let sc = s - 8.0;
        let rs = if sc > 0.0 { 62.0 } else { 40.0 };
        let cerebrum = sd_ellipsoid([l, pp, sc], [70.0 * (1.0 - 0.12 * frontal), 86.0, rs]);
        let al = l.abs();
        let temporal = sd_ellipsoid([al - 49.0, pp + 8.0, s + 22.0], [20.0, 40.0, 20.0]);
        let cerebellum = sd_ellipsoid([al - 24.0, pp - 52.0, s + 42.0], [28.0, 26.0, 19.0]);
        let stem = sd_tapered_segment(p, [0.0, 20.0, -18.0], [0.0, 30.0, -76.0], 13.0, 10.0);

        let mut sdf = smin(cerebrum, temporal, 10.0);
        sdf = smin(sdf, cerebellum, 5.0);
        sdf = smin(sdf, stem, 6.0);
        // Far from the surface the perturbations below (at most ~10 mm) cannot change what the value is
        // used for, so skip them; this is most of the volume.
        if !(-55.0..=30.0).contains(&sdf) {
            return BrainSdf {
                sdf: sdf * g,
                cerebrum: cerebrum * g,
                temporal: temporal * g,
                cerebellum: cerebellum * g,
                stem: stem * g,
            };
        }
        // A midline groove between the hemispheres on the top and at both poles.
        let groove_region = smoothstep(10.0, 40.0, s).max(smoothstep(45.0, 65.0, pp.abs()));
        let groove = (1.0 - al / 7.0).max(0.0);
        sdf += 5.0 * groove * groove * groove_region;
        // Gentle irregularity of the outline: lobes and bumps of a few mm.
        sdf += 2.2 * self.outline_lo.at_scaled(p, 1.0 / 30.0)
            + 0.7 * self.outline_hi.at_scaled(p, 1.0 / 12.0);
        BrainSdf {
            sdf: sdf * g,
            cerebrum: cerebrum * g,
            temporal: temporal * g,
            cerebellum: cerebellum * g,
            stem: stem * g,
        }
    }

    /// Interhemispheric fissure floor (S, mm) as a function of P: the fissure stops on the corpus callosum
    /// in the middle and reaches the base of the brain at the frontal and occipital poles.
    #[inline]
    fn fissure_floor(p_mm: f32) -> f32 {
        let t = smoothstep(34.0, 52.0, p_mm.abs());
        27.0 * (1.0 - t) + (-70.0) * t
    }

    pub(crate) fn widths(&self) -> Widths {
        Widths {
            cortex: self.cortex,
            sulcus: self.sulcus_half_width,
            cleft: 1.3 * self.sulcus_half_width,
            fissure: self.fissure_half_width,
        }
    }

    /// Internal tissue fields. `q` is the (mass-effect displaced) position, `outline` the brain's
    /// signed distances at the undisplaced position (the skull keeps the outline in place).
    pub(crate) fn tissue(&self, q: V3, outline: &BrainSdf) -> TissueFields {
        let g = self.size;
        let p = [q[0] / g, q[1] / g, q[2] / g];
        let depth = -outline.sdf;
        let stem_dominates = outline.stem
            < outline
                .cerebrum
                .min(outline.temporal)
                .min(outline.cerebellum);

        let (mut sulcus, mut sulcus_fundus) = (50.0, -50.0);
        let (mut cleft, mut cleft_fundus) = (50.0, -50.0);
        if !stem_dominates && depth < 45.0 {
            // Gyral pattern: the zero set of two octaves of noise; g/|∇g| is a signed distance to it
            // near the sheet.
            let inv = 1.0 / self.gyri_wavelength;
            let (a, ga) = self
                .gyri_a
                .at_with_gradient([p[0] * inv, p[1] * inv, p[2] * inv]);
            let inv2 = 2.0 * inv;
            let (b, gb) = self
                .gyri_b
                .at_with_gradient([p[0] * inv2, p[1] * inv2, p[2] * inv2]);
            let value = a + 0.45 * b;
            let grad = [0, 1, 2].map(|i| (ga[i] + 0.9 * gb[i]) * inv);
            let norm = len(grad).max(0.02 * inv);
            sulcus = (value / norm).clamp(-20.0, 20.0);
            let fundus = 13.0 + 5.0 * self.sulcal_depth.at_scaled(p, 1.0 / 35.0).clamp(-1.5, 1.5);
            sulcus_fundus = depth - fundus;

            // Sylvian fissure (temporal lobe against the frontal/parietal lobes, down to the insula) and
            // tentorial cleft (occipital lobes against the cerebellum): the bisector of two parts.
            let cerebral = outline.cerebrum.min(outline.temporal);
            if outline.temporal < 8.0 && outline.cerebrum < 8.0 {
                cleft = 0.5 * (outline.temporal - outline.cerebrum);
                cleft_fundus = depth - 26.0;
            }
            if outline.cerebellum < 8.0 && cerebral < 8.0 {
                let t = 0.5 * (outline.cerebellum - cerebral);
                if t.abs() < cleft.abs() {
                    cleft = t;
                    cleft_fundus = depth - 30.0;
                }
            }
        }

        // Interhemispheric fissure (follows the displaced midline, so mass effect bends it).
        let fissure_under = Self::fissure_floor(p[1]) * g - q[2];

        // Thin CSF layer over the convexity (subarachnoid space), patchy like in skull-stripped scans.
        let surf = self.surface_csf
            * (1.0 + 0.8 * self.surface_csf_noise.at_scaled(p, 1.0 / 20.0)).max(0.0);
        let (ventricles, choroid) = self.ventricles(p);
        TissueFields {
            sulcus,
            sulcus_fundus,
            cleft,
            cleft_fundus,
            midline: q[0],
            fissure_under,
            surface_csf: surf - depth,
            cortex: if stem_dominates {
                -depth
            } else {
                self.cortex - depth
            },
            ventricles: ventricles * g,
            deep_gm: self.deep_grey(p) * g,
            choroid: choroid * g,
        }
    }

    /// Ventricular system (positive inside) and choroid plexus, in brain-size-normalised mm.
    fn ventricles(&self, p: V3) -> (f32, f32) {
        let v = self.vent;
        let al = p[0].abs();
        // The lateral ventricles widen laterally with enlargement, a little.
        let lw = 1.0 + 0.25 * (v - 1.0);
        let pt = |l: f32, pp: f32, s: f32| [l * lw, pp, s];
        let q = [al, p[1], p[2]];
        // Centre line of one lateral ventricle: frontal horn, body, atrium, then the occipital and temporal
        // horns; radii in mm.
        let frontal = pt(9.0, -32.0, 10.0);
        let body_a = pt(10.5, -12.0, 16.0);
        let body_p = pt(13.0, 10.0, 16.0);
        let atrium = pt(22.0, 30.0, 8.0);
        let occipital = pt(19.0, 50.0, 5.0);
        let temporal_a = pt(29.0, 18.0, -8.0);
        let temporal_b = pt(32.0, -4.0, -22.0);
        let mut d = sd_tapered_segment(q, frontal, body_a, 4.0 * v, 5.0 * v);
        d = d.min(sd_tapered_segment(q, body_a, body_p, 5.0 * v, 5.0 * v));
        d = d.min(sd_tapered_segment(q, body_p, atrium, 5.0 * v, 6.5 * v));
        d = d.min(sd_tapered_segment(q, atrium, occipital, 6.0 * v, 2.0 * v));
        d = d.min(sd_tapered_segment(q, atrium, temporal_a, 5.0 * v, 3.5 * v));
        d = d.min(sd_tapered_segment(
            q,
            temporal_a,
            temporal_b,
            3.5 * v,
            2.0 * v,
        ));
        // Third and fourth ventricles on the midline.
        d = d.min(sd_ellipsoid(
            sub(p, [0.0, 6.0, -1.0]),
            [1.2 + 0.8 * v, 11.0, 10.0],
        ));
        d = d.min(sd_ellipsoid(sub(p, [0.0, 37.0, -42.0]), [5.0, 3.0, 5.5]));
        let choroid = -sd_ellipsoid(
            sub(q, [atrium[0], atrium[1] + 1.0, atrium[2] - 1.0]),
            [3.0 * v.sqrt(), 4.0 * v.sqrt(), 2.5 * v.sqrt()],
        );
        (-d, choroid)
    }

    /// Thalamus, lentiform nucleus and caudate head (positive inside).
    fn deep_grey(&self, p: V3) -> f32 {
        let q = [p[0].abs(), p[1], p[2]];
        let lw = 1.0 + 0.25 * (self.vent - 1.0);
        let thal = sd_ellipsoid(sub(q, [10.0 * lw, 10.0, 1.0]), [8.0, 14.0, 9.0]);
        let lent = sd_ellipsoid(sub(q, [23.0 * lw, -4.0, 2.0]), [6.0, 14.0, 10.0]);
        let caud = sd_ellipsoid(sub(q, [15.0 * lw, -18.0, 11.0]), [4.5, 9.0, 7.0]);
        -(thal.min(lent).min(caud))
    }
}
