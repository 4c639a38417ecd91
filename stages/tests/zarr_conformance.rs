//! Case stores against zarr-python (`tests/oracles/zarr_oracle.py`): zarr-python reads what
//! mtmed3d writes (arrays bit for bit, attributes equal), and mtmed3d reads a store that
//! zarr-python wrote with its own chunking and codecs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use mtmed3d_pipeline::{BoundingBox, Field, Sample};
use mtmed3d_stages::io::zarr::store::{CaseStore, StoreDtype, StoreOptions};
use ndarray::{ArrayD, IxDyn};

const INSTALL_HINT: &str = "these tests compare with zarr-python: `pip install 'zarr>=3,<4'` \
     (set MTMED3D_PYTHON to choose the interpreter, default python3), or set MTMED3D_SKIP_ORACLES=1 to skip them";

/// Runs the oracle; `false` when oracles are skipped on purpose.
fn oracle(args: &[&str]) -> bool {
    if std::env::var("MTMED3D_SKIP_ORACLES").is_ok_and(|v| v == "1") {
        eprintln!("MTMED3D_SKIP_ORACLES=1: zarr-python comparison skipped");
        return false;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/oracles/zarr_oracle.py");
    let python = std::env::var("MTMED3D_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}\n{INSTALL_HINT}"));
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("No module named") {
            panic!("{stderr}\n{INSTALL_HINT}");
        }
        panic!("zarr_oracle.py {args:?} failed:\n{stderr}");
    }
    true
}

