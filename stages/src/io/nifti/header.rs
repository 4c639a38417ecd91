//! NIfTI-1 and NIfTI-2 headers: parsing with validation, nibabel's affine rules, and
//! NIfTI-1 serialisation.

use super::error::NiftiErrorKind;
use crate::spatial::orientation::{Affine, svd3};

/// Size of a NIfTI-1 header.
pub const NIFTI1_HEADER_SIZE: usize = 348;
/// Size of a NIfTI-2 header.
pub const NIFTI2_HEADER_SIZE: usize = 540;

/// Which NIfTI format a header is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NiftiVersion {
    /// 348-byte header, 16-bit dims, 32-bit floats.
    Nifti1,
    /// 540-byte header, 64-bit dims and floats.
    Nifti2,
}

impl NiftiVersion {
    /// Header size in bytes.
    pub fn header_size(self) -> usize {
        match self {
            NiftiVersion::Nifti1 => NIFTI1_HEADER_SIZE,
            NiftiVersion::Nifti2 => NIFTI2_HEADER_SIZE,
        }
    }

    /// The smallest `vox_offset` of a single file: the header plus the 4-byte extension flag
    /// (nibabel's `single_vox_offset`).
    pub fn min_single_vox_offset(self) -> u64 {
        self.header_size() as u64 + 4
    }
}

/// Byte order of a file's header and voxels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endianness {
    /// Least significant byte first (almost every file written today).
    Little,
    /// Most significant byte first (old SGI/Sun/PowerPC files).
    Big,
}

/// The voxel types this crate reads and writes: the real scalar NIfTI datatypes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// `NIFTI_TYPE_UINT8` (2).
    U8,
    /// `NIFTI_TYPE_INT8` (256).
    I8,
    /// `NIFTI_TYPE_INT16` (4).
    I16,
    /// `NIFTI_TYPE_UINT16` (512).
    U16,
    /// `NIFTI_TYPE_INT32` (8).
    I32,
    /// `NIFTI_TYPE_UINT32` (768).
    U32,
    /// `NIFTI_TYPE_INT64` (1024).
    I64,
    /// `NIFTI_TYPE_UINT64` (1280).
    U64,
    /// `NIFTI_TYPE_FLOAT32` (16).
    F32,
    /// `NIFTI_TYPE_FLOAT64` (64).
    F64,
}

impl DataType {
    /// The NIfTI `datatype` code.
    pub fn code(self) -> i16 {
        match self {
            DataType::U8 => 2,
            DataType::I16 => 4,
            DataType::I32 => 8,
            DataType::F32 => 16,
            DataType::F64 => 64,
            DataType::I8 => 256,
            DataType::U16 => 512,
            DataType::U32 => 768,
            DataType::I64 => 1024,
            DataType::U64 => 1280,
        }
    }

    /// The type for a NIfTI `datatype` code, or an error naming the unsupported type.
    pub fn from_code(code: i64) -> Result<DataType, NiftiErrorKind> {
        Ok(match code {
            2 => DataType::U8,
            4 => DataType::I16,
            8 => DataType::I32,
            16 => DataType::F32,
            64 => DataType::F64,
            256 => DataType::I8,
            512 => DataType::U16,
            768 => DataType::U32,
            1024 => DataType::I64,
            1280 => DataType::U64,
            other => {
                let name = match other {
                    1 => "binary (1 bit)",
                    32 => "complex64",
                    128 => "RGB24",
                    1536 => "float128",
                    1792 => "complex128",
                    2048 => "complex256",
                    2304 => "RGBA32",
                    0 => "unknown (0)",
                    _ => "not a NIfTI datatype",
                };
                return Err(NiftiErrorKind::Unsupported(format!(
                    "datatype {other} ({name})"
                )));
            }
        })
    }

    /// Bytes per voxel.
    pub fn size(self) -> usize {
        match self {
            DataType::U8 | DataType::I8 => 1,
            DataType::I16 | DataType::U16 => 2,
            DataType::I32 | DataType::U32 | DataType::F32 => 4,
            DataType::I64 | DataType::U64 | DataType::F64 => 8,
        }
    }

    /// numpy-style name (`uint8`, `int16`, `float32`...).
    pub fn name(self) -> &'static str {
        match self {
            DataType::U8 => "uint8",
            DataType::I8 => "int8",
            DataType::I16 => "int16",
            DataType::U16 => "uint16",
            DataType::I32 => "int32",
            DataType::U32 => "uint32",
            DataType::I64 => "int64",
            DataType::U64 => "uint64",
            DataType::F32 => "float32",
            DataType::F64 => "float64",
        }
    }
}

/// One header extension (NIfTI `esize`/`ecode` block), kept as raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NiftiExtension {
    /// `ecode` (e.g. 4 = AFNI, 6 = comment, 32 = CIfTI).
    pub code: i32,
    /// The extension's content (`esize - 8` bytes, padding included).
    pub data: Vec<u8>,
}

/// Xform codes: what space an sform or qform maps to.
pub mod xform {
    /// Arbitrary coordinates: the transform is not used.
    pub const UNKNOWN: i32 = 0;
    /// Scanner-based anatomical coordinates.
    pub const SCANNER_ANAT: i32 = 1;
    /// Coordinates aligned to another file or to a truth.
    pub const ALIGNED_ANAT: i32 = 2;
    /// Talairach space.
    pub const TALAIRACH: i32 = 3;
    /// MNI 152 space.
    pub const MNI_152: i32 = 4;
    /// Some other template space.
    pub const TEMPLATE_OTHER: i32 = 5;
}

