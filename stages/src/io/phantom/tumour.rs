//! Glioma geometry: an irregular tumour core (necrosis, enhancing rim, non-enhancing parts), oedema that
//! spreads through white matter, and the mass effect that displaces surrounding anatomy.

use super::anatomy::{Anatomy, V3, len, sub};
use super::noise::Noise;
use super::{Grade, Hemisphere};
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

/// Tumour fields at one point, in approximate mm, positive inside.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TumourFields {
    /// Tumour core (TC = labels 1 and 4).
    pub core: f32,
    /// Necrosis inside the core.
    pub necrosis: f32,
    /// Non-enhancing parts of the viable core (label 1 rather than 4 where positive).
    pub non_enhancing: f32,
    /// Oedema extent (applies to white and deep grey matter; cortex needs a deeper margin).
    pub oedema: f32,
    /// Unit-std texture for tumour heterogeneity.
    pub texture: f32,
}

#[derive(Debug, Clone)]
pub(crate) struct Tumour {
    pub hemisphere: Hemisphere,
    /// Centre in the reference frame (mm).
    pub centre: V3,
    /// Core and oedema radii in reference mm before shape perturbation.
    pub r_core: f32,
    pub r_oedema: f32,
    /// Maps `q - centre` to normalised core coordinates (rotation, anisotropy and 1/r_core).
    m: [[f32; 3]; 3],
    /// Shortest semi-axis of the core in mm, to turn normalised radii back into mm.
    min_axis_mm: f32,
    max_axis_mm: f32,
    a_core: f32,
    necrosis_level: f32,
    a_necrosis: f32,
    /// Threshold (in noise std) above which the viable rim does not enhance. LGG: below which it does.
    gap_threshold: f32,
    lgg: bool,
    has_necrosis: bool,
    a_oedema: f32,
    offset: V3,
    n_core: Noise,
    n_necrosis: Noise,
    n_gap: Noise,
    n_oedema: Noise,
    n_oedema_fine: Noise,
    n_texture: Noise,
    mass_shift: f32,
    mass_range: f32,
}

/// Random rotation matrix from a uniformly distributed unit quaternion.
fn random_rotation(rng: &mut ChaCha8Rng) -> [[f32; 3]; 3] {
    let (w, x, y, z) = loop {
        let q: [f32; 4] = [
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
        ];
        let n = (q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]).sqrt();
        if (0.1..=1.0).contains(&n) {
            break (q[0] / n, q[1] / n, q[2] / n, q[3] / n);
        }
    };
    [
        [
            1.0 - 2.0 * (y * y + z * z),
            2.0 * (x * y - w * z),
            2.0 * (x * z + w * y),
        ],
        [
            2.0 * (x * y + w * z),
            1.0 - 2.0 * (x * x + z * z),
            2.0 * (y * z - w * x),
        ],
        [
            2.0 * (x * z - w * y),
            2.0 * (y * z + w * x),
            1.0 - 2.0 * (x * x + y * y),
        ],
    ]
}

/// Unit directions used to probe whether a tumour fits inside the brain.
fn probe_directions() -> Vec<V3> {
    let mut dirs = Vec::with_capacity(26);
    for a in -1i32..=1 {
        for b in -1i32..=1 {
            for c in -1i32..=1 {
                if (a, b, c) != (0, 0, 0) {
                    let v = [a as f32, b as f32, c as f32];
                    let n = len(v);
                    dirs.push([v[0] / n, v[1] / n, v[2] / n]);
                }
            }
        }
    }
    dirs
}

