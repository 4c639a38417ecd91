//! Reading `.nii`, `.nii.gz` and `.hdr`/`.img` pairs.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use flate2::bufread::MultiGzDecoder;

use super::inflate::{gunzip_single_member, release};
use ndarray::Array4;

use super::data::{
    NiftiElement, VoxelData, Window, count_non_finite, decode, decode_f32, decode_f32_into,
    decode_f32_window_into, dispatch, scan_f32, unravel, with_element, zero_non_finite,
};
use super::error::{NiftiError, NiftiErrorKind, Section};
use super::header::{
    DataType, Endianness, NIFTI2_HEADER_SIZE, NiftiHeader, NiftiVersion, detect, parse_extensions,
};
use crate::spatial::orientation::Affine;

/// What to do with NaN or infinite voxels in float images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NonFinitePolicy {
    /// Set them to 0 and log a warning with their count (the default). Downstream statistics
    /// (normalisation, cropping to foreground) would otherwise turn NaN everywhere; 0 is the
    /// background value of MR and the value nnU-Net substitutes too.
    #[default]
    ReplaceWithZero,
    /// Fail the read with [`NiftiErrorKind::NonFinite`].
    Error,
    /// Keep them as stored (nibabel's behaviour).
    Keep,
}

/// Reader settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOptions {
    /// NaN/infinity handling for float data.
    pub non_finite: NonFinitePolicy,
    /// Convert the voxels to f32 with `scl_slope`/`scl_inter` applied while decoding, in one
    /// pass without an array of the stored type. The returned header then describes what it
    /// holds: datatype float32, no scaling. Use it for images headed for f32 processing;
    /// leave it off for label maps and to keep stored values.
    pub to_f32: bool,
    /// Largest voxel-data size accepted, in bytes. Plain files are also checked against their
    /// length, but a gzip stream's size is only known by decompressing it, so this bounds what a
    /// corrupt or hostile header can make the reader allocate.
    pub max_data_bytes: u64,
}

impl Default for ReadOptions {
    fn default() -> Self {
        // 16 GiB: four times a 512×512×2000 f32 CT, far beyond any MR volume.
        ReadOptions {
            non_finite: NonFinitePolicy::default(),
            to_f32: false,
            max_data_bytes: 16 << 30,
        }
    }
}

/// A decoded NIfTI image: header, voxels as stored, and the affine nibabel would report.
#[derive(Debug, Clone)]
pub struct NiftiImage {
    /// The file it came from (for messages).
    pub path: PathBuf,
    /// Every header field as stored, extensions included.
    pub header: NiftiHeader,
    /// The voxels, unscaled, `[C, X, Y, Z]`.
    pub data: VoxelData,
    affine: Affine,
    non_finite: usize,
}

impl NiftiImage {
    /// Assemble an image from parts (e.g. to write a modified copy); the affine is recomputed
    /// from the header.
    pub fn new(
        path: impl Into<PathBuf>,
        header: NiftiHeader,
        data: VoxelData,
    ) -> Result<NiftiImage, NiftiError> {
        let path = path.into();
        let affine = header.affine().map_err(|k| NiftiError::new(&path, k))?;
        Ok(NiftiImage {
            path,
            header,
            data,
            affine,
            non_finite: 0,
        })
    }

    /// The voxel-to-world affine (sform, else qform, else from pixdim, as nibabel chooses).
    pub fn affine(&self) -> Affine {
        self.affine
    }

    /// Voxel sizes `pixdim[1..=3]` as nibabel reports them (`header.get_zooms()[:3]`).
    pub fn spacing(&self) -> [f64; 3] {
        self.header.zooms()
    }

    /// `[C, X, Y, Z]`.
    pub fn shape(&self) -> [usize; 4] {
        self.data.shape()
    }

    /// `(slope, inter)` if the stored values are scaled.
    pub fn scaling(&self) -> Option<(f64, f64)> {
        // Validated when the header was parsed.
        self.header.scaling().ok().flatten()
    }

    /// How many NaN/infinite voxels the file had (already replaced by 0 under
    /// [`NonFinitePolicy::ReplaceWithZero`]).
    pub fn non_finite_count(&self) -> usize {
        self.non_finite
    }

    /// The voxel values as f32 with `scl_slope`/`scl_inter` applied.
    pub fn to_f32(&self) -> Array4<f32> {
        self.data.to_f32(self.scaling())
    }

    /// [`to_f32`](Self::to_f32), reusing the buffer when the file holds unscaled f32.
    pub fn into_f32(self) -> Array4<f32> {
        let scaling = self.scaling();
        self.data.into_f32(scaling)
    }

