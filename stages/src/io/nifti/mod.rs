//! NIfTI-1 and NIfTI-2 reading and writing.
//!
//! ```
//! use mtmed3d_stages::io::nifti::{read_nifti, write_nifti, VoxelData, WriteOptions};
//! use mtmed3d_stages::spatial::orientation::{reorient, AxCodes};
//! use ndarray::Array4;
//!
//! # let dir = std::env::temp_dir().join(format!("nifti-mod-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! # let path = dir.join("t1.nii.gz");
//! # let affine = [[-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
//! # write_nifti(&path, Array4::<i16>::zeros((1, 8, 8, 4)).view(), &affine, &WriteOptions::default())?;
//! let img = read_nifti(&path)?;                  // .nii, .nii.gz, .hdr/.img; NIfTI-1 or -2
//! assert_eq!(img.shape(), [1, 8, 8, 4]);          // channel-first [C, X, Y, Z]
//! assert!(matches!(img.data, VoxelData::I16(_))); // stored type, unscaled
//! let t1 = img.to_f32();                          // scl_slope/scl_inter applied
//! let ras = reorient(t1.view(), &img.affine(), AxCodes::RAS)?; // = nibabel's as_closest_canonical
//! assert_eq!(ras.array.shape(), &[1, 8, 8, 4]);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The reader validates every header field before using it, so no input makes it panic or
//! allocate more than the file (or, for gzip, the decompressed stream) really holds, within
//! [`ReadOptions::max_data_bytes`]. Errors name the file and the reason ([`NiftiError`]).
//! The affine is the one nibabel reports (`img.affine`): sform when `sform_code` is set, else
//! qform, else one built from pixdim; nibabel's repairs of bad pixdim, qfac and xform codes are
//! applied the same way.

mod data;
mod error;
mod header;
mod inflate;
mod read;
mod write;

pub use data::{NiftiElement, VoxelData};
pub use error::{NiftiError, NiftiErrorKind, Section};
pub use header::{
    DataType, Endianness, NIFTI1_HEADER_SIZE, NIFTI2_HEADER_SIZE, NiftiExtension, NiftiHeader,
    NiftiVersion, xform,
};
pub use read::{
    NiftiImage, NiftiVoxels, NonFinitePolicy, OpenNifti, ReadOptions, VoxelScan, open_nifti,
    read_header, read_nifti, read_nifti_bytes, read_nifti_with,
};
pub use write::{WriteOptions, write_nifti};
