//! Generates synthetic cases and writes PNGs of the axial, coronal and sagittal slices through each
//! tumour centre (radiological display: the patient's left on the right of the image), with the time
//! each case took.
//!
//! `cargo run -p mtmed3d-stages --example phantom_slices -- [X,Y,Z] [first_index] [count] [out_dir | -]`

use flate2::Compression;
use flate2::Crc;
use flate2::write::ZlibEncoder;
use mtmed3d_stages::io::phantom::{PhantomConfig, generate_case};
use ndarray::{Array2, Array3, Axis, s};
use std::io::Write;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let shape: Vec<usize> = args
        .get(1)
        .map(|s| {
            s.split(',')
                .map(|v| v.parse().expect("shape like 240,240,155"))
                .collect()
        })
        .unwrap_or_else(|| vec![240, 240, 155]);
    let first: usize = args.get(2).map(|s| s.parse().expect("index")).unwrap_or(0);
    let count: usize = args.get(3).map(|s| s.parse().expect("count")).unwrap_or(1);
    let out_dir = args
        .get(4)
        .cloned()
        .unwrap_or_else(|| "phantom_slices".into());
    // "-" only times generation.
    let write = out_dir != "-";
    if write {
        std::fs::create_dir_all(&out_dir).expect("create output directory");
    }
    let config = PhantomConfig {
        shape: [shape[0], shape[1], shape[2]],
        ..Default::default()
    };

    let mut total = 0.0;
    for index in first..first + count {
        let t = Instant::now();
        let case = generate_case(&config, 42, index);
        let dt = t.elapsed().as_secs_f64();
        total += dt;
        let tc = case.seg.iter().filter(|&&l| l == 1 || l == 4).count();
        let et = case.seg.iter().filter(|&&l| l == 4).count();
        let wt = case.seg.iter().filter(|&&l| l != 0).count();
        let voxel_ml = config.spacing.iter().product::<f64>() / 1000.0;
        println!(
            "{} {} {:?} {:.3}s  WT {:.1} ml  TC {:.1} ml  ET/TC {:.2}  centre {:?}",
            case.id,
            case.grade.as_str(),
            case.tumour.hemisphere,
            dt,
            wt as f64 * voxel_ml,
            tc as f64 * voxel_ml,
            et as f64 / tc.max(1) as f64,
            case.tumour.centre_voxel.map(|v| v.round())
        );
        let c = case.tumour.centre_voxel.map(|v| v.round() as usize);
        if !write {
            continue;
        }
        write_montage(
            &format!("{out_dir}/{}", case.id),
            &case.modalities,
            &case.seg,
            c,
        );
    }
    println!(
        "mean generation time {:.3}s over {count} case(s)",
        total / count as f64
    );
}

/// The three orthogonal slices of `v` through `c`, oriented for display (rows top to bottom).
fn slices<T: Copy>(v: &Array3<T>, c: [usize; 3]) -> [Array2<T>; 3] {
    // Axial: columns = axis 0 (towards the left), rows = axis 1 (anterior at the top).
    let axial = v.index_axis(Axis(2), c[2]).t().to_owned();
    // Coronal and sagittal: superior at the top.
    let coronal = v
        .index_axis(Axis(1), c[1])
        .slice(s![.., ..;-1])
        .t()
        .to_owned();
    let sagittal = v
        .index_axis(Axis(0), c[0])
        .slice(s![.., ..;-1])
        .t()
        .to_owned();
    [axial, coronal, sagittal]
}

/// Writes one PNG per view (axial, coronal, sagittal), each a 3×2 grid: t1, t1ce, t2 / flair, labels
/// over t1ce.
fn write_montage(stem: &str, modalities: &[Array3<f32>; 4], seg: &Array3<u8>, c: [usize; 3]) {
    let tops: Vec<f32> = modalities
        .iter()
        .map(|vol| {
            let mut v: Vec<f32> = vol.iter().copied().filter(|&v| v > 0.0).collect();
            v.sort_by(f32::total_cmp);
            v.get(v.len() * 995 / 1000).copied().unwrap_or(1.0).max(1.0)
        })
        .collect();
    let mod_slices: Vec<[Array2<f32>; 3]> = modalities.iter().map(|v| slices(v, c)).collect();
    let seg_slices = slices(seg, c);
    for (view, name) in ["axial", "coronal", "sagittal"].iter().enumerate() {
        let (h, w) = seg_slices[view].dim();
        let (width, height) = (3 * w, 2 * h);
        let mut img = vec![0u8; width * height * 3];
        let mut put = |tile: usize, y: usize, x: usize, rgb: [u8; 3]| {
            let o = (((tile / 3) * h + y) * width + (tile % 3) * w + x) * 3;
            img[o..o + 3].copy_from_slice(&rgb);
        };
        for m in 0..4 {
            for ((y, x), &v) in mod_slices[m][view].indexed_iter() {
                let g = (v / tops[m] * 255.0).clamp(0.0, 255.0) as u8;
                put(m, y, x, [g, g, g]);
            }
        }
        for ((y, x), &l) in seg_slices[view].indexed_iter() {
            let g = (mod_slices[1][view][(y, x)] / tops[1] * 160.0).clamp(0.0, 160.0) as u8;
            let rgb = match l {
                1 => [220, 40, 40],
                2 => [40, 200, 40],
                4 => [240, 220, 40],
                _ => [g, g, g],
            };
            put(4, y, x, rgb);
        }
        write_png(&format!("{stem}_{name}.png"), width, height, &img);
    }
}

fn write_png(path: &str, width: usize, height: usize, rgb: &[u8]) {
    let mut raw = Vec::with_capacity((width * 3 + 1) * height);
    for row in rgb.chunks(width * 3) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    let mut z = ZlibEncoder::new(Vec::new(), Compression::fast());
    z.write_all(&raw).expect("compress");
    let idat = z.finish().expect("compress");
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&(width as u32).to_be_bytes());
    ihdr.extend_from_slice(&(height as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [(b"IHDR", &ihdr), (b"IDAT", &idat), (b"IEND", &Vec::new())] {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = Crc::new();
        crc.update(kind);
        crc.update(data);
        png.extend_from_slice(kind);
        png.extend_from_slice(data);
        png.extend_from_slice(&crc.sum().to_be_bytes());
    }
    std::fs::write(path, png).expect("write png");
}