    /// The voxels as u8 labels, checking that every value (after scaling) is an integer in
    /// 0..=255. Label maps are often stored as int16 or float32; this accepts any type.
    pub fn into_u8_labels(self) -> Result<Array4<u8>, NiftiError> {
        let scaling = self.scaling();
        let shape = self.data.shape();
        let data = match (self.data, scaling) {
            (VoxelData::U8(a), None) => return Ok(a),
            (data, _) => data,
        };
        fn conv<T: NiftiElement>(
            a: &Array4<T>,
            scaling: Option<(f64, f64)>,
        ) -> Result<Vec<u8>, (f64, usize)> {
            let src = a.as_slice().expect("voxel arrays are standard layout");
            let (slope, inter) = scaling.unwrap_or((1.0, 0.0));
            let mut out = Vec::with_capacity(src.len());
            for (i, &v) in src.iter().enumerate() {
                let f = v.to_f64() * slope + inter;
                if !(0.0..=255.0).contains(&f) || f.fract() != 0.0 {
                    return Err((f, i));
                }
                out.push(f as u8);
            }
            Ok(out)
        }
        let converted = dispatch!(&data, a => conv(a, scaling));
        match converted {
            Ok(v) => Ok(Array4::from_shape_vec(shape, v).expect("same length")),
            Err((value, flat)) => Err(NiftiError::new(
                &self.path,
                NiftiErrorKind::NotLabels {
                    value,
                    index: unravel(flat, shape),
                },
            )),
        }
    }
}

/// Read a `.nii`, `.nii.gz`, `.hdr`/`.img` (optionally gzipped) file with default options.
///
/// ```no_run
/// use mtmed3d_stages::io::nifti::read_nifti;
/// let img = read_nifti("brats/BraTS19_001/BraTS19_001_t1.nii.gz")?;
/// assert_eq!(img.shape(), [1, 240, 240, 155]);
/// let t1 = img.to_f32(); // [1, 240, 240, 155] f32, scaling applied
/// # Ok::<(), mtmed3d_stages::io::nifti::NiftiError>(())
/// ```
pub fn read_nifti(path: impl AsRef<Path>) -> Result<NiftiImage, NiftiError> {
    read_nifti_with(path, &ReadOptions::default())
}

/// [`read_nifti`] with explicit options.
pub fn read_nifti_with(
    path: impl AsRef<Path>,
    options: &ReadOptions,
) -> Result<NiftiImage, NiftiError> {
    let path = path.as_ref();
    read_path(path, options).map_err(|(p, k)| NiftiError::new(p.as_deref().unwrap_or(path), k))
}

/// Read only the header (and extensions) of a file.
pub fn read_header(path: impl AsRef<Path>) -> Result<NiftiHeader, NiftiError> {
    let path = path.as_ref();
    let fail = |k| NiftiError::new(path, k);
    let mut source = Source::open(path).map_err(fail)?;
    let mut header = read_header_block(&mut source).map_err(fail)?;
    if !header.pair {
        read_extensions(&mut source, &mut header, &ReadOptions::default()).map_err(fail)?;
    }
    Ok(header)
}

/// Decode a whole single-file image held in memory (`.nii` bytes, gzipped or not). `name` is
/// only used in error messages.
pub fn read_nifti_bytes(
    bytes: &[u8],
    name: impl AsRef<Path>,
    options: &ReadOptions,
) -> Result<NiftiImage, NiftiError> {
    let name = name.as_ref();
    if let Some(isize) = gz_isize(bytes)
        && bytes.starts_with(&GZIP_MAGIC)
        && plausible_gzip_size(bytes.len() as u64, isize)
        && let Some(data) = gunzip_single_member(bytes, isize as usize)
    {
        let mut source = Source::inflated(data);
        return read_single(&mut source, name, options).map_err(|k| NiftiError::new(name, k));
    }
    let mut source = Source::from_reader(
        BufReader::new(io::Cursor::new(bytes)),
        Some(bytes.len() as u64),
        gz_isize(bytes),
    )
    .map_err(|k| NiftiError::new(name, k))?;
    read_single(&mut source, name, options).map_err(|k| NiftiError::new(name, k))
}

type PathError = (Option<PathBuf>, NiftiErrorKind);

/// Dispatch on single file vs pair; errors carry the path of the file they are about.
fn read_path(path: &Path, options: &ReadOptions) -> Result<NiftiImage, PathError> {
    let open = open_path(path, options)?;
    open.read_image()
}

/// A NIfTI file whose header (and extensions) have been read and checked, and whose voxels
/// are not decoded yet. Lets a caller compare the shapes and affines of several files, then
/// decode each one straight into its place in a shared buffer ([`OpenNifti::read_f32_into`]).
///
/// ```no_run
/// use mtmed3d_stages::io::nifti::{open_nifti, ReadOptions};
/// let files = ["case_t1.nii.gz", "case_t2.nii.gz"];
/// let first = open_nifti(files[0], &ReadOptions::default())?;
/// let [_, x, y, z] = first.shape();
/// let mut stacked = vec![0f32; files.len() * x * y * z];
/// first.read_f32_into(&mut stacked[..x * y * z])?;
/// open_nifti(files[1], &ReadOptions::default())?.read_f32_into(&mut stacked[x * y * z..])?;
/// # Ok::<(), mtmed3d_stages::io::nifti::NiftiError>(())
/// ```
pub struct OpenNifti<'a> {
    /// The file named by the caller (the `.hdr` or `.img` of a pair, or the single file).
    path: PathBuf,
    /// The file that holds the voxels, named in errors about them.
    data_path: PathBuf,
    header: NiftiHeader,
    shape: [usize; 4],
    affine: Affine,
    /// Positioned at the first voxel byte.
    source: Source<'a>,
    options: ReadOptions,
}

