//! The reader, writer and reorientation against nibabel, on the real NIfTI files shipped in
//! nibabel's package and on files written here. Expected values come from
//! `tests/oracles/nifti_oracle.py`; arrays are compared whole.
//!
//! Tolerances: affines 1e-5 (absolute, relative above 1); integer voxels exact; float voxels
//! 1e-6 relative (our f32 against nibabel's float64 scaling).

mod common;

use std::path::PathBuf;

use common::*;
use mtmed3d_stages::io::nifti::{
    DataType, NiftiElement, NiftiErrorKind, NiftiImage, NiftiVersion, NonFinitePolicy, ReadOptions,
    VoxelData, WriteOptions, read_header, read_nifti, read_nifti_with, write_nifti,
};
use mtmed3d_stages::spatial::orientation::{
    Affine, AxCodes, aff2axcodes, io_orientation, matmul, reorient,
};
use ndarray::Array4;

const KEEP: ReadOptions = ReadOptions {
    non_finite: NonFinitePolicy::Keep,
    to_f32: false,
    max_data_bytes: 1 << 32,
};

/// Compare our reading of `path` with nibabel's dump of the same file.
fn check_against_nibabel(path: &PathBuf, d: &Dumped) -> NiftiImage {
    let img = read_nifti_with(path, &KEEP).unwrap_or_else(|e| panic!("{e}"));
    let what = path.display().to_string();

    // Stored values, as nibabel's dataobj.get_unscaled().
    let raw = d.array("raw");
    let (ours, dtype) = voxels_f64(&img.data);
    assert_eq!(img.shape(), raw.shape, "{what}: shape");
    assert_eq!(dtype, raw.dtype, "{what}: dtype");
    assert_values(&ours, &raw.values, 0.0, &format!("{what} raw"));

    // The affine and zooms nibabel reports.
    assert_affine_close(&img.affine(), &d.affine("affine"), 1e-9, &what);
    let zooms: Vec<f64> = d.meta["zooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(
        img.spacing().to_vec(),
        zooms[..3].to_vec(),
        "{what}: spacing"
    );
    let codes: Vec<Option<char>> = d.meta["axcodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().and_then(|s| s.chars().next()))
        .collect();
    assert_eq!(
        aff2axcodes(&img.affine()).to_vec(),
        codes,
        "{what}: axcodes"
    );

    // Scaled values, as np.asanyarray(dataobj).
    let scaled = d.array("scaled");
    let f: Vec<f64> = img.to_f32().iter().map(|&v| v as f64).collect();
    assert_values(&f, &scaled.values, 1e-6, &format!("{what} scaled"));
    let slope = d.meta["slope"].as_f64().unwrap();
    let inter = d.meta["inter"].as_f64().unwrap();
    let expected_scaling = if (slope, inter) == (1.0, 0.0) {
        None
    } else {
        Some((slope, inter))
    };
    assert_eq!(img.scaling(), expected_scaling, "{what}: scaling");

    // The one-pass f32 read gives the same bits, and a header that says so.
    let fused = read_nifti_with(
        path,
        &ReadOptions {
            to_f32: true,
            ..KEEP
        },
    )
    .unwrap();
    assert_eq!(fused.data.datatype(), DataType::F32, "{what}");
    assert_eq!(fused.scaling(), None, "{what}");
    assert_eq!(fused.non_finite_count(), img.non_finite_count(), "{what}");
    assert_eq!(
        fused.into_f32().mapv(f32::to_bits),
        img.to_f32().mapv(f32::to_bits),
        "{what}: to_f32 read"
    );

    // Extensions: codes and sizes.
    let ext: Vec<(i32, usize)> = d.meta["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e[0].as_i64().unwrap() as i32,
                e[1].as_u64().unwrap() as usize,
            )
        })
        .collect();
    let ours_ext: Vec<(i32, usize)> = img
        .header
        .extensions
        .iter()
        .map(|e| (e.code, e.data.len()))
        .collect();
    assert_eq!(ours_ext, ext, "{what}: extensions");

    // as_closest_canonical: shape, affine, and voxels, both stored and scaled.
    let canon = d.array("canonical");
    let canon_affine = d.affine("canonical_affine");
    let (values, shape, affine) = reorient_voxels(&img.data, &img.affine(), AxCodes::RAS);
    assert_eq!(shape, canon.shape, "{what}: canonical shape");
    assert_affine_close(&affine, &canon_affine, 1e-5, &format!("{what} canonical"));
    if img.scaling().is_none() {
        assert_values(&values, &canon.values, 0.0, &format!("{what} canonical"));
    }
    let r = reorient(img.to_f32().view(), &img.affine(), AxCodes::RAS).unwrap();
    let f: Vec<f64> = r.array.iter().map(|&v| v as f64).collect();
    assert_values(&f, &canon.values, 1e-6, &format!("{what} canonical f32"));
    // And back, bit for bit (NaN included).
    let back = r.record.undo(r.array.view());
    assert_eq!(
        back.mapv(f32::to_bits),
        img.to_f32().mapv(f32::to_bits),
        "{what}: undo"
    );
    img
}

