//! The Zarr case store: exact round trips, id escaping, lossy dtypes within their bounds,
//! crops equal to cropping the whole case, corruption found by `verify`, clear errors on
//! stores that are not ours, and interrupted writes never listed complete.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use mtmed3d_pipeline::{BoundingBox, Field, Sample, SpatialOp};
use mtmed3d_stages::io::zarr::store::{
    CaseStore, PARTIAL_DIR, StoreDtype, StoreOptions, decode_name, encode_name, same_sample,
};
use mtmed3d_stages::spatial::crop::crop_sample;
use ndarray::{ArrayD, IxDyn};

/// A small case with every kind of field and awkward values (−0, subnormals, NaN numbers).
fn case(id: &str, shape: [usize; 3], seed: u32) -> Sample {
    let [x, y, z] = shape;
    let mut state = seed.wrapping_mul(2654435761).wrapping_add(1);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let mut image = ArrayD::from_shape_simple_fn(IxDyn(&[4, x, y, z]), || {
        (next() as f32 / u32::MAX as f32 - 0.5) * 7.0
    });
    image[[0, 0, 0, 0]] = -0.0;
    image[[1, 0, 0, 0]] = f32::from_bits(1); // smallest subnormal
    image[[2, 0, 0, 0]] = f32::MAX;
    let label = ArrayD::from_shape_fn(IxDyn(&[3, x, y, z]), |i| {
        u8::from(i[1] > x / 3 && i[1] < x / 2 && i[2] > y / 4 && i[3] < z / 2 && i[0] != 2)
    });
    let mut s = Sample::new(id);
    s.insert("image", Field::f32(image));
    s.insert("label", Field::u8(label));
    s.insert(
        "boxes",
        Field::Boxes(Arc::new(vec![BoundingBox {
            corners: [1.0, 2.0, 3.0, 7.5, 8.0, 9.0],
            class: 1,
            score: Some(0.25),
        }])),
    );
    s.insert("grade", Field::Text("HGG".into()));
    s.insert("weight", Field::Number(0.1 + 0.2));
    s.insert("missing", Field::Number(f64::NAN));
    s.insert(
        "extra",
        Field::Json(Arc::new(serde_json::json!({"a": [1, 2.5, null], "b": "x"}))),
    );
    s.meta.affine = [
        [-1.0, 0.0, 0.0, 120.3],
        [0.0, -0.9375, 0.0, 119.0 / 3.0],
        [0.0, 0.0, 1.1, -60.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    s.meta.original_affine = s.meta.affine;
    s.meta.original_shape = Some(shape);
    s.meta.spacing = [1.0, 0.9375, 1.1];
    s.meta
        .sources
        .insert("t1".into(), "/data/a b/t1.nii.gz".into());
    s.meta.history.push(SpatialOp::Reorient {
        perm: [0, 1, 2],
        flip: [true, true, false],
        shape_before: shape,
    });
    s.meta
        .attrs
        .insert("grade".into(), serde_json::json!("HGG"));
    s
}

fn store(dir: &Path, options: StoreOptions) -> CaseStore {
    CaseStore::create_or_open(&dir.join("s.zarr"), options).unwrap()
}

fn small_chunks() -> StoreOptions {
    StoreOptions {
        chunk: [8, 8, 8],
        durable: false,
        ..StoreOptions::default()
    }
}

#[test]
fn write_then_read_gives_the_same_sample_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), small_chunks());
    let id = "BraTS/2019 #1 __odd";
    let sample = case(id, [20, 17, 13], 1);
    s.write_case(&sample, Some("key-1")).unwrap();
    assert!(s.is_complete(id));
    assert_eq!(s.case_key(id).unwrap().as_deref(), Some("key-1"));
    let back = s.read_case(id).unwrap();
    same_sample(&sample, &back).unwrap();
    assert_eq!(back.epoch, 0);
    assert!(back.number("missing").unwrap().is_nan());

    let listed = s.list().unwrap();
    assert_eq!(listed.len(), 1);
    let entry = &listed[0];
    assert_eq!(entry.id, id);
    assert!(entry.complete);
    let arrays: BTreeMap<_, _> = entry
        .arrays
        .iter()
        .map(|a| (a.field.as_str(), (a.shape.clone(), a.dtype.as_str())))
        .collect();
    assert_eq!(arrays["image"], (vec![4, 20, 17, 13], "float32"));
    assert_eq!(arrays["label"], (vec![3, 20, 17, 13], "uint8"));
    // The node name is escaped (`__` is reserved only at the start of a name).
    assert_eq!(entry.group, "BraTS~2F2019~20~231~20__odd");
    assert!(!s.is_complete("BraTS/2019"));
    assert_eq!(s.case_key("absent").unwrap(), None);
}

