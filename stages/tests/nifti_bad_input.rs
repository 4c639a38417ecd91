//! Broken, hostile and unusual files: each must give the right error kind, with a message that
//! starts with the file's path, and never panic or allocate what the file does not hold.

use std::io::Write;
use std::path::{Path, PathBuf};

use mtmed3d_stages::io::nifti::{
    NiftiError, NiftiErrorKind, NiftiVersion, NonFinitePolicy, ReadOptions, Section, VoxelData,
    WriteOptions, open_nifti, read_header, read_nifti, read_nifti_bytes, read_nifti_with,
    write_nifti,
};
use mtmed3d_stages::spatial::orientation::IDENTITY_AFFINE;
use ndarray::Array4;

fn assert_names_file(err: &NiftiError, path: &Path) {
    assert_eq!(err.path(), path, "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("{}: ", path.display())),
        "{err}"
    );
}

/// A 1×40×30×20 int16 volume with a recognisable pattern, as .nii or .nii.gz bytes.
fn volume_bytes(dir: &Path, gz: bool) -> Vec<u8> {
    let a = Array4::from_shape_fn((1, 40, 30, 20), |(_, x, y, z)| {
        ((x * 7 + y * 13 + z * 31) % 1000) as i16
    });
    let path = dir.join(if gz { "v.nii.gz" } else { "v.nii" });
    write_nifti(&path, a.view(), &IDENTITY_AFFINE, &WriteOptions::default()).unwrap();
    std::fs::read(path).unwrap()
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A NIfTI-2 single-file header (540 bytes + 4-byte extender) with the given dims and type.
fn nifti2_header(dims: [i64; 8], datatype: i16, bitpix: i16) -> Vec<u8> {
    let mut b = vec![0u8; 544];
    b[0..4].copy_from_slice(&540i32.to_le_bytes());
    b[4..12].copy_from_slice(b"n+2\0\r\n\x1a\n");
    b[12..14].copy_from_slice(&datatype.to_le_bytes());
    b[14..16].copy_from_slice(&bitpix.to_le_bytes());
    for (i, d) in dims.iter().enumerate() {
        b[16 + 8 * i..24 + 8 * i].copy_from_slice(&d.to_le_bytes());
    }
    for i in 0..8 {
        b[104 + 8 * i..112 + 8 * i].copy_from_slice(&1f64.to_le_bytes());
    }
    b[168..176].copy_from_slice(&544i64.to_le_bytes());
    b
}

#[test]
fn missing_file() {
    let path = PathBuf::from("/nonexistent/brats/x_t1.nii.gz");
    let err = read_nifti(&path).unwrap_err();
    assert_names_file(&err, &path);
    match err.kind() {
        NiftiErrorKind::Open(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("cannot open"), "{err}");
}

#[test]
fn truncated_gzip_in_voxel_data() {
    let tmp = tempfile::tempdir().unwrap();
    let full = volume_bytes(tmp.path(), true);
    let path = write_file(tmp.path(), "x_t1.nii.gz", &full[..full.len() / 2]);
    let err = read_nifti(&path).unwrap_err();
    assert_names_file(&err, &path);
    match err.kind() {
        NiftiErrorKind::Truncated {
            section,
            expected,
            offset,
            found,
            gzip,
        } => {
            assert_eq!(*section, Section::VoxelData);
            assert_eq!((*expected, *offset), (40 * 30 * 20 * 2, 352));
            assert!(*found < *expected);
            assert!(*gzip);
        }
        other => panic!("{other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("truncated: expected 48000 bytes of voxel data after offset 352, found")
            && msg.ends_with("(the gzip stream ends early)"),
        "{msg}"
    );
}

#[test]
fn truncated_gzip_in_header_and_trailer() {
    let tmp = tempfile::tempdir().unwrap();
    let full = volume_bytes(tmp.path(), true);
    // Cut inside the compressed header.
    let path = write_file(tmp.path(), "head.nii.gz", &full[..40]);
    let err = read_nifti(&path).unwrap_err();
    assert_names_file(&err, &path);
    assert!(
        matches!(
            err.kind(),
            NiftiErrorKind::Truncated {
                section: Section::Header,
                gzip: true,
                ..
            }
        ),
        "{err}"
    );
    // Only the 8-byte CRC/size trailer missing: all voxels decode but the stream is unverified.
    let path = write_file(tmp.path(), "trailer.nii.gz", &full[..full.len() - 8]);
    let err = read_nifti(&path).unwrap_err();
    assert_names_file(&err, &path);
    assert!(matches!(err.kind(), NiftiErrorKind::Gzip(_)), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn corrupt_gzip_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = volume_bytes(tmp.path(), true);
    let n = bytes.len();
    for b in &mut bytes[n / 2..n / 2 + 64] {
        *b ^= 0x5a;
    }
    let path = write_file(tmp.path(), "corrupt.nii.gz", &bytes);
    let err = read_nifti(&path).unwrap_err();
    assert_names_file(&err, &path);
    // Flipped bits give either an invalid deflate stream or a checksum mismatch; either way
    // the image must not be returned.
    assert!(
        matches!(
            err.kind(),
            NiftiErrorKind::Gzip(_) | NiftiErrorKind::Truncated { gzip: true, .. }
        ),
        "{err}"
    );
}

#[test]
fn truncated_plain_file() {
    let tmp = tempfile::tempdir().unwrap();
    let full = volume_bytes(tmp.path(), false);
    let path = write_file(tmp.path(), "x_t1.nii", &full[..352 + 1024]);
    let err = read_nifti(&path).unwrap_err();
    assert_names_file(&err, &path);
    assert_eq!(
        err.to_string(),
        format!(
            "{}: truncated: expected 48000 bytes of voxel data after offset 352, found 1024",
            path.display()
        )
    );
    // Inside the header.
    let path = write_file(tmp.path(), "short.nii", &full[..200]);
    let err = read_nifti(&path).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            NiftiErrorKind::Truncated {
                section: Section::Header,
                expected: 348,
                found: 200,
                ..
            }
        ),
        "{err}"
    );
    // Empty file.
    let path = write_file(tmp.path(), "empty.nii", &[]);
    let err = read_nifti(&path).unwrap_err();
    assert_names_file(&err, &path);
    assert!(
        matches!(err.kind(), NiftiErrorKind::Truncated { found: 0, .. }),
        "{err}"
    );
}

#[test]
fn garbage_header() {
    let tmp = tempfile::tempdir().unwrap();
    let garbage: Vec<u8> = (0..2000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let path = write_file(tmp.path(), "garbage.nii", &garbage);
    let err = read_nifti(&path).unwrap_err();
    assert_names_file(&err, &path);
    assert!(matches!(err.kind(), NiftiErrorKind::NotNifti(_)), "{err}");
    assert!(err.to_string().contains("sizeof_hdr is"), "{err}");
    // Garbage inside a valid gzip stream.
    let path = write_file(tmp.path(), "garbage.nii.gz", &gzip(&garbage));
    let err = read_nifti(&path).unwrap_err();
    assert!(matches!(err.kind(), NiftiErrorKind::NotNifti(_)), "{err}");
}

#[test]
fn wrong_sizeof_hdr_and_magic() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = volume_bytes(tmp.path(), false);
    bytes[0..4].copy_from_slice(&352i32.to_le_bytes());
    let path = write_file(tmp.path(), "sizeof.nii", &bytes);
    let err = read_nifti(&path).unwrap_err();
    assert_names_file(&err, &path);
    assert!(matches!(err.kind(), NiftiErrorKind::NotNifti(_)), "{err}");
    assert!(
        err.to_string()
            .contains("sizeof_hdr is 352 (expected 348 or 540 in either byte order)"),
        "{err}"
    );

    let mut bytes = volume_bytes(tmp.path(), false);
    bytes[344..348].copy_from_slice(&[0, 0, 0, 0]);
    let path = write_file(tmp.path(), "analyze.nii", &bytes);
    let err = read_nifti(&path).unwrap_err();
    assert!(matches!(err.kind(), NiftiErrorKind::NotNifti(_)), "{err}");
    assert!(err.to_string().contains("Analyze"), "{err}");
}

#[test]
fn absurd_dims_fail_without_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    // NIfTI-1: 32767³ float64 (281 TB) in a 48 kB file.
    let mut bytes = volume_bytes(tmp.path(), false);
    for (i, d) in [3i16, 32767, 32767, 32767].iter().enumerate() {
        bytes[40 + 2 * i..42 + 2 * i].copy_from_slice(&d.to_le_bytes());
    }
    bytes[70..72].copy_from_slice(&64i16.to_le_bytes());
    let path = write_file(tmp.path(), "huge.nii", &bytes);
    let err = read_nifti(&path).unwrap_err();
    assert_names_file(&err, &path);
    assert!(
        matches!(err.kind(), NiftiErrorKind::TooLarge { .. }),
        "{err}"
    );
    // Within the limit but beyond the file: a truncation, found before reading anything.
    let opts = ReadOptions {
        max_data_bytes: u64::MAX,
        ..ReadOptions::default()
    };
    let err = read_nifti_with(&path, &opts).unwrap_err();
    assert!(
        matches!(err.kind(), NiftiErrorKind::Truncated { section: Section::VoxelData, expected, .. } if *expected == 32767u64.pow(3) * 8),
        "{err}"
    );

    // NIfTI-2: dims whose product overflows 64 bits.
    let h = nifti2_header([3, 1 << 40, 1 << 40, 1 << 40, 1, 1, 1, 1], 2, 8);
    let path = write_file(tmp.path(), "overflow.nii", &h);
    let err = read_nifti(&path).unwrap_err();
    assert_names_file(&err, &path);
    assert!(
        matches!(err.kind(), NiftiErrorKind::InvalidHeader(_)),
        "{err}"
    );
    assert!(err.to_string().contains("overflow"), "{err}");

    // A gzip stream whose header promises 8 GB of u8: the stream ends long before, and the
    // reader must not have reserved the 8 GB up front.
    let mut h = nifti2_header([3, 2000, 2000, 2000, 1, 1, 1, 1], 2, 8);
    h.extend_from_slice(&[7u8; 1000]);
    let path = write_file(tmp.path(), "bomb.nii.gz", &gzip(&h));
    let err = read_nifti(&path).unwrap_err();
    assert_names_file(&err, &path);
    assert!(
        matches!(
            err.kind(),
            NiftiErrorKind::Truncated {
                expected: 8_000_000_000,
                found: 1000,
                gzip: true,
                ..
            }
        ),
        "{err}"
    );

    // Bad dim counts and sizes.
    for (dims, needle) in [
        ([0i64, 1, 1, 1, 1, 1, 1, 1], "dim[0] is 0"),
        ([8, 1, 1, 1, 1, 1, 1, 1], "dim[0] is 8"),
        ([3, 4, -4, 4, 1, 1, 1, 1], "dim[2] is -4"),
        ([3, 4, 0, 4, 1, 1, 1, 1], "dim[2] is 0"),
        ([6, 2, 2, 2, 1, 3, 4, 1], "at most one of dims 4-7"),
    ] {
        let path = write_file(tmp.path(), "dims.nii", &nifti2_header(dims, 2, 8));
        let err = read_nifti(&path).unwrap_err();
        assert_names_file(&err, &path);
        assert!(err.to_string().contains(needle), "{needle}: {err}");
    }
}

#[test]
fn vox_offset_past_eof_and_inside_header() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = volume_bytes(tmp.path(), false);
    bytes[108..112].copy_from_slice(&1.0e6f32.to_le_bytes());
    let path = write_file(tmp.path(), "offset.nii", &bytes);
    let err = read_nifti(&path).unwrap_err();
    assert_names_file(&err, &path);
    assert!(
        matches!(
            err.kind(),
            NiftiErrorKind::Truncated {
                section: Section::Extensions,
                ..
            }
        ),
        "{err}"
    );
    // The same in a gzip stream.
    let path = write_file(tmp.path(), "offset.nii.gz", &gzip(&bytes));
    let err = read_nifti(&path).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            NiftiErrorKind::Truncated {
                section: Section::Extensions,
                gzip: true,
                ..
            }
        ),
        "{err}"
    );
    // Inside the header.
    bytes[108..112].copy_from_slice(&100f32.to_le_bytes());
    let path = write_file(tmp.path(), "low.nii", &bytes);
    let err = read_nifti(&path).unwrap_err();
    assert!(
        matches!(err.kind(), NiftiErrorKind::InvalidHeader(_)),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("vox_offset 100 is inside the header"),
        "{err}"
    );
}

