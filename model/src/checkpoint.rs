//! Checkpoints: one file holding the model configuration (JSON) and the weights (burn's named MessagePack
//! record, full precision).
//!
//! Layout: the magic `MTM3DCK1`, the configuration's length (u64, little endian), the configuration as
//! JSON, then the record. Loading compares the stored configuration with the requested one first and
//! refuses a mismatch, naming the first differing field and both values.

use std::fs;
use std::io::Write;
use std::path::Path;

use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::Backend;
use serde_json::Value;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::model::MultiTaskModel;

const MAGIC: &[u8; 8] = b"MTM3DCK1";

type Rec = NamedMpkBytesRecorder<FullPrecisionSettings>;

/// Writes `model` and its `config` to `path` (through a temporary file and a rename, so an interrupted
/// save never leaves a truncated checkpoint under the final name).
pub fn save<B: Backend>(
    model: &MultiTaskModel<B>,
    config: &ModelConfig,
    path: &Path,
) -> Result<()> {
    let json = serde_json::to_vec(config)?;
    let record = on_large_stack(path, || {
        Recorder::<B>::record(&Rec::default(), model.clone().into_record(), ()).map_err(|e| {
            ModelError::Record {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        })
    })?;
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("partial");
    let mut file = fs::File::create(&tmp).map_err(io)?;
    file.write_all(MAGIC).map_err(io)?;
    file.write_all(&(json.len() as u64).to_le_bytes())
        .map_err(io)?;
    file.write_all(&json).map_err(io)?;
    file.write_all(&record).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    fs::rename(&tmp, path).map_err(io)
}

fn split(path: &Path) -> Result<(ModelConfig, Value, Vec<u8>)> {
    let bytes = fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let corrupt = |reason: &str| ModelError::CorruptCheckpoint {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err(corrupt("missing the MTM3DCK1 header"));
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")) as usize;
    let end = 16usize
        .checked_add(len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| corrupt("configuration length runs past the end of the file"))?;
    let value: Value = serde_json::from_slice(&bytes[16..end])
        .map_err(|e| corrupt(&format!("configuration is not JSON: {e}")))?;
    let config: ModelConfig = serde_json::from_value(value.clone())
        .map_err(|e| corrupt(&format!("configuration does not parse: {e}")))?;
    Ok((config, value, bytes[end..].to_vec()))
}

/// The configuration stored in a checkpoint.
pub fn read_config(path: &Path) -> Result<ModelConfig> {
    split(path).map(|(config, ..)| config)
}

/// The first field (dotted path) where two JSON values differ, with both values.
pub fn first_difference(
    saved: &Value,
    expected: &Value,
    prefix: &str,
) -> Option<(String, String, String)> {
    match (saved, expected) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => first_difference(x, y, &path),
                    (x, y) => Some((path, show(x), show(y))),
                }
            })
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(x, y, &format!("{prefix}[{i}]"))),
        _ if saved == expected => None,
        _ => Some((prefix.to_string(), saved.to_string(), expected.to_string())),
    }
}

fn show(v: Option<&Value>) -> String {
    v.map_or_else(|| "absent".to_string(), Value::to_string)
}

/// Loads a checkpoint made with `expected`; a checkpoint of any other configuration is refused with
/// [`ModelError::ConfigMismatch`].
pub fn load<B: Backend>(
    path: &Path,
    expected: &ModelConfig,
    device: &B::Device,
) -> Result<MultiTaskModel<B>> {
    let (_, saved, record) = split(path)?;
    let wanted = serde_json::to_value(expected)?;
    if let Some((field, saved, expected)) = first_difference(&saved, &wanted, "") {
        return Err(ModelError::ConfigMismatch {
            path: path.to_path_buf(),
            field,
            saved,
            expected,
        });
    }
    // the model is tens of kilobytes by value: it crosses the thread boundary boxed
    let model = on_large_stack(path, || {
        let model = expected.init::<B>(device)?;
        let record = Recorder::<B>::load(&Rec::default(), record, device).map_err(|e| {
            ModelError::Record {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
        Ok(Box::new(model.load_record(record)))
    })?;
    Ok(*model)
}

/// Runs `f` on a thread with a 64 MiB stack.
///
/// Encoding and decoding a record recurse once per nesting level of the model, and unoptimised builds use
/// more stack per level than a test thread's 2 MiB.
fn on_large_stack<T: Send>(path: &Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("checkpoint-record".into())
            .stack_size(64 << 20)
            .spawn_scoped(scope, f)
            .map_err(|source| ModelError::Io {
                path: path.to_path_buf(),
                source,
            })?
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Loads a checkpoint with the configuration stored in it.
pub fn load_with_stored_config<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<(MultiTaskModel<B>, ModelConfig)> {
    let config = read_config(path)?;
    let model = load(path, &config, device)?;
    Ok((model, config))
}
