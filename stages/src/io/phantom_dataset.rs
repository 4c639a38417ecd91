//! Writes a synthetic dataset in the BraTS 2018 layout (`mtmed3d phantom`).
//!
//! `<out>/HGG/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz` and the same under `LGG/`, stored
//! LPS like BraTS, t1…flair as int16 (the BraTS data type) and seg as uint8. Each file appears
//! only when complete, and a case whose five files all exist is skipped, so an interrupted
//! run can simply be started again.

use std::path::{Path, PathBuf};

use ndarray::Axis;

use super::nifti::{NiftiError, WriteOptions, write_nifti};
use super::phantom::{MODALITIES, PhantomConfig, PhantomError, try_generate_case};
use super::sources::phantom_id;

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(transparent)]
    Config(#[from] PhantomError),
    #[error(transparent)]
    Nifti(#[from] NiftiError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What happened to one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseWritten {
    Written { id: String, grade: String },
    AlreadyComplete { id: String },
}

fn case_files(out: &Path, grade: &str, id: &str) -> Vec<PathBuf> {
    let dir = out.join(grade).join(id);
    MODALITIES
        .iter()
        .chain(std::iter::once(&"seg"))
        .map(|m| dir.join(format!("{id}_{m}.nii.gz")))
        .collect()
}

/// Writes case `index` of the series; skips it when its files already exist.
pub fn write_case(
    out: &Path,
    config: &PhantomConfig,
    seed: u64,
    index: usize,
) -> Result<CaseWritten, DatasetError> {
    let id = phantom_id(index);
    for grade in ["HGG", "LGG"] {
        if case_files(out, grade, &id).iter().all(|p| p.is_file()) {
            return Ok(CaseWritten::AlreadyComplete { id });
        }
    }
    let case = try_generate_case(config, seed, index)?;
    let grade = case.grade.as_str().to_string();
    let files = case_files(out, &grade, &id);
    let dir = files[0].parent().expect("case files live in a folder");
    std::fs::create_dir_all(dir).map_err(|source| DatasetError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let options = WriteOptions {
        descrip: format!("mtmed3d phantom seed {seed} case {index}"),
        ..WriteOptions::default()
    };
    for (volume, path) in case.modalities.iter().zip(&files) {
        // Rounded to int16 like the BraTS files, so readers meet the same data type.
        let stored = volume.mapv(|v| v.round().clamp(0.0, f32::from(i16::MAX)) as i16);
        write_nifti(
            path,
            stored.insert_axis(Axis(0)).view(),
            &case.affine,
            &options,
        )?;
    }
    write_nifti(
        &files[4],
        case.seg.view().insert_axis(Axis(0)),
        &case.affine,
        &options,
    )?;
    Ok(CaseWritten::Written { id, grade })
}