fn nibabel_file(name: &str) -> Option<(PathBuf, tempfile::TempDir, Dumped)> {
    let path = datadir()?.join(name);
    let (tmp, mut dumped) = dump(std::slice::from_ref(&path))?;
    Some((path, tmp, dumped.remove(0)))
}

#[test]
fn anatomical_big_endian_int16_las() {
    let Some((path, _tmp, d)) = nibabel_file("anatomical.nii") else {
        return;
    };
    let img = check_against_nibabel(&path, &d);
    assert_eq!(img.shape(), [1, 33, 41, 25]);
    assert_eq!(
        img.header.endianness,
        mtmed3d_stages::io::nifti::Endianness::Big
    );
    assert_eq!(
        aff2axcodes(&img.affine()),
        [Some('L'), Some('A'), Some('S')]
    );
}

#[test]
fn functional_scaled_4d() {
    let Some((path, _tmp, d)) = nibabel_file("functional.nii") else {
        return;
    };
    let img = check_against_nibabel(&path, &d);
    assert_eq!(img.shape(), [20, 17, 21, 3]);
    let (slope, inter) = img.scaling().expect("functional.nii is scaled");
    assert!(
        (slope - 0.0754).abs() < 1e-4 && (inter - 3100.76).abs() < 1e-2,
        "{slope} {inter}"
    );
}

#[test]
fn example4d_oblique_with_extensions_gz() {
    let Some((path, _tmp, d)) = nibabel_file("example4d.nii.gz") else {
        return;
    };
    let img = check_against_nibabel(&path, &d);
    assert_eq!(img.shape(), [2, 128, 96, 24]);
    assert_eq!(img.header.vox_offset, 416);
    assert_eq!(img.header.extensions.len(), 2);
    // Oblique: an off-diagonal entry survives reorientation.
    assert!(img.affine()[1][2].abs() > 0.3);
}

#[test]
fn example_nifti2_gz() {
    let Some((path, _tmp, d)) = nibabel_file("example_nifti2.nii.gz") else {
        return;
    };
    let img = check_against_nibabel(&path, &d);
    assert_eq!(img.header.version, NiftiVersion::Nifti2);
    assert_eq!(img.shape(), [2, 32, 20, 12]);
}

#[test]
fn reoriented_anat_moved_big_endian_f32() {
    let Some((path, _tmp, d)) = nibabel_file("reoriented_anat_moved.nii") else {
        return;
    };
    let img = check_against_nibabel(&path, &d);
    assert_eq!(img.data.datatype(), DataType::F32);
    assert_eq!(img.shape(), [1, 21, 26, 22]);
}