/// Every NIfTI header field, in the widest type of the two formats, as stored in the file.
///
/// Fields are kept raw (as written); the methods apply nibabel's interpretation:
/// [`qfac`](Self::qfac), [`zooms`](Self::zooms), [`scaling`](Self::scaling),
/// [`affine`](Self::affine).
#[derive(Debug, Clone, PartialEq)]
pub struct NiftiHeader {
    /// NIfTI-1 or NIfTI-2.
    pub version: NiftiVersion,
    /// Byte order of the header and the voxels.
    pub endianness: Endianness,
    /// True for a `.hdr`/`.img` pair (magic `ni1`/`ni2`), false for a single file (`n+1`/`n+2`).
    pub pair: bool,
    /// MRI slice ordering (frequency, phase, slice dims packed in 2 bits each).
    pub dim_info: u8,
    /// `dim[0]` = number of dimensions, `dim[1..=dim[0]]` = sizes.
    pub dim: [i64; 8],
    /// `intent_p1..3`.
    pub intent_p: [f64; 3],
    /// `intent_code`.
    pub intent_code: i32,
    /// Voxel type.
    pub datatype: DataType,
    /// `bitpix` as stored (not used: the datatype decides).
    pub bitpix: i16,
    /// `slice_start`.
    pub slice_start: i64,
    /// `pixdim[0]` = qfac, `pixdim[1..=3]` voxel sizes, `pixdim[4]` time step.
    pub pixdim: [f64; 8],
    /// Byte offset of the voxel data (in the `.img` file for pairs).
    pub vox_offset: u64,
    /// `scl_slope` (0 or non-finite means no scaling).
    pub scl_slope: f64,
    /// `scl_inter`.
    pub scl_inter: f64,
    /// `slice_end`.
    pub slice_end: i64,
    /// `slice_code`.
    pub slice_code: i32,
    /// Units of pixdim (bits 0-2 space, 3-5 time; 2 = mm, 8 = s).
    pub xyzt_units: i32,
    /// `cal_max` display range.
    pub cal_max: f64,
    /// `cal_min` display range.
    pub cal_min: f64,
    /// `slice_duration`.
    pub slice_duration: f64,
    /// `toffset`.
    pub toffset: f64,
    /// Free text (up to 80 bytes).
    pub descrip: String,
    /// Auxiliary file name (up to 24 bytes).
    pub aux_file: String,
    /// `qform_code` (see [`xform`]).
    pub qform_code: i32,
    /// `sform_code` (see [`xform`]).
    pub sform_code: i32,
    /// `quatern_b`, `quatern_c`, `quatern_d`.
    pub quatern: [f64; 3],
    /// `qoffset_x`, `qoffset_y`, `qoffset_z`.
    pub qoffset: [f64; 3],
    /// `srow_x`, `srow_y`, `srow_z`.
    pub srow: [[f64; 4]; 3],
    /// `intent_name` (up to 16 bytes).
    pub intent_name: String,
    /// Header extensions.
    pub extensions: Vec<NiftiExtension>,
}

/// Reads fixed-offset fields of a header block in its byte order.
struct Fields<'a> {
    bytes: &'a [u8],
    big: bool,
}

impl Fields<'_> {
    fn arr<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.bytes[off..off + N]);
        if self.big {
            a.reverse();
        }
        a
    }
    fn i16(&self, off: usize) -> i16 {
        i16::from_le_bytes(self.arr(off))
    }
    fn i32(&self, off: usize) -> i32 {
        i32::from_le_bytes(self.arr(off))
    }
    fn i64(&self, off: usize) -> i64 {
        i64::from_le_bytes(self.arr(off))
    }
    fn f32(&self, off: usize) -> f64 {
        f32::from_le_bytes(self.arr(off)) as f64
    }
    fn f64(&self, off: usize) -> f64 {
        f64::from_le_bytes(self.arr(off))
    }
    fn text(&self, off: usize, len: usize) -> String {
        let raw = &self.bytes[off..off + len];
        let end = raw.iter().position(|&b| b == 0).unwrap_or(len);
        String::from_utf8_lossy(&raw[..end]).into_owned()
    }
}

/// Identify the format and byte order from the first four bytes (`sizeof_hdr`).
pub fn detect(first4: [u8; 4]) -> Result<(NiftiVersion, Endianness), NiftiErrorKind> {
    let le = i32::from_le_bytes(first4);
    let be = i32::from_be_bytes(first4);
    match (le, be) {
        (348, _) => Ok((NiftiVersion::Nifti1, Endianness::Little)),
        (540, _) => Ok((NiftiVersion::Nifti2, Endianness::Little)),
        (_, 348) => Ok((NiftiVersion::Nifti1, Endianness::Big)),
        (_, 540) => Ok((NiftiVersion::Nifti2, Endianness::Big)),
        _ => Err(NiftiErrorKind::NotNifti(format!(
            "sizeof_hdr is {le} (expected 348 or 540 in either byte order)"
        ))),
    }
}

fn invalid(msg: String) -> NiftiErrorKind {
    NiftiErrorKind::InvalidHeader(msg)
}