#[test]
fn unsupported_datatype_and_bad_quaternion() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = volume_bytes(tmp.path(), false);
    bytes[70..72].copy_from_slice(&128i16.to_le_bytes());
    let path = write_file(tmp.path(), "rgb.nii", &bytes);
    let err = read_nifti(&path).unwrap_err();
    assert!(
        matches!(err.kind(), NiftiErrorKind::Unsupported(_)),
        "{err}"
    );
    assert!(
        err.to_string()
            .ends_with("unsupported: datatype 128 (RGB24)"),
        "{err}"
    );

    // qform only (sform_code 0), with b²+c²+d² > 1.
    let mut bytes = volume_bytes(tmp.path(), false);
    bytes[254..256].copy_from_slice(&0i16.to_le_bytes());
    bytes[256..260].copy_from_slice(&0.9f32.to_le_bytes());
    bytes[260..264].copy_from_slice(&0.9f32.to_le_bytes());
    let path = write_file(tmp.path(), "quat.nii", &bytes);
    let err = read_nifti(&path).unwrap_err();
    assert_names_file(&err, &path);
    assert!(err.to_string().contains("b²+c²+d² > 1"), "{err}");
}

#[test]
fn nan_and_inf_voxels() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Array4::from_shape_fn((2, 3, 4, 5), |(c, x, y, z)| (c + x + y + z) as f32);
    a[[0, 1, 2, 3]] = f32::NAN;
    a[[1, 2, 0, 4]] = f32::INFINITY;
    a[[1, 0, 0, 0]] = f32::NEG_INFINITY;
    let path = tmp.path().join("nan.nii.gz");
    write_nifti(&path, a.view(), &IDENTITY_AFFINE, &WriteOptions::default()).unwrap();

    let strict = ReadOptions {
        non_finite: NonFinitePolicy::Error,
        ..ReadOptions::default()
    };
    let err = read_nifti_with(&path, &strict).unwrap_err();
    assert_names_file(&err, &path);
    match err.kind() {
        NiftiErrorKind::NonFinite { count, first } => {
            assert_eq!((*count, *first), (3, [0, 1, 2, 3]))
        }
        other => panic!("{other}"),
    }
    assert!(
        err.to_string()
            .ends_with("3 NaN or infinite voxels (the first at [c, x, y, z] = [0, 1, 2, 3])"),
        "{err}"
    );

    let img = read_nifti(&path).unwrap();
    assert_eq!(img.non_finite_count(), 3);
    let f = img.to_f32();
    assert_eq!(
        (f[[0, 1, 2, 3]], f[[1, 2, 0, 4]], f[[1, 0, 0, 0]]),
        (0.0, 0.0, 0.0)
    );
    assert_eq!(f[[1, 2, 3, 4]], 10.0);

    let keep = ReadOptions {
        non_finite: NonFinitePolicy::Keep,
        ..ReadOptions::default()
    };
    let img = read_nifti_with(&path, &keep).unwrap();
    assert_eq!(img.non_finite_count(), 3);
    assert!(img.to_f32()[[0, 1, 2, 3]].is_nan());
}

