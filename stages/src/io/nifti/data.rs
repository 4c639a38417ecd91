//! Typed voxel arrays and the conversions between NIfTI's x-fastest byte storage and this
//! crate's channel-first `[C, X, Y, Z]` standard layout.

use ndarray::{Array4, ArrayView4};
use rayon::prelude::*;

use super::header::DataType;

mod sealed {
    pub trait Sealed {}
}

/// A scalar type NIfTI can store: the ten real datatypes.
pub trait NiftiElement:
    Copy + Default + Send + Sync + PartialEq + std::fmt::Debug + sealed::Sealed + 'static
{
    /// Its NIfTI datatype.
    const DATATYPE: DataType;
    /// Size in bytes.
    const SIZE: usize;
    /// Decode from `SIZE` bytes in the given byte order.
    fn from_bytes<const BIG: bool>(b: &[u8]) -> Self;
    /// Append the little-endian encoding to `out`.
    fn write_le(self, out: &mut [u8]);
    /// The value as f64 (exact for every type but 64-bit integers beyond 2^53).
    fn to_f64(self) -> f64;
    /// Whether the value is NaN or infinite (always false for integers).
    fn is_non_finite(self) -> bool;
    /// Wrap an array of this type.
    fn wrap(array: Array4<Self>) -> VoxelData;
}

