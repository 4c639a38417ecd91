//! Running the nibabel oracle (`tests/oracles/nifti_oracle.py`) and loading what it writes.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use mtmed3d_stages::io::nifti::VoxelData;
use mtmed3d_stages::spatial::orientation::{Affine, AxCodes, reorient};
use ndarray::{Array4, ArrayView4};
use serde_json::Value;

pub const INSTALL_HINT: &str = "these tests compare against nibabel: install it with `pip install nibabel numpy` \
     (set MTMED3D_PYTHON to choose the interpreter, default python3), or set MTMED3D_SKIP_ORACLES=1 to skip them";

pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/oracles/nifti_oracle.py")
}

/// Run the oracle; `None` when oracles are skipped on purpose, a panic with the install hint
/// when python or nibabel is missing.
pub fn run_oracle(args: &[&str]) -> Option<String> {
    if std::env::var("MTMED3D_SKIP_ORACLES").is_ok_and(|v| v == "1") {
        eprintln!("MTMED3D_SKIP_ORACLES=1: nibabel comparison skipped");
        return None;
    }
    let python = std::env::var("MTMED3D_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg(script())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}\n{INSTALL_HINT}"));
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("ModuleNotFoundError") {
            panic!("{python} lacks nibabel or numpy:\n{stderr}\n{INSTALL_HINT}");
        }
        panic!("oracle {args:?} failed:\n{stderr}");
    }
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// nibabel's `tests/data` folder.
pub fn datadir() -> Option<PathBuf> {
    let out = run_oracle(&["datadir"])?;
    let v: Value = serde_json::from_str(&out).expect("datadir prints JSON");
    Some(PathBuf::from(
        v["datadir"].as_str().expect("datadir is a string"),
    ))
}

/// One file as nibabel sees it.
pub struct Dumped {
    pub meta: Value,
    pub dir: PathBuf,
}