#[test]
fn names_are_escaped_reversibly() {
    for id in [
        "a", "__x", ".hidden", "a/b", "a#p3", "ü ñ", "~7E", "..", "x.y-z_1",
    ] {
        let enc = encode_name(id).unwrap();
        assert!(!enc.starts_with("__") && !enc.starts_with('.'), "{enc}");
        assert!(!enc.contains('/'), "{enc}");
        assert!(
            enc.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b)),
            "{enc}"
        );
        assert_eq!(decode_name(&enc).as_deref(), Some(id));
    }
    assert!(encode_name("").unwrap_err().to_string().contains("empty"));
}

#[test]
fn replacing_a_case_keeps_only_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), small_chunks());
    s.write_case(&case("c", [10, 10, 10], 1), Some("old"))
        .unwrap();
    let newer = case("c", [12, 9, 11], 2);
    s.write_case(&newer, Some("new")).unwrap();
    same_sample(&newer, &s.read_case("c").unwrap()).unwrap();
    assert_eq!(s.case_key("c").unwrap().as_deref(), Some("new"));
    assert_eq!(s.list().unwrap().len(), 1);
    let leftovers = std::fs::read_dir(s.path().join(PARTIAL_DIR))
        .unwrap()
        .count();
    assert_eq!(leftovers, 0);
}

#[test]
fn sharded_arrays_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(
        dir.path(),
        StoreOptions {
            chunk: [4, 4, 4],
            shard: Some([8, 8, 8]),
            ..small_chunks()
        },
    );
    let sample = case("sharded", [19, 9, 17], 3);
    s.write_case(&sample, None).unwrap();
    same_sample(&sample, &s.read_case("sharded").unwrap()).unwrap();
    // 3×2×3 shards of the image, not 5×3×5 chunk files.
    let shards = std::fs::read_dir(s.path().join("sharded/image/c/0"))
        .unwrap()
        .count();
    assert_eq!(shards, 3);
}

#[test]
fn half_and_int16_storage_stay_within_their_error_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let mut sample = case("q", [12, 10, 8], 4);
    // Drop the extreme values: f16 cannot hold f32::MAX.
    let image = sample.f32_mut("image").unwrap();
    image[[2, 0, 0, 0]] = 3.0;
    let original = sample.f32("image").unwrap().clone();
    for dtype in [StoreDtype::F16, StoreDtype::I16] {
        let s = CaseStore::create_or_open(
            &dir.path().join(format!("{dtype:?}.zarr")),
            StoreOptions {
                dtype,
                ..small_chunks()
            },
        )
        .unwrap();
        s.write_case(&sample, None).unwrap();
        let back = s.read_case("q").unwrap();
        assert_eq!(back.u8("label").unwrap(), sample.u8("label").unwrap());
        let got = back.f32("image").unwrap();
        assert_eq!(got.shape(), original.shape());
        for c in 0..4 {
            let chan = original.index_axis(ndarray::Axis(0), c);
            let (lo, hi) = chan
                .iter()
                .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
            let step = f64::from(hi - lo) / 65534.0;
            for (a, b) in chan.iter().zip(got.index_axis(ndarray::Axis(0), c).iter()) {
                let e = (f64::from(*a) - f64::from(*b)).abs();
                let bound = match dtype {
                    StoreDtype::F16 => f64::from(a.abs()) * 2f64.powi(-11) + 6e-8,
                    _ => step / 2.0 + 1e-6,
                };
                assert!(e <= bound, "{dtype:?} channel {c}: {a} came back as {b}");
            }
        }
        assert_eq!(
            s.list().unwrap()[0]
                .arrays
                .iter()
                .find(|a| a.field == "image")
                .unwrap()
                .dtype,
            if dtype == StoreDtype::F16 {
                "float16"
            } else {
                "int16"
            }
        );
        assert!(s.verify_case("q").unwrap().is_empty());
    }
}