#[test]
fn windowed_reads_equal_cropping_the_whole_read_and_scans_see_every_voxel() {
    let tmp = tempfile::tempdir().unwrap();
    // Scaled int16, plain and gzipped (the voxel bytes owned, or borrowed from the inflated
    // file), into a buffer holding stale values that every read must overwrite.
    let a = Array4::from_shape_fn((2, 40, 30, 20), |(c, x, y, z)| {
        if (8..30).contains(&x) && (5..25).contains(&y) && z > 2 {
            ((c * 5 + x * 7 + y * 13 + z * 31) % 1000) as i16 - 500
        } else {
            0
        }
    });
    let options = WriteOptions {
        scaling: Some((0.5, 0.0)),
        ..WriteOptions::default()
    };
    for name in ["w.nii", "w.nii.gz"] {
        let path = tmp.path().join(name);
        write_nifti(&path, a.view(), &IDENTITY_AFFINE, &options).unwrap();
        let whole = read_nifti(&path).unwrap().into_f32().into_dyn();
        let voxels = open_nifti(&path, &ReadOptions::default())
            .unwrap()
            .into_voxels()
            .unwrap();
        assert_eq!(voxels.shape(), [2, 40, 30, 20]);
        let scan = voxels.scan_f32().unwrap();
        assert_eq!(scan.nonzero, Some(([8, 5, 3], [30, 25, 20])), "{name}");
        assert_eq!(scan.non_finite, 0);
        for (start, size) in [
            ([8, 5, 3], [22, 20, 17]),
            ([0, 0, 0], [40, 30, 20]),
            ([-3, 25, 10], [50, 10, 15]),
            ([41, 0, 0], [4, 4, 4]),
        ] {
            let expected = mtmed3d_stages::spatial::crop::crop_array(&whole, start, size);
            let mut out = vec![f32::NAN; expected.len()];
            let replaced = voxels.read_f32_window_into(start, size, &mut out).unwrap();
            assert_eq!(replaced, 0);
            assert_eq!(
                out,
                expected.as_slice().unwrap(),
                "{name} {start:?} {size:?}"
            );
        }
    }
    // A NaN outside the window still fails a strict read; replaced, it is no foreground.
    let mut f = Array4::<f32>::zeros((1, 10, 10, 10));
    f[[0, 4, 4, 4]] = 2.0;
    f[[0, 9, 0, 1]] = f32::NAN;
    let path = tmp.path().join("nan.nii.gz");
    write_nifti(&path, f.view(), &IDENTITY_AFFINE, &WriteOptions::default()).unwrap();
    let open = |policy| {
        let options = ReadOptions {
            non_finite: policy,
            ..ReadOptions::default()
        };
        open_nifti(&path, &options).unwrap().into_voxels().unwrap()
    };
    let err = open(NonFinitePolicy::Error).scan_f32().unwrap_err();
    assert_names_file(&err, &path);
    match err.kind() {
        NiftiErrorKind::NonFinite { count, first } => {
            assert_eq!((*count, *first), (1, [0, 9, 0, 1]))
        }
        other => panic!("{other}"),
    }
    let zero = open(NonFinitePolicy::ReplaceWithZero);
    let scan = zero.scan_f32().unwrap();
    assert_eq!(
        (scan.nonzero, scan.non_finite),
        (Some(([4, 4, 4], [5, 5, 5])), 1)
    );
    let mut out = vec![1.0; 3 * 3 * 3];
    assert_eq!(
        zero.read_f32_window_into([8, 0, 0], [3, 3, 3], &mut out)
            .unwrap(),
        1
    );
    assert!(out.iter().all(|&v| v == 0.0), "{out:?}");
    let keep = open(NonFinitePolicy::Keep).scan_f32().unwrap();
    assert_eq!(keep.nonzero, Some(([4, 0, 1], [10, 5, 5])));
}