macro_rules! element {
    ($t:ty, $dt:ident, $variant:ident, $nonfinite:expr) => {
        impl sealed::Sealed for $t {}
        impl NiftiElement for $t {
            const DATATYPE: DataType = DataType::$dt;
            const SIZE: usize = std::mem::size_of::<$t>();
            #[inline(always)]
            fn from_bytes<const BIG: bool>(b: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(&b[..std::mem::size_of::<$t>()]);
                if BIG {
                    <$t>::from_be_bytes(a)
                } else {
                    <$t>::from_le_bytes(a)
                }
            }
            #[inline(always)]
            fn write_le(self, out: &mut [u8]) {
                out[..std::mem::size_of::<$t>()].copy_from_slice(&self.to_le_bytes());
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn is_non_finite(self) -> bool {
                let f: fn($t) -> bool = $nonfinite;
                f(self)
            }
            fn wrap(array: Array4<Self>) -> VoxelData {
                VoxelData::$variant(array)
            }
        }
    };
}

element!(u8, U8, U8, |_| false);
element!(i8, I8, I8, |_| false);
element!(i16, I16, I16, |_| false);
element!(u16, U16, U16, |_| false);
element!(i32, I32, I32, |_| false);
element!(u32, U32, U32, |_| false);
element!(i64, I64, I64, |_| false);
element!(u64, U64, U64, |_| false);
element!(f32, F32, F32, |v| !v.is_finite());
element!(f64, F64, F64, |v| !v.is_finite());

/// Voxels as stored in the file (unscaled), in `[C, X, Y, Z]` standard layout.
#[derive(Debug, Clone, PartialEq)]
pub enum VoxelData {
    /// `uint8`.
    U8(Array4<u8>),
    /// `int8`.
    I8(Array4<i8>),
    /// `int16`.
    I16(Array4<i16>),
    /// `uint16`.
    U16(Array4<u16>),
    /// `int32`.
    I32(Array4<i32>),
    /// `uint32`.
    U32(Array4<u32>),
    /// `int64`.
    I64(Array4<i64>),
    /// `uint64`.
    U64(Array4<u64>),
    /// `float32`.
    F32(Array4<f32>),
    /// `float64`.
    F64(Array4<f64>),
}

/// Run `$body` with `$a` bound to the typed array inside a `VoxelData`.
macro_rules! dispatch {
    ($data:expr, $a:ident => $body:expr) => {
        match $data {
            $crate::io::nifti::VoxelData::U8($a) => $body,
            $crate::io::nifti::VoxelData::I8($a) => $body,
            $crate::io::nifti::VoxelData::I16($a) => $body,
            $crate::io::nifti::VoxelData::U16($a) => $body,
            $crate::io::nifti::VoxelData::I32($a) => $body,
            $crate::io::nifti::VoxelData::U32($a) => $body,
            $crate::io::nifti::VoxelData::I64($a) => $body,
            $crate::io::nifti::VoxelData::U64($a) => $body,
            $crate::io::nifti::VoxelData::F32($a) => $body,
            $crate::io::nifti::VoxelData::F64($a) => $body,
        }
    };
}
pub(crate) use dispatch;

/// Evaluates `$body` with `$t` the element type of datatype `$dt`.
macro_rules! with_element {
    ($dt:expr, $t:ident => $body:expr) => {
        match $dt {
            DataType::U8 => {
                type $t = u8;
                $body
            }
            DataType::I8 => {
                type $t = i8;
                $body
            }
            DataType::I16 => {
                type $t = i16;
                $body
            }
            DataType::U16 => {
                type $t = u16;
                $body
            }
            DataType::I32 => {
                type $t = i32;
                $body
            }
            DataType::U32 => {
                type $t = u32;
                $body
            }
            DataType::I64 => {
                type $t = i64;
                $body
            }
            DataType::U64 => {
                type $t = u64;
                $body
            }
            DataType::F32 => {
                type $t = f32;
                $body
            }
            DataType::F64 => {
                type $t = f64;
                $body
            }
        }
    };
}
pub(crate) use with_element;

impl VoxelData {
    /// The voxel type.
    pub fn datatype(&self) -> DataType {
        fn dt<T: NiftiElement>(_: &Array4<T>) -> DataType {
            T::DATATYPE
        }
        dispatch!(self, a => dt(a))
    }

    /// `[C, X, Y, Z]`.
    pub fn shape(&self) -> [usize; 4] {
        dispatch!(self, a => {
            let s = a.shape();
            [s[0], s[1], s[2], s[3]]
        })
    }

    /// Values as f32, with `value * slope + inter` applied when `scaling` is given. The
    /// arithmetic is done in f64 then rounded once, which is what nibabel's `get_fdata`
    /// followed by a cast to float32 gives.
    pub fn to_f32(&self, scaling: Option<(f64, f64)>) -> Array4<f32> {
        fn conv<T: NiftiElement>(a: &Array4<T>, scaling: Option<(f64, f64)>) -> Array4<f32> {
            let src = a.as_slice().expect("voxel arrays are standard layout");
            let mut out = vec![0f32; src.len()];
            const CHUNK: usize = 1 << 16;
            match scaling {
                Some((slope, inter)) => out
                    .par_chunks_mut(CHUNK)
                    .zip(src.par_chunks(CHUNK))
                    .for_each(|(o, s)| {
                        for (o, &v) in o.iter_mut().zip(s) {
                            *o = (v.to_f64() * slope + inter) as f32;
                        }
                    }),
                None => out
                    .par_chunks_mut(CHUNK)
                    .zip(src.par_chunks(CHUNK))
                    .for_each(|(o, s)| {
                        for (o, &v) in o.iter_mut().zip(s) {
                            *o = v.to_f64() as f32;
                        }
                    }),
            }
            Array4::from_shape_vec(a.raw_dim(), out).expect("same length")
        }
        dispatch!(self, a => conv(a, scaling))
    }

    /// Like [`to_f32`](Self::to_f32) but reuses the buffer of unscaled f32 data.
    pub fn into_f32(self, scaling: Option<(f64, f64)>) -> Array4<f32> {
        match (self, scaling) {
            (VoxelData::F32(a), None) => a,
            (other, scaling) => other.to_f32(scaling),
        }
    }
}

/// `[C, X, Y, Z]` index of a flat position in a standard-layout array of `shape`.
pub(crate) fn unravel(mut flat: usize, shape: [usize; 4]) -> [usize; 4] {
    let mut idx = [0; 4];
    for d in (0..4).rev() {
        idx[d] = flat % shape[d];
        flat /= shape[d];
    }
    idx
}

/// Decode NIfTI voxel bytes (x fastest, then y, z, then the channel dimension) into a
/// `[C, X, Y, Z]` standard-layout array of `T`.
pub(crate) fn decode<T: NiftiElement>(
    raw: &[u8],
    shape: [usize; 4],
    big_endian: bool,
) -> Array4<T> {
    let mut data = vec![T::default(); shape.iter().product()];
    let whole = Window::whole(shape);
    if big_endian {
        decode_into::<T, T, true>(raw, shape, &whole, |v| v, &mut data)
    } else {
        decode_into::<T, T, false>(raw, shape, &whole, |v| v, &mut data)
    };
    Array4::from_shape_vec(shape, data).expect("decode produces exactly the shape's length")
}

/// [`decode`] straight to f32 with `scaling` applied (in f64, as [`VoxelData::to_f32`]), in
/// the same pass: no intermediate array of the stored type.
pub(crate) fn decode_f32<T: NiftiElement>(
    raw: &[u8],
    shape: [usize; 4],
    big_endian: bool,
    scaling: Option<(f64, f64)>,
) -> Array4<f32> {
    let mut data = vec![0f32; shape.iter().product()];
    decode_f32_into::<T>(raw, shape, big_endian, scaling, &mut data);
    Array4::from_shape_vec(shape, data).expect("decode produces exactly the shape's length")
}

/// [`decode_f32`] into `out`, which holds exactly the shape's number of values: lets a
/// caller decode several files into one stacked buffer without copying them there after.
pub(crate) fn decode_f32_into<T: NiftiElement>(
    raw: &[u8],
    shape: [usize; 4],
    big_endian: bool,
    scaling: Option<(f64, f64)>,
    out: &mut [f32],
) {
    let whole = Window::whole(shape);
    decode_f32_window_into::<T>(raw, shape, big_endian, scaling, &whole, out);
}

/// Where a decode writes: the input box `[lo, hi)` lands at `offset` of an output of spatial
/// `size` per channel (`[C, size]`, standard layout). Output voxels outside the box are left
/// as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub lo: [usize; 3],
    pub hi: [usize; 3],
    pub size: [usize; 3],
    pub offset: [usize; 3],
}