#[test]
fn resampled_anat_moved_big_endian_f32() {
    let Some((path, _tmp, d)) = nibabel_file("resampled_anat_moved.nii") else {
        return;
    };
    let img = check_against_nibabel(&path, &d);
    assert_eq!(img.shape(), [1, 17, 21, 3]);
    // This file has NaN voxels: count them with nibabel, then check each policy.
    let nans = d.array("raw").values.iter().filter(|v| v.is_nan()).count();
    assert!(nans > 0);
    assert_eq!(img.non_finite_count(), nans);
    let replaced = read_nifti(&path).unwrap();
    assert_eq!(replaced.non_finite_count(), nans);
    let f = replaced.to_f32();
    assert!(f.iter().all(|v| v.is_finite()));
    assert_eq!(
        f.iter().filter(|&&v| v == 0.0).count(),
        nans + img.to_f32().iter().filter(|&&v| v == 0.0).count()
    );
    let strict = ReadOptions {
        non_finite: NonFinitePolicy::Error,
        ..ReadOptions::default()
    };
    let err = read_nifti_with(&path, &strict).unwrap_err();
    match err.kind() {
        NiftiErrorKind::NonFinite { count, first } => {
            assert_eq!(*count, nans);
            assert_eq!(*first, [0, 0, 0, 0]);
        }
        other => panic!("{other}"),
    }
    assert!(
        err.to_string().starts_with(&format!(
            "{}: {nans} NaN or infinite voxels",
            path.display()
        )),
        "{err}"
    );
}

#[test]
fn standard_sform_only_uint8() {
    let Some((path, _tmp, d)) = nibabel_file("standard.nii.gz") else {
        return;
    };
    let img = check_against_nibabel(&path, &d);
    assert_eq!((img.header.qform_code, img.header.sform_code), (0, 2));
    assert_eq!(img.shape(), [1, 4, 5, 7]);
    assert_eq!(img.into_u8_labels().unwrap().shape(), &[1, 4, 5, 7]);
}

#[test]
fn header_only_pair_files() {
    let Some(dir) = datadir() else { return };
    // nibabel ships the .hdr of these pairs without the .img.
    for (name, version) in [
        ("nifti1.hdr", NiftiVersion::Nifti1),
        ("nifti2.hdr", NiftiVersion::Nifti2),
    ] {
        let h = read_header(dir.join(name)).unwrap();
        assert_eq!(h.version, version);
        assert!(h.pair);
        assert_eq!(h.shape().unwrap(), [1, 91, 109, 91]);
        assert_eq!(h.datatype, DataType::I16);
        let err = read_nifti(dir.join(name)).unwrap_err();
        assert!(
            err.path()
                .to_string_lossy()
                .ends_with(&name.replace(".hdr", ".img")),
            "{err}"
        );
        assert!(err.to_string().contains("cannot open"), "{err}");
    }
}

#[test]
fn io_orientation_matches_nibabel_on_random_affines() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().display().to_string();
    if run_oracle(&["ornt", &dir, "400", "20261128"]).is_none() {
        return;
    }
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("ornt.json")).unwrap())
            .unwrap();
    let cases = cases.as_array().unwrap();
    assert_eq!(cases.len(), 400);
    let mut dropped = 0;
    for (n, case) in cases.iter().enumerate() {
        let affine = affine_of(&case["affine"]);
        let expected: Vec<Option<(usize, bool)>> = case["io_orientation"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                row[0]
                    .as_u64()
                    .map(|a| (a as usize, row[1].as_i64() == Some(-1)))
            })
            .collect();
        let got: Vec<Option<(usize, bool)>> = io_orientation(&affine)
            .iter()
            .map(|r| r.map(|r| (r.axis, r.flip)))
            .collect();
        assert_eq!(got, expected, "case {n}: {affine:?}");
        dropped += got.iter().filter(|r| r.is_none()).count();
    }
    assert!(dropped > 0, "the cases include rank-deficient affines");
}

