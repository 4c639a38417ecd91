//! Dice + HD95 of WT, TC and ET on BraTS-sized (240×240×155) label maps; run by
//! `benches/metrics.sh`, which times scipy on the same files.
//!
//!   cargo bench -p mtmed3d-stages --bench metrics -- DIR [CASES]
//!
//! Writes CASES phantom truths and predictions (the truth shifted by (2, −1, 1) voxels, with
//! 1.0×1.0×1.5 mm voxels) under DIR as NIfTI, then times the metrics on the decoded arrays
//! (file reading excluded, as on the Python side) and prints JSON: the median seconds per
//! case over five rounds, and the values.

use std::time::Instant;

use mtmed3d_stages::eval::score_label_maps;
use mtmed3d_stages::io::nifti::{WriteOptions, write_nifti};
use mtmed3d_stages::io::phantom::{PhantomConfig, generate_case};
use mtmed3d_stages::labels::BratsConvention;
use ndarray::{Array3, Axis};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let Some(dir) = args.first().map(std::path::PathBuf::from) else {
        eprintln!(
            "usage: cargo bench -p mtmed3d-stages --bench metrics -- DIR [CASES] (or bash benches/metrics.sh)"
        );
        return;
    };
    let cases: usize = args.get(1).and_then(|c| c.parse().ok()).unwrap_or(3);
    let spacing = [1.0, 1.0, 1.5];
    let affine = [
        [-1.0, 0.0, 0.0, 120.0],
        [0.0, -1.0, 0.0, 120.0],
        [0.0, 0.0, 1.5, -100.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let config = PhantomConfig::default();
    let mut pairs = Vec::new();
    for index in 0..cases {
        let case = generate_case(&config, 11, index);
        let truth = case.seg;
        let (nx, ny, nz) = truth.dim();
        let pred = Array3::from_shape_fn((nx, ny, nz), |(x, y, z)| {
            let (sx, sy, sz) = (x as i64 - 2, y as i64 + 1, z as i64 - 1);
            if sx < 0 || sy < 0 || sz < 0 || sx >= nx as i64 || sy >= ny as i64 || sz >= nz as i64 {
                0
            } else {
                truth[[sx as usize, sy as usize, sz as usize]]
            }
        });
        let case_dir = dir.join("truth/HGG").join(&case.id);
        std::fs::create_dir_all(&case_dir).expect("bench folder");
        std::fs::create_dir_all(dir.join("pred")).expect("bench folder");
        let options = WriteOptions::default();
        write_nifti(
            case_dir.join(format!("{}_seg.nii.gz", case.id)),
            truth.view().insert_axis(Axis(0)),
            &affine,
            &options,
        )
        .expect("write truth");
        write_nifti(
            dir.join("pred").join(format!("{}.nii.gz", case.id)),
            pred.view().insert_axis(Axis(0)),
            &affine,
            &options,
        )
        .expect("write prediction");
        pairs.push((case.id, truth, pred));
    }
    let mut rounds = Vec::new();
    let mut values = serde_json::Map::new();
    for _ in 0..5 {
        let start = Instant::now();
        for (id, truth, pred) in &pairs {
            let s = score_label_maps(
                pred.view(),
                truth.view(),
                spacing,
                BratsConvention::Brats2018,
            );
            values.insert(
                id.clone(),
                serde_json::json!({
                    "dice": s.iter().map(|r| r.dice).collect::<Vec<_>>(),
                    "hd95": s.iter().map(|r| r.hd95).collect::<Vec<_>>(),
                }),
            );
        }
        rounds.push(start.elapsed().as_secs_f64() / cases as f64);
    }
    rounds.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({"seconds_per_case": rounds[rounds.len() / 2], "threads": rayon::current_num_threads(), "values": values})
    );
}
