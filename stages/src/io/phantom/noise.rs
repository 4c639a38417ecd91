//! Counter-based hashing, smooth gradient noise and cheap Gaussian samples.
//!
//! Everything here is a pure function of a seed and integer coordinates, so any voxel can be computed
//! on any thread in any order and the volume stays bit-identical.

/// The 64-bit finaliser of MurmurHash3: a bijective mixer with good avalanche.
#[inline]
pub(crate) fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// Hash of a lattice point under a seed.
#[inline]
fn hash3(seed: u64, x: i32, y: i32, z: i32) -> u64 {
    // Odd multipliers spread the three coordinates over the word before one mixing round.
    fmix64(
        seed ^ (x as u32 as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ (y as u32 as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
            ^ (z as u32 as u64).wrapping_mul(0x1656_67b1_9e37_79f9),
    )
}

/// A standard-normal-like sample from 64 random bits: the sum of four 16-bit uniforms (Irwin-Hall),
/// rescaled to unit variance. Bounded at about ±3.5σ, which is harmless for image noise and far cheaper
/// than a transcendental transform.
#[inline]
pub(crate) fn gauss(bits: u64) -> f32 {
    let s = (bits & 0xffff) + ((bits >> 16) & 0xffff) + ((bits >> 32) & 0xffff) + (bits >> 48);
    // Mean of the sum is 2·65535, variance 4/12 of 65535².
    (s as f32 / 65535.0 - 2.0) * 1.732_050_8
}

/// 3D gradient (Perlin) noise on a unit lattice, rescaled to roughly unit standard deviation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Noise {
    seed: u64,
}

/// This 3D gradient noise has a standard deviation of about 0.27 (measured; extremes near ±0.9);
/// dividing by it lets amplitudes elsewhere be given in standard deviations (extremes about ±3.4).
const PERLIN_TO_UNIT_STD: f32 = 1.0 / 0.27;

/// Floor as an integer without a libm call (targets without SSE4.1 have no floor instruction).
#[inline]
fn floor_i(x: f32) -> i32 {
    let i = x as i32;
    if x < i as f32 { i - 1 } else { i }
}

#[inline]
fn fade(t: f32) -> f32 {
    t * t * t * (t * (t * 6.0 - 15.0) + 10.0)
}

#[inline]
fn lerp(a: f32, b: f32, t: f32) -> f32 {
    a + (b - a) * t
}

/// The gradient vector behind `grad` for the same hash.
#[inline]
fn grad_vec(h: u64) -> [f32; 3] {
    match h & 15 {
        0 | 12 => [1.0, 1.0, 0.0],
        1 | 13 => [-1.0, 1.0, 0.0],
        2 => [1.0, -1.0, 0.0],
        3 => [-1.0, -1.0, 0.0],
        4 => [1.0, 0.0, 1.0],
        5 => [-1.0, 0.0, 1.0],
        6 => [1.0, 0.0, -1.0],
        7 => [-1.0, 0.0, -1.0],
        8 => [0.0, 1.0, 1.0],
        9 | 14 => [0.0, -1.0, 1.0],
        10 => [0.0, 1.0, -1.0],
        _ => [0.0, -1.0, -1.0],
    }
}

#[inline]
fn grad(h: u64, x: f32, y: f32, z: f32) -> f32 {
    // The twelve cube-edge directions (four repeated) of improved Perlin noise.
    match h & 15 {
        0 | 12 => x + y,
        1 | 13 => -x + y,
        2 => x - y,
        3 => -x - y,
        4 => x + z,
        5 => -x + z,
        6 => x - z,
        7 => -x - z,
        8 => y + z,
        9 | 14 => -y + z,
        10 => y - z,
        _ => -y - z,
    }
}

impl Noise {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            seed: fmix64(seed ^ 0x05ee_d0f9_015e),
        }
    }

    /// Noise at a point given in lattice units (features are about one unit across).
    pub(crate) fn at(&self, p: [f32; 3]) -> f32 {
        let (ix, iy, iz) = (floor_i(p[0]), floor_i(p[1]), floor_i(p[2]));
        let (x, y, z) = (p[0] - ix as f32, p[1] - iy as f32, p[2] - iz as f32);
        let (u, v, w) = (fade(x), fade(y), fade(z));
        let s = self.seed;
        let c000 = grad(hash3(s, ix, iy, iz), x, y, z);
        let c100 = grad(hash3(s, ix + 1, iy, iz), x - 1.0, y, z);
        let c010 = grad(hash3(s, ix, iy + 1, iz), x, y - 1.0, z);
        let c110 = grad(hash3(s, ix + 1, iy + 1, iz), x - 1.0, y - 1.0, z);
        let c001 = grad(hash3(s, ix, iy, iz + 1), x, y, z - 1.0);
        let c101 = grad(hash3(s, ix + 1, iy, iz + 1), x - 1.0, y, z - 1.0);
        let c011 = grad(hash3(s, ix, iy + 1, iz + 1), x, y - 1.0, z - 1.0);
        let c111 = grad(hash3(s, ix + 1, iy + 1, iz + 1), x - 1.0, y - 1.0, z - 1.0);
        let x00 = lerp(c000, c100, u);
        let x10 = lerp(c010, c110, u);
        let x01 = lerp(c001, c101, u);
        let x11 = lerp(c011, c111, u);
        lerp(lerp(x00, x10, v), lerp(x01, x11, v), w) * PERLIN_TO_UNIT_STD
    }

    /// Noise and its analytic gradient (per lattice unit) at a point in lattice units.
    pub(crate) fn at_with_gradient(&self, p: [f32; 3]) -> (f32, [f32; 3]) {
        let (ix, iy, iz) = (floor_i(p[0]), floor_i(p[1]), floor_i(p[2]));
        let (x, y, z) = (p[0] - ix as f32, p[1] - iy as f32, p[2] - iz as f32);
        let (u, v, w) = (fade(x), fade(y), fade(z));
        let dfade = |t: f32| 30.0 * t * t * (t - 1.0) * (t - 1.0);
        let (du, dv, dw) = (dfade(x), dfade(y), dfade(z));
        let s = self.seed;
        let corner = |dx: i32, dy: i32, dz: i32| {
            let g = grad_vec(hash3(s, ix + dx, iy + dy, iz + dz));
            let d = [x - dx as f32, y - dy as f32, z - dz as f32];
            (g[0] * d[0] + g[1] * d[1] + g[2] * d[2], g)
        };
        let (a, ga) = corner(0, 0, 0);
        let (b, gb) = corner(1, 0, 0);
        let (c, gc) = corner(0, 1, 0);
        let (d, gd) = corner(1, 1, 0);
        let (e, ge) = corner(0, 0, 1);
        let (f, gf) = corner(1, 0, 1);
        let (g, gg) = corner(0, 1, 1);
        let (h, gh) = corner(1, 1, 1);
        // n = k0 + k1 u + k2 v + k3 w + k4 uv + k5 vw + k6 wu + k7 uvw
        let k1 = b - a;
        let k2 = c - a;
        let k3 = e - a;
        let k4 = a - b - c + d;
        let k5 = a - c - e + g;
        let k6 = a - b - e + f;
        let k7 = -a + b + c - d + e - f - g + h;
        let value =
            a + k1 * u + k2 * v + k3 * w + k4 * u * v + k5 * v * w + k6 * w * u + k7 * u * v * w;
        let mut gradient = [0.0f32; 3];
        for (axis, out) in gradient.iter_mut().enumerate() {
            // Trilinear blend of the corner gradients, plus the change of the fade weights.
            let l = |p: [f32; 3], q: [f32; 3], t: f32| lerp(p[axis], q[axis], t);
            let blended = lerp(
                lerp(l(ga, gb, u), l(gc, gd, u), v),
                lerp(l(ge, gf, u), l(gg, gh, u), v),
                w,
            );
            let through_fade = match axis {
                0 => du * (k1 + k4 * v + k6 * w + k7 * v * w),
                1 => dv * (k2 + k4 * u + k5 * w + k7 * u * w),
                _ => dw * (k3 + k5 * v + k6 * u + k7 * u * v),
            };
            *out = (blended + through_fade) * PERLIN_TO_UNIT_STD;
        }
        (value * PERLIN_TO_UNIT_STD, gradient)
    }

    /// Noise at `p / wavelength` (both in millimetres).
    #[inline]
    pub(crate) fn at_scaled(&self, p: [f32; 3], inv_wavelength: f32) -> f32 {
        self.at([
            p[0] * inv_wavelength,
            p[1] * inv_wavelength,
            p[2] * inv_wavelength,
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_roughly_unit_std_and_zero_mean() {
        let n = Noise::new(3);
        let (mut s, mut s2, mut count) = (0.0f64, 0.0f64, 0.0f64);
        for i in 0..40 {
            for j in 0..40 {
                for k in 0..40 {
                    let v = n.at([i as f32 * 0.37, j as f32 * 0.41, k as f32 * 0.43]) as f64;
                    s += v;
                    s2 += v * v;
                    count += 1.0;
                }
            }
        }
        let mean = s / count;
        let std = (s2 / count - mean * mean).sqrt();
        assert!(mean.abs() < 0.1, "mean {mean}");
        assert!((0.8..1.2).contains(&std), "std {std}");
    }

    #[test]
    fn analytic_gradient_matches_finite_differences() {
        let n = Noise::new(11);
        for i in 0..50 {
            let p = [
                i as f32 * 0.173 - 3.1,
                i as f32 * 0.291 + 0.2,
                1.7 - i as f32 * 0.117,
            ];
            let (v, g) = n.at_with_gradient(p);
            assert!((v - n.at(p)).abs() < 1e-4);
            let e = 1e-3;
            for a in 0..3 {
                let mut q = p;
                q[a] += e;
                let mut r = p;
                r[a] -= e;
                let fd = (n.at(q) - n.at(r)) / (2.0 * e);
                assert!(
                    (fd - g[a]).abs() < 0.05 * (1.0 + fd.abs()),
                    "axis {a}: {fd} vs {}",
                    g[a]
                );
            }
        }
    }

    #[test]
    fn gauss_has_unit_variance() {
        let (mut s, mut s2) = (0.0f64, 0.0f64);
        let n = 100_000;
        for i in 0..n {
            let g = gauss(fmix64(i as u64 + 1)) as f64;
            s += g;
            s2 += g * g;
        }
        let mean = s / n as f64;
        let var = s2 / n as f64 - mean * mean;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.03,
            "mean {mean} var {var}"
        );
    }
}