#[test]
fn integer_voxels_scaled_past_f32_are_reported_as_infinite() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = volume_bytes(tmp.path(), false);
    // scl_slope = 1e37: stored values of 35 and more no longer fit in f32.
    bytes[112..116].copy_from_slice(&1.0e37f32.to_le_bytes());
    let path = write_file(tmp.path(), "scaled.nii", &bytes);
    let expected = (0..40 * 30 * 20)
        .filter(|i| {
            let (x, y, z) = (i / 600, (i / 20) % 30, i % 20);
            (x * 7 + y * 13 + z * 31) % 1000 >= 35
        })
        .count();
    let strict = ReadOptions {
        non_finite: NonFinitePolicy::Error,
        to_f32: true,
        ..ReadOptions::default()
    };
    let err = read_nifti_with(&path, &strict).unwrap_err();
    assert_names_file(&err, &path);
    match err.kind() {
        NiftiErrorKind::NonFinite { count, .. } => assert_eq!(*count, expected),
        other => panic!("{other}"),
    }
    // Unscaled, the same voxels convert without a scan finding anything.
    let plain = write_file(tmp.path(), "plain.nii", &volume_bytes(tmp.path(), false));
    let img = read_nifti_with(&plain, &strict).unwrap();
    assert_eq!(img.non_finite_count(), 0);
    // x = 1, y = 2, z = 3: 7 + 26 + 93.
    assert_eq!(img.into_f32()[[0, 1, 2, 3]], 126.0);
}