/// Dump `paths` with the oracle into a fresh temporary directory.
pub fn dump(paths: &[PathBuf]) -> Option<(tempfile::TempDir, Vec<Dumped>)> {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut args = vec!["dump".to_string(), tmp.path().display().to_string()];
    args.extend(paths.iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_oracle(&args)?;
    let dumped = (0..paths.len())
        .map(|i| {
            let dir = tmp.path().join(i.to_string());
            let meta = serde_json::from_str(
                &std::fs::read_to_string(dir.join("meta.json")).expect("meta.json"),
            )
            .expect("meta.json is JSON");
            Dumped { meta, dir }
        })
        .collect();
    Some((tmp, dumped))
}

pub fn affine_of(v: &Value) -> Affine {
    std::array::from_fn(|i| std::array::from_fn(|j| v[i][j].as_f64().expect("affine entry")))
}

/// An oracle array as f64 (exact for every integer type used by the test files) with its
/// shape and numpy dtype name.
pub struct OracleArray {
    pub shape: [usize; 4],
    pub dtype: String,
    pub values: Vec<f64>,
}

impl Dumped {
    pub fn array(&self, name: &str) -> OracleArray {
        let info = &self.meta[name];
        let shape: Vec<usize> = info["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let dtype = info["dtype"].as_str().unwrap().to_string();
        let bytes = std::fs::read(self.dir.join(format!("{name}.bin"))).expect("array file");
        macro_rules! conv {
            ($t:ty) => {
                bytes
                    .chunks_exact(std::mem::size_of::<$t>())
                    .map(|c| <$t>::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect()
            };
        }
        let values: Vec<f64> = match dtype.as_str() {
            "uint8" => conv!(u8),
            "int8" => conv!(i8),
            "int16" => conv!(i16),
            "uint16" => conv!(u16),
            "int32" => conv!(i32),
            "uint32" => conv!(u32),
            "int64" => conv!(i64),
            "uint64" => conv!(u64),
            "float32" => conv!(f32),
            "float64" => conv!(f64),
            other => panic!("unexpected dtype {other}"),
        };
        assert_eq!(values.len(), shape.iter().product::<usize>());
        OracleArray {
            shape: [shape[0], shape[1], shape[2], shape[3]],
            dtype,
            values,
        }
    }

    pub fn affine(&self, name: &str) -> Affine {
        affine_of(&self.meta[name])
    }
}

fn flat_f64<T: Copy + Into<F64Like>>(a: ArrayView4<'_, T>) -> Vec<f64> {
    a.iter().map(|&v| v.into().0).collect()
}

/// Lossless-enough conversion to f64 for comparisons (64-bit integers beyond 2^53 are not
/// in the fixtures).
pub struct F64Like(pub f64);
macro_rules! like {
    ($($t:ty),*) => {$(impl From<$t> for F64Like { fn from(v: $t) -> Self { F64Like(v as f64) } })*};
}
like!(u8, i8, i16, u16, i32, u32, i64, u64, f32, f64);

/// The stored values in `[C, X, Y, Z]` order and their numpy dtype name.
pub fn voxels_f64(data: &VoxelData) -> (Vec<f64>, &'static str) {
    let name = data.datatype().name();
    let v = match data {
        VoxelData::U8(a) => flat_f64(a.view()),
        VoxelData::I8(a) => flat_f64(a.view()),
        VoxelData::I16(a) => flat_f64(a.view()),
        VoxelData::U16(a) => flat_f64(a.view()),
        VoxelData::I32(a) => flat_f64(a.view()),
        VoxelData::U32(a) => flat_f64(a.view()),
        VoxelData::I64(a) => flat_f64(a.view()),
        VoxelData::U64(a) => flat_f64(a.view()),
        VoxelData::F32(a) => flat_f64(a.view()),
        VoxelData::F64(a) => flat_f64(a.view()),
    };
    (v, name)
}

/// Reorient stored voxels of any type, returning values as f64, the shape and the affine.
pub fn reorient_voxels(
    data: &VoxelData,
    affine: &Affine,
    target: AxCodes,
) -> (Vec<f64>, [usize; 4], Affine) {
    fn go<T: Copy + Send + Sync + Into<F64Like>>(
        a: &Array4<T>,
        affine: &Affine,
        target: AxCodes,
    ) -> (Vec<f64>, [usize; 4], Affine) {
        let r = reorient(a.view(), affine, target).expect("reorientable affine");
        let s = r.array.shape();
        let shape = [s[0], s[1], s[2], s[3]];
        (flat_f64(r.array.view()), shape, r.affine)
    }
    match data {
        VoxelData::U8(a) => go(a, affine, target),
        VoxelData::I8(a) => go(a, affine, target),
        VoxelData::I16(a) => go(a, affine, target),
        VoxelData::U16(a) => go(a, affine, target),
        VoxelData::I32(a) => go(a, affine, target),
        VoxelData::U32(a) => go(a, affine, target),
        VoxelData::I64(a) => go(a, affine, target),
        VoxelData::U64(a) => go(a, affine, target),
        VoxelData::F32(a) => go(a, affine, target),
        VoxelData::F64(a) => go(a, affine, target),
    }
}

/// Assert two affines agree entry by entry within `tol * max(1, |expected|)`: absolute for
/// rotation/zoom entries, relative for large translations (which f32 storage rounds).
pub fn assert_affine_close(got: &Affine, expected: &Affine, tol: f64, what: &str) {
    for i in 0..4 {
        for j in 0..4 {
            let (g, e) = (got[i][j], expected[i][j]);
            assert!(
                (g - e).abs() <= tol * e.abs().max(1.0),
                "{what}: affine[{i}][{j}] = {g}, nibabel {e}\n got {got:?}\n nibabel {expected:?}"
            );
        }
    }
}

/// Assert values agree: exactly, or within `rel` relative tolerance.
pub fn assert_values(got: &[f64], expected: &[f64], rel: f64, what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}: length");
    let mut bad = 0;
    let mut first = None;
    for (i, (&g, &e)) in got.iter().zip(expected).enumerate() {
        let ok = g == e || (g.is_nan() && e.is_nan()) || (g - e).abs() <= rel * e.abs();
        if !ok {
            bad += 1;
            first.get_or_insert((i, g, e));
        }
    }
    assert_eq!(
        bad,
        0,
        "{what}: {bad} of {} voxels differ, first (flat index, ours, nibabel) = {first:?}",
        got.len()
    );
}
