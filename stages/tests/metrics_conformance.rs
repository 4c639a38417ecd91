//! Metric conformance: `evaluate_folders` against `tests/oracles/metrics_oracle.py` (scipy
//! for HD95, scikit-learn for the confusion counts, MONAI's own COCO code for mAP/mAR) on
//! randomly generated cases: anisotropic spacing, masks touching the border, empty truth,
//! empty predictions, missing regions, several boxes per case and cases without boxes.

use std::path::Path;
use std::process::Command;

use mtmed3d_stages::eval::{EvaluateOptions, evaluate_folders};
use mtmed3d_stages::io::nifti::{WriteOptions, write_nifti};
use ndarray::{Array3, Array4};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

const INSTALL_HINT: &str = "this test compares against scipy, scikit-learn and MONAI's COCO code: \
    pip install nibabel numpy scipy scikit-learn && pip install --no-deps monai==1.3.0 \
    (MTMED3D_PYTHON chooses the interpreter), or set MTMED3D_SKIP_ORACLES=1 to skip it";

/// A random tumour: oedema ellipsoid, a core inside it with an enhancing rim; sometimes
/// without enhancing tumour, sometimes cut by the volume border.
fn tumour(rng: &mut ChaCha8Rng, shape: (usize, usize, usize), noise: f64) -> Array3<u8> {
    let dims = [shape.0, shape.1, shape.2];
    let centre: [f64; 3] = dims.map(|n| rng.random_range(0.0..n as f64));
    let radius: [f64; 3] = dims.map(|n| rng.random_range(2.0..(n as f64 / 3.0).max(2.5)));
    let with_et = rng.random_bool(0.8);
    let mut out = Array3::from_shape_fn(shape, |(i, j, k)| {
        let r = [i, j, k]
            .iter()
            .enumerate()
            .map(|(d, &v)| ((v as f64 - centre[d]) / radius[d]).powi(2))
            .sum::<f64>()
            .sqrt();
        match r {
            r if r < 0.35 => 1,
            r if r < 0.6 => {
                if with_et {
                    4
                } else {
                    1
                }
            }
            r if r < 1.0 => 2,
            _ => 0,
        }
    });
    out.mapv_inplace(|v| {
        if rng.random_bool(noise) {
            [0, 1, 2, 4][rng.random_range(0..4)]
        } else {
            v
        }
    });
    out
}

fn wt_box(label: &Array3<u8>) -> Option<[f64; 6]> {
    let mut lo = [usize::MAX; 3];
    let mut hi = [0; 3];
    for ((i, j, k), &v) in label.indexed_iter() {
        if v != 0 {
            lo = [lo[0].min(i), lo[1].min(j), lo[2].min(k)];
            hi = [hi[0].max(i + 1), hi[1].max(j + 1), hi[2].max(k + 1)];
        }
    }
    (lo[0] != usize::MAX).then(|| [lo[0], lo[1], lo[2], hi[0], hi[1], hi[2]].map(|v| v as f64))
}