impl Window {
    /// The whole volume of `[C, X, Y, Z]` `shape`.
    pub fn whole([_, x, y, z]: [usize; 4]) -> Window {
        Window {
            lo: [0; 3],
            hi: [x, y, z],
            size: [x, y, z],
            offset: [0; 3],
        }
    }

    /// The part inside a volume of spatial shape `spatial` of the window of `size` starting at
    /// `start` (negative or past the end: outside); `None` when they do not overlap.
    pub fn of_crop(start: [i64; 3], size: [usize; 3], spatial: [usize; 3]) -> Option<Window> {
        let (lo, hi) = crate::spatial::crop::overlap(start, size, spatial)?;
        Some(Window {
            lo,
            hi,
            size,
            // The overlap starts at or after the window.
            offset: [0, 1, 2].map(|a| (lo[a] as i64 - start[a]) as usize),
        })
    }

    /// Whether the window covers its whole output (no padding left unwritten).
    pub fn fills_output(&self) -> bool {
        (0..3).all(|a| self.offset[a] == 0 && self.hi[a] - self.lo[a] == self.size[a])
    }
}

/// [`decode_f32_into`] of one window: the box `window.lo..window.hi` of every channel,
/// written into `out` (`[C, window.size]`), scaled as [`VoxelData::to_f32`].
pub(crate) fn decode_f32_window_into<T: NiftiElement>(
    raw: &[u8],
    shape: [usize; 4],
    big_endian: bool,
    scaling: Option<(f64, f64)>,
    window: &Window,
    out: &mut [f32],
) {
    let (slope, inter) = scaling.unwrap_or((1.0, 0.0));
    let scale = |v: T| (v.to_f64() * slope + inter) as f32;
    let plain = |v: T| v.to_f64() as f32;
    match (big_endian, scaling.is_some()) {
        (false, false) => decode_into::<T, f32, false>(raw, shape, window, plain, out),
        (true, false) => decode_into::<T, f32, true>(raw, shape, window, plain, out),
        (false, true) => decode_into::<T, f32, false>(raw, shape, window, scale, out),
        (true, true) => decode_into::<T, f32, true>(raw, shape, window, scale, out),
    }
}

/// What a scan of all voxels found: the box `[lo, hi)` of the voxels that are nonzero once
/// decoded to f32 (any channel), and the non-finite ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Scan {
    pub bounds: Option<([usize; 3], [usize; 3])>,
    pub non_finite: usize,
    /// The first non-finite voxel in `[C, X, Y, Z]` order, as a flat index of that layout.
    pub first_non_finite: Option<usize>,
}