impl NiftiHeader {
    /// Parse and validate a header block (`bytes` holds at least the 348 or 540 header bytes;
    /// extensions are not read here). Every field the reader relies on is checked: format and
    /// magic, dims, datatype, `vox_offset`, scaling, and the fields of the affine it will use.
    ///
    /// ```
    /// use mtmed3d_stages::io::nifti::NiftiHeader;
    /// let err = NiftiHeader::parse(&[0u8; 348]).unwrap_err();
    /// assert!(err.to_string().contains("sizeof_hdr is 0"));
    /// ```
    pub fn parse(bytes: &[u8]) -> Result<NiftiHeader, NiftiErrorKind> {
        if bytes.len() < 4 {
            return Err(NiftiErrorKind::NotNifti(format!(
                "only {} bytes",
                bytes.len()
            )));
        }
        let (version, endianness) = detect([bytes[0], bytes[1], bytes[2], bytes[3]])?;
        let size = version.header_size();
        if bytes.len() < size {
            return Err(NiftiErrorKind::NotNifti(format!(
                "only {} bytes, a {:?} header needs {size}",
                bytes.len(),
                version
            )));
        }
        let f = Fields {
            bytes,
            big: endianness == Endianness::Big,
        };
        let header = match version {
            NiftiVersion::Nifti1 => Self::parse_nifti1(&f, endianness)?,
            NiftiVersion::Nifti2 => Self::parse_nifti2(&f, endianness)?,
        };
        header.validate()?;
        Ok(header)
    }

    fn parse_nifti1(f: &Fields<'_>, endianness: Endianness) -> Result<NiftiHeader, NiftiErrorKind> {
        let magic = &f.bytes[344..348];
        let pair = match magic {
            b"n+1\0" => false,
            b"ni1\0" => true,
            _ => {
                return Err(NiftiErrorKind::NotNifti(format!(
                    "magic is {:?}, expected \"n+1\" or \"ni1\" (an Analyze 7.5 header?)",
                    String::from_utf8_lossy(magic).trim_end_matches('\0')
                )));
            }
        };
        let vox_offset = f.f32(108);
        // nibabel truncates a fractional offset; negative or non-finite is meaningless.
        if !vox_offset.is_finite() || vox_offset < 0.0 {
            return Err(invalid(format!("vox_offset is {vox_offset}")));
        }
        Ok(NiftiHeader {
            version: NiftiVersion::Nifti1,
            endianness,
            pair,
            dim_info: f.bytes[39],
            dim: std::array::from_fn(|i| f.i16(40 + 2 * i) as i64),
            intent_p: [f.f32(56), f.f32(60), f.f32(64)],
            intent_code: f.i16(68) as i32,
            datatype: DataType::from_code(f.i16(70) as i64)?,
            bitpix: f.i16(72),
            slice_start: f.i16(74) as i64,
            pixdim: std::array::from_fn(|i| f.f32(76 + 4 * i)),
            vox_offset: vox_offset as u64,
            scl_slope: f.f32(112),
            scl_inter: f.f32(116),
            slice_end: f.i16(120) as i64,
            slice_code: f.bytes[122] as i32,
            xyzt_units: f.bytes[123] as i32,
            cal_max: f.f32(124),
            cal_min: f.f32(128),
            slice_duration: f.f32(132),
            toffset: f.f32(136),
            descrip: f.text(148, 80),
            aux_file: f.text(228, 24),
            qform_code: f.i16(252) as i32,
            sform_code: f.i16(254) as i32,
            quatern: [f.f32(256), f.f32(260), f.f32(264)],
            qoffset: [f.f32(268), f.f32(272), f.f32(276)],
            srow: std::array::from_fn(|r| std::array::from_fn(|c| f.f32(280 + 16 * r + 4 * c))),
            intent_name: f.text(328, 16),
            extensions: Vec::new(),
        })
    }

    fn parse_nifti2(f: &Fields<'_>, endianness: Endianness) -> Result<NiftiHeader, NiftiErrorKind> {
        let magic = &f.bytes[4..8];
        let pair = match magic {
            b"n+2\0" => false,
            b"ni2\0" => true,
            _ => {
                return Err(NiftiErrorKind::NotNifti(format!(
                    "magic is {:?}, expected \"n+2\" or \"ni2\"",
                    String::from_utf8_lossy(magic).trim_end_matches('\0')
                )));
            }
        };
        // The four bytes after the magic catch files mangled by a text-mode transfer; nibabel
        // accepts the canonical bytes or all zeros and rejects anything else.
        let eol = &f.bytes[8..12];
        if eol != [13, 10, 26, 10] && eol != [0, 0, 0, 0] {
            return Err(invalid(format!(
                "EOL check bytes are {eol:?}, not [13, 10, 26, 10]: the file was probably corrupted by newline conversion"
            )));
        }
        let vox_offset = f.i64(168);
        if vox_offset < 0 {
            return Err(invalid(format!("vox_offset is {vox_offset}")));
        }
        Ok(NiftiHeader {
            version: NiftiVersion::Nifti2,
            endianness,
            pair,
            dim_info: f.bytes[524],
            dim: std::array::from_fn(|i| f.i64(16 + 8 * i)),
            intent_p: [f.f64(80), f.f64(88), f.f64(96)],
            intent_code: f.i32(504),
            datatype: DataType::from_code(f.i16(12) as i64)?,
            bitpix: f.i16(14),
            slice_start: f.i64(224),
            pixdim: std::array::from_fn(|i| f.f64(104 + 8 * i)),
            vox_offset: vox_offset as u64,
            scl_slope: f.f64(176),
            scl_inter: f.f64(184),
            slice_end: f.i64(232),
            slice_code: f.i32(496),
            xyzt_units: f.i32(500),
            cal_max: f.f64(192),
            cal_min: f.f64(200),
            slice_duration: f.f64(208),
            toffset: f.f64(216),
            descrip: f.text(240, 80),
            aux_file: f.text(320, 24),
            qform_code: f.i32(344),
            sform_code: f.i32(348),
            quatern: [f.f64(352), f.f64(360), f.f64(368)],
            qoffset: [f.f64(376), f.f64(384), f.f64(392)],
            srow: std::array::from_fn(|r| std::array::from_fn(|c| f.f64(400 + 32 * r + 8 * c))),
            intent_name: f.text(508, 16),
            extensions: Vec::new(),
        })
    }

