use super::*;
use std::collections::HashMap;
use std::sync::OnceLock;

const SMALL: [usize; 3] = [64, 64, 48];

fn small() -> PhantomConfig {
    PhantomConfig {
        shape: SMALL,
        ..Default::default()
    }
}

/// The first cases of seed 7 at the small shape, generated once and shared by the tests.
fn small_cases() -> &'static [PhantomCase] {
    static CASES: OnceLock<Vec<PhantomCase>> = OnceLock::new();
    CASES.get_or_init(|| (0..12).map(|i| generate_case(&small(), 7, i)).collect())
}

fn cases_of(grade: Grade) -> Vec<&'static PhantomCase> {
    small_cases().iter().filter(|c| c.grade == grade).collect()
}

fn count(seg: &Array3<u8>, labels: &[u8]) -> usize {
    seg.iter().filter(|l| labels.contains(l)).count()
}

fn centroid(mask: impl Iterator<Item = ((usize, usize, usize), bool)>) -> [f64; 3] {
    let (mut s, mut n) = ([0.0; 3], 0.0);
    for ((i, j, k), m) in mask {
        if m {
            s[0] += i as f64;
            s[1] += j as f64;
            s[2] += k as f64;
            n += 1.0;
        }
    }
    s.map(|v| v / n)
}

fn tc_centroid(c: &PhantomCase) -> [f64; 3] {
    centroid(c.seg.indexed_iter().map(|(p, &l)| (p, l == 1 || l == 4)))
}

/// Mean of modality `m` over voxels where `pick(tissue, label)` holds.
fn mean_where(c: &PhantomCase, m: usize, pick: impl Fn(u8, u8) -> bool) -> f64 {
    let (mut s, mut n) = (0.0, 0usize);
    for ((v, &t), &l) in c.modalities[m]
        .iter()
        .zip(c.tissue.iter())
        .zip(c.seg.iter())
    {
        if pick(t, l) {
            s += *v as f64;
            n += 1;
        }
    }
    assert!(n > 0, "no voxel selected");
    s / n as f64
}

const NEIGHBOURS: [[isize; 3]; 6] = [
    [1, 0, 0],
    [-1, 0, 0],
    [0, 1, 0],
    [0, -1, 0],
    [0, 0, 1],
    [0, 0, -1],
];

/// Whether some 6-neighbour of `p` (or the volume edge) fails `keep`.
fn touches(a: &Array3<u8>, p: (usize, usize, usize), keep: impl Fn(u8) -> bool) -> bool {
    let s = a.shape();
    NEIGHBOURS.iter().any(|d| {
        let q = [
            p.0 as isize + d[0],
            p.1 as isize + d[1],
            p.2 as isize + d[2],
        ];
        if (0..3).any(|x| q[x] < 0 || q[x] >= s[x] as isize) {
            return true;
        }
        !keep(a[(q[0] as usize, q[1] as usize, q[2] as usize)])
    })
}

#[test]
fn shapes_spacing_and_lps_affine() {
    let cfg = PhantomConfig {
        shape: [40, 48, 32],
        spacing: [1.5, 1.25, 2.0],
        ..Default::default()
    };
    let c = generate_case(&cfg, 1, 7);
    assert_eq!(c.id, "Phantom_0007");
    for m in &c.modalities {
        assert_eq!(m.shape(), &[40, 48, 32]);
        assert!(m.is_standard_layout());
    }
    assert_eq!(c.seg.shape(), &[40, 48, 32]);
    assert_eq!(c.tissue.shape(), &[40, 48, 32]);
    assert!(c.seg.is_standard_layout());
    assert_eq!(c.spacing, [1.5, 1.25, 2.0]);
    let a = c.affine;
    // LPS storage: axis 0 towards -x (left in RAS+ world), axis 1 towards -y (posterior), axis 2 towards +z.
    assert_eq!([a[0][0], a[1][1], a[2][2]], [-1.5, -1.25, 2.0]);
    for (r, row) in a.iter().enumerate().take(3) {
        for (col, &v) in row.iter().enumerate().take(3) {
            if r != col {
                assert_eq!(v, 0.0);
            }
        }
    }
    assert_eq!(a[3], [0.0, 0.0, 0.0, 1.0]);
    // The centre of the volume is the world origin.
    let centre = [19.5, 23.5, 15.5];
    for (r, row) in a.iter().enumerate().take(3) {
        let w: f64 = (0..3).map(|k| row[k] * centre[k]).sum::<f64>() + row[3];
        assert!(w.abs() < 1e-9, "world coordinate {r} of the centre is {w}");
    }
}