/// Read the header of a `.nii`, `.nii.gz` or `.hdr`/`.img` file and get ready to decode its
/// voxels; see [`OpenNifti`].
pub fn open_nifti(
    path: impl AsRef<Path>,
    options: &ReadOptions,
) -> Result<OpenNifti<'static>, NiftiError> {
    let path = path.as_ref();
    open_path(path, options).map_err(|(p, k)| NiftiError::new(p.as_deref().unwrap_or(path), k))
}

impl<'a> OpenNifti<'a> {
    fn new(
        path: &Path,
        data_path: &Path,
        header: NiftiHeader,
        source: Source<'a>,
        options: &ReadOptions,
    ) -> Result<OpenNifti<'a>, NiftiErrorKind> {
        Ok(OpenNifti {
            path: path.to_path_buf(),
            data_path: data_path.to_path_buf(),
            shape: header.shape()?,
            affine: header.affine()?,
            header,
            source,
            options: *options,
        })
    }

    /// Every header field as stored, extensions included.
    pub fn header(&self) -> &NiftiHeader {
        &self.header
    }

    /// `[C, X, Y, Z]` of the voxels to come.
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// The voxel-to-world affine, as [`NiftiImage::affine`] will report it.
    pub fn affine(&self) -> Affine {
        self.affine
    }

    /// Voxel sizes, as [`NiftiImage::spacing`] will report them.
    pub fn spacing(&self) -> [f64; 3] {
        self.header.zooms()
    }

    /// Decode the voxels as [`read_nifti_with`] does.
    pub fn read(self) -> Result<NiftiImage, NiftiError> {
        let data_path = self.data_path.clone();
        self.read_image()
            .map_err(|(p, k)| NiftiError::new(p.as_deref().unwrap_or(&data_path), k))
    }

    fn read_image(mut self) -> Result<NiftiImage, PathError> {
        let image = read_voxels(
            &mut self.source,
            self.header,
            &self.data_path,
            &self.options,
        )
        .map_err(|k| (Some(self.data_path.clone()), k))?;
        Ok(NiftiImage {
            path: self.path,
            ..image
        })
    }

    /// Decode the voxels as f32 with the scaling applied (what `to_f32: true` gives) into
    /// `out`, in `[C, X, Y, Z]` order, and apply the NaN policy; returns how many voxels
    /// were NaN or infinite.
    ///
    /// # Panics
    /// If `out` does not hold exactly the product of [`shape`](Self::shape) values.
    pub fn read_f32_into(mut self, out: &mut [f32]) -> Result<usize, NiftiError> {
        let data_path = self.data_path.clone();
        read_voxels_f32_into(
            &mut self.source,
            &self.header,
            &data_path,
            &self.options,
            out,
        )
        .map_err(|k| NiftiError::new(&data_path, k))
    }

    /// Reads the voxel bytes without decoding them, for [`NiftiVoxels::scan_f32`] and windowed
    /// decodes: a caller that crops gets only the window it keeps, never the whole volume
    /// as f32. A gzip file's bytes stay where it was inflated (no copy).
    pub fn into_voxels(mut self) -> Result<NiftiVoxels<'a>, NiftiError> {
        let at = |k| NiftiError::new(&self.data_path, k);
        let start = match &self.source.reader {
            Reader::Memory(cursor) => Some(cursor.position() as usize),
            Reader::Stream(_) => None,
        };
        let raw = match voxel_bytes(&mut self.source, &self.header, &self.options).map_err(at)? {
            Cow::Borrowed(bytes) => {
                let start = start.expect("only an inflated file's bytes are borrowed");
                RawBytes::InSource(start..start + bytes.len())
            }
            Cow::Owned(bytes) => RawBytes::Owned(bytes),
        };
        let may_be_non_finite = may_be_non_finite(&self.header).map_err(at)?;
        let scaling = self.header.scaling().map_err(at)?;
        Ok(NiftiVoxels {
            open: self,
            raw,
            scaling,
            may_be_non_finite,
        })
    }
}

enum RawBytes {
    /// A range of the inflated file held by the source.
    InSource(std::ops::Range<usize>),
    Owned(Vec<u8>),
}

/// A file's voxel bytes, read but not decoded; see [`OpenNifti::into_voxels`].
pub struct NiftiVoxels<'a> {
    open: OpenNifti<'a>,
    raw: RawBytes,
    scaling: Option<(f64, f64)>,
    may_be_non_finite: bool,
}

/// What [`NiftiVoxels::scan_f32`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoxelScan {
    /// The spatial box `[lo, hi)` of the voxels that are nonzero as f32 (any channel).
    pub nonzero: Option<([usize; 3], [usize; 3])>,
    /// NaN or infinite voxels (0 where the datatype and scaling cannot make them).
    pub non_finite: usize,
}