/// Scans NIfTI voxel bytes as [`decode_f32_into`] would decode them, without writing them
/// anywhere. Non-finite values are counted only with `check_finite` (the datatype and
/// scaling can make them); with `non_finite_is_zero` they count as 0 (the policy that
/// replaces them), else as nonzero.
pub(crate) fn scan_f32<T: NiftiElement>(
    raw: &[u8],
    [c, nx, ny, nz]: [usize; 4],
    big_endian: bool,
    scaling: Option<(f64, f64)>,
    check_finite: bool,
    non_finite_is_zero: bool,
) -> Scan {
    let (slope, inter) = scaling.unwrap_or((1.0, 0.0));
    let s = T::SIZE;
    let value = |b: &[u8]| {
        let v = if big_endian {
            T::from_bytes::<true>(b)
        } else {
            T::from_bytes::<false>(b)
        };
        match scaling {
            Some(_) => (v.to_f64() * slope + inter) as f32,
            None => v.to_f64() as f32,
        }
    };
    let foreground = |v: f32| v != 0.0 && (v.is_finite() || !non_finite_is_zero);
    // One task per z plane of one channel; planes merge in any order.
    let planes = c * nz;
    let per_plane = |p: usize| {
        let (ci, z) = (p / nz, p % nz);
        let mut scan = Scan::default();
        let mut first_key = usize::MAX;
        let (mut x_lo, mut x_hi, mut y_lo, mut y_hi) = (usize::MAX, 0, usize::MAX, 0);
        for y in 0..ny {
            let start = ((ci * nz + z) * ny + y) * nx * s;
            let row = &raw[start..start + nx * s];
            if check_finite {
                for (x, b) in row.chunks_exact(s).enumerate() {
                    if !value(b).is_finite() {
                        scan.non_finite += 1;
                        first_key = first_key.min(((ci * nx + x) * ny + y) * nz + z);
                    }
                }
            }
            let Some(first) = row.chunks_exact(s).position(|b| foreground(value(b))) else {
                continue;
            };
            let last = row
                .chunks_exact(s)
                .rposition(|b| foreground(value(b)))
                .unwrap_or(first);
            x_lo = x_lo.min(first);
            x_hi = x_hi.max(last + 1);
            y_lo = y_lo.min(y);
            y_hi = y + 1;
        }
        if x_lo != usize::MAX {
            scan.bounds = Some(([x_lo, y_lo, z], [x_hi, y_hi, z + 1]));
        }
        scan.first_non_finite = (first_key != usize::MAX).then_some(first_key);
        scan
    };
    let merge = |a: Scan, b: Scan| Scan {
        bounds: crate::fields::union_of_bounds(a.bounds, b.bounds),
        non_finite: a.non_finite + b.non_finite,
        first_non_finite: a
            .first_non_finite
            .into_iter()
            .chain(b.first_non_finite)
            .min(),
    };
    (0..planes)
        .into_par_iter()
        .map(per_plane)
        .reduce(Scan::default, merge)
}

/// Voxels along z in one tile of [`decode_into`]: 32 f32 fill two 64-byte cache lines.
const TILE_Z: usize = 32;
/// Most voxels along x in one tile: 256 bytes of u8 input.
const MAX_TILE_X: usize = 256;