    /// Check every field the reader uses. Called by [`parse`](Self::parse); call it again after
    /// editing a header by hand.
    pub fn validate(&self) -> Result<(), NiftiErrorKind> {
        self.shape()?;
        self.data_bytes()?;
        if !self.pair && self.vox_offset < self.version.min_single_vox_offset() {
            return Err(invalid(format!(
                "vox_offset {} is inside the header: a single-file {:?} needs at least {}",
                self.vox_offset,
                self.version,
                self.version.min_single_vox_offset()
            )));
        }
        self.scaling()?;
        self.affine()?;
        Ok(())
    }

    /// The number of dimensions, `dim[0]`, checked to be 1..=7.
    fn ndim(&self) -> Result<usize, NiftiErrorKind> {
        match self.dim[0] {
            n @ 1..=7 => Ok(n as usize),
            n => Err(invalid(format!("dim[0] is {n}, expected 1 to 7"))),
        }
    }

    /// The array shape in this crate's channel-first layout `[C, X, Y, Z]`.
    ///
    /// Dimensions 1-3 are spatial (missing ones count as 1); of dimensions 4-7 at most one may
    /// exceed 1 and it becomes the channel axis (time points of a 4-D series, components of a
    /// 5-D vector image).
    pub fn shape(&self) -> Result<[usize; 4], NiftiErrorKind> {
        let ndim = self.ndim()?;
        let mut sizes = [1usize; 7];
        for (i, size) in sizes.iter_mut().enumerate().take(ndim) {
            let d = self.dim[i + 1];
            if d < 1 {
                return Err(invalid(format!(
                    "dim[{}] is {d}, expected at least 1",
                    i + 1
                )));
            }
            *size = usize::try_from(d)
                .map_err(|_| invalid(format!("dim[{}] is {d}, too large", i + 1)))?;
        }
        let extra: Vec<usize> = (3..7).filter(|&i| sizes[i] > 1).collect();
        let channels = match extra.as_slice() {
            [] => 1,
            [i] => sizes[*i],
            _ => {
                return Err(NiftiErrorKind::Unsupported(format!(
                    "{ndim}-D image with dims {:?}: at most one of dims 4-7 may exceed 1",
                    &self.dim[1..=ndim]
                )));
            }
        };
        Ok([channels, sizes[0], sizes[1], sizes[2]])
    }

    /// Number of voxel-data bytes, checked for overflow.
    pub fn data_bytes(&self) -> Result<u64, NiftiErrorKind> {
        let shape = self.shape()?;
        shape
            .iter()
            .try_fold(self.datatype.size() as u64, |acc, &d| {
                acc.checked_mul(d as u64)
            })
            .filter(|&b| b <= isize::MAX as u64)
            .ok_or_else(|| {
                invalid(format!(
                    "dims {:?} overflow the addressable size",
                    &self.dim[1..]
                ))
            })
    }

    /// `(slope, inter)` when the data are scaled, nibabel's rule: slope 0 or non-finite means
    /// no scaling; a valid slope with a non-finite intercept is an error. `(1, 0)` is `None`.
    pub fn scaling(&self) -> Result<Option<(f64, f64)>, NiftiErrorKind> {
        let (slope, inter) = (self.scl_slope, self.scl_inter);
        if slope == 0.0 || !slope.is_finite() {
            return Ok(None);
        }
        if !inter.is_finite() {
            return Err(invalid(format!(
                "scl_slope is {slope} but scl_inter is {inter}"
            )));
        }
        Ok(if (slope, inter) == (1.0, 0.0) {
            None
        } else {
            Some((slope, inter))
        })
    }

    /// `pixdim[0]` as nibabel uses it: values other than 1 and -1 count as 1.
    pub fn qfac(&self) -> f64 {
        if self.pixdim[0] == -1.0 { -1.0 } else { 1.0 }
    }

    /// `pixdim[1..=3]` as nibabel fixes them on load: zero becomes 1, negative becomes positive.
    pub fn zooms(&self) -> [f64; 3] {
        std::array::from_fn(|i| match self.pixdim[i + 1] {
            0.0 => 1.0,
            p => p.abs(),
        })
    }

    /// nibabel treats codes outside 0..=5 as 0 (unknown).
    fn effective_code(code: i32) -> i32 {
        if (0..=5).contains(&code) { code } else { 0 }
    }