impl NiftiVoxels<'_> {
    /// `[C, X, Y, Z]` of the voxels.
    pub fn shape(&self) -> [usize; 4] {
        self.open.shape
    }

    fn bytes(&self) -> &[u8] {
        match (&self.raw, &self.open.source.reader) {
            (RawBytes::Owned(bytes), _) => bytes,
            (RawBytes::InSource(range), Reader::Memory(cursor)) => &cursor.get_ref()[range.clone()],
            (RawBytes::InSource(_), Reader::Stream(_)) => {
                unreachable!("bytes in the source only for an inflated file")
            }
        }
    }

    /// Scans every voxel as [`OpenNifti::read_f32_into`] would decode it, with the options'
    /// NaN policy: an error for non-finite voxels anywhere under
    /// [`NonFinitePolicy::Error`], and under [`NonFinitePolicy::ReplaceWithZero`] they are
    /// not part of the nonzero box (they will be 0, and the window decode says so).
    pub fn scan_f32(&self) -> Result<VoxelScan, NiftiError> {
        let header = &self.open.header;
        let policy = self.open.options.non_finite;
        let big = header.endianness == Endianness::Big;
        let (raw, shape, scaling) = (self.bytes(), self.open.shape, self.scaling);
        let (check, zero) = (
            self.may_be_non_finite,
            policy == NonFinitePolicy::ReplaceWithZero,
        );
        let scan = with_element!(header.datatype, T => scan_f32::<T>(raw, shape, big, scaling, check, zero));
        // Replacing or keeping them is the window decode's part: only it knows which it keeps.
        if scan.non_finite > 0 && policy == NonFinitePolicy::Error {
            let first = unravel(scan.first_non_finite.unwrap_or(0), shape);
            return Err(NiftiError::new(
                &self.open.data_path,
                NiftiErrorKind::NonFinite {
                    count: scan.non_finite,
                    first,
                },
            ));
        }
        Ok(VoxelScan {
            nonzero: scan.bounds,
            non_finite: scan.non_finite,
        })
    }

    /// Decodes the window of spatial `size` starting at `start` (negative or past the end:
    /// zero padding) as f32 with the scaling applied into `out` (`[C, size]`), every value of
    /// which it writes. Non-finite values in the window follow the options' NaN policy
    /// ([`scan_f32`](Self::scan_f32) is what checks the whole volume); returns how many the
    /// window held.
    ///
    /// # Panics
    /// If `out` does not hold exactly `C × size` values.
    pub fn read_f32_window_into(
        &self,
        start: [i64; 3],
        size: [usize; 3],
        out: &mut [f32],
    ) -> Result<usize, NiftiError> {
        let [c, x, y, z] = self.open.shape;
        assert_eq!(
            out.len(),
            c * size.iter().product::<usize>(),
            "read_f32_window_into needs a buffer of exactly the window's size"
        );
        let Some(window) = Window::of_crop(start, size, [x, y, z]) else {
            out.fill(0.0);
            return Ok(0);
        };
        if !window.fills_output() {
            out.fill(0.0);
        }
        let header = &self.open.header;
        let big = header.endianness == Endianness::Big;
        let (raw, shape, scaling) = (self.bytes(), self.open.shape, self.scaling);
        let w = &window;
        with_element!(header.datatype, T => decode_f32_window_into::<T>(raw, shape, big, scaling, w, out));
        if !self.may_be_non_finite {
            return Ok(0);
        }
        let out_shape = [c, size[0], size[1], size[2]];
        non_finite_policy_on(
            out,
            out_shape,
            &self.open.data_path,
            self.open.options.non_finite,
        )
        .map_err(|k| NiftiError::new(&self.open.data_path, k))
    }
}

/// Open a single file or a pair up to its first voxel byte.
fn open_path(path: &Path, options: &ReadOptions) -> Result<OpenNifti<'static>, PathError> {
    let at = |p: &Path| {
        let p = p.to_path_buf();
        move |k| (Some(p), k)
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    let header_path = match name {
        // An `.img` given directly: its header is the sibling `.hdr`.
        n if n.ends_with(".img") => sibling(path, "hdr")?,
        n if n.ends_with(".hdr") => path.to_path_buf(),
        _ => {
            let mut source = Source::open(path).map_err(at(path))?;
            let header = open_single(&mut source, options).map_err(at(path))?;
            return OpenNifti::new(path, path, header, source, options).map_err(at(path));
        }
    };
    let mut source = Source::open(&header_path).map_err(at(&header_path))?;
    let mut header = read_header_block(&mut source).map_err(at(&header_path))?;
    if !header.pair {
        return Err((
            Some(header_path),
            NiftiErrorKind::InvalidHeader("a .hdr file with single-file magic (n+1/n+2)".into()),
        ));
    }
    // Pair extensions follow the header in the .hdr file, up to its end.
    let mut rest = Vec::new();
    let gzip = source.gzip;
    (&mut source)
        .take(1 << 24)
        .read_to_end(&mut rest)
        .map_err(|e| io_kind(e, gzip))
        .map_err(at(&header_path))?;
    if rest.len() >= 4 && rest[0] != 0 {
        header.extensions = parse_extensions(&rest[4..], header.endianness == Endianness::Big);
    }
    let img_path = sibling(&header_path, "img")?;
    let mut data_source = Source::open(&img_path).map_err(at(&img_path))?;
    skip(&mut data_source, header.vox_offset, Section::VoxelData).map_err(at(&img_path))?;
    OpenNifti::new(path, &img_path, header, data_source, options).map_err(at(&header_path))
}