fn write_label(path: &Path, label: &Array3<u8>, spacing: [f64; 3]) {
    let affine = [
        [-spacing[0], 0.0, 0.0, 90.0],
        [0.0, spacing[1], 0.0, -126.0],
        [0.0, 0.0, spacing[2], -72.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let v = label.clone().insert_axis(ndarray::Axis(0));
    let v: Array4<u8> = v;
    write_nifti(path, v.view(), &affine, &WriteOptions::default()).unwrap();
}

fn make_cases(root: &Path, seed: u64, count: usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for index in 0..count {
        let id = format!("Case_{index:03}");
        let shape = (
            rng.random_range(12..40),
            rng.random_range(12..36),
            rng.random_range(8..30),
        );
        let spacing = match index % 3 {
            0 => [1.0, 1.0, 1.0],
            1 => [0.9, 1.3, 2.5],
            _ => [
                rng.random_range(0.5..2.0),
                rng.random_range(0.5..2.0),
                rng.random_range(0.5..4.0),
            ],
        };
        let grade = if index % 2 == 0 { "HGG" } else { "LGG" };
        let truth = if index == 3 {
            Array3::zeros(shape)
        } else {
            tumour(&mut rng, shape, 0.01)
        };
        let pred = match index {
            4 | 3 if rng.random_bool(0.5) => Array3::zeros(shape),
            4 => Array3::zeros(shape),
            _ if rng.random_bool(0.3) => tumour(&mut rng, shape, 0.02),
            _ => {
                // the truth, shifted and with noise
                let shift = [
                    rng.random_range(-2i64..3),
                    rng.random_range(-2i64..3),
                    rng.random_range(-1i64..2),
                ];
                Array3::from_shape_fn(shape, |(i, j, k)| {
                    let src = [
                        i as i64 - shift[0],
                        j as i64 - shift[1],
                        k as i64 - shift[2],
                    ];
                    let inside = src
                        .iter()
                        .zip([shape.0, shape.1, shape.2])
                        .all(|(&s, n)| s >= 0 && (s as usize) < n);
                    let v = if inside {
                        truth[[src[0] as usize, src[1] as usize, src[2] as usize]]
                    } else {
                        0
                    };
                    if rng.random_bool(0.02) {
                        [0, 1, 2, 4][rng.random_range(0..4)]
                    } else {
                        v
                    }
                })
            }
        };
        let case_dir = root.join("truth").join(grade).join(&id);
        std::fs::create_dir_all(&case_dir).unwrap();
        write_label(&case_dir.join(format!("{id}_seg.nii.gz")), &truth, spacing);
        std::fs::create_dir_all(root.join("pred")).unwrap();
        write_label(
            &root.join("pred").join(format!("{id}.nii.gz")),
            &pred,
            spacing,
        );

        let mut boxes = Vec::new();
        let n_boxes = if index % 5 == 2 {
            0
        } else {
            rng.random_range(1..5)
        };
        for _ in 0..n_boxes {
            let b = match wt_box(&truth) {
                Some(t) if rng.random_bool(0.7) => {
                    let j: [f64; 6] = std::array::from_fn(|_| rng.random_range(-4.0..4.0));
                    let mut c: [f64; 6] = std::array::from_fn(|d| t[d] + j[d]);
                    for d in 0..3 {
                        if c[d + 3] < c[d] {
                            c.swap(d, d + 3);
                        }
                    }
                    c
                }
                _ => {
                    let lo: [f64; 3] = std::array::from_fn(|_| rng.random_range(0.0..20.0));
                    let size: [f64; 3] = std::array::from_fn(|_| rng.random_range(1.0..15.0));
                    [
                        lo[0],
                        lo[1],
                        lo[2],
                        lo[0] + size[0],
                        lo[1] + size[1],
                        lo[2] + size[2],
                    ]
                }
            };
            // a few tied scores exercise the stable order
            let score = if rng.random_bool(0.15) {
                0.5
            } else {
                rng.random::<f64>()
            };
            boxes.push(json!({"box": b, "score": score}));
        }
        let right = rng.random_bool(0.7);
        let pred_grade = match (grade, right) {
            ("HGG", true) | ("LGG", false) => "HGG",
            _ => "LGG",
        };
        let doc = json!({"boxes": boxes, "grade": pred_grade, "p_hgg": rng.random::<f64>()});
        std::fs::write(
            root.join("pred").join(format!("{id}.json")),
            doc.to_string(),
        )
        .unwrap();
    }
}

fn oracle(root: &Path) -> Option<Value> {
    if std::env::var("MTMED3D_SKIP_ORACLES").is_ok_and(|v| v == "1") {
        eprintln!("MTMED3D_SKIP_ORACLES=1: metrics oracle skipped");
        return None;
    }
    let python = std::env::var("MTMED3D_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/oracles/metrics_oracle.py");
    let out = Command::new(&python)
        .arg(script)
        .arg("--pred")
        .arg(root.join("pred"))
        .arg("--truth")
        .arg(root.join("truth"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}\n{INSTALL_HINT}"));
    if !out.status.success() {
        panic!(
            "metrics oracle failed:\n{}\n{INSTALL_HINT}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Some(serde_json::from_slice(&out.stdout).expect("the oracle prints JSON"))
}

fn close(ours: Option<f64>, theirs: &Value, what: &str) {
    match (ours, theirs.as_f64()) {
        (Some(a), Some(b)) => assert!((a - b).abs() <= 1e-4, "{what}: mtmed3d {a}, oracle {b}"),
        (None, None) => {}
        (a, _) => panic!("{what}: mtmed3d {a:?}, oracle {theirs}"),
    }
}

#[test]
fn metrics_equal_the_oracles_on_random_cases() {
    for seed in [1u64, 2, 3] {
        let dir = tempfile::tempdir().unwrap();
        make_cases(dir.path(), seed, 14);
        let report = evaluate_folders(
            &dir.path().join("pred"),
            &dir.path().join("truth"),
            &EvaluateOptions::default(),
        )
        .unwrap();
        let Some(oracle) = oracle(dir.path()) else {
            return;
        };
        let keys = [
            "dice_wt",
            "dice_tc",
            "dice_et",
            "hd95_wt",
            "hd95_tc",
            "hd95_et",
            "accuracy",
            "sensitivity",
            "specificity",
            "map_10_50",
            "mar_10_50",
            "map_50",
            "mar_50",
        ];
        for key in keys {
            close(
                report.get(key),
                &oracle["aggregate"][key],
                &format!("seed {seed}, {key}"),
            );
        }
        let cases = report.to_json(true)["cases"].clone();
        assert_eq!(cases.as_array().unwrap().len(), 14);
        for case in cases.as_array().unwrap() {
            let id = case["case"].as_str().unwrap();
            for key in &keys[..6] {
                close(
                    case[*key].as_f64(),
                    &oracle["cases"][id][*key],
                    &format!("seed {seed}, {id}, {key}"),
                );
            }
        }
        // The generated cases must exercise what they claim to.
        let hd: Vec<f64> = cases
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["hd95_wt"].as_f64().unwrap())
            .collect();
        assert!(hd.contains(&373.13), "an empty-versus-tumour case");
        assert!(report.get("map_10_50").unwrap() > 0.0 && report.get("map_10_50").unwrap() < 1.0);
    }
}
