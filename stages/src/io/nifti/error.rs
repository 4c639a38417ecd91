//! The NIfTI error type: every error names the file and the reason.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A NIfTI read or write failure: the file and what went wrong with it.
///
/// Displays as `path: reason`, e.g.
/// `brats/x_t1.nii.gz: truncated: expected 17856000 bytes of voxel data after offset 352, found 1024`.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", path.display())]
pub struct NiftiError {
    path: PathBuf,
    #[source]
    kind: NiftiErrorKind,
}

impl NiftiError {
    pub(crate) fn new(path: &Path, kind: NiftiErrorKind) -> NiftiError {
        NiftiError {
            path: path.to_path_buf(),
            kind,
        }
    }

    /// The file the error is about.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What went wrong.
    pub fn kind(&self) -> &NiftiErrorKind {
        &self.kind
    }

    /// Consume the error and return what went wrong.
    pub fn into_kind(self) -> NiftiErrorKind {
        self.kind
    }
}

/// Which part of a file ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// The 348- or 540-byte header.
    Header,
    /// Header extensions between the header and `vox_offset`.
    Extensions,
    /// The voxel data.
    VoxelData,
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Section::Header => "header",
            Section::Extensions => "header extensions",
            Section::VoxelData => "voxel data",
        })
    }
}

/// The reason behind a [`NiftiError`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NiftiErrorKind {
    /// The file could not be opened (missing, permissions...).
    #[error("cannot open: {0}")]
    Open(#[source] io::Error),
    /// Reading failed for a reason other than the file ending early.
    #[error("read failed: {0}")]
    Io(#[source] io::Error),
    /// Not a NIfTI-1 or NIfTI-2 file (bad `sizeof_hdr` or magic).
    #[error("not a NIfTI file: {0}")]
    NotNifti(String),
    /// A header field that is out of range or inconsistent.
    #[error("invalid header: {0}")]
    InvalidHeader(String),
    /// A valid NIfTI file this reader does not handle (complex or RGB data, >1 non-spatial dim).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The file (or its gzip stream) ends before the header says it should.
    #[error(
        "truncated: expected {expected} bytes of {section} after offset {offset}, found {found}{}",
        if *gzip { " (the gzip stream ends early)" } else { "" }
    )]
    Truncated {
        /// Which part ended early.
        section: Section,
        /// Bytes the header promises.
        expected: u64,
        /// Where the section starts (in the decompressed stream for gzip files).
        offset: u64,
        /// Bytes actually there.
        found: u64,
        /// Whether the file is gzip-compressed.
        gzip: bool,
    },
    /// The gzip stream is corrupt (bad deflate data or checksum).
    #[error("corrupt gzip stream: {0}")]
    Gzip(String),
    /// The voxel data would exceed [`ReadOptions::max_data_bytes`](super::ReadOptions::max_data_bytes).
    #[error("voxel data needs {bytes} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        /// Bytes the header asks for.
        bytes: u64,
        /// The configured limit.
        limit: u64,
    },
    /// NaN or infinite voxels, with [`NonFinitePolicy::Error`](super::NonFinitePolicy::Error).
    #[error("{count} NaN or infinite voxels (the first at [c, x, y, z] = {first:?})")]
    NonFinite {
        /// How many voxels are not finite.
        count: usize,
        /// The first one, in `[C, X, Y, Z]` order.
        first: [usize; 4],
    },
    /// [`NiftiImage::into_u8_labels`](super::NiftiImage::into_u8_labels) found a value that is
    /// not an integer in 0..=255.
    #[error(
        "not a u8 label image: value {value} at [c, x, y, z] = {index:?} is not an integer in 0..=255"
    )]
    NotLabels {
        /// The offending value (after scaling).
        value: f64,
        /// Where it is.
        index: [usize; 4],
    },
    /// The writer was given something it cannot store (non-finite affine, empty array...).
    #[error("cannot write: {0}")]
    InvalidInput(String),
    /// Writing, syncing or renaming failed.
    #[error("write failed: {0}")]
    Write(#[source] io::Error),
}