#[test]
fn same_inputs_give_identical_cases_whatever_the_thread_count() {
    let cfg = small();
    let a = generate_case(&cfg, 3, 5);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let b = pool.install(|| generate_case(&cfg, 3, 5));
    assert_eq!(a.id, b.id);
    assert_eq!(a.grade, b.grade);
    assert_eq!(a.affine, b.affine);
    assert_eq!(a.tumour, b.tumour);
    assert_eq!(a.seg, b.seg);
    assert_eq!(a.tissue, b.tissue);
    for m in 0..4 {
        // Bitwise equality, not approximate.
        assert!(
            a.modalities[m]
                .iter()
                .zip(b.modalities[m].iter())
                .all(|(x, y)| x.to_bits() == y.to_bits())
        );
    }
    let other_index = generate_case(&cfg, 3, 6);
    assert_ne!(a.seg, other_index.seg);
    assert_ne!(a.modalities[0], other_index.modalities[0]);
    let other_seed = generate_case(&cfg, 4, 5);
    assert_ne!(a.modalities[0], other_seed.modalities[0]);
}

#[test]
fn labels_and_tissue_codes_are_valid() {
    for c in small_cases() {
        assert!(c.seg.iter().all(|l| matches!(l, 0 | 1 | 2 | 4)), "{}", c.id);
        assert!(c.tissue.iter().all(|&t| t <= TISSUE_DEEP_GREY), "{}", c.id);
        for t in [TISSUE_CSF, TISSUE_GREY, TISSUE_WHITE, TISSUE_DEEP_GREY] {
            assert!(
                c.tissue.iter().any(|&x| x == t),
                "{}: tissue {t} missing",
                c.id
            );
        }
    }
}

#[test]
fn background_is_zero_and_brain_is_positive() {
    for c in small_cases() {
        let mut brain = 0usize;
        for m in &c.modalities {
            for (v, &t) in m.iter().zip(c.tissue.iter()) {
                if t == TISSUE_BACKGROUND {
                    assert_eq!(*v, 0.0, "{}", c.id);
                } else {
                    assert!(*v >= 1.0, "{}", c.id);
                    brain += 1;
                }
            }
        }
        // A brain, not an empty or full volume (a 64×64×48 volume is relatively tall for the brain).
        let frac = brain as f64 / 4.0 / c.seg.len() as f64;
        assert!(
            (0.08..0.4).contains(&frac),
            "{}: brain fraction {frac}",
            c.id
        );
        // Nothing touches the volume border in x and y (skull-stripped heads are centred).
        let [nx, ny, _] = SMALL;
        for ((i, j, _), &t) in c.tissue.indexed_iter() {
            if i == 0 || j == 0 || i == nx - 1 || j == ny - 1 {
                assert_eq!(t, 0);
            }
        }
    }
}

#[test]
fn tumour_lies_inside_the_brain() {
    for c in small_cases() {
        for (p, &l) in c.seg.indexed_iter() {
            if l != 0 {
                assert_ne!(
                    c.tissue[p], TISSUE_BACKGROUND,
                    "{}: label outside the brain",
                    c.id
                );
            }
            if l == 1 || l == 4 {
                // The core is surrounded by brain, not cut by the outline.
                assert!(
                    !touches(&c.tissue, p, |t| t != TISSUE_BACKGROUND),
                    "{}: core on the brain edge",
                    c.id
                );
            }
        }
        assert!(count(&c.seg, &[1, 4]) > 0, "{}: no tumour core", c.id);
        assert!(count(&c.seg, &[2]) > 0, "{}: no oedema", c.id);
    }
}

