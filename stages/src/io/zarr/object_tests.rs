//! Case stores on object storage, without a network: an in-memory object store behind the
//! same adapter as S3 (with the feature `s3`; zarrs' memory store otherwise). A wrapper logs
//! every write and can fail all of them from a chosen point on, as a killed process would.

use std::path::Path;
use std::sync::{Arc, Mutex};

use mtmed3d_pipeline::{BoundingBox, Field, Sample};
use ndarray::{ArrayD, IxDyn};
use zarrs::storage::byte_range::ByteRangeIterator;
use zarrs::storage::{
    Bytes, ListableStorageTraits, MaybeBytesIterator, OffsetBytesIterator, ReadableStorageTraits,
    ReadableWritableListableStorage, StorageError, StoreKey, StoreKeys, StoreKeysPrefixes,
    StorePrefix, WritableStorageTraits,
};

use super::store::{CaseStore, StoreOptions, encode_name, same_sample};

const LOCATION: &str = "s3://test-bucket/cache.zarr";

#[cfg(feature = "s3")]
fn memory() -> ReadableWritableListableStorage {
    super::s3::object_storage(object_store::memory::InMemory::new()).unwrap()
}

#[cfg(not(feature = "s3"))]
fn memory() -> ReadableWritableListableStorage {
    Arc::new(zarrs::storage::store::MemoryStore::new())
}

fn options(config_hash: &str) -> StoreOptions {
    StoreOptions {
        chunk: [4, 4, 4],
        config_hash: Some(config_hash.into()),
        durable: false,
        ..StoreOptions::default()
    }
}

/// A small case: a 2-channel image, a label with some foreground, boxes and values.
fn case(id: &str, shape: [usize; 3], seed: f32) -> Sample {
    let [x, y, z] = shape;
    let image = ArrayD::from_shape_fn(IxDyn(&[2, x, y, z]), |i| {
        ((i[0] * 7 + i[1] * 3 + i[2] * 5 + i[3]) as f32 * seed).sin() * 100.0
    });
    let label = ArrayD::from_shape_fn(IxDyn(&[x, y, z]), |i| u8::from(i[0] > x / 2 && i[1] < 3));
    let mut s = Sample::new(id);
    s.insert("image", Field::f32(image));
    s.insert("label", Field::u8(label));
    s.insert("grade", Field::Text("LGG".into()));
    s.insert("weight", Field::Number(f64::from(seed)));
    s.insert(
        "boxes",
        Field::Boxes(Arc::new(vec![BoundingBox {
            corners: [1.0, 0.0, 0.0, 3.0, 2.0, 4.0],
            class: 1,
            score: None,
        }])),
    );
    s.meta.spacing = [1.0, 1.0, 1.5];
    s.meta.original_shape = Some(shape);
    s
}

/// Every key of the store below `prefix`, as strings.
fn keys(storage: &ReadableWritableListableStorage, prefix: &str) -> Vec<String> {
    let prefix = StorePrefix::new(prefix).unwrap();
    let mut out: Vec<String> = storage
        .list_prefix(&prefix)
        .unwrap()
        .iter()
        .map(|k| k.as_str().to_string())
        .collect();
    out.sort();
    out
}

/// Passes everything to `inner`, logs each write, and fails every write once `budget` writes
/// were made or `crash_on` is set: a process killed at that point.
struct Faulty {
    inner: ReadableWritableListableStorage,
    log: Mutex<Vec<String>>,
    budget: Mutex<usize>,
    crash_on: Option<String>,
}

impl Faulty {
    fn new(inner: &ReadableWritableListableStorage, budget: usize, crash_on: Option<&str>) -> Self {
        Faulty {
            inner: inner.clone(),
            log: Mutex::new(Vec::new()),
            budget: Mutex::new(budget),
            crash_on: crash_on.map(str::to_string),
        }
    }