/// The `.hdr` or `.img` next to a pair file, gzipped or not, matching the case of the name.
fn sibling(path: &Path, ext: &str) -> Result<PathBuf, PathError> {
    let s = path.to_string_lossy();
    let (base, gz) = match s.strip_suffix(".gz").or_else(|| s.strip_suffix(".GZ")) {
        Some(b) => (b, true),
        None => (&*s, false),
    };
    let stem = &base[..base.len().saturating_sub(4)];
    let upper = base.ends_with(|c: char| c.is_ascii_uppercase());
    let ext = if upper {
        ext.to_uppercase()
    } else {
        ext.to_string()
    };
    let candidates = if gz {
        [format!("{stem}.{ext}.gz"), format!("{stem}.{ext}")]
    } else {
        [format!("{stem}.{ext}"), format!("{stem}.{ext}.gz")]
    };
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| {
            let missing = PathBuf::from(&candidates[0]);
            let msg = format!(
                "the other half of the .hdr/.img pair {} is missing",
                path.display()
            );
            (
                Some(missing),
                NiftiErrorKind::Open(io::Error::new(io::ErrorKind::NotFound, msg)),
            )
        })
}

/// A byte stream, decompressed if gzipped, that remembers how much was read.
struct Source<'a> {
    reader: Reader<'a>,
    gzip: bool,
    /// Total stream length when known: a plain file's length, or a gzip file's ISIZE trailer
    /// (exact modulo 2^32 for single-member files; only a capacity hint).
    len_hint: Option<u64>,
    /// True when `len_hint` is exact (plain files).
    len_exact: bool,
    pos: u64,
}

impl Drop for Source<'_> {
    fn drop(&mut self) {
        if let Reader::Memory(cursor) = &mut self.reader {
            release(std::mem::take(cursor.get_mut()));
        }
    }
}

/// Where a [`Source`]'s bytes come from.
enum Reader<'a> {
    /// A gzip file inflated whole: its voxel bytes can be borrowed instead of copied.
    Memory(io::Cursor<Vec<u8>>),
    Stream(Box<dyn Read + 'a>),
}

impl Read for Source<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &mut self.reader {
            Reader::Memory(cursor) => cursor.read(buf)?,
            Reader::Stream(reader) => reader.read(buf)?,
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl<'a> Source<'a> {
    fn open(path: &Path) -> Result<Source<'static>, NiftiErrorKind> {
        let mut file = File::open(path).map_err(NiftiErrorKind::Open)?;
        let len = file.metadata().map_err(NiftiErrorKind::Open)?.len();
        let isize = if len >= 18 {
            let mut t = [0u8; 4];
            file.seek(SeekFrom::End(-4))
                .and_then(|_| file.read_exact(&mut t))
                .map_err(NiftiErrorKind::Io)?;
            file.seek(SeekFrom::Start(0)).map_err(NiftiErrorKind::Io)?;
            Some(u32::from_le_bytes(t))
        } else {
            None
        };
        if let Some(isize) = isize
            && plausible_gzip_size(len, isize)
        {
            let mut head = [0u8; 2];
            file.read_exact(&mut head).map_err(NiftiErrorKind::Io)?;
            file.seek(SeekFrom::Start(0)).map_err(NiftiErrorKind::Io)?;
            if head == GZIP_MAGIC {
                let mut bytes = Vec::new();
                bytes
                    .try_reserve_exact(len as usize)
                    .map_err(|_| NiftiErrorKind::Io(io::ErrorKind::OutOfMemory.into()))?;
                file.read_to_end(&mut bytes).map_err(NiftiErrorKind::Io)?;
                return Ok(match gunzip_single_member(&bytes, isize as usize) {
                    Some(data) => Source::inflated(data),
                    None => Source::from_reader(
                        BufReader::new(io::Cursor::new(bytes)),
                        Some(len),
                        Some(isize),
                    )?,
                });
            }
        }
        Source::from_reader(BufReader::with_capacity(1 << 18, file), Some(len), isize)
    }