#[test]
fn hgg_has_an_enhancing_rim_around_necrosis() {
    let hgg = cases_of(Grade::Hgg);
    assert!(hgg.len() >= 4, "seed 7 should give several HGG cases");
    for c in hgg {
        let tc = count(&c.seg, &[1, 4]) as f64;
        let et = count(&c.seg, &[4]) as f64;
        let frac = et / tc;
        assert!((0.25..0.92).contains(&frac), "{}: ET/TC {frac}", c.id);
        // Rim: the enhancing voxels lie further from the core centre than the necrotic ones...
        let cen = tc_centroid(c);
        let dist = |p: (usize, usize, usize)| {
            ((p.0 as f64 - cen[0]).powi(2)
                + (p.1 as f64 - cen[1]).powi(2)
                + (p.2 as f64 - cen[2]).powi(2))
            .sqrt()
        };
        let mean_dist = |label: u8| {
            let d: Vec<f64> = c
                .seg
                .indexed_iter()
                .filter(|(_, l)| **l == label)
                .map(|(p, _)| dist(p))
                .collect();
            d.iter().sum::<f64>() / d.len().max(1) as f64
        };
        assert!(
            mean_dist(4) > mean_dist(1),
            "{}: ET not outside necrosis",
            c.id
        );
        // ...and make up most of the core's surface.
        let (mut surface, mut surface_et) = (0, 0);
        for (p, &l) in c.seg.indexed_iter() {
            if (l == 1 || l == 4) && touches(&c.seg, p, |x| x == 1 || x == 4) {
                surface += 1;
                surface_et += (l == 4) as usize;
            }
        }
        let f = surface_et as f64 / surface as f64;
        assert!(f > 0.6, "{}: only {f} of the core surface enhances", c.id);
    }
}

#[test]
fn lgg_has_little_or_no_enhancement() {
    // Enough cases that LGGs appear.
    let cfg = PhantomConfig {
        hgg_fraction: 0.0,
        ..small()
    };
    for i in 0..4 {
        let c = generate_case(&cfg, 11, i);
        assert_eq!(c.grade, Grade::Lgg);
        let tc = count(&c.seg, &[1, 4]) as f64;
        let et = count(&c.seg, &[4]) as f64;
        assert!(et / tc < 0.06, "{}: ET/TC {}", c.id, et / tc);
    }
    for c in cases_of(Grade::Lgg) {
        let et = count(&c.seg, &[4]) as f64 / count(&c.seg, &[1, 4]) as f64;
        assert!(et < 0.06, "{}: ET/TC {et}", c.id);
    }
}

#[test]
fn grade_frequency_follows_the_config() {
    let n = small_cases().len();
    let hgg = cases_of(Grade::Hgg).len();
    // hgg_fraction 0.7 over 12 cases: grades are spread, so 8.4 ± 2.
    assert!((7..=10).contains(&hgg), "{hgg} HGG of {n}");
    let all_hgg = PhantomConfig {
        hgg_fraction: 1.0,
        ..small()
    };
    assert_eq!(generate_case(&all_hgg, 1, 0).grade, Grade::Hgg);
}

#[test]
fn grades_are_spread_so_every_short_series_holds_its_fraction() {
    // The grade is decided before anything that depends on the shape, so the draw alone is tested
    // over many seeds, fractions and series lengths.
    for seed in 0..200u64 {
        for fraction in [0.25, 0.5, 0.6, 0.7, 0.74] {
            for n in [5usize, 6, 10, 24, 100] {
                let hgg = (0..n).filter(|&i| spread_draw(seed, i) < fraction).count() as f64;
                let expected = n as f64 * fraction;
                assert!(
                    (hgg - expected).abs() <= 2.0,
                    "seed {seed}, fraction {fraction}, {n} cases: {hgg} HGG, expected {expected}"
                );
            }
        }
    }
}