    fn write(&self, op: &str, key: &str) -> Result<(), StorageError> {
        let mut budget = self.budget.lock().unwrap();
        if op == "set" && self.crash_on.as_deref() == Some(key) {
            *budget = 0;
        }
        if *budget == 0 {
            return Err(StorageError::Other("killed".into()));
        }
        *budget -= 1;
        self.log.lock().unwrap().push(format!("{op} {key}"));
        Ok(())
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl ReadableStorageTraits for Faulty {
    fn get_partial_many<'a>(
        &'a self,
        key: &StoreKey,
        byte_ranges: ByteRangeIterator<'a>,
    ) -> Result<MaybeBytesIterator<'a>, StorageError> {
        self.inner.get_partial_many(key, byte_ranges)
    }
    fn size_key(&self, key: &StoreKey) -> Result<Option<u64>, StorageError> {
        self.inner.size_key(key)
    }
    fn supports_get_partial(&self) -> bool {
        self.inner.supports_get_partial()
    }
}

impl ListableStorageTraits for Faulty {
    fn list(&self) -> Result<StoreKeys, StorageError> {
        self.inner.list()
    }
    fn list_prefix(&self, prefix: &StorePrefix) -> Result<StoreKeys, StorageError> {
        self.inner.list_prefix(prefix)
    }
    fn list_dir(&self, prefix: &StorePrefix) -> Result<StoreKeysPrefixes, StorageError> {
        self.inner.list_dir(prefix)
    }
    fn size_prefix(&self, prefix: &StorePrefix) -> Result<u64, StorageError> {
        self.inner.size_prefix(prefix)
    }
}

impl WritableStorageTraits for Faulty {
    fn set(&self, key: &StoreKey, value: Bytes) -> Result<(), StorageError> {
        self.write("set", key.as_str())?;
        self.inner.set(key, value)
    }
    fn set_partial_many(
        &self,
        key: &StoreKey,
        offset_values: OffsetBytesIterator,
    ) -> Result<(), StorageError> {
        self.write("set_partial", key.as_str())?;
        self.inner.set_partial_many(key, offset_values)
    }
    fn erase(&self, key: &StoreKey) -> Result<(), StorageError> {
        self.write("erase", key.as_str())?;
        self.inner.erase(key)
    }
    fn erase_prefix(&self, prefix: &StorePrefix) -> Result<(), StorageError> {
        self.write("erase_prefix", prefix.as_str())?;
        self.inner.erase_prefix(prefix)
    }
    fn supports_set_partial(&self) -> bool {
        self.inner.supports_set_partial()
    }
}

fn open(storage: &ReadableWritableListableStorage) -> CaseStore {
    CaseStore::open_objects(storage.clone(), LOCATION).unwrap()
}

#[test]
fn a_case_on_object_storage_reads_back_equal_and_lists_complete() {
    let storage = memory();
    let store =
        CaseStore::create_or_open_objects(storage.clone(), LOCATION, options("h1")).unwrap();
    let written = case("Case 7/a", [9, 7, 5], 1.0);
    store.write_case(&written, Some("key-1")).unwrap();

    // A second handle sees what the first wrote.
    let store = open(&storage);
    same_sample(&written, &store.read_case("Case 7/a").unwrap()).unwrap();
    assert_eq!(
        store.case_key("Case 7/a").unwrap().as_deref(),
        Some("key-1")
    );
    assert_eq!(store.complete_cases(Some("h1")).unwrap(), vec!["Case 7/a"]);
    assert!(store.complete_cases(Some("other")).unwrap().is_empty());

    let list = store.list().unwrap();
    assert_eq!(list.len(), 1);
    assert!(list[0].complete);
    assert_eq!(list[0].group, "Case~207~2Fa");
    let arrays: Vec<(&str, &[u64], &str)> = list[0]
        .arrays
        .iter()
        .map(|a| (a.field.as_str(), a.shape.as_slice(), a.dtype.as_str()))
        .collect();
    assert_eq!(
        arrays,
        vec![
            ("image", &[2u64, 9, 7, 5][..], "float32"),
            ("label", &[9u64, 7, 5][..], "uint8")
        ]
    );
    assert_eq!(store.verify_case("Case 7/a").unwrap(), Vec::<String>::new());

    // A crop reads only what it needs and equals the whole case's window.
    let crop = store.read_crop("Case 7/a", [2, 1, 0], [4, 4, 4]).unwrap();
    let (Some(Field::F32(whole)), Some(Field::F32(part))) =
        (written.get("image"), crop.get("image"))
    else {
        panic!("no image");
    };
    assert_eq!(part.shape(), &[2, 4, 4, 4]);
    assert_eq!(part[[1, 0, 0, 0]], whole[[1, 2, 1, 0]]);
    assert_eq!(part[[0, 3, 3, 3]], whole[[0, 5, 4, 3]]);
}

