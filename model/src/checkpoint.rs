//! Checkpoints: one file holding the model configuration (JSON) and the weights (burn's named MessagePack
//! record, full precision).
//!
//! Layout: the magic `MTM3DCK1`, the configuration's length (u64, little endian), the configuration as
//! JSON, then the record. Loading compares the stored configuration with the requested one first and
//! refuses a mismatch, naming the first differing field and both values.
//!
//! Training checkpoints ([`save_training`]) add what a resumed run needs: the magic `MTM3DCK2`, then
//! length-prefixed sections — configuration (JSON), model record, training state (JSON, the caller's),
//! trainer state (JSON: steps, task balancer), then one optimizer record per model part. [`load`],
//! [`read_config`] and [`load_with_stored_config`] read both layouts, so a training checkpoint serves
//! inference as it is.

use std::fs;
use std::io::Write;
use std::path::Path;

use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::Backend;
use serde_json::Value;

use burn::tensor::backend::AutodiffBackend;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::model::MultiTaskModel;
use crate::training::{OptimizerRecords, Trainer, TrainerState};

const MAGIC: &[u8; 8] = b"MTM3DCK1";
const MAGIC_TRAINING: &[u8; 8] = b"MTM3DCK2";

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
    if bytes.len() >= 8 && &bytes[..8] == MAGIC_TRAINING {
        let sections = sections(path, &bytes)?;
        let (config, value) = parse_config(path, sections[0])?;
        return Ok((config, value, sections[1].to_vec()));
    }
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err(corrupt(path, "missing the MTM3DCK1 or MTM3DCK2 header"));
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")) as usize;
    let end = 16usize
        .checked_add(len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| corrupt(path, "configuration length runs past the end of the file"))?;
    let (config, value) = parse_config(path, &bytes[16..end])?;
    Ok((config, value, bytes[end..].to_vec()))
}

fn corrupt(path: &Path, reason: &str) -> ModelError {
    ModelError::CorruptCheckpoint {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn parse_config(path: &Path, json: &[u8]) -> Result<(ModelConfig, Value)> {
    let value: Value = serde_json::from_slice(json)
        .map_err(|e| corrupt(path, &format!("configuration is not JSON: {e}")))?;
    let config: ModelConfig = serde_json::from_value(value.clone())
        .map_err(|e| corrupt(path, &format!("configuration does not parse: {e}")))?;
    Ok((config, value))
}

/// The length-prefixed sections after the `MTM3DCK2` magic.
fn sections<'a>(path: &Path, bytes: &'a [u8]) -> Result<Vec<&'a [u8]>> {
    let mut out = Vec::new();
    let mut at = 8usize;
    while at < bytes.len() {
        let len_end = at
            .checked_add(8)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| corrupt(path, "a section length is cut off"))?;
        let len = u64::from_le_bytes(bytes[at..len_end].try_into().expect("8 bytes")) as usize;
        let end = len_end
            .checked_add(len)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| corrupt(path, "a section runs past the end of the file (truncated?)"))?;
        out.push(&bytes[len_end..end]);
        at = end;
    }
    if out.len() < 2 {
        return Err(corrupt(path, "fewer than two sections"));
    }
    Ok(out)
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

/// Writes a training checkpoint: the model and its configuration (readable by [`load`]), `state` (the
/// caller's bookkeeping: position in the data, schedule, best score …), the trainer's state and its
/// optimizers' moments. Written through a temporary file and a rename, like [`save`].
pub fn save_training<B: AutodiffBackend>(
    model: &MultiTaskModel<B>,
    trainer: &Trainer<B>,
    state: &Value,
    path: &Path,
) -> Result<()> {
    let config = serde_json::to_vec(trainer.config())?;
    let state = serde_json::to_vec(state)?;
    let trainer_state = serde_json::to_vec(&trainer.state())?;
    let record_err = |e: burn::record::RecorderError| ModelError::Record {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let (model_record, optimizer_records) = on_large_stack(path, || {
        let m = Recorder::<B>::record(&Rec::default(), model.clone().into_record(), ())
            .map_err(record_err)?;
        let o = trainer
            .optimizer_records()
            .into_iter()
            .map(|r| Recorder::<B>::record(&Rec::default(), r, ()).map_err(record_err))
            .collect::<Result<Vec<_>>>()?;
        Ok((m, o))
    })?;
    let mut parts: Vec<&[u8]> = vec![&config, &model_record, &state, &trainer_state];
    parts.extend(optimizer_records.iter().map(Vec::as_slice));
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("partial");
    let mut file = std::io::BufWriter::new(fs::File::create(&tmp).map_err(io)?);
    file.write_all(MAGIC_TRAINING).map_err(io)?;
    for part in parts {
        file.write_all(&(part.len() as u64).to_le_bytes())
            .map_err(io)?;
        file.write_all(part).map_err(io)?;
    }
    let file = file.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    drop(file);
    fs::rename(&tmp, path).map_err(io)
}

/// What [`load_training`] restores.
pub struct TrainingCheckpoint<B: AutodiffBackend> {
    /// The model.
    pub model: MultiTaskModel<B>,
    /// The trainer with its optimizers' moments and balancer state.
    pub trainer: Trainer<B>,
    /// The caller's state, as saved.
    pub state: Value,
}

/// Loads a training checkpoint made with `expected` (a checkpoint of another configuration is refused
/// with [`ModelError::ConfigMismatch`], one without training state with [`ModelError::CorruptCheckpoint`]).
pub fn load_training<B: AutodiffBackend>(
    path: &Path,
    expected: &ModelConfig,
    device: &B::Device,
) -> Result<TrainingCheckpoint<B>> {
    let model = load::<B>(path, expected, device)?;
    let bytes = fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.len() < 8 || &bytes[..8] != MAGIC_TRAINING {
        return Err(corrupt(
            path,
            "it holds weights only, no training state (MTM3DCK1): start a new run from it instead of resuming",
        ));
    }
    let sections = sections(path, &bytes)?;
    if sections.len() < 4 {
        return Err(corrupt(path, "the training state sections are missing"));
    }
    let state: Value = serde_json::from_slice(sections[2])
        .map_err(|e| corrupt(path, &format!("training state is not JSON: {e}")))?;
    let trainer_state: TrainerState = serde_json::from_slice(sections[3])
        .map_err(|e| corrupt(path, &format!("trainer state does not parse: {e}")))?;
    let record_err = |e: burn::record::RecorderError| ModelError::Record {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let records = on_large_stack(path, || {
        sections[4..]
            .iter()
            .map(|s| Recorder::<B>::load(&Rec::default(), s.to_vec(), device).map_err(record_err))
            .collect::<Result<OptimizerRecords<B>>>()
    })?;
    if records.len() != crate::training::Part::ALL.len() {
        return Err(corrupt(
            path,
            &format!(
                "{} optimizer records, expected one per model part ({})",
                records.len(),
                crate::training::Part::ALL.len()
            ),
        ));
    }
    let trainer = Trainer::restore(expected.clone(), trainer_state, records);
    Ok(TrainingCheckpoint {
        model,
        trainer,
        state,
    })
}