    /// The qform affine from the quaternion, qfac and pixdim (nibabel's `get_qform`).
    pub fn qform_affine(&self) -> Result<Affine, NiftiErrorKind> {
        let [b, c, d] = self.quatern;
        let zooms = self.zooms();
        let fields = [
            b,
            c,
            d,
            self.qoffset[0],
            self.qoffset[1],
            self.qoffset[2],
            zooms[0],
            zooms[1],
            zooms[2],
        ];
        if fields.iter().any(|v| !v.is_finite()) {
            return Err(invalid(format!(
                "qform fields are not finite (quatern {:?}, qoffset {:?}, pixdim {:?})",
                self.quatern,
                self.qoffset,
                &self.pixdim[1..4]
            )));
        }
        // nibabel's fillpositive: |w²| below 3 eps of the stored precision counts as 0.
        let thresh = match self.version {
            NiftiVersion::Nifti1 => 3.0 * f32::EPSILON as f64,
            NiftiVersion::Nifti2 => 3.0 * f64::EPSILON,
        };
        let w2 = 1.0 - (b * b + c * c + d * d);
        let a = if w2.abs() < thresh {
            0.0
        } else if w2 < 0.0 {
            return Err(invalid(format!(
                "quaternion (b, c, d) = ({b}, {c}, {d}) has b²+c²+d² > 1"
            )));
        } else {
            w2.sqrt()
        };
        let r = quat2mat([a, b, c, d]);
        let mut vox = zooms;
        vox[2] *= self.qfac();
        let mut out = [[0.0; 4]; 4];
        for i in 0..3 {
            for j in 0..3 {
                out[i][j] = r[i][j] * vox[j];
            }
            out[i][3] = self.qoffset[i];
        }
        out[3][3] = 1.0;
        Ok(out)
    }

    /// The sform affine from `srow_x/y/z`.
    pub fn sform_affine(&self) -> Result<Affine, NiftiErrorKind> {
        if self.srow.iter().flatten().any(|v| !v.is_finite()) {
            return Err(invalid(format!(
                "srow contains non-finite values: {:?}",
                self.srow
            )));
        }
        let mut out = [[0.0; 4]; 4];
        out[..3].copy_from_slice(&self.srow);
        out[3][3] = 1.0;
        Ok(out)
    }

    /// The affine from zooms alone, centred on the volume, x flipped (nibabel's `get_base_affine`).
    pub fn base_affine(&self) -> Result<Affine, NiftiErrorKind> {
        let [_, x, y, z] = self.shape()?;
        let zooms = self.zooms();
        if zooms.iter().any(|v| !v.is_finite()) {
            return Err(invalid(format!(
                "pixdim[1..=3] is not finite: {:?}",
                &self.pixdim[1..4]
            )));
        }
        let shape = [x as f64, y as f64, z as f64];
        let signed = [-zooms[0], zooms[1], zooms[2]];
        let mut out = [[0.0; 4]; 4];
        for i in 0..3 {
            out[i][i] = signed[i];
            out[i][3] = -(shape[i] - 1.0) / 2.0 * signed[i];
        }
        out[3][3] = 1.0;
        Ok(out)
    }

    /// The voxel-to-world affine exactly as nibabel chooses it: sform if `sform_code` is set,
    /// else qform if `qform_code` is set, else the pixdim-only base affine.
    pub fn affine(&self) -> Result<Affine, NiftiErrorKind> {
        if Self::effective_code(self.sform_code) != 0 {
            self.sform_affine()
        } else if Self::effective_code(self.qform_code) != 0 {
            self.qform_affine()
        } else {
            self.base_affine()
        }
    }

    /// A NIfTI-1 single-file header for `shape` (`[C, X, Y, Z]`) voxels of `datatype` at
    /// `affine`, with both sform and qform set from the affine (the qform as nibabel's
    /// `set_qform` computes it: shears dropped, qfac from the determinant's sign).
    pub fn for_image(
        shape: [usize; 4],
        datatype: DataType,
        affine: &Affine,
    ) -> Result<NiftiHeader, NiftiErrorKind> {
        let bad = |msg: String| NiftiErrorKind::InvalidInput(msg);
        if affine.iter().flatten().any(|v| !v.is_finite()) {
            return Err(bad(format!("affine is not finite: {affine:?}")));
        }
        if affine[3] != [0.0, 0.0, 0.0, 1.0] {
            return Err(bad(format!(
                "affine's last row is {:?}, expected [0, 0, 0, 1]",
                affine[3]
            )));
        }
        let [c, x, y, z] = shape;
        let mut dim = [1i64; 8];
        dim[0] = if c > 1 { 4 } else { 3 };
        for (d, &s) in dim[1..5].iter_mut().zip([x, y, z, c].iter()) {
            if s == 0 || s > i16::MAX as usize {
                return Err(bad(format!(
                    "shape {shape:?}: NIfTI-1 dims must be 1 to {}",
                    i16::MAX
                )));
            }
            *d = s as i64;
        }
        let q = qform_from_affine(affine);
        let mut pixdim = [1.0; 8];
        pixdim[0] = q.qfac;
        pixdim[1..4].copy_from_slice(&q.zooms);
        let mut srow = [[0.0; 4]; 3];
        srow.copy_from_slice(&affine[..3]);
        Ok(NiftiHeader {
            version: NiftiVersion::Nifti1,
            endianness: Endianness::Little,
            pair: false,
            dim_info: 0,
            dim,
            intent_p: [0.0; 3],
            intent_code: 0,
            datatype,
            bitpix: (datatype.size() * 8) as i16,
            slice_start: 0,
            pixdim,
            vox_offset: NiftiVersion::Nifti1.min_single_vox_offset(),
            scl_slope: 1.0,
            scl_inter: 0.0,
            slice_end: 0,
            slice_code: 0,
            // millimetres and seconds
            xyzt_units: 2 | 8,
            cal_max: 0.0,
            cal_min: 0.0,
            slice_duration: 0.0,
            toffset: 0.0,
            descrip: String::new(),
            aux_file: String::new(),
            qform_code: xform::SCANNER_ANAT,
            sform_code: xform::SCANNER_ANAT,
            quatern: q.quatern,
            qoffset: q.offset,
            srow,
            intent_name: String::new(),
            extensions: Vec::new(),
        })
    }