#[test]
fn crops_read_from_the_store_equal_cropping_the_whole_case() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), small_chunks());
    let sample = case("c", [21, 18, 15], 5);
    s.write_case(&sample, None).unwrap();
    for start in [[0, 0, 0], [5, 3, 2], [-4, 10, 9], [15, -3, -20], [30, 0, 0]] {
        let size = [10, 12, 9];
        let mut expected = s.read_case("c").unwrap();
        crop_sample(&mut expected, None, start, size).unwrap();
        let got = s.read_crop("c", start, size).unwrap();
        same_sample(&expected, &got).unwrap_or_else(|e| panic!("start {start:?}: {e}"));
    }
}

#[test]
fn verify_finds_a_corrupted_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), small_chunks());
    s.write_case(&case("good", [16, 16, 16], 6), None).unwrap();
    s.write_case(&case("bad", [16, 16, 16], 7), None).unwrap();
    assert!(s.verify_case("good").unwrap().is_empty());
    assert!(s.verify_case("bad").unwrap().is_empty());
    // Flip bytes in the middle of one compressed image chunk.
    let chunk = s.path().join("bad/image/c/0/1/0/1");
    let mut bytes = std::fs::read(&chunk).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 8] {
        *b ^= 0x5A;
    }
    std::fs::write(&chunk, bytes).unwrap();
    assert!(s.verify_case("good").unwrap().is_empty());
    let problems = s.verify_case("bad").unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with("field `image`"), "{problems:?}");

    // A chunk file that disappears reads as fill values: the checksum catches it too.
    std::fs::remove_file(s.path().join("good/label/c/0/0/1/0")).unwrap();
    let problems = s.verify_case("good").unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("field `label`: checksum"),
        "{problems:?}"
    );
}

#[test]
fn stores_that_are_not_ours_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let e = CaseStore::open(&dir.path().join("nothing")).err().unwrap();
    assert!(e.to_string().contains("no zarr.json"), "{e}");
    let plain = dir.path().join("plain.zarr");
    std::fs::create_dir_all(&plain).unwrap();
    std::fs::write(
        plain.join("zarr.json"),
        r#"{"zarr_format": 3, "node_type": "group", "attributes": {}}"#,
    )
    .unwrap();
    let e = CaseStore::open(&plain).err().unwrap();
    assert!(e.to_string().contains("not a mtmed3d case store"), "{e}");
    let future = dir.path().join("future.zarr");
    std::fs::create_dir_all(&future).unwrap();
    std::fs::write(
        future.join("zarr.json"),
        r#"{"zarr_format": 3, "node_type": "group", "attributes": {"mtmed3d": {"kind": "mtmed3d-case-store", "format_version": 99}}}"#,
    )
    .unwrap();
    let e = CaseStore::open(&future).err().unwrap();
    assert!(
        e.to_string().contains("format version 99 is not supported"),
        "{e}"
    );
    let e = CaseStore::create_or_open(
        &dir.path().join("x.zarr"),
        StoreOptions {
            chunk: [8, 8, 8],
            shard: Some([12, 16, 16]),
            ..StoreOptions::default()
        },
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("multiple of `chunk`"), "{e}");
}