/// The transposition `[Z][Y][X] -> [X][Y][Z]` per channel, fused with byte decoding, of the
/// box `window.lo..window.hi` into `out` (`[C, window.size]`).
///
/// For each y this transposes a z × x matrix, by tiles of 256 input bytes along x (128 i16)
/// and 32 z: the tile's 32 input runs are read whole and converted into a small buffer, then
/// written out as one run of 32 z per x. Every cache line of either side is touched once, and
/// a tile (16 KiB of f32) stays in the L1 cache. Work is split by blocks of x, so each task
/// owns whole output planes. Measured on one core for a 240×240×155 i16 volume: 15 ms, against
/// 30 ms for the previous scheme (BX output rows written one voxel at a time).
fn decode_into<T: NiftiElement, U: Copy + Default + Send + Sync, const BIG: bool>(
    raw: &[u8],
    [c, nx, ny, nz]: [usize; 4],
    window: &Window,
    map: impl Fn(T) -> U + Sync,
    out: &mut [U],
) {
    let n = nx * ny * nz;
    let s = T::SIZE;
    debug_assert_eq!(raw.len(), c * n * s);
    let out_n: usize = window.size.iter().product();
    assert_eq!(
        out.len(),
        c * out_n,
        "the output holds exactly the decoded values"
    );
    if n == 0 || out_n == 0 {
        return;
    }
    let whole = window.lo == [0; 3] && window.hi == [nx, ny, nz] && window.fills_output();
    // With at most one spatial axis longer than 1, storage order already is output order.
    if whole && [nx, ny, nz].iter().filter(|&&d| d > 1).count() <= 1 {
        out.par_chunks_mut(1 << 16)
            .zip(raw.par_chunks(s << 16))
            .for_each(|(o, r)| {
                for (o, b) in o.iter_mut().zip(r.chunks_exact(s)) {
                    *o = map(T::from_bytes::<BIG>(b));
                }
            });
        return;
    }
    let Window {
        lo,
        hi,
        size,
        offset,
    } = *window;
    let [wx, wy, wz] = [0, 1, 2].map(|a| hi[a] - lo[a]);
    let bx = (256 / s).clamp(1, MAX_TILE_X);
    let plane = size[1] * size[2];
    out.par_chunks_mut(out_n)
        .zip(raw.par_chunks(n * s))
        .for_each(|(out_c, raw_c)| {
            out_c[offset[0] * plane..(offset[0] + wx) * plane]
                .par_chunks_mut(bx * plane)
                .enumerate()
                .for_each(|(blk, out_b)| {
                    let x0 = lo[0] + blk * bx;
                    let w = out_b.len() / plane;
                    let mut tile = [[U::default(); TILE_Z]; MAX_TILE_X];
                    for y in 0..wy {
                        for z0 in (0..wz).step_by(TILE_Z) {
                            let depth = TILE_Z.min(wz - z0);
                            for dz in 0..depth {
                                let start = (((lo[2] + z0 + dz) * ny + lo[1] + y) * nx + x0) * s;
                                let row = &raw_c[start..start + w * s];
                                for (column, b) in tile.iter_mut().zip(row.chunks_exact(s)) {
                                    column[dz] = map(T::from_bytes::<BIG>(b));
                                }
                            }
                            let dst = (offset[1] + y) * size[2] + offset[2] + z0;
                            for (i, column) in tile.iter().take(w).enumerate() {
                                let at = i * plane + dst;
                                out_b[at..at + depth].copy_from_slice(&column[..depth]);
                            }
                        }
                    }
                });
        });
}

/// Encode a `[C, X, Y, Z]` array as little-endian NIfTI voxel bytes (x fastest): the inverse
/// of [`decode`], split by blocks of z so each task writes whole output planes.
pub(crate) fn encode<T: NiftiElement>(array: ArrayView4<'_, T>) -> Vec<u8> {
    let [c, nx, ny, nz] = [
        array.shape()[0],
        array.shape()[1],
        array.shape()[2],
        array.shape()[3],
    ];
    let s = T::SIZE;
    let mut out = vec![0u8; c * nx * ny * nz * s];
    if out.is_empty() {
        return out;
    }
    let std_array;
    let src: &[T] = match array.as_slice() {
        Some(s) => s,
        None => {
            std_array = array.as_standard_layout();
            std_array.as_slice().expect("standard layout")
        }
    };
    let n = nx * ny * nz;
    let plane_bytes = nx * ny * s;
    let bz = (128 / s).clamp(8, 64);
    out.par_chunks_mut(n * s)
        .zip(src.par_chunks(n))
        .for_each(|(out_c, src_c)| {
            out_c
                .par_chunks_mut(bz * plane_bytes)
                .enumerate()
                .for_each(|(blk, out_b)| {
                    let z0 = blk * bz;
                    let w = out_b.len() / plane_bytes;
                    for x in 0..nx {
                        for y in 0..ny {
                            let start = (x * ny + y) * nz + z0;
                            let dst = (y * nx + x) * s;
                            for (i, &v) in src_c[start..start + w].iter().enumerate() {
                                v.write_le(&mut out_b[i * plane_bytes + dst..]);
                            }
                        }
                    }
                });
        });
    out
}