    /// Serialise as a little-endian NIfTI-1 single-file header, including the 4-byte extension
    /// flag and any extensions; `vox_offset` is set to the end of the extensions.
    pub fn to_nifti1_bytes(&self) -> Result<Vec<u8>, NiftiErrorKind> {
        let bad = |msg: String| NiftiErrorKind::InvalidInput(msg);
        let i16_of = |name: &str, v: i64| {
            i16::try_from(v).map_err(|_| bad(format!("{name} = {v} does not fit NIfTI-1")))
        };
        let mut b = vec![0u8; NIFTI1_HEADER_SIZE];
        let mut put = |off: usize, bytes: &[u8]| b[off..off + bytes.len()].copy_from_slice(bytes);
        put(0, &348i32.to_le_bytes());
        put(38, b"r");
        put(39, &[self.dim_info]);
        for (i, &d) in self.dim.iter().enumerate() {
            put(40 + 2 * i, &i16_of("dim", d)?.to_le_bytes());
        }
        for (i, &p) in self.intent_p.iter().enumerate() {
            put(56 + 4 * i, &(p as f32).to_le_bytes());
        }
        put(
            68,
            &i16_of("intent_code", self.intent_code as i64)?.to_le_bytes(),
        );
        put(70, &self.datatype.code().to_le_bytes());
        put(72, &((self.datatype.size() * 8) as i16).to_le_bytes());
        put(74, &i16_of("slice_start", self.slice_start)?.to_le_bytes());
        for (i, &p) in self.pixdim.iter().enumerate() {
            put(76 + 4 * i, &(p as f32).to_le_bytes());
        }
        let ext_bytes: usize = self
            .extensions
            .iter()
            .map(|e| extension_size(e.data.len()))
            .sum();
        let vox_offset = NiftiVersion::Nifti1.min_single_vox_offset() as usize + ext_bytes;
        // f32 holds integers exactly only up to 2^24.
        if vox_offset > 1 << 24 {
            return Err(bad(format!(
                "{ext_bytes} bytes of extensions do not fit NIfTI-1"
            )));
        }
        put(108, &(vox_offset as f32).to_le_bytes());
        put(112, &(self.scl_slope as f32).to_le_bytes());
        put(116, &(self.scl_inter as f32).to_le_bytes());
        put(120, &i16_of("slice_end", self.slice_end)?.to_le_bytes());
        put(122, &[self.slice_code as u8]);
        put(123, &[self.xyzt_units as u8]);
        put(124, &(self.cal_max as f32).to_le_bytes());
        put(128, &(self.cal_min as f32).to_le_bytes());
        put(132, &(self.slice_duration as f32).to_le_bytes());
        put(136, &(self.toffset as f32).to_le_bytes());
        put(148, truncated_text(&self.descrip, 80));
        put(228, truncated_text(&self.aux_file, 24));
        put(
            252,
            &i16_of("qform_code", self.qform_code as i64)?.to_le_bytes(),
        );
        put(
            254,
            &i16_of("sform_code", self.sform_code as i64)?.to_le_bytes(),
        );
        for (i, &v) in self.quatern.iter().chain(self.qoffset.iter()).enumerate() {
            put(256 + 4 * i, &(v as f32).to_le_bytes());
        }
        for (i, &v) in self.srow.iter().flatten().enumerate() {
            put(280 + 4 * i, &(v as f32).to_le_bytes());
        }
        put(328, truncated_text(&self.intent_name, 16));
        put(344, b"n+1\0");
        b.extend_from_slice(&[u8::from(!self.extensions.is_empty()), 0, 0, 0]);
        for e in &self.extensions {
            let size = extension_size(e.data.len());
            b.extend_from_slice(&(size as i32).to_le_bytes());
            b.extend_from_slice(&e.code.to_le_bytes());
            b.extend_from_slice(&e.data);
            b.resize(b.len() + size - 8 - e.data.len(), 0);
        }
        Ok(b)
    }
}

/// On-disk size of an extension holding `len` bytes: 8 bytes of esize/ecode, padded to 16.
fn extension_size(len: usize) -> usize {
    (len + 8).div_ceil(16) * 16
}

/// At most `max - 1` bytes of `s`, cut at a character boundary, so the field stays NUL-terminated.
fn truncated_text(s: &str, max: usize) -> &[u8] {
    let mut end = s.len().min(max - 1);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s.as_bytes()[..end]
}

/// Parse the extension chain found between the header's extension flag and `vox_offset`.
/// A malformed chain ends the list (as nibabel does) instead of failing the read: the voxel
/// data do not depend on it.
pub(crate) fn parse_extensions(region: &[u8], big: bool) -> Vec<NiftiExtension> {
    let f = Fields { bytes: region, big };
    let mut out = Vec::new();
    let mut pos = 0usize;
    while region.len() - pos >= 8 {
        let esize = f.i32(pos);
        let code = f.i32(pos + 4);
        let Ok(esize) = usize::try_from(esize) else {
            break;
        };
        if esize < 8 || esize > region.len() - pos {
            tracing::warn!(esize, code, "malformed NIfTI extension ignored");
            break;
        }
        // Trailing NULs are padding to a multiple of 16, not content (nibabel strips them too).
        let content = &region[pos + 8..pos + esize];
        let len = content.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        out.push(NiftiExtension {
            code,
            data: content[..len].to_vec(),
        });
        pos += esize;
    }
    out
}