#[test]
fn tumour_size_and_position_vary_within_documented_ranges() {
    // Volumes are reported in millilitres of the full-size reference brain: the small volume holds the
    // same brain scaled by `scale`.
    let frame = Frame::new(&small());
    let ml_per_voxel = (frame.h[0] * frame.h[1] * frame.h[2]) as f64 / 1000.0;
    let mut tc_ml = Vec::new();
    let mut wt_ml = Vec::new();
    let mut centres = Vec::new();
    for c in small_cases() {
        let tc = count(&c.seg, &[1, 4]) as f64 * ml_per_voxel;
        let wt = count(&c.seg, &[1, 2, 4]) as f64 * ml_per_voxel;
        assert!((2.0..100.0).contains(&tc), "{}: TC {tc} ml", c.id);
        assert!((6.0..350.0).contains(&wt), "{}: WT {wt} ml", c.id);
        assert!(wt > tc);
        tc_ml.push(tc);
        wt_ml.push(wt);
        centres.push(tc_centroid(c));
    }
    let spread = |v: &[f64]| {
        v.iter().cloned().fold(f64::MIN, f64::max) / v.iter().cloned().fold(f64::MAX, f64::min)
    };
    assert!(spread(&tc_ml) > 3.0, "core volumes barely vary: {tc_ml:?}");
    assert!(
        spread(&wt_ml) > 2.0,
        "whole-tumour volumes barely vary: {wt_ml:?}"
    );
    for axis in 0..3 {
        let v: Vec<f64> = centres.iter().map(|c| c[axis]).collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        // In mm of the reference brain (3.75 mm per voxel here).
        let std_mm = std * frame.h[axis] as f64;
        assert!(
            std_mm > 6.0,
            "tumour centres barely move along axis {axis}: {v:?}"
        );
    }
}