    /// A gzip file already decompressed whole: its exact length is known.
    fn inflated(data: Vec<u8>) -> Source<'static> {
        Source {
            len_hint: Some(data.len() as u64),
            reader: Reader::Memory(io::Cursor::new(data)),
            gzip: true,
            len_exact: true,
            pos: 0,
        }
    }

    fn from_reader<R: BufRead + 'a>(
        mut reader: R,
        len: Option<u64>,
        isize: Option<u32>,
    ) -> Result<Source<'a>, NiftiErrorKind> {
        let head = reader.fill_buf().map_err(NiftiErrorKind::Io)?;
        let gzip = head.starts_with(&[0x1f, 0x8b]);
        Ok(if gzip {
            Source {
                reader: Reader::Stream(Box::new(MultiGzDecoder::new(reader))),
                gzip,
                len_hint: isize.map(u64::from),
                len_exact: false,
                pos: 0,
            }
        } else {
            Source {
                reader: Reader::Stream(Box::new(reader)),
                gzip,
                len_hint: len,
                len_exact: true,
                pos: 0,
            }
        })
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Whether a gzip file of `len` bytes whose trailer says `isize` is worth inflating whole:
/// small enough to hold twice in memory, and a ratio deflate can produce (at most about
/// 1032:1), so a garbage trailer cannot make us allocate gigabytes.
fn plausible_gzip_size(len: u64, isize: u32) -> bool {
    let isize = u64::from(isize);
    (18..=1 << 31).contains(&len) && (1..=1 << 31).contains(&isize) && isize <= len * 1032
}

/// The gzip ISIZE trailer of an in-memory file.
fn gz_isize(bytes: &[u8]) -> Option<u32> {
    (bytes.len() >= 18)
        .then(|| u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().expect("4 bytes")))
}

/// Classify a read error: a gzip stream that ends early reports `UnexpectedEof`, which the
/// callers turn into `Truncated`; anything else in a gzip stream is corruption.
fn io_kind(e: io::Error, gzip: bool) -> NiftiErrorKind {
    if gzip && e.kind() != io::ErrorKind::Interrupted {
        NiftiErrorKind::Gzip(e.to_string())
    } else {
        NiftiErrorKind::Io(e)
    }
}

/// Read up to `n` bytes (fewer only at the end of the stream), reserving memory no faster
/// than data actually arrive unless the stream's length is known to hold them.
fn read_up_to(
    source: &mut Source<'_>,
    n: u64,
    section: Section,
) -> Result<Vec<u8>, NiftiErrorKind> {
    let start = source.pos;
    let plausible = source.len_hint.is_some_and(|len| {
        if source.len_exact {
            len >= start + n
        } else {
            (start + n) % (1 << 32) == len
        }
    });
    let initial = if plausible { n } else { n.min(64 << 20) };
    let mut buf = Vec::new();
    buf.try_reserve_exact(initial as usize).map_err(|_| {
        NiftiErrorKind::Io(io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!("cannot allocate {initial} bytes"),
        ))
    })?;
    match (&mut *source).take(n).read_to_end(&mut buf) {
        Ok(_) => Ok(buf),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(NiftiErrorKind::Truncated {
            section,
            expected: n,
            offset: start,
            found: buf.len() as u64,
            gzip: source.gzip,
        }),
        Err(e) => Err(io_kind(e, source.gzip)),
    }
}

/// Read exactly `n` bytes or report which section is truncated.
fn read_exact_section(
    source: &mut Source<'_>,
    n: u64,
    section: Section,
) -> Result<Vec<u8>, NiftiErrorKind> {
    let start = source.pos;
    let buf = read_up_to(source, n, section)?;
    if (buf.len() as u64) < n {
        return Err(NiftiErrorKind::Truncated {
            section,
            expected: n,
            offset: start,
            found: buf.len() as u64,
            gzip: source.gzip,
        });
    }
    Ok(buf)
}

/// Skip `n` bytes (the start of an `.img` file before `vox_offset`).
fn skip(source: &mut Source<'_>, n: u64, section: Section) -> Result<(), NiftiErrorKind> {
    let copied = io::copy(&mut (&mut *source).take(n), &mut io::sink())
        .map_err(|e| io_kind(e, source.gzip))?;
    if copied < n {
        return Err(NiftiErrorKind::Truncated {
            section,
            expected: n,
            offset: 0,
            found: copied,
            gzip: source.gzip,
        });
    }
    Ok(())
}

/// Read and parse the 348- or 540-byte header.
fn read_header_block(source: &mut Source<'_>) -> Result<NiftiHeader, NiftiErrorKind> {
    let mut block = read_up_to(source, 4, Section::Header)?;
    if block.len() < 4 {
        return Err(NiftiErrorKind::Truncated {
            section: Section::Header,
            expected: 348,
            offset: 0,
            found: block.len() as u64,
            gzip: source.gzip,
        });
    }
    let (version, _) = detect([block[0], block[1], block[2], block[3]])?;
    let size = version.header_size() as u64;
    let rest = read_up_to(source, size - 4, Section::Header)?;
    block.extend_from_slice(&rest);
    if (block.len() as u64) < size {
        return Err(NiftiErrorKind::Truncated {
            section: Section::Header,
            expected: size,
            offset: 0,
            found: block.len() as u64,
            gzip: source.gzip,
        });
    }
    debug_assert!(block.len() <= NIFTI2_HEADER_SIZE);
    NiftiHeader::parse(&block)
}