/// Affines exercising every branch: permuted, flipped, oblique, sheared.
fn test_affines() -> Vec<(&'static str, Affine)> {
    let (c, s) = (0.35f64.cos(), 0.35f64.sin());
    vec![
        (
            "LPS",
            [
                [-1.0, 0.0, 0.0, 120.0],
                [0.0, -1.0, 0.0, 120.0],
                [0.0, 0.0, 1.0, -77.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
        ),
        (
            "PIR",
            [
                [0.0, 0.0, 1.5, -10.0],
                [-0.9, 0.0, 0.0, 20.0],
                [0.0, -2.5, 0.0, 30.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
        ),
        (
            // ASL rotated by 0.35 rad about x.
            "oblique ASL",
            [
                [0.0, 0.0, -2.0, 33.3],
                [3.0 * c, -1.25 * s, 0.0, -44.4],
                [3.0 * s, 1.25 * c, 0.0, 55.5],
                [0.0, 0.0, 0.0, 1.0],
            ],
        ),
        (
            "sheared",
            [
                [1.1, 0.2, 0.05, 1.0],
                [0.1, -0.9, 0.3, 2.0],
                [-0.02, 0.1, 1.7, 3.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
        ),
    ]
}

fn ramp<T: NiftiElement>(shape: [usize; 4], f: impl Fn(usize) -> T) -> Array4<T> {
    let mut i = 0;
    Array4::from_shape_simple_fn(shape, || {
        i += 1;
        f(i)
    })
}

#[test]
fn written_files_read_back_by_nibabel() {
    let tmp = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    let mut expected: Vec<(VoxelData, Affine, &str)> = Vec::new();
    let shapes = [[1, 7, 6, 5], [3, 5, 4, 9]];
    for (k, (label, affine)) in test_affines().into_iter().enumerate() {
        let shape = shapes[k % 2];
        let datas = vec![
            VoxelData::U8(ramp(shape, |i| (i * 7 % 256) as u8)),
            VoxelData::I8(ramp(shape, |i| (i as i64 * 5 % 256 - 128) as i8)),
            VoxelData::I16(ramp(shape, |i| (i as i64 * 977 % 65536 - 32768) as i16)),
            VoxelData::U16(ramp(shape, |i| (i * 1009 % 65536) as u16)),
            VoxelData::I32(ramp(shape, |i| i as i32 * -100_003)),
            VoxelData::U32(ramp(shape, |i| i as u32 * 4_000_037)),
            VoxelData::I64(ramp(shape, |i| i as i64 * -1_000_000_007)),
            VoxelData::U64(ramp(shape, |i| i as u64 * 1_000_000_009)),
            VoxelData::F32(ramp(shape, |i| (i as f32).sqrt() * -3.7e-3)),
            VoxelData::F64(ramp(shape, |i| (i as f64).ln() * 1.0e10)),
        ];
        for (j, data) in datas.into_iter().enumerate() {
            let ext = if j % 2 == 0 { "nii.gz" } else { "nii" };
            let path = tmp.path().join(format!("w{k}_{j}.{ext}"));
            let opts = WriteOptions::default();
            match &data {
                VoxelData::U8(a) => write_nifti(&path, a.view(), &affine, &opts),
                VoxelData::I8(a) => write_nifti(&path, a.view(), &affine, &opts),
                VoxelData::I16(a) => write_nifti(&path, a.view(), &affine, &opts),
                VoxelData::U16(a) => write_nifti(&path, a.view(), &affine, &opts),
                VoxelData::I32(a) => write_nifti(&path, a.view(), &affine, &opts),
                VoxelData::U32(a) => write_nifti(&path, a.view(), &affine, &opts),
                VoxelData::I64(a) => write_nifti(&path, a.view(), &affine, &opts),
                VoxelData::U64(a) => write_nifti(&path, a.view(), &affine, &opts),
                VoxelData::F32(a) => write_nifti(&path, a.view(), &affine, &opts),
                VoxelData::F64(a) => write_nifti(&path, a.view(), &affine, &opts),
            }
            .unwrap();
            paths.push(path);
            expected.push((data, affine, label));
        }
    }
    let Some((_t, dumped)) = dump(&paths) else {
        return;
    };
    for ((path, d), (data, affine, label)) in paths.iter().zip(&dumped).zip(&expected) {
        let what = format!("{label} {}", path.display());
        let raw = d.array("raw");
        let (ours, dtype) = voxels_f64(data);
        assert_eq!(raw.shape, data.shape(), "{what}");
        assert_eq!(raw.dtype, dtype, "{what}");
        assert_values(&ours, &raw.values, 0.0, &what);
        // sform: the affine rounded to f32.
        assert_affine_close(&d.affine("affine"), affine, 1e-6, &what);
        // qform: nibabel's reconstruction equals the affine when there is no shear.
        if *label != "sheared" {
            assert_affine_close(&d.affine("qform"), affine, 1e-5, &format!("{what} qform"));
        }
        assert_eq!(
            (d.meta["qform_code"].as_i64(), d.meta["sform_code"].as_i64()),
            (Some(1), Some(1))
        );
        // And our reorientation of what we wrote equals nibabel's canonical image of the file.
        let canon = d.array("canonical");
        let (values, shape, ras_affine) = reorient_voxels(data, affine, AxCodes::RAS);
        assert_eq!(shape, canon.shape, "{what}");
        assert_values(&values, &canon.values, 0.0, &format!("{what} canonical"));
        assert_affine_close(
            &ras_affine,
            &d.affine("canonical_affine"),
            1e-5,
            &format!("{what} canonical"),
        );
        // Our reader agrees with nibabel too.
        let back = read_nifti(path).unwrap();
        assert_eq!(&back.data, data, "{what}");
        assert_affine_close(&back.affine(), &d.affine("affine"), 0.0, &what);
        assert_affine_close(
            &back.header.qform_affine().unwrap(),
            &d.affine("qform"),
            1e-12,
            &what,
        );
    }
}

#[test]
fn real_file_rewritten_keeps_data_affine_and_extensions() {
    let Some(dir) = datadir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let sources = [
        "example4d.nii.gz",
        "functional.nii",
        "anatomical.nii",
        "example_nifti2.nii.gz",
    ];
    let mut outs = Vec::new();
    let mut originals = Vec::new();
    for name in sources {
        let img = read_nifti(dir.join(name)).unwrap();
        let out = tmp.path().join(format!("re_{name}"));
        img.write(&out, 1).unwrap();
        outs.push(out);
        originals.push(dir.join(name));
    }
    let Some((_a, ours)) = dump(&outs) else {
        return;
    };
    let Some((_b, theirs)) = dump(&originals) else {
        return;
    };
    for ((o, t), name) in ours.iter().zip(&theirs).zip(sources) {
        assert_values(&o.array("raw").values, &t.array("raw").values, 0.0, name);
        assert_values(
            &o.array("scaled").values,
            &t.array("scaled").values,
            0.0,
            name,
        );
        assert_affine_close(&o.affine("affine"), &t.affine("affine"), 0.0, name);
        assert_eq!(o.meta["extensions"], t.meta["extensions"], "{name}");
        assert_eq!(o.meta["sizeof_hdr"], 348, "{name}: written as NIfTI-1");
    }
}

#[test]
fn hdr_img_pair_reads_like_single_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, affine) = test_affines()[1];
    let data = ramp([2, 6, 5, 4], |i| i as i16 - 40);
    let single = tmp.path().join("img.nii");
    write_nifti(&single, data.view(), &affine, &WriteOptions::default()).unwrap();
    // Split the single file into a pair: magic "ni1", data at offset 0 of the .img.
    let bytes = std::fs::read(&single).unwrap();
    let mut hdr = bytes[..352].to_vec();
    hdr[344..348].copy_from_slice(b"ni1\0");
    hdr[108..112].copy_from_slice(&0f32.to_le_bytes());
    std::fs::write(tmp.path().join("pair.hdr"), &hdr).unwrap();
    std::fs::write(tmp.path().join("pair.img"), &bytes[352..]).unwrap();
    for name in ["pair.hdr", "pair.img"] {
        let img = read_nifti(tmp.path().join(name)).unwrap();
        assert_eq!(img.data, VoxelData::I16(data.clone()), "{name}");
        assert!(img.header.pair);
        assert_affine_close(&img.affine(), &affine, 1e-6, name);
    }
    let Some((_d, dumped)) = dump(&[tmp.path().join("pair.hdr")]) else {
        return;
    };
    assert_values(
        &voxels_f64(&VoxelData::I16(data)).0,
        &dumped[0].array("raw").values,
        0.0,
        "pair",
    );
}

#[test]
fn reorient_then_inverse_affine_is_original() {
    for (label, affine) in test_affines() {
        let shape = [2, 7, 6, 5];
        let data = ramp(shape, |i| i as f32);
        for target in ["RAS", "LPS", "IRP"] {
            let r = reorient(data.view(), &affine, target.parse().unwrap()).unwrap();
            let back_affine = matmul(
                &r.affine,
                &r.record
                    .transform
                    .inverse()
                    .inv_ornt_aff(r.record.reoriented_shape()),
            );
            assert_affine_close(&back_affine, &affine, 1e-12, label);
            assert_eq!(r.record.undo(r.array.view()), data, "{label} {target}");
        }
    }
}