#[test]
fn labels_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Array4::from_shape_fn((1, 4, 4, 4), |(_, x, _, _)| (x % 3) as i16);
    let path = tmp.path().join("seg.nii.gz");
    write_nifti(&path, a.view(), &IDENTITY_AFFINE, &WriteOptions::default()).unwrap();
    let labels = read_nifti(&path).unwrap().into_u8_labels().unwrap();
    assert_eq!(labels, a.mapv(|v| v as u8));

    a[[0, 3, 2, 1]] = 300;
    write_nifti(&path, a.view(), &IDENTITY_AFFINE, &WriteOptions::default()).unwrap();
    let err = read_nifti(&path).unwrap().into_u8_labels().unwrap_err();
    assert_names_file(&err, &path);
    assert!(
        matches!(
            err.kind(),
            NiftiErrorKind::NotLabels {
                index: [0, 3, 2, 1],
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("value 300"), "{err}");

    let f = Array4::from_elem((1, 2, 2, 2), 1.5f32);
    write_nifti(&path, f.view(), &IDENTITY_AFFINE, &WriteOptions::default()).unwrap();
    let err = read_nifti(&path).unwrap().into_u8_labels().unwrap_err();
    assert!(
        err.to_string()
            .contains("value 1.5 at [c, x, y, z] = [0, 0, 0, 0]"),
        "{err}"
    );

    // Float labels that are whole numbers are fine, as are scaled ones.
    let opts = WriteOptions {
        scaling: Some((2.0, 1.0)),
        ..WriteOptions::default()
    };
    let f = Array4::from_shape_fn((1, 2, 2, 2), |(_, x, y, z)| (x + y + z) as f32);
    write_nifti(&path, f.view(), &IDENTITY_AFFINE, &opts).unwrap();
    let labels = read_nifti(&path).unwrap().into_u8_labels().unwrap();
    assert_eq!(labels, f.mapv(|v| (v * 2.0 + 1.0) as u8));
}

#[test]
fn in_memory_bytes_and_header_only() {
    let tmp = tempfile::tempdir().unwrap();
    for gz in [false, true] {
        let bytes = volume_bytes(tmp.path(), gz);
        let img = read_nifti_bytes(&bytes, "mem.nii", &ReadOptions::default()).unwrap();
        assert_eq!(img.shape(), [1, 40, 30, 20]);
        let VoxelData::I16(a) = &img.data else {
            panic!("int16 expected")
        };
        assert_eq!(
            a[[0, 39, 29, 19]],
            ((39 * 7 + 29 * 13 + 19 * 31) % 1000) as i16
        );
        let err = read_nifti_bytes(
            &bytes[..bytes.len() - 100],
            "mem.nii",
            &ReadOptions::default(),
        )
        .unwrap_err();
        assert_names_file(&err, Path::new("mem.nii"));
    }
    let path = write_file(tmp.path(), "h.nii", &volume_bytes(tmp.path(), false));
    let h = read_header(&path).unwrap();
    assert_eq!(
        (h.version, h.shape().unwrap()),
        (NiftiVersion::Nifti1, [1, 40, 30, 20])
    );
}

#[test]
fn big_endian_nifti2_with_channels_reads() {
    // Byte-swap every field of a NIfTI-2 header by hand and store int32 data big-endian.
    let mut h = vec![0u8; 544];
    h[0..4].copy_from_slice(&540i32.to_be_bytes());
    h[4..12].copy_from_slice(b"n+2\0\r\n\x1a\n");
    h[12..14].copy_from_slice(&8i16.to_be_bytes());
    h[14..16].copy_from_slice(&32i16.to_be_bytes());
    for (i, d) in [5i64, 3, 2, 2, 1, 2, 1, 1].iter().enumerate() {
        h[16 + 8 * i..24 + 8 * i].copy_from_slice(&d.to_be_bytes());
    }
    for (i, p) in [1.0f64, 2.0, 3.0, 4.0, 1.0, 1.0, 1.0, 1.0]
        .iter()
        .enumerate()
    {
        h[104 + 8 * i..112 + 8 * i].copy_from_slice(&p.to_be_bytes());
    }
    h[168..176].copy_from_slice(&544i64.to_be_bytes());
    h[176..184].copy_from_slice(&0.5f64.to_be_bytes()); // scl_slope
    h[184..192].copy_from_slice(&10.0f64.to_be_bytes()); // scl_inter
    for v in 0..24i32 {
        h.extend_from_slice(&(v * 100).to_be_bytes());
    }
    let img = read_nifti_bytes(&h, "be2.nii", &ReadOptions::default()).unwrap();
    // dims 3×2×2 with a 5th dim of 2 → 2 channels.
    assert_eq!(img.shape(), [2, 3, 2, 2]);
    let VoxelData::I32(a) = &img.data else {
        panic!("int32 expected")
    };
    // Storage index x + 3y + 6z + 12c.
    assert_eq!(a[[1, 2, 1, 0]], (2 + 3 + 12) * 100);
    assert_eq!(img.to_f32()[[1, 2, 1, 0]], 1700.0 * 0.5 + 10.0);
    assert_eq!(img.spacing(), [2.0, 3.0, 4.0]);
    // No sform or qform: nibabel's centred, x-flipped base affine.
    assert_eq!(img.affine()[0], [-2.0, 0.0, 0.0, 2.0]);
}

#[test]
fn writer_is_atomic_and_validates() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Array4::<u8>::zeros((1, 3, 3, 3));
    let path = tmp.path().join("nodir").join("x.nii.gz");
    let err = write_nifti(&path, a.view(), &IDENTITY_AFFINE, &WriteOptions::default()).unwrap_err();
    assert_names_file(&err, &path);
    assert!(matches!(err.kind(), NiftiErrorKind::Write(_)), "{err}");

    let path = tmp.path().join("x.nii.gz");
    std::fs::write(&path, b"old").unwrap();
    write_nifti(&path, a.view(), &IDENTITY_AFFINE, &WriteOptions::default()).unwrap();
    assert_eq!(read_nifti(&path).unwrap().shape(), [1, 3, 3, 3]);
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["x.nii.gz"], "no temporary file is left behind");

    let mut bad = IDENTITY_AFFINE;
    bad[0][0] = f64::NAN;
    let err = write_nifti(&path, a.view(), &bad, &WriteOptions::default()).unwrap_err();
    assert!(
        matches!(err.kind(), NiftiErrorKind::InvalidInput(_)),
        "{err}"
    );
    let wide = Array4::<u8>::zeros((1, 40000, 1, 1));
    let err = write_nifti(
        &path,
        wide.view(),
        &IDENTITY_AFFINE,
        &WriteOptions::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("NIfTI-1 dims must be 1 to 32767"),
        "{err}"
    );
    // The failed writes left the earlier file intact.
    assert_eq!(read_nifti(&path).unwrap().shape(), [1, 3, 3, 3]);
}