impl Tumour {
    /// Draws a tumour of the given grade inside the cerebral hemispheres of `anatomy`.
    ///
    /// `radius_mm` is the range of core radii (reference mm); `voxel_mm` the largest voxel size in
    /// reference mm, which bounds the core and the enhancing rim from below so they stay resolvable.
    pub(crate) fn sample(
        rng: &mut ChaCha8Rng,
        grade: Grade,
        radius_mm: [f32; 2],
        voxel_mm: f32,
        mass_effect: bool,
        anatomy: &Anatomy,
    ) -> Self {
        let lgg = grade == Grade::Lgg;
        let hemisphere = if rng.random_bool(0.5) {
            Hemisphere::Left
        } else {
            Hemisphere::Right
        };
        let side = hemisphere.sign();
        let lo = radius_mm[0].max(3.0 * voxel_mm);
        let hi = radius_mm[1].max(lo + 0.5);
        let mut r_core = rng.random_range(lo..hi);

        let rot = random_rotation(rng);
        let mut e: V3 = [
            rng.random_range(0.8..1.25),
            rng.random_range(0.8..1.25),
            rng.random_range(0.8..1.25),
        ];
        let g = (e[0] * e[1] * e[2]).cbrt();
        e = [e[0] / g, e[1] / g, e[2] / g];
        let e_min = e[0].min(e[1]).min(e[2]);
        let e_max = e[0].max(e[1]).max(e[2]);

        let a_core = if lgg {
            rng.random_range(0.1..0.2)
        } else {
            rng.random_range(0.14..0.28)
        };
        let a_oedema = rng.random_range(0.11..0.22);
        let oedema_ratio = if lgg {
            rng.random_range(1.1..1.5)
        } else {
            rng.random_range(1.25..1.8)
        };
        let oedema_extra = if lgg { 3.0 } else { 4.0 };

        // Rejection sampling of the centre: the perturbed core (noise is bounded by about 3.4 std) plus a
        // margin must lie inside the cerebrum, on the chosen side.
        let dirs = probe_directions();
        let mut centre = [side * 30.0, -10.0, 25.0];
        let mut placed = false;
        'shrink: for _ in 0..6 {
            let bound = r_core * e_max * (1.0 + 4.0 * a_core) + 2.0;
            for _ in 0..150 {
                let c = [
                    side * rng.random_range(8.0..55.0f32),
                    rng.random_range(-65.0..50.0f32),
                    rng.random_range(-28.0..50.0f32),
                ];
                let at = anatomy.outline_sdf(c);
                if !at.in_cerebrum() || -at.sdf < bound {
                    continue;
                }
                let fits = dirs.iter().all(|d| {
                    let p = [
                        c[0] + d[0] * bound,
                        c[1] + d[1] * bound,
                        c[2] + d[2] * bound,
                    ];
                    let o = anatomy.outline_sdf(p);
                    o.sdf < -1.0 && o.in_cerebrum()
                });
                if fits {
                    centre = c;
                    placed = true;
                    break 'shrink;
                }
            }
            r_core = (r_core * 0.85).max(3.0 * voxel_mm);
        }
        if !placed {
            // Deep frontal white matter is always inside; the radius has shrunk to its minimum.
            r_core = 3.0 * voxel_mm;
        }