/// nibabel's `quat2mat` (it normalises a non-unit quaternion).
fn quat2mat([w, x, y, z]: [f64; 4]) -> [[f64; 3]; 3] {
    let nq = w * w + x * x + y * y + z * z;
    if nq < f64::EPSILON {
        return [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    }
    let s = 2.0 / nq;
    let (xs, ys, zs) = (x * s, y * s, z * s);
    let (wx, wy, wz) = (w * xs, w * ys, w * zs);
    let (xx, xy, xz) = (x * xs, x * ys, x * zs);
    let (yy, yz, zz) = (y * ys, y * zs, z * zs);
    [
        [1.0 - (yy + zz), xy - wz, xz + wy],
        [xy + wz, 1.0 - (xx + zz), yz - wx],
        [xz - wy, yz + wx, 1.0 - (xx + yy)],
    ]
}

/// Unit quaternion `[w, x, y, z]` of a rotation matrix, with `w >= 0` like nibabel's
/// `mat2quat` (Shepperd's method: well conditioned for every rotation).
fn mat2quat(m: &[[f64; 3]; 3]) -> [f64; 4] {
    let trace = m[0][0] + m[1][1] + m[2][2];
    let q = if trace > 0.0 {
        let s = 0.5 / (trace + 1.0).sqrt();
        [
            0.25 / s,
            (m[2][1] - m[1][2]) * s,
            (m[0][2] - m[2][0]) * s,
            (m[1][0] - m[0][1]) * s,
        ]
    } else if m[0][0] > m[1][1] && m[0][0] > m[2][2] {
        let s = 2.0 * (1.0 + m[0][0] - m[1][1] - m[2][2]).sqrt();
        [
            (m[2][1] - m[1][2]) / s,
            0.25 * s,
            (m[0][1] + m[1][0]) / s,
            (m[0][2] + m[2][0]) / s,
        ]
    } else if m[1][1] > m[2][2] {
        let s = 2.0 * (1.0 + m[1][1] - m[0][0] - m[2][2]).sqrt();
        [
            (m[0][2] - m[2][0]) / s,
            (m[0][1] + m[1][0]) / s,
            0.25 * s,
            (m[1][2] + m[2][1]) / s,
        ]
    } else {
        let s = 2.0 * (1.0 + m[2][2] - m[0][0] - m[1][1]).sqrt();
        [
            (m[1][0] - m[0][1]) / s,
            (m[0][2] + m[2][0]) / s,
            (m[1][2] + m[2][1]) / s,
            0.25 * s,
        ]
    };
    let n = q.iter().map(|v| v * v).sum::<f64>().sqrt();
    let sign = if q[0] < 0.0 { -1.0 } else { 1.0 };
    q.map(|v| sign * v / n)
}

/// qform parameters for an affine.
pub(crate) struct QformParams {
    pub qfac: f64,
    pub zooms: [f64; 3],
    pub quatern: [f64; 3],
    pub offset: [f64; 3],
}

/// nibabel's `set_qform(affine)`: zooms are the column norms, qfac makes the rotation proper,
/// and the closest orthogonal matrix (from an SVD) drops any shear.
pub(crate) fn qform_from_affine(affine: &Affine) -> QformParams {
    let mut zooms = [0.0; 3];
    let mut r = [[0.0; 3]; 3];
    for j in 0..3 {
        zooms[j] = (0..3)
            .map(|i| affine[i][j] * affine[i][j])
            .sum::<f64>()
            .sqrt();
        for i in 0..3 {
            // A zero column cannot be represented; leave it zero and let the SVD fill it in.
            r[i][j] = if zooms[j] > 0.0 {
                affine[i][j] / zooms[j]
            } else {
                0.0
            };
        }
    }
    let det = r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1])
        - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
        + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
    let qfac = if det > 0.0 { 1.0 } else { -1.0 };
    if qfac < 0.0 {
        for row in r.iter_mut() {
            row[2] = -row[2];
        }
    }
    let (u, s, v) = svd3(&r);
    // u · vᵀ, with any missing left singular vector completed so the result is a rotation.
    let mut u = u;
    complete_basis(&mut u, &s);
    let mut pr = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            pr[i][j] = (0..3).map(|k| u[i][k] * v[j][k]).sum();
        }
    }
    let pr_det = pr[0][0] * (pr[1][1] * pr[2][2] - pr[1][2] * pr[2][1])
        - pr[0][1] * (pr[1][0] * pr[2][2] - pr[1][2] * pr[2][0])
        + pr[0][2] * (pr[1][0] * pr[2][1] - pr[1][1] * pr[2][0]);
    if pr_det < 0.0 {
        // Only possible for a degenerate affine; a proper rotation is required for a quaternion.
        for row in pr.iter_mut() {
            row[2] = -row[2];
        }
    }
    let q = mat2quat(&pr);
    QformParams {
        qfac,
        zooms,
        quatern: [q[1], q[2], q[3]],
        offset: [affine[0][3], affine[1][3], affine[2][3]],
    }
}