/// Count NaN/infinite voxels; returns the count and the flat index of the first one.
pub(crate) fn count_non_finite<T: NiftiElement>(data: &[T]) -> (usize, Option<usize>) {
    const CHUNK: usize = 1 << 16;
    data.par_chunks(CHUNK)
        .enumerate()
        .map(|(i, chunk)| {
            let mut count = 0;
            let mut first = None;
            for (j, v) in chunk.iter().enumerate() {
                if v.is_non_finite() {
                    count += 1;
                    first.get_or_insert(i * CHUNK + j);
                }
            }
            (count, first)
        })
        .reduce(
            || (0, None),
            |a, b| {
                let first = match (a.1, b.1) {
                    (Some(x), Some(y)) => Some(x.min(y)),
                    (x, y) => x.or(y),
                };
                (a.0 + b.0, first)
            },
        )
}

/// Set NaN/infinite voxels to zero.
pub(crate) fn zero_non_finite<T: NiftiElement>(data: &mut [T]) {
    data.par_chunks_mut(1 << 16).for_each(|chunk| {
        for v in chunk {
            if v.is_non_finite() {
                *v = T::default();
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes of a `[C, X, Y, Z]` array in NIfTI order, written the obvious (slow) way.
    fn naive_bytes(a: &Array4<i16>, big: bool) -> Vec<u8> {
        let s = a.shape();
        let mut out = Vec::new();
        for c in 0..s[0] {
            for z in 0..s[3] {
                for y in 0..s[2] {
                    for x in 0..s[1] {
                        let v = a[[c, x, y, z]];
                        out.extend_from_slice(&if big {
                            v.to_be_bytes()
                        } else {
                            v.to_le_bytes()
                        });
                    }
                }
            }
        }
        out
    }

    #[test]
    fn window_decodes_equal_cropping_the_whole_decode() {
        // Several x blocks and z tiles with remainders; windows inside, at the edges, reaching
        // outside (padding), larger than the volume, and disjoint from it.
        let shape = [2, 300, 5, 70];
        let a = Array4::from_shape_fn(shape, |(c, x, y, z)| {
            ((c * 7919 + x * 131 + y * 17 + z) % 2000) as i16 - 1000
        });
        let raw = naive_bytes(&a, false);
        let scaling = Some((0.5, 1.0));
        let whole = decode_f32::<i16>(&raw, shape, false, scaling).into_dyn();
        for (start, size) in [
            ([3, 1, 5], [290, 3, 60]),
            ([0, 0, 0], [300, 5, 70]),
            ([-4, -2, -3], [308, 9, 76]),
            ([250, 2, 40], [100, 6, 40]),
            ([-10, 0, 0], [5, 5, 5]),
        ] {
            let expected = crate::spatial::crop::crop_array(&whole, start, size);
            // Outside the box the output keeps what it held: zeros here, as padding.
            let mut out = vec![0.0; 2 * size.iter().product::<usize>()];
            if let Some(w) = Window::of_crop(start, size, [300, 5, 70]) {
                decode_f32_window_into::<i16>(&raw, shape, false, scaling, &w, &mut out);
            }
            assert_eq!(out, expected.as_slice().unwrap(), "{start:?} {size:?}");
        }
    }

    #[test]
    fn scans_find_the_nonzero_box_and_the_non_finite_voxels_a_decode_would() {
        let shape = [2, 9, 6, 5];
        let mut a = Array4::<f32>::zeros(shape);
        a[[0, 2, 1, 3]] = 1.0;
        a[[1, 7, 4, 1]] = -2.0;
        a[[1, 3, 0, 4]] = f32::NAN;
        a[[0, 8, 5, 0]] = f32::INFINITY;
        let mut raw = Vec::new();
        for c in 0..2 {
            for z in 0..5 {
                for y in 0..6 {
                    for x in 0..9 {
                        raw.extend_from_slice(&a[[c, x, y, z]].to_le_bytes());
                    }
                }
            }
        }
        let decoded = decode_f32::<f32>(&raw, shape, false, None);
        let (count, first) = count_non_finite(decoded.as_slice().unwrap());
        let nonzero = |skip_non_finite: bool| {
            crate::fields::bounds_where(decoded.view().into_dyn(), |v| {
                *v != 0.0 && (v.is_finite() || !skip_non_finite)
            })
        };
        for zero in [false, true] {
            let scan = scan_f32::<f32>(&raw, shape, false, None, true, zero);
            assert_eq!(scan.bounds, nonzero(zero), "zero={zero}");
            assert_eq!((scan.non_finite, scan.first_non_finite), (count, first));
        }
        assert_eq!(count, 2);
        assert_eq!(
            scan_f32::<f32>(&raw, shape, false, None, true, true).bounds,
            Some(([2, 1, 1], [8, 5, 4]))
        );
        // Integers scaled: zero where slope × v + inter is.
        let ints = Array4::from_shape_fn([1, 4, 3, 2], |(_, x, y, _)| (x + y) as i16);
        let raw = naive_bytes(&ints, false);
        let scan = scan_f32::<i16>(&raw, [1, 4, 3, 2], false, Some((1.0, -5.0)), true, false);
        assert_eq!(scan.bounds, Some(([0, 0, 0], [4, 3, 2])));
        let scan = scan_f32::<i16>(&raw, [1, 4, 3, 2], false, None, false, false);
        assert_eq!(scan.bounds, Some(([0, 0, 0], [4, 3, 2])));
        let only_origin_zero =
            Array4::from_shape_fn([1, 4, 3, 2], |(_, x, y, _)| i16::from(x == 3 && y == 2));
        let raw = naive_bytes(&only_origin_zero, false);
        let scan = scan_f32::<i16>(&raw, [1, 4, 3, 2], false, None, false, false);
        assert_eq!(scan.bounds, Some(([3, 2, 0], [4, 3, 2])));
        assert_eq!(scan.non_finite, 0);
        let raw = naive_bytes(&Array4::zeros([1, 4, 3, 2]), false);
        assert_eq!(
            scan_f32::<i16>(&raw, [1, 4, 3, 2], false, None, false, false).bounds,
            None
        );
    }

    #[test]
    fn decode_matches_naive_order_for_awkward_shapes() {
        for shape in [
            [1, 1, 1, 1],
            [1, 70, 3, 5],
            [3, 5, 4, 67],
            [2, 1, 9, 4],
            [1, 129, 1, 1],
            [2, 65, 2, 1],
            // Several x blocks and z tiles, each with a remainder.
            [2, 300, 3, 70],
        ] {
            let a = Array4::from_shape_fn(shape, |(c, x, y, z)| {
                (c * 7919 + x * 131 + y * 17 + z) as i16
            });
            for big in [false, true] {
                let raw = naive_bytes(&a, big);
                assert_eq!(decode::<i16>(&raw, shape, big), a, "{shape:?} big={big}");
            }
            assert_eq!(encode(a.view()), naive_bytes(&a, false), "{shape:?}");
            let raw = naive_bytes(&a, false);
            let scaled = decode_f32::<i16>(&raw, shape, false, Some((0.5, 1.0)));
            assert_eq!(scaled, a.mapv(|v| f32::from(v) * 0.5 + 1.0), "{shape:?}");
        }
    }

    #[test]
    fn encode_accepts_non_standard_views() {
        let a = Array4::from_shape_fn((2, 3, 4, 5), |(c, x, y, z)| {
            (c * 1000 + x * 100 + y * 10 + z) as i16
        });
        let t = a.view().reversed_axes();
        let owned = t.to_owned();
        assert_eq!(encode(t), encode(owned.as_standard_layout().view()));
    }

    #[test]
    fn non_finite_count_and_first() {
        let mut v = vec![1.0f32; 200_000];
        v[150_000] = f32::NAN;
        v[70_000] = f32::NEG_INFINITY;
        v[199_999] = f32::INFINITY;
        assert_eq!(count_non_finite(&v), (3, Some(70_000)));
        zero_non_finite(&mut v);
        assert_eq!(count_non_finite(&v), (0, None));
        assert_eq!(v[70_000], 0.0);
    }

    #[test]
    fn scaling_in_f64() {
        let a =
            VoxelData::I16(Array4::from_shape_vec((1, 1, 1, 3), vec![-32768, 0, 32767]).unwrap());
        let s = (0.07540000230073929, 3100.757568359375);
        let f = a.to_f32(Some(s));
        assert_eq!(
            f.as_slice().unwrap(),
            &[
                (-32768.0 * s.0 + s.1) as f32,
                s.1 as f32,
                (32767.0 * s.0 + s.1) as f32
            ]
        );
        assert_eq!(a.datatype(), DataType::I16);
        assert_eq!(a.shape(), [1, 1, 1, 3]);
    }
}
