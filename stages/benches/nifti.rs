//! Decoding a BraTS-sized (240×240×155 int16) `.nii.gz` to a channel-first f32 array, against
//! nibabel on the same file in the same run.
//!
//! `cargo bench -p mtmed3d-stages --bench nifti`
//!
//! The volume is synthetic but MR-like (a noisy ellipsoid "head" on a zero background, so gzip
//! compresses it about as much as a real scan) and written with this crate's writer at gzip
//! level 6. After criterion's measurements the bench runs
//! `tests/oracles/nifti_decode_timing.py` (python3 with nibabel; skipped with a note when
//! missing) and prints both medians and their ratio.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use criterion::{Criterion, criterion_group};
use mtmed3d_stages::io::nifti::{
    ReadOptions, WriteOptions, read_nifti, read_nifti_with, write_nifti,
};
use ndarray::Array4;

const SHAPE: [usize; 4] = [1, 240, 240, 155];

fn brats_like_volume() -> Array4<i16> {
    // A cheap deterministic hash as noise, so the bench needs no RNG state.
    let noise = |x: usize, y: usize, z: usize| {
        let h = (x as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (y as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
            ^ (z as u64).wrapping_mul(0x1656_67B1_9E37_79F9);
        ((h >> 40) % 61) as i16 - 30
    };
    Array4::from_shape_fn(SHAPE, |(_, x, y, z)| {
        let (dx, dy, dz) = (
            (x as f64 - 120.0) / 75.0,
            (y as f64 - 120.0) / 95.0,
            (z as f64 - 77.0) / 70.0,
        );
        let r2 = dx * dx + dy * dy + dz * dz;
        if r2 > 1.0 {
            0
        } else {
            (400.0 + 300.0 * (1.0 - r2) + 80.0 * (x as f64 / 9.0).sin()) as i16 + noise(x, y, z)
        }
    })
}

fn bench_file() -> PathBuf {
    let dir = std::env::temp_dir().join("mtmed3d-nifti-bench");
    std::fs::create_dir_all(&dir).expect("bench directory");
    let path = dir.join("brats_like_t1.nii.gz");
    let affine = [
        [-1.0, 0.0, 0.0, 0.0],
        [0.0, -1.0, 0.0, 239.0],
        [0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    write_nifti(
        &path,
        brats_like_volume().view(),
        &affine,
        &WriteOptions::default(),
    )
    .expect("write bench volume");
    path
}

/// The one-pass path: bytes to scaled f32 directly.
fn decode(path: &Path) -> Array4<f32> {
    let options = ReadOptions {
        to_f32: true,
        ..ReadOptions::default()
    };
    read_nifti_with(path, &options).expect("decode").into_f32()
}

/// Stored int16 first, then a separate conversion.
fn decode_two_step(path: &Path) -> Array4<f32> {
    read_nifti(path).expect("decode").into_f32()
}

fn bench(c: &mut Criterion) {
    let path = bench_file();
    let mut group = c.benchmark_group("nifti");
    group.sample_size(20);
    group.bench_function("decode_240x240x155_i16_gz_to_f32", |b| {
        b.iter(|| decode(&path))
    });
    group.bench_function("decode_240x240x155_i16_gz_then_f32", |b| {
        b.iter(|| decode_two_step(&path))
    });
    group.finish();
}

criterion_group!(benches, bench);

/// Median of `n` decodes after one warm-up, in seconds.
fn median_decode_s(path: &Path, n: usize) -> f64 {
    decode(path);
    let mut times: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(decode(path));
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[n / 2]
}

fn compare_with_nibabel() {
    let path = bench_file();
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let ours = median_decode_s(&path, 15);
    println!("\n{} ({size} bytes gzipped)", path.display());
    println!(
        "mtmed3d read_nifti_with(to_f32) ([1, 240, 240, 155] C-order): median {:.1} ms",
        ours * 1e3
    );
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/oracles/nifti_decode_timing.py");
    let python = std::env::var("MTMED3D_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg(&script)
        .arg(&path)
        .arg("15")
        .output();
    match out {
        Ok(out) if out.status.success() => {
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("timing script prints JSON");
            let f = v["fdata"]["median_s"].as_f64().unwrap_or(f64::NAN);
            let c = v["c_order"]["median_s"].as_f64().unwrap_or(f64::NAN);
            println!(
                "nibabel {} get_fdata(float32) (F-order view): median {:.1} ms",
                v["nibabel"],
                f * 1e3
            );
            println!(
                "nibabel + np.ascontiguousarray (C-order, as ours): median {:.1} ms",
                c * 1e3
            );
            println!(
                "ratio nibabel / mtmed3d: {:.2}x (F-order), {:.2}x (C-order)",
                f / ours,
                c / ours
            );
        }
        Ok(out) => println!(
            "nibabel timing skipped: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => {
            println!("nibabel timing skipped: cannot run {python}: {e} (pip install nibabel numpy)")
        }
    }
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    compare_with_nibabel();
}