/// Replace the columns of `u` that belong to zero singular values by unit vectors orthogonal
/// to the others (only degenerate affines have any).
fn complete_basis(u: &mut [[f64; 3]; 3], s: &[f64; 3]) {
    let smax = s.iter().cloned().fold(0.0, f64::max);
    for j in 0..3 {
        if s[j] > smax * 1e-12 && smax > 0.0 {
            continue;
        }
        // Gram-Schmidt the standard basis vector least aligned with the existing columns.
        let mut best = [0.0; 3];
        let mut best_norm = -1.0;
        for e in 0..3 {
            let mut cand = [0.0; 3];
            cand[e] = 1.0;
            for k in (0..3).filter(|&k| k != j) {
                let dot: f64 = (0..3).map(|i| cand[i] * u[i][k]).sum();
                for i in 0..3 {
                    cand[i] -= dot * u[i][k];
                }
            }
            let n = cand.iter().map(|v| v * v).sum::<f64>().sqrt();
            if n > best_norm {
                best_norm = n;
                best = cand.map(|v| v / n);
            }
        }
        for i in 0..3 {
            u[i][j] = best[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approx(a: &Affine, b: &Affine, tol: f64) -> bool {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .all(|(x, y)| (x - y).abs() <= tol)
    }

    #[test]
    fn quaternion_roundtrip_through_qform() {
        // An oblique, x-flipped affine with anisotropic voxels.
        let (c, s) = (0.3f64.cos(), 0.3f64.sin());
        let affine = [
            [-2.0 * c, 0.0, 3.0 * s, 10.0],
            [-2.0 * s, 0.0, -3.0 * c, -20.0],
            [0.0, 1.5, 0.0, 30.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let mut h = NiftiHeader::for_image([1, 4, 5, 6], DataType::F32, &affine).unwrap();
        h.sform_code = 0;
        let q = h.qform_affine().unwrap();
        assert!(approx(&q, &affine, 1e-12), "{q:?}");
    }

    #[test]
    fn base_affine_matches_nibabel_doc_example() {
        // nibabel's AnalyzeHeader.get_base_affine docstring: shape (3, 5, 7), zooms (3, 2, 1).
        let mut h = NiftiHeader::for_image(
            [1, 3, 5, 7],
            DataType::U8,
            &crate::spatial::orientation::IDENTITY_AFFINE,
        )
        .unwrap();
        h.sform_code = 0;
        h.qform_code = 0;
        h.pixdim[1..4].copy_from_slice(&[3.0, 2.0, 1.0]);
        let expected = [
            [-3.0, 0.0, 0.0, 3.0],
            [0.0, 2.0, 0.0, -4.0],
            [0.0, 0.0, 1.0, -3.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        assert_eq!(h.affine().unwrap(), expected);
    }

    #[test]
    fn scaling_rules() {
        let mut h = NiftiHeader::for_image(
            [1, 1, 1, 1],
            DataType::I16,
            &crate::spatial::orientation::IDENTITY_AFFINE,
        )
        .unwrap();
        for (slope, inter, expected) in [
            (0.0, 5.0, None),
            (f64::NAN, 5.0, None),
            (1.0, 0.0, None),
            (2.0, -1.0, Some((2.0, -1.0))),
        ] {
            h.scl_slope = slope;
            h.scl_inter = inter;
            assert_eq!(h.scaling().unwrap(), expected);
        }
        h.scl_slope = 2.0;
        h.scl_inter = f64::INFINITY;
        assert!(
            h.scaling()
                .unwrap_err()
                .to_string()
                .contains("scl_inter is inf")
        );
    }

    #[test]
    fn header_bytes_roundtrip() {
        let affine = [
            [0.0, 0.0, 2.0, 1.0],
            [-1.0, 0.0, 0.0, 2.0],
            [0.0, 3.0, 0.0, 3.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let mut h = NiftiHeader::for_image([2, 7, 8, 9], DataType::I16, &affine).unwrap();
        h.descrip = "é".repeat(60);
        h.extensions.push(NiftiExtension {
            code: 6,
            data: b"hello".to_vec(),
        });
        let bytes = h.to_nifti1_bytes().unwrap();
        assert_eq!(bytes.len(), 352 + 16);
        let mut back = NiftiHeader::parse(&bytes).unwrap();
        assert_eq!(back.vox_offset, 368);
        assert_eq!(back.shape().unwrap(), [2, 7, 8, 9]);
        assert_eq!(back.affine().unwrap(), affine);
        assert_eq!(back.descrip.len(), 78); // 79 bytes cut back to a character boundary
        back.sform_code = 0;
        assert!(approx(&back.affine().unwrap(), &affine, 1e-6));
        assert_eq!(parse_extensions(&bytes[352..], false), h.extensions);
    }

    #[test]
    fn rejects_bad_fields() {
        let h = NiftiHeader::for_image(
            [1, 2, 2, 2],
            DataType::U8,
            &crate::spatial::orientation::IDENTITY_AFFINE,
        )
        .unwrap();
        let good = h.to_nifti1_bytes().unwrap();
        let patch = |off: usize, bytes: &[u8]| {
            let mut b = good.clone();
            b[off..off + bytes.len()].copy_from_slice(bytes);
            NiftiHeader::parse(&b).unwrap_err().to_string()
        };
        assert!(patch(0, &349i32.to_le_bytes()).contains("sizeof_hdr is 349"));
        assert!(patch(344, b"abc\0").contains("magic"));
        assert!(patch(40, &0i16.to_le_bytes()).contains("dim[0] is 0"));
        assert!(patch(42, &(-5i16).to_le_bytes()).contains("dim[1] is -5"));
        assert!(patch(70, &32i16.to_le_bytes()).contains("complex64"));
        assert!(patch(108, &100f32.to_le_bytes()).contains("vox_offset 100"));
        assert!(patch(108, &f32::NAN.to_le_bytes()).contains("vox_offset is NaN"));
        assert!(patch(280, &f32::INFINITY.to_le_bytes()).contains("srow"));
        // Two non-singleton non-spatial dims.
        let mut five_d = [0u8; 16];
        for (i, d) in [5i16, 2, 2, 2, 3, 4, 1, 1].iter().enumerate() {
            five_d[2 * i..2 * i + 2].copy_from_slice(&d.to_le_bytes());
        }
        assert!(patch(40, &five_d).contains("at most one of dims 4-7"));
    }
}