        // Oedema normally surrounds the core: reach at least a little beyond its typical perturbed surface.
        let r_oedema = (r_core * oedema_ratio + oedema_extra)
            .min(r_core + 20.0)
            .max(r_core * e_max * (1.0 + 2.0 * a_core) + 3.0);
        let inv = [
            1.0 / (e[0] * r_core),
            1.0 / (e[1] * r_core),
            1.0 / (e[2] * r_core),
        ];
        // y = diag(inv) · rotᵀ · (q - c)
        let mut m = [[0.0f32; 3]; 3];
        for (r, row) in m.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = inv[r] * rot[c][r];
            }
        }

        // Keep the viable rim at least ~1.6 voxels thick where the core is smallest.
        let min_axis_mm = r_core * e_min;
        let level_cap = (1.0 - 1.6 * voxel_mm / min_axis_mm).max(0.0);
        let (has_necrosis, necrosis_level) = if lgg {
            // A minority of low-grade tumours have a small cystic/necrotic centre.
            (rng.random_bool(0.2), rng.random_range(0.2..0.4f32))
        } else {
            (true, rng.random_range(0.55..0.82f32))
        };
        let necrosis_level = necrosis_level.min(level_cap);
        let gap_threshold = if lgg {
            // Most LGG do not enhance; some have a faint focus (about 1–3 % of the core).
            if rng.random_bool(0.3) {
                rng.random_range(1.9..2.3)
            } else {
                f32::INFINITY
            }
        } else {
            // 5–20 % of the viable rim does not enhance.
            rng.random_range(0.85..1.65)
        };
        // Drawn whether or not it is used, so that switching mass effect off changes nothing else.
        let mass_fraction = if lgg {
            rng.random_range(0.05..0.25)
        } else {
            rng.random_range(0.15..0.4)
        };
        let mass_shift = if mass_effect {
            r_core * mass_fraction
        } else {
            0.0
        };
        Self {
            hemisphere,
            centre,
            r_core,
            r_oedema,
            m,
            min_axis_mm,
            max_axis_mm: r_core * e_max,
            a_core,
            necrosis_level,
            a_necrosis: rng.random_range(0.11..0.2),
            gap_threshold,
            lgg,
            has_necrosis,
            a_oedema,
            offset: [
                rng.random_range(0.0..1.0),
                rng.random_range(0.0..1.0),
                rng.random_range(0.0..1.0),
            ],
            n_core: Noise::new(rng.random()),
            n_necrosis: Noise::new(rng.random()),
            n_gap: Noise::new(rng.random()),
            n_oedema: Noise::new(rng.random()),
            n_oedema_fine: Noise::new(rng.random()),
            n_texture: Noise::new(rng.random()),
            mass_shift,
            mass_range: 0.8 * r_core + 15.0,
        }
    }

    /// Radius (mm) beyond which every tumour field is negative (noise is bounded by about 3.4 std).
    pub(crate) fn reach(&self) -> f32 {
        self.core_reach()
            .max(self.r_oedema * (1.0 + 4.0 * 1.6 * self.a_oedema) + 2.0)
    }

    /// Radius (mm) beyond which the core fields are negative.
    fn core_reach(&self) -> f32 {
        self.max_axis_mm * (1.0 + 4.0 * self.a_core) + 2.0
    }

    /// Position of the undisplaced anatomy that mass effect moved to `q`. Tissue is pushed radially away
    /// from the centre, most near the tumour and fading over `mass_range`; the map stays monotonic
    /// because the shift's slope is far below one.
    pub(crate) fn displace(&self, q: V3) -> V3 {
        if self.mass_shift <= 0.0 {
            return q;
        }
        let d = sub(q, self.centre);
        let r = len(d);
        if r < 1e-6 || r > self.r_core + 4.0 * self.mass_range {
            return q;
        }
        let x = (r - self.r_core).max(0.0) / self.mass_range;
        let shift = self.mass_shift * (-x * x).exp();
        let k = (r - shift).max(0.0) / r;
        [
            self.centre[0] + d[0] * k,
            self.centre[1] + d[1] * k,
            self.centre[2] + d[2] * k,
        ]
    }

    /// Core, necrosis and non-enhancing fields at offset `d` from the centre.
    fn core_fields(&self, d: V3) -> (f32, f32, f32) {
        let m = &self.m;
        let y = [
            m[0][0] * d[0] + m[0][1] * d[1] + m[0][2] * d[2],
            m[1][0] * d[0] + m[1][1] * d[1] + m[1][2] * d[2],
            m[2][0] * d[0] + m[2][1] * d[1] + m[2][2] * d[2],
        ];
        let ry = len(y);
        let o = self.offset;
        let at =
            |n: &Noise, f: f32, v: V3| n.at([v[0] * f + o[0], v[1] * f + o[1], v[2] * f + o[2]]);
        let core = (1.0 - (ry - self.a_core * at(&self.n_core, 1.2, y))) * self.min_axis_mm;
        let necrosis = if self.has_necrosis {
            (self.necrosis_level - ry + self.a_necrosis * at(&self.n_necrosis, 1.8, y))
                * self.min_axis_mm
        } else {
            -50.0
        };
        let gap = at(&self.n_gap, 2.0, y);
        // Scaled so that one noise std is a few mm: the partial-volume ramp then softens its edges.
        let non_enhancing = if self.lgg {
            (self.gap_threshold - gap) * 2.5
        } else {
            (gap - self.gap_threshold) * 2.5
        };
        let non_enhancing = if non_enhancing.is_finite() {
            non_enhancing
        } else {
            50.0
        };
        (core, necrosis, non_enhancing)
    }

    /// Tumour fields at `q`, or `None` beyond the tumour's reach.
    pub(crate) fn fields(&self, q: V3, margin: f32) -> Option<TumourFields> {
        let d = sub(q, self.centre);
        let r = len(d);
        if r > self.reach() + margin {
            return None;
        }
        let o = self.offset;
        let at =
            |n: &Noise, f: f32, v: V3| n.at([v[0] * f + o[0], v[1] * f + o[1], v[2] * f + o[2]]);
        let (core, necrosis, non_enhancing) = if r <= self.core_reach() + margin {
            self.core_fields(d)
        } else {
            (-50.0, -50.0, 50.0)
        };
        let inv_e = 1.0 / self.r_oedema;
        let ye = [d[0] * inv_e, d[1] * inv_e, d[2] * inv_e];
        let wobble = at(&self.n_oedema, 1.5, ye) + 0.6 * at(&self.n_oedema_fine, 3.5, ye);
        let oedema = (1.0 - (len(ye) - self.a_oedema * wobble)) * self.r_oedema;
        let texture = self.n_texture.at_scaled(d, 1.0 / 5.0);
        Some(TumourFields {
            core,
            necrosis,
            non_enhancing,
            oedema,
            texture,
        })
    }
}