/// Read the bytes between the header and `vox_offset` of a single file and parse extensions.
fn read_extensions(
    source: &mut Source<'_>,
    header: &mut NiftiHeader,
    options: &ReadOptions,
) -> Result<(), NiftiErrorKind> {
    let len = header.vox_offset - source.pos;
    if source.len_exact && source.len_hint.is_some_and(|l| l < header.vox_offset) {
        let found = source.len_hint.unwrap_or(0).saturating_sub(source.pos);
        return Err(NiftiErrorKind::Truncated {
            section: Section::Extensions,
            expected: len,
            offset: source.pos,
            found,
            gzip: source.gzip,
        });
    }
    if len > options.max_data_bytes {
        return Err(NiftiErrorKind::TooLarge {
            bytes: len,
            limit: options.max_data_bytes,
        });
    }
    let region = read_exact_section(source, len, Section::Extensions)?;
    // The first byte of the 4-byte extender says whether extensions follow.
    if region.len() >= 4 && region[0] != 0 {
        header.extensions = parse_extensions(&region[4..], header.endianness == Endianness::Big);
    }
    Ok(())
}

/// A single file: header, extensions, voxels.
fn read_single(
    source: &mut Source<'_>,
    path: &Path,
    options: &ReadOptions,
) -> Result<NiftiImage, NiftiErrorKind> {
    let header = open_single(source, options)?;
    read_voxels(source, header, path, options)
}

/// Read and check the header and extensions of a single file, up to its first voxel byte.
fn open_single(
    source: &mut Source<'_>,
    options: &ReadOptions,
) -> Result<NiftiHeader, NiftiErrorKind> {
    let mut header = read_header_block(source)?;
    if header.vox_offset < header.version.min_single_vox_offset() {
        // Only pair headers (magic ni1/ni2) get past validation with such an offset.
        return Err(NiftiErrorKind::InvalidHeader(format!(
            "pair magic ({}) with vox_offset {} in a single file: open the .hdr/.img pair instead",
            if header.version == NiftiVersion::Nifti1 {
                "ni1"
            } else {
                "ni2"
            },
            header.vox_offset
        )));
    }
    // Check the data size before reading extensions, so an absurd header fails fast.
    let data_bytes = header.data_bytes()?;
    check_sizes(source, header.vox_offset, data_bytes, options)?;
    read_extensions(source, &mut header, options)?;
    Ok(header)
}

/// Fail before allocating when the data exceed the limit or, for a plain file, when the file
/// is shorter than `offset + data_bytes`.
fn check_sizes(
    source: &Source<'_>,
    offset: u64,
    data_bytes: u64,
    options: &ReadOptions,
) -> Result<(), NiftiErrorKind> {
    if data_bytes > options.max_data_bytes {
        return Err(NiftiErrorKind::TooLarge {
            bytes: data_bytes,
            limit: options.max_data_bytes,
        });
    }
    let len = match (source.len_exact, source.len_hint) {
        (true, Some(len)) => len,
        _ => return Ok(()),
    };
    let truncated = |section, start: u64, expected| NiftiErrorKind::Truncated {
        section,
        expected,
        offset: start,
        found: len.saturating_sub(start),
        gzip: source.gzip,
    };
    if len < offset {
        Err(truncated(
            Section::Extensions,
            source.pos,
            offset - source.pos,
        ))
    } else if len - offset < data_bytes {
        Err(truncated(Section::VoxelData, offset, data_bytes))
    } else {
        Ok(())
    }
}

/// The voxel bytes at the current position: borrowed when the whole file is inflated in
/// memory, else read (and the rest of a gzip stream checked).
fn voxel_bytes<'s>(
    source: &'s mut Source<'_>,
    header: &NiftiHeader,
    options: &ReadOptions,
) -> Result<Cow<'s, [u8]>, NiftiErrorKind> {
    let data_bytes = header.data_bytes()?;
    let offset = source.pos;
    check_sizes(source, offset, data_bytes, options)?;
    let truncated = |found: usize, gzip| NiftiErrorKind::Truncated {
        section: Section::VoxelData,
        expected: data_bytes,
        offset,
        found: found as u64,
        gzip,
    };
    if let Reader::Memory(cursor) = &mut source.reader {
        // libdeflate already checked the whole stream, trailer included.
        let start = cursor.position() as usize;
        let available = cursor.get_ref().len().saturating_sub(start);
        if (available as u64) < data_bytes {
            return Err(truncated(available, source.gzip));
        }
        let end = start + data_bytes as usize;
        cursor.set_position(end as u64);
        source.pos += data_bytes;
        let Reader::Memory(cursor) = &source.reader else {
            unreachable!("matched above")
        };
        return Ok(Cow::Borrowed(&cursor.get_ref()[start..end]));
    }
    let raw = read_up_to(source, data_bytes, Section::VoxelData)?;
    if (raw.len() as u64) < data_bytes {
        return Err(truncated(raw.len(), source.gzip));
    }
    if source.gzip {
        // Reading on to the end of the stream verifies the gzip checksum; bounded so that
        // trailing junk cannot keep us busy.
        let drained = io::copy(&mut (&mut *source).take(1 << 20), &mut io::sink());
        match drained {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(NiftiErrorKind::Gzip(
                    "the stream ends before its end marker: the file is truncated".into(),
                ));
            }
            Err(e) => return Err(NiftiErrorKind::Gzip(e.to_string())),
            Ok(_) => {}
        }
    }
    Ok(Cow::Owned(raw))
}