#[test]
fn tumour_hemisphere_lands_on_the_lps_side() {
    let mut seen = HashMap::new();
    for c in small_cases() {
        *seen.entry(c.tumour.hemisphere).or_insert(0) += 1;
        let cen = tc_centroid(c);
        let mid = (SMALL[0] as f64 - 1.0) / 2.0;
        // LPS: patient's left is towards higher axis-0 indices...
        match c.tumour.hemisphere {
            Hemisphere::Left => assert!(cen[0] > mid, "{}: left tumour at i = {}", c.id, cen[0]),
            Hemisphere::Right => assert!(cen[0] < mid, "{}: right tumour at i = {}", c.id, cen[0]),
        }
        // ...which the affine maps to negative RAS x.
        let x = c.affine[0][0] * cen[0]
            + c.affine[0][1] * cen[1]
            + c.affine[0][2] * cen[2]
            + c.affine[0][3];
        assert_eq!(
            x < 0.0,
            c.tumour.hemisphere == Hemisphere::Left,
            "{}: world x {x}",
            c.id
        );
        // The drawn centre and the measured centroid agree.
        let d: f64 = (0..3)
            .map(|a| (cen[a] - c.tumour.centre_voxel[a]).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(
            d < 6.0,
            "{}: centroid {cen:?} vs drawn {:?}",
            c.id,
            c.tumour.centre_voxel
        );
    }
    assert_eq!(seen.len(), 2, "both hemispheres should occur: {seen:?}");
}

#[test]
fn anatomy_is_oriented_like_a_head_in_lps() {
    let c = &small_cases()[0];
    let nz = SMALL[2];
    // The lowest brain slices hold cerebellum and brainstem: posterior, i.e. high axis-1 indices, and the
    // brain's top is well above its bottom (superior = +axis 2).
    let brain = |p: (usize, usize, usize)| c.tissue[p] != TISSUE_BACKGROUND;
    let ks: Vec<usize> = (0..nz)
        .filter(|&k| {
            c.tissue
                .index_axis(ndarray::Axis(2), k)
                .iter()
                .any(|&t| t != 0)
        })
        .collect();
    let (k_lo, k_hi) = (ks[0], *ks.last().unwrap());
    let low = centroid(
        c.tissue
            .indexed_iter()
            .map(|(p, _)| (p, brain(p) && p.2 <= k_lo + (k_hi - k_lo) / 6)),
    );
    let all = centroid(c.tissue.indexed_iter().map(|(p, _)| (p, brain(p))));
    assert!(
        low[1] > all[1] + 2.0,
        "inferior brain should be posterior: {low:?} vs {all:?}"
    );
    // The lateral ventricles are paired: CSF deep inside both hemispheres near the middle.
    let mid = (SMALL[0] as f64 - 1.0) / 2.0;
    let deep_csf = |left: bool| {
        c.tissue
            .indexed_iter()
            .filter(|(p, t)| {
                **t == TISSUE_CSF
                    && ((p.0 as f64) > mid + 1.0) == left
                    && (p.0 as f64 - mid).abs() < 6.0
                    && (p.1 as f64 - all[1]).abs() < 8.0
                    && (p.2 as f64 - all[2]).abs() < 8.0
            })
            .count()
    };
    assert!(
        deep_csf(true) > 10 && deep_csf(false) > 10,
        "ventricles: {} / {}",
        deep_csf(true),
        deep_csf(false)
    );
}

#[test]
fn tissue_contrasts_follow_mri_physics() {
    let (t1, t1ce, t2, flair) = (0, 1, 2, 3);
    let normal = |tissue: u8| move |t: u8, l: u8| t == tissue && l == 0;
    for c in small_cases().iter().take(6) {
        let wm = |m| mean_where(c, m, normal(TISSUE_WHITE));
        let gm = |m| mean_where(c, m, normal(TISSUE_GREY));
        let csf = |m| mean_where(c, m, normal(TISSUE_CSF));
        let oedema = |m| mean_where(c, m, |_, l| l == 2);
        assert!(
            wm(t1) > gm(t1) && gm(t1) > csf(t1),
            "{}: T1 WM {} GM {} CSF {}",
            c.id,
            wm(t1),
            gm(t1),
            csf(t1)
        );
        assert!(
            t2_ok(csf(t2), wm(t2)),
            "{}: T2 CSF {} WM {}",
            c.id,
            csf(t2),
            wm(t2)
        );
        assert!(gm(t2) > wm(t2), "{}: T2 GM {} WM {}", c.id, gm(t2), wm(t2));
        assert!(
            csf(flair) < wm(flair),
            "{}: FLAIR CSF {} WM {}",
            c.id,
            csf(flair),
            wm(flair)
        );
        assert!(
            oedema(flair) > 1.3 * wm(flair),
            "{}: FLAIR oedema {} WM {}",
            c.id,
            oedema(flair),
            wm(flair)
        );
        assert!(oedema(t2) > wm(t2));
        if c.grade == Grade::Hgg {
            let et = mean_where(c, t1ce, |_, l| l == 4);
            // At 64×64×48 the rim is one or two voxels thick and shares voxels with necrosis and
            // oedema: over the 33 HGG cases among the first 16 of seeds 7–9, ET/WM on T1ce ranged
            // 1.26–1.56 (median 1.42).
            assert!(
                et > 1.2 * wm(t1ce),
                "{}: T1ce ET {et} WM {}",
                c.id,
                wm(t1ce)
            );
            // Enhancement is what tells ET apart: on plain T1 it is no brighter than white matter.
            assert!(mean_where(c, t1, |_, l| l == 4) < wm(t1));
        }
    }
}

fn t2_ok(csf: f64, wm: f64) -> bool {
    csf > 1.5 * wm
}

#[test]
fn default_config_generates_a_full_size_brats_like_case() {
    let c = generate_case(&PhantomConfig::default(), 42, 0);
    assert_eq!(c.seg.shape(), &[240, 240, 155]);
    assert_eq!(c.affine[0][0], -1.0);
    // Brain extent in mm (1 mm voxels): an adult brain is about 130–150 wide and 160–180 long.
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    for ((i, j, k), &t) in c.tissue.indexed_iter() {
        if t != 0 {
            for (a, v) in [i, j, k].into_iter().enumerate() {
                lo[a] = lo[a].min(v);
                hi[a] = hi[a].max(v);
            }
        }
    }
    let ext = [0, 1, 2].map(|a| hi[a] - lo[a] + 1);
    assert!((125..=160).contains(&ext[0]), "width {}", ext[0]);
    assert!((155..=190).contains(&ext[1]), "length {}", ext[1]);
    assert!(ext[2] >= 120, "height {}", ext[2]);
    let ml = |labels: &[u8]| count(&c.seg, labels) as f64 / 1000.0;
    assert!((2.0..100.0).contains(&ml(&[1, 4])), "TC {} ml", ml(&[1, 4]));
    assert!(
        (6.0..350.0).contains(&ml(&[1, 2, 4])),
        "WT {} ml",
        ml(&[1, 2, 4])
    );
}

#[test]
fn config_deserialises_with_defaults_and_rejects_bad_values() {
    let c: PhantomConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(c, PhantomConfig::default());
    let c: PhantomConfig =
        serde_json::from_str(r#"{"shape": [96, 96, 96], "hgg_fraction": 0.5}"#).unwrap();
    assert_eq!(c.shape, [96, 96, 96]);
    assert_eq!(c.hgg_fraction, 0.5);
    assert!(serde_json::from_str::<PhantomConfig>(r#"{"shapes": [1, 2, 3]}"#).is_err());
    assert_eq!(
        PhantomConfig {
            shape: [8, 64, 64],
            ..Default::default()
        }
        .validate(),
        Err(PhantomError::ShapeTooSmall([8, 64, 64]))
    );
    assert!(
        PhantomConfig {
            spacing: [1.0, 0.0, 1.0],
            ..Default::default()
        }
        .validate()
        .is_err()
    );
    assert!(
        PhantomConfig {
            hgg_fraction: 1.5,
            ..Default::default()
        }
        .validate()
        .is_err()
    );
    assert!(
        PhantomConfig {
            tumour_radius_mm: [20.0, 10.0],
            ..Default::default()
        }
        .validate()
        .is_err()
    );
    assert!(
        try_generate_case(
            &PhantomConfig {
                noise: f64::NAN,
                ..small()
            },
            0,
            0
        )
        .is_err()
    );
}

#[test]
fn mass_effect_moves_anatomy_but_not_the_tumour_core() {
    let with = generate_case(&small(), 5, 2);
    let without = generate_case(
        &PhantomConfig {
            mass_effect: false,
            ..small()
        },
        5,
        2,
    );
    assert_eq!(with.tumour, without.tumour);
    let core = |c: &PhantomCase| c.seg.mapv(|l| (l == 1 || l == 4) as u8);
    assert_eq!(core(&with), core(&without));
    let moved = with
        .tissue
        .iter()
        .zip(without.tissue.iter())
        .filter(|(a, b)| a != b)
        .count();
    assert!(moved > 100, "only {moved} voxels changed tissue");
}

#[test]
fn grade_serialises_like_brats_folders() {
    assert_eq!(serde_json::to_string(&Grade::Hgg).unwrap(), "\"HGG\"");
    assert_eq!(Grade::Lgg.as_str(), "LGG");
    assert_eq!((Grade::Hgg.class_index(), Grade::Lgg.class_index()), (1, 0));
}
