//! Writing NIfTI-1 `.nii` / `.nii.gz`, atomically.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use flate2::Compression;
use flate2::write::GzEncoder;
use ndarray::ArrayView4;

use super::data::{NiftiElement, dispatch, encode};
use super::error::{NiftiError, NiftiErrorKind};
use super::header::{NiftiHeader, xform};
use super::read::NiftiImage;
use crate::spatial::orientation::Affine;

/// Writer settings.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOptions {
    /// `sform_code` (default [`xform::SCANNER_ANAT`]).
    pub sform_code: i32,
    /// `qform_code` (default [`xform::SCANNER_ANAT`]).
    pub qform_code: i32,
    /// `(scl_slope, scl_inter)` to store; the voxels are written as given (default none).
    pub scaling: Option<(f64, f64)>,
    /// `descrip` (cut to 79 bytes).
    pub descrip: String,
    /// gzip level 0-9 for `.nii.gz` (default 6, zlib's default balance of size and speed).
    pub compression_level: u32,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            sform_code: xform::SCANNER_ANAT,
            qform_code: xform::SCANNER_ANAT,
            scaling: None,
            descrip: String::new(),
            compression_level: 6,
        }
    }
}

/// Write a `[C, X, Y, Z]` array as NIfTI-1 (`.nii.gz` names are gzipped) with `affine` stored
/// as both sform and qform. The file appears only when complete: data go to a temporary file
/// in the same directory, which is synced and renamed over `path`.
///
/// ```
/// use mtmed3d_stages::io::nifti::{read_nifti, write_nifti, WriteOptions};
/// use ndarray::Array4;
///
/// let dir = std::env::temp_dir().join(format!("nifti-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let mask = Array4::<u8>::from_shape_fn((1, 4, 5, 6), |(_, x, y, z)| ((x + y + z) % 3) as u8);
/// let affine = [[-1.0, 0.0, 0.0, 90.0], [0.0, -1.0, 0.0, 126.0], [0.0, 0.0, 1.0, -72.0], [0.0, 0.0, 0.0, 1.0]];
/// let path = dir.join("mask.nii.gz");
/// write_nifti(&path, mask.view(), &affine, &WriteOptions::default())?;
/// let back = read_nifti(&path)?;
/// assert_eq!(back.affine(), affine);
/// assert_eq!(back.into_u8_labels()?, mask);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_nifti<T: NiftiElement>(
    path: impl AsRef<Path>,
    data: ArrayView4<'_, T>,
    affine: &Affine,
    options: &WriteOptions,
) -> Result<(), NiftiError> {
    let path = path.as_ref();
    let fail = |k| NiftiError::new(path, k);
    let shape = [
        data.shape()[0],
        data.shape()[1],
        data.shape()[2],
        data.shape()[3],
    ];
    let mut header = NiftiHeader::for_image(shape, T::DATATYPE, affine).map_err(fail)?;
    header.sform_code = options.sform_code;
    header.qform_code = options.qform_code;
    if let Some((slope, inter)) = options.scaling {
        header.scl_slope = slope;
        header.scl_inter = inter;
    }
    header.descrip = options.descrip.clone();
    write_parts(path, &header, &encode(data), options.compression_level)
}

impl NiftiImage {
    /// Write this image as NIfTI-1, keeping its header fields (codes, scaling, intent,
    /// description, extensions) and its stored data type. Data are written little-endian.
    pub fn write(&self, path: impl AsRef<Path>, compression_level: u32) -> Result<(), NiftiError> {
        let path = path.as_ref();
        let mut header = self.header.clone();
        let shape = self.data.shape();
        let fail = |k| NiftiError::new(path, k);
        let fresh =
            NiftiHeader::for_image(shape, self.data.datatype(), &self.affine()).map_err(fail)?;
        // Shape and type follow the data, which may have been edited since reading.
        header.dim = fresh.dim;
        header.datatype = fresh.datatype;
        header.bitpix = fresh.bitpix;
        let bytes = dispatch!(&self.data, a => encode(a.view()));
        write_parts(path, &header, &bytes, compression_level)
    }
}

/// Serialise the header, then write header + voxels to a temporary file and rename it.
fn write_parts(
    path: &Path,
    header: &NiftiHeader,
    voxels: &[u8],
    level: u32,
) -> Result<(), NiftiError> {
    let fail = |k| NiftiError::new(path, k);
    let head = header.to_nifti1_bytes().map_err(fail)?;
    let gzip = path.to_string_lossy().to_lowercase().ends_with(".gz");
    let tmp = temp_path(path);
    let result = (|| -> io::Result<()> {
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        let file = if gzip {
            let mut enc = GzEncoder::new(
                BufWriter::with_capacity(1 << 20, file),
                Compression::new(level.min(9)),
            );
            enc.write_all(&head)?;
            enc.write_all(voxels)?;
            enc.finish()?.into_inner().map_err(|e| e.into_error())?
        } else {
            let mut w = BufWriter::with_capacity(1 << 20, file);
            w.write_all(&head)?;
            w.write_all(voxels)?;
            w.into_inner().map_err(|e| e.into_error())?
        };
        file.sync_all()?;
        drop::<File>(file);
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        fail(NiftiErrorKind::Write(e))
    })
}

/// `dir/.name.tmp-<pid>-<n>`: same directory (so the rename is atomic), hidden, unique per
/// process and call.
fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}