/// Whether decoding to f32 can produce NaN or infinity. Integers converted to f32 are finite
/// unless the scaling overflows f32: the scan for NaN/Inf (as costly as a pass over the
/// volume) is skipped otherwise.
fn may_be_non_finite(header: &NiftiHeader) -> Result<bool, NiftiErrorKind> {
    Ok(match header.datatype {
        DataType::F32 | DataType::F64 => true,
        stored => {
            let (slope, inter) = header.scaling()?.unwrap_or((1.0, 0.0));
            let largest = match stored {
                DataType::U8 | DataType::I8 => 255.0,
                DataType::I16 | DataType::U16 => 65_535.0,
                DataType::I32 | DataType::U32 => 4_294_967_295.0,
                _ => 18_446_744_073_709_551_615.0,
            };
            // NaN scaling (already rejected when parsing) would also count as possible.
            let bound = largest * slope.abs() + inter.abs();
            bound.is_nan() || bound >= f64::from(f32::MAX)
        }
    })
}

/// Read the voxel bytes at the current position, decode them and apply the NaN policy.
fn read_voxels(
    source: &mut Source<'_>,
    header: NiftiHeader,
    path: &Path,
    options: &ReadOptions,
) -> Result<NiftiImage, NiftiErrorKind> {
    let shape = header.shape()?;
    let raw = voxel_bytes(source, &header, options)?;
    let big = header.endianness == Endianness::Big;
    let mut header = header;
    let may_be_non_finite = may_be_non_finite(&header)?;
    let mut data = if options.to_f32 {
        let scaling = header.scaling()?;
        let f = with_element!(header.datatype, T => decode_f32::<T>(&raw, shape, big, scaling));
        header.datatype = DataType::F32;
        header.bitpix = 32;
        header.scl_slope = 1.0;
        header.scl_inter = 0.0;
        VoxelData::F32(f)
    } else {
        with_element!(header.datatype, T => T::wrap(decode::<T>(&raw, shape, big)))
    };
    drop(raw);
    let non_finite = if may_be_non_finite {
        apply_non_finite_policy(&mut data, path, options.non_finite)?
    } else {
        0
    };
    let affine = header.affine()?;
    Ok(NiftiImage {
        path: path.to_path_buf(),
        header,
        data,
        affine,
        non_finite,
    })
}

/// [`read_voxels`] as scaled f32 into `out`; returns the count of NaN/infinite voxels.
fn read_voxels_f32_into(
    source: &mut Source<'_>,
    header: &NiftiHeader,
    path: &Path,
    options: &ReadOptions,
    out: &mut [f32],
) -> Result<usize, NiftiErrorKind> {
    let shape = header.shape()?;
    assert_eq!(
        out.len(),
        shape.iter().product::<usize>(),
        "read_f32_into needs a buffer of exactly the image's size"
    );
    let raw = voxel_bytes(source, header, options)?;
    let big = header.endianness == Endianness::Big;
    let scaling = header.scaling()?;
    with_element!(header.datatype, T => decode_f32_into::<T>(&raw, shape, big, scaling, out));
    if may_be_non_finite(header)? {
        non_finite_policy_on(out, shape, path, options.non_finite)
    } else {
        Ok(0)
    }
}

fn apply_non_finite_policy(
    data: &mut VoxelData,
    path: &Path,
    policy: NonFinitePolicy,
) -> Result<usize, NiftiErrorKind> {
    let shape = data.shape();
    match data {
        VoxelData::F32(a) => non_finite_policy_on(slice_of(a), shape, path, policy),
        VoxelData::F64(a) => non_finite_policy_on(slice_of(a), shape, path, policy),
        _ => Ok(0),
    }
}

fn slice_of<T>(a: &mut Array4<T>) -> &mut [T] {
    a.as_slice_mut().expect("voxel arrays are standard layout")
}

/// Count NaN/infinite voxels of `[C, X, Y, Z]` data and apply `policy` to them.
fn non_finite_policy_on<T: NiftiElement>(
    data: &mut [T],
    shape: [usize; 4],
    path: &Path,
    policy: NonFinitePolicy,
) -> Result<usize, NiftiErrorKind> {
    let (count, first) = count_non_finite(data);
    if count > 0 {
        let first = unravel(first.unwrap_or(0), shape);
        match policy {
            NonFinitePolicy::Error => return Err(NiftiErrorKind::NonFinite { count, first }),
            NonFinitePolicy::ReplaceWithZero => {
                zero_non_finite(data);
                tracing::warn!(file = %path.display(), count, ?first, "NaN or infinite voxels replaced by 0")
            }
            NonFinitePolicy::Keep => {}
        }
    }
    Ok(count)
}