fn sample() -> Sample {
    let image = ArrayD::from_shape_fn(IxDyn(&[4, 21, 18, 13]), |i| {
        ((i[0] * 7 + i[1] * 3 + i[2] * 5 + i[3]) as f32).sin() * 100.0 + 0.1
    });
    let label = ArrayD::from_shape_fn(IxDyn(&[3, 21, 18, 13]), |i| {
        u8::from((i[1] + i[2] + i[3] + i[0]) % 7 == 0)
    });
    let mut s = Sample::new("Case 7/a");
    s.insert("image", Field::f32(image));
    s.insert("label", Field::u8(label));
    s.insert("grade", Field::Text("HGG".into()));
    s.insert(
        "boxes",
        Field::Boxes(Arc::new(vec![BoundingBox {
            corners: [2.0, 3.0, 4.0, 10.0, 11.0, 12.0],
            class: 1,
            score: None,
        }])),
    );
    s.meta.affine = [
        [-1.0, 0.0, 0.0, 90.25],
        [0.0, -1.0, 0.0, 126.0],
        [0.0, 0.0, 1.0, -72.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    s.meta.original_affine = s.meta.affine;
    s.meta.original_shape = Some([21, 18, 13]);
    s.meta.spacing = [1.0, 1.0, 1.0];
    s
}

fn le_bytes_f32(a: &ArrayD<f32>) -> Vec<u8> {
    a.as_standard_layout()
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

#[test]
fn zarr_python_reads_what_mtmed3d_writes() {
    let dir = tempfile::tempdir().unwrap();
    for (name, options) in [
        (
            "plain.zarr",
            StoreOptions {
                chunk: [8, 8, 8],
                ..StoreOptions::default()
            },
        ),
        (
            "sharded.zarr",
            StoreOptions {
                chunk: [4, 4, 4],
                shard: Some([8, 8, 8]),
                ..StoreOptions::default()
            },
        ),
        (
            "half.zarr",
            StoreOptions {
                chunk: [8, 8, 8],
                dtype: StoreDtype::F16,
                ..StoreOptions::default()
            },
        ),
    ] {
        let path = dir.path().join(name);
        let store = CaseStore::create_or_open(&path, options.clone()).unwrap();
        let s = sample();
        store.write_case(&s, Some("k1")).unwrap();
        store.finalise().unwrap();
        let out = dir.path().join(format!("{name}.out"));
        if !oracle(&["read", path.to_str().unwrap(), out.to_str().unwrap()]) {
            return;
        }
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap())
                .unwrap();
        let group = "Case~207~2Fa";
        // The temporary folder is not a member; only the case is.
        assert_eq!(report["members"], serde_json::json!([group]), "{name}");
        // Nor is it left behind for zarr-python to warn about.
        assert_eq!(report["warnings"], serde_json::json!([]), "{name}");
        assert!(!path.join(".partial").exists(), "{name}");
        assert_eq!(
            report["root_attributes"]["cases"][0]["id"], "Case 7/a",
            "{name}"
        );
        let case = &report["cases"][group];
        // zarr-python sees exactly the attributes written.
        let ours: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(path.join(group).join("zarr.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(case["attributes"], ours["attributes"], "{name}");
        assert_eq!(case["attributes"]["mtmed3d"]["case_id"], "Case 7/a");
        assert_eq!(case["attributes"]["grade"], "HGG");
        assert_eq!(case["attributes"]["orientation"], "LPS");
        assert_eq!(
            case["attributes"]["affine"],
            serde_json::json!(s.meta.affine)
        );
        assert_eq!(
            case["attributes"]["boxes"]["boxes"][0]["corners"],
            serde_json::json!([2.0, 3.0, 4.0, 10.0, 11.0, 12.0])
        );
        let image = &case["arrays"]["image"];
        assert_eq!(image["shape"], serde_json::json!([4, 21, 18, 13]));
        let label = &case["arrays"]["label"];
        assert_eq!(label["dtype"], "uint8");
        let label_bytes = std::fs::read(out.join(group).join("label.bin")).unwrap();
        assert_eq!(
            label_bytes,
            s.u8("label")
                .unwrap()
                .as_standard_layout()
                .as_slice()
                .unwrap()
        );
        let image_bytes = std::fs::read(out.join(group).join("image.bin")).unwrap();
        if options.dtype == StoreDtype::F32 {
            assert_eq!(image["dtype"], "float32");
            assert_eq!(image_bytes, le_bytes_f32(s.f32("image").unwrap()), "{name}");
        } else {
            assert_eq!(image["dtype"], "float16");
            let ours = store.read_case("Case 7/a").unwrap();
            let halves: Vec<u8> = ours
                .f32("image")
                .unwrap()
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect();
            assert_eq!(image_bytes, halves, "{name}");
        }
    }
}

fn expected_image(shape: [usize; 4]) -> ArrayD<f32> {
    ArrayD::from_shape_fn(IxDyn(&shape), |i| {
        let (c, x, y, z) = (i[0] as f64, i[1] as f64, i[2] as f64, i[3] as f64);
        // numpy computes in float64 then casts, as here.
        ((0.1 * x + 0.2 * y).sin() * (c + 1.0) + 0.01 * z) as f32
    })
}

#[test]
fn mtmed3d_reads_what_zarr_python_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("py.zarr");
    if !oracle(&["write", path.to_str().unwrap()]) {
        return;
    }
    let store = CaseStore::open(&path).unwrap();
    assert_eq!(
        store.complete_cases(None).unwrap(),
        vec!["py/case 1".to_string()]
    );
    assert!(store.verify_case("py/case 1").unwrap().is_empty());
    let s = store.read_case("py/case 1").unwrap();
    let image = s.f32("image").unwrap();
    let expected = expected_image([4, 23, 19, 11]);
    assert_eq!(image.shape(), expected.shape());
    let worst = image
        .iter()
        .zip(expected.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    // sin in numpy and in Rust's libm may differ in the last bit of a float64.
    assert!(worst <= 1e-6, "largest difference {worst}");
    let label = s.u8("label").unwrap();
    for (i, v) in label.indexed_iter() {
        let want = if (i[0] + 2 * i[1] + 3 * i[2]) % 5 == 0 {
            2
        } else {
            0
        };
        assert_eq!(*v, want, "label at {i:?}");
    }
    assert_eq!(s.text("grade").unwrap(), "LGG");
    assert_eq!(s.meta.affine[0][3], 10.5);
    assert_eq!(
        store.case_key("py/case 1").unwrap().as_deref(),
        Some("written-by-zarr-python")
    );
    // A crop across zarr-python's chunk boundaries.
    let crop = store.read_crop("py/case 1", [3, -2, 4], [9, 8, 9]).unwrap();
    let c = crop.f32("image").unwrap();
    assert_eq!(c.shape(), &[4, 9, 8, 9]);
    assert_eq!(c[[2, 1, 5, 3]], expected[[2, 4, 3, 7]]);
    assert_eq!(c[[2, 1, 1, 3]], 0.0, "padding");
}