#[test]
fn interrupted_writes_are_listed_incomplete_and_finalise_removes_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), small_chunks());
    s.write_case(&case("done", [8, 8, 8], 8), Some("k"))
        .unwrap();
    // What a killed writer leaves: a half-written case under the temporary folder.
    let partial = s.path().join(PARTIAL_DIR).join("1234-0@half");
    std::fs::create_dir_all(partial.join("image")).unwrap();
    std::fs::write(partial.join("image/zarr.json"), "{").unwrap();
    let listed = s.list().unwrap();
    let status: Vec<(&str, bool)> = listed.iter().map(|c| (c.id.as_str(), c.complete)).collect();
    assert_eq!(status, vec![("done", true), ("half", false)]);
    assert!(!s.is_complete("half"));
    assert_eq!(s.complete_cases(None).unwrap(), vec!["done".to_string()]);

    let sealed = s.finalise().unwrap();
    assert_eq!(sealed.len(), 1);
    assert!(!partial.exists());
    let root: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.path().join("zarr.json")).unwrap())
            .unwrap();
    assert_eq!(
        root["attributes"]["cases"],
        serde_json::json!([{"id": "done", "group": "done", "key": "k", "config_hash": null}])
    );
    // The store still opens, with its manifest.
    assert_eq!(CaseStore::open(s.path()).unwrap().list().unwrap().len(), 1);
}

#[test]
fn shards_can_create_one_store_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.zarr");
    std::thread::scope(|scope| {
        for i in 0..8 {
            let path = path.clone();
            scope.spawn(move || {
                let s = CaseStore::create_or_open(&path, small_chunks()).unwrap();
                s.write_case(&case(&format!("case_{i}"), [8, 8, 8], i), None)
                    .unwrap();
            });
        }
    });
    let s = CaseStore::open(&path).unwrap();
    assert_eq!(s.complete_cases(None).unwrap().len(), 8);
}

#[test]
fn zarr_read_crops_differ_per_epoch_repeat_per_seed_and_find_foreground() {
    use mtmed3d_pipeline::{BuildContext, SourceConfig, StageContext};
    use mtmed3d_stages::io::zarr::source::ZarrRead;
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), small_chunks());
    for i in 0..3 {
        s.write_case(&case(&format!("c{i}"), [40, 36, 30], i), None)
            .unwrap();
    }
    let config: ZarrRead = serde_json::from_value(serde_json::json!({
        "path": s.path(),
        "crop": {"size": [16, 16, 16], "foreground_prob": 1.0},
    }))
    .unwrap();
    let source = config.build(&BuildContext::default()).unwrap();
    assert_eq!(source.cases().unwrap(), vec!["c0", "c1", "c2"]);
    let ctx = StageContext::new("zarr_read", 0, 42);
    let start = |sample: &Sample| match sample.meta.history.last() {
        Some(SpatialOp::Crop { start, .. }) => *start,
        other => panic!("no crop recorded: {other:?}"),
    };
    let mut starts = Vec::new();
    for epoch in 0..4 {
        let a = source.load_epoch("c1", epoch, &ctx).unwrap();
        let b = source.load_epoch("c1", epoch, &ctx).unwrap();
        same_sample(&a, &b).unwrap();
        assert_eq!(a.f32("image").unwrap().shape(), &[4, 16, 16, 16]);
        assert_eq!(a.u8("label").unwrap().shape(), &[3, 16, 16, 16]);
        assert!(
            a.u8("label").unwrap().iter().any(|v| *v != 0),
            "centred on foreground"
        );
        // The same window as cropping the whole case.
        let mut whole = s.read_case("c1").unwrap();
        crop_sample(&mut whole, None, start(&a), [16, 16, 16]).unwrap();
        same_sample(&whole, &a).unwrap();
        starts.push(start(&a));
    }
    starts.dedup();
    assert!(starts.len() > 1, "every epoch gave the crop at {starts:?}");
    let wrong: ZarrRead = serde_json::from_value(serde_json::json!({
        "path": s.path(), "cases": ["c1", "nope"],
    }))
    .unwrap();
    let e = wrong
        .build(&BuildContext::default())
        .unwrap()
        .cases()
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("not in the store or incomplete: nope"),
        "{e}"
    );
}