#[test]
fn a_case_without_its_group_metadata_is_incomplete_redone_and_finalised() {
    let storage = memory();
    let store =
        CaseStore::create_or_open_objects(storage.clone(), LOCATION, options("h1")).unwrap();
    store
        .write_case(&case("A", [9, 7, 5], 1.0), Some("ka"))
        .unwrap();

    // Killed just before the commit: every array of B is written, its group zarr.json not.
    let faulty: ReadableWritableListableStorage =
        Arc::new(Faulty::new(&storage, usize::MAX, Some("B/zarr.json")));
    let killed = CaseStore::open_objects(faulty, LOCATION).unwrap();
    let b = case("B", [6, 8, 5], 2.0);
    assert!(killed.write_case(&b, Some("kb")).is_err());
    let left = keys(&storage, "B/");
    assert!(left.contains(&"B/image/zarr.json".to_string()), "{left:?}");
    assert!(left.contains(&"B/label/zarr.json".to_string()), "{left:?}");
    assert!(left.iter().any(|k| k.starts_with("B/image/c/")), "{left:?}");
    assert!(!left.contains(&"B/zarr.json".to_string()));

    let store = open(&storage);
    assert!(!store.is_complete("B"));
    assert_eq!(store.case_key("B").unwrap(), None, "must be a cache miss");
    assert_eq!(store.complete_cases(Some("h1")).unwrap(), vec!["A"]);
    let list = store.list().unwrap();
    let states: Vec<(&str, bool, &str)> = list
        .iter()
        .map(|c| (c.id.as_str(), c.complete, c.group.as_str()))
        .collect();
    assert_eq!(states, vec![("A", true, "A"), ("B", false, "B")]);
    assert_eq!(
        store.verify_case("B").unwrap(),
        vec!["absent or incomplete"]
    );
    let e = store.read_case("B").unwrap_err().message;
    assert!(
        e.contains(LOCATION) && e.contains("is not in the store or is incomplete"),
        "{e}"
    );

    // A rerun writes it again.
    store.write_case(&b, Some("kb")).unwrap();
    same_sample(&b, &open(&storage).read_case("B").unwrap()).unwrap();

    // Another interrupted case; finalise removes it and records the two complete ones.
    let faulty: ReadableWritableListableStorage =
        Arc::new(Faulty::new(&storage, usize::MAX, Some("C/zarr.json")));
    let killed = CaseStore::open_objects(faulty, LOCATION).unwrap();
    assert!(killed.write_case(&case("C", [5, 5, 5], 3.0), None).is_err());
    assert!(!keys(&storage, "C/").is_empty());
    let store = open(&storage);
    let sealed: Vec<String> = store
        .finalise()
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(sealed, vec!["A", "B"]);
    assert!(keys(&storage, "C/").is_empty());
    let ids: Vec<String> = store.list().unwrap().into_iter().map(|c| c.id).collect();
    assert_eq!(ids, vec!["A", "B"]);
    let root: serde_json::Value = serde_json::from_slice(
        &storage
            .get(&StoreKey::new("zarr.json").unwrap())
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    let manifest: Vec<&str> = root["attributes"]["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(manifest, vec!["A", "B"]);
}

#[test]
fn replacing_a_case_never_exposes_a_mix_of_old_and_new() {
    let id = "Case #3";
    let group = encode_name(id).unwrap();
    let meta = format!("{group}/zarr.json");
    let old = case(id, [9, 7, 5], 1.0);
    let new = case(id, [6, 8, 5], 2.5);
    let fresh = || {
        let storage = memory();
        CaseStore::create_or_open_objects(storage.clone(), LOCATION, options("old"))
            .unwrap()
            .write_case(&old, Some("k-old"))
            .unwrap();
        storage
    };

    // The order of the writes: uncommit, clear, arrays, commit.
    let storage = fresh();
    let recorder = Arc::new(Faulty::new(&storage, usize::MAX, None));
    let as_storage: ReadableWritableListableStorage = recorder.clone();
    CaseStore::open_objects(as_storage, LOCATION)
        .unwrap()
        .write_case(&new, Some("k-new"))
        .unwrap();
    let log = recorder.log();
    assert_eq!(log[0], format!("erase {meta}"));
    assert_eq!(log[1], format!("erase_prefix {group}/"));
    assert_eq!(log.last().unwrap(), &format!("set {meta}"));
    assert_eq!(log.iter().filter(|op| op.ends_with(&meta)).count(), 2);
    assert!(
        log.iter()
            .any(|op| op.starts_with(&format!("set {group}/image/c/")))
    );
    // Nothing of the old case is left: the same keys as the new case written afresh.
    let alone = memory();
    CaseStore::create_or_open_objects(alone.clone(), LOCATION, options("new"))
        .unwrap()
        .write_case(&new, Some("k-new"))
        .unwrap();
    assert_eq!(
        keys(&storage, &format!("{group}/")),
        keys(&alone, &format!("{group}/"))
    );

    // Killed after every possible number of writes: the case is the old one whole, absent,
    // or the new one whole.
    for done in 0..=log.len() {
        let storage = fresh();
        let faulty: ReadableWritableListableStorage = Arc::new(Faulty::new(&storage, done, None));
        let result = CaseStore::open_objects(faulty, LOCATION)
            .unwrap()
            .write_case(&new, Some("k-new"));
        assert_eq!(result.is_ok(), done == log.len(), "after {done} writes");
        let store = open(&storage);
        let key = store.case_key(id).unwrap();
        if done == 0 {
            assert_eq!(key.as_deref(), Some("k-old"));
            same_sample(&old, &store.read_case(id).unwrap()).unwrap();
        } else if done == log.len() {
            assert_eq!(key.as_deref(), Some("k-new"));
            same_sample(&new, &store.read_case(id).unwrap()).unwrap();
        } else {
            assert_eq!(key, None, "after {done} of {} writes", log.len());
            assert!(!store.is_complete(id), "after {done} writes");
            assert!(store.complete_cases(None).unwrap().is_empty());
        }
    }
}

#[test]
fn verify_finds_a_damaged_chunk_on_object_storage() {
    let storage = memory();
    let store = CaseStore::create_or_open_objects(storage.clone(), LOCATION, options("h")).unwrap();
    store.write_case(&case("A", [9, 7, 5], 1.0), None).unwrap();
    let chunk = keys(&storage, "A/image/c/").into_iter().next().unwrap();
    let mut bytes = storage
        .get(&StoreKey::new(chunk.as_str()).unwrap())
        .unwrap()
        .unwrap()
        .to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    storage
        .set(&StoreKey::new(chunk.as_str()).unwrap(), Bytes::from(bytes))
        .unwrap();
    let problems = open(&storage).verify_case("A").unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with("field `image`"), "{problems:?}");
}

#[cfg(not(feature = "s3"))]
#[test]
fn an_s3_path_without_the_feature_names_the_url_and_the_fix() {
    let path = Path::new("s3://bucket/cache.zarr");
    for e in [
        CaseStore::open(path).err().unwrap(),
        CaseStore::create_or_open(path, StoreOptions::default())
            .err()
            .unwrap(),
    ] {
        assert!(
            e.message.contains("`s3://bucket/cache.zarr`")
                && e.message.contains("--features mtmed3d-stages/s3"),
            "{e}"
        );
    }
}

#[cfg(feature = "s3")]
#[test]
fn malformed_s3_urls_name_the_url_and_the_form() {
    for url in ["s3://", "s3:///cache.zarr"] {
        let e = CaseStore::open(Path::new(url)).err().unwrap().message;
        assert!(
            e.contains(&format!("`{url}`"))
                && e.contains("names no bucket (write s3://bucket/prefix)"),
            "{e}"
        );
    }
}

/// zarr-python, reading a store written through the object-store adapter onto a folder,
/// lists only the committed case as a member and reads its image bit for bit.
#[cfg(feature = "s3")]
#[test]
fn zarr_python_sees_only_committed_cases() {
    if std::env::var("MTMED3D_SKIP_ORACLES").is_ok_and(|v| v == "1") {
        eprintln!("MTMED3D_SKIP_ORACLES=1: zarr-python comparison skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let local = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
    let storage = super::s3::object_storage(local).unwrap();
    let store = CaseStore::create_or_open_objects(storage.clone(), LOCATION, options("h")).unwrap();
    let done = case("Case 7/a", [9, 7, 5], 1.0);
    store.write_case(&done, None).unwrap();
    let faulty: ReadableWritableListableStorage =
        Arc::new(Faulty::new(&storage, usize::MAX, Some("B/zarr.json")));
    let killed = CaseStore::open_objects(faulty, LOCATION).unwrap();
    assert!(killed.write_case(&case("B", [6, 8, 5], 2.0), None).is_err());
    assert!(dir.path().join("B/image/zarr.json").is_file());

    let script = r#"
import json, sys, warnings
import zarr
warnings.simplefilter("ignore")  # zarr-python warns about the prefix it skips
g = zarr.open_group(sys.argv[1], mode="r")
members = sorted(g.group_keys())
image = g[members[0]]["image"][...]
print(json.dumps({"members": members, "shape": list(image.shape), "values": image.ravel().tolist()}))
"#;
    let python = std::env::var("MTMED3D_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(&python)
        .args(["-c", script])
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {python}: {e} (pip install 'zarr>=3,<4', or MTMED3D_SKIP_ORACLES=1)")
        });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["members"], serde_json::json!(["Case~207~2Fa"]));
    assert_eq!(got["shape"], serde_json::json!([2, 9, 7, 5]));
    let Some(Field::F32(image)) = done.get("image") else {
        panic!("no image");
    };
    let values: Vec<f32> = got["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(values.len(), image.len());
    assert!(
        values
            .iter()
            .zip(image.iter())
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
}

/// The objects of a case on S3 have exactly the names of its files in a folder store, so a
/// store copied between the two (`aws s3 sync`) reads the same.
#[cfg(feature = "s3")]
#[test]
fn object_keys_are_the_file_names_of_a_folder_store() {
    use futures_util::StreamExt;
    use object_store::ObjectStore;

    let bucket = Arc::new(object_store::memory::InMemory::new());
    let storage = super::s3::object_storage(bucket.clone()).unwrap();
    let written = case("Case 7/a~b", [9, 7, 5], 1.0);
    CaseStore::create_or_open_objects(storage, LOCATION, options("h"))
        .unwrap()
        .write_case(&written, None)
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut objects: Vec<String> = runtime.block_on(
        bucket
            .list(None)
            .map(|m| m.unwrap().location.as_ref().to_string())
            .collect(),
    );
    objects.sort();

    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("s.zarr");
    CaseStore::create_or_open(&folder, options("h"))
        .unwrap()
        .write_case(&written, None)
        .unwrap();
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                out.push(
                    path.strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    let mut files = Vec::new();
    walk(&folder, &folder, &mut files);
    files.sort();
    assert!(
        files.contains(&"Case~207~2Fa~7Eb/zarr.json".to_string()),
        "{files:?}"
    );
    assert_eq!(objects, files);
}
