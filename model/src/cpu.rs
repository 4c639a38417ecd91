//! What the CPU kernels ([`crate::conv`], [`crate::attention_softmax`],
//! [`crate::window_attention`], [`crate::layer_norm`]) share: recognising burn's
//! `Flex` backends behind a type parameter, and moving values in and out of `Flex` tensors.

use std::any::Any;

use burn::tensor::{Bytes, DType, Shape};
use burn_flex::{FlexTensor, Layout};

/// `value` as a `U` when `T` is `U`, or back unchanged.
///
/// The model is generic over the backend; the kernels for burn's `Flex` and `Autodiff<Flex>` are
/// chosen at run time by moving the arguments through `Any` (stable Rust has no specialisation).
pub(crate) fn cast<T: Any, U: Any>(value: T) -> Result<U, T> {
    let boxed: Box<dyn Any> = Box::new(value);
    match boxed.downcast::<U>() {
        Ok(u) => Ok(*u),
        Err(boxed) => Err(*boxed
            .downcast::<T>()
            .unwrap_or_else(|_| unreachable!("a box holds the type it was made from"))),
    }
}

/// A result computed for a concrete backend, handed back as the caller's type (which it is).
pub(crate) fn recast<T: Any, U: Any>(value: T) -> U {
    cast(value).unwrap_or_else(|_| unreachable!("called only when the backend types are equal"))
}

/// The shape of a tensor of known rank.
pub(crate) fn dims<const D: usize>(t: &FlexTensor) -> [usize; D] {
    let shape = t.layout().shape();
    std::array::from_fn(|i| shape[i])
}

/// A zeroed buffer for a kernel's output, marked for transparent huge pages.
///
/// Outputs here reach hundreds of megabytes (the first Swin stage's attention matrix is 485 MB)
/// and are fresh memory every step: at 4 KiB a page, faulting them in was most of the fused
/// softmax's time in a profile. Marked buffers fault in 2 MiB at a time where the system allows
/// it (Linux with THP `madvise` or `always`). The pipeline's voxel buffers do the same
/// (`mtmed3d-stages`' `memory` module); this crate depends on no pipeline crate, hence its own.
pub(crate) fn zeroed(len: usize) -> Vec<f32> {
    // One calloc: no pass of its own over the memory.
    let mut buffer = vec![0f32; len];
    #[cfg(target_os = "linux")]
    {
        const HUGE_PAGE: usize = 2 << 20;
        let start = buffer.as_mut_ptr() as usize;
        let end = start + std::mem::size_of_val(buffer.as_slice());
        let (first, last) = (
            start.next_multiple_of(HUGE_PAGE),
            end / HUGE_PAGE * HUGE_PAGE,
        );
        if last > first {
            // SAFETY: [first, last) lies inside the buffer's allocation; MADV_HUGEPAGE changes
            // only how its pages are backed, never their contents.
            unsafe {
                libc::madvise(
                    first as *mut libc::c_void,
                    last - first,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
    }
    buffer
}

/// A contiguous `f32` tensor holding `values`.
pub(crate) fn flex(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(Shape::from(shape)),
        DType::F32,
    )
}

/// A pointer shared by workers that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub(crate) *mut f32);
// SAFETY: the kernels use it only to write disjoint parts (a tile, a window's head) of a buffer
// that outlives their parallel loop.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer, through a method so that closures capture the whole (`Sync`) wrapper.
    pub(crate) fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// A matrix operand in memory: its first element and the distances between rows and columns.
#[derive(Clone, Copy)]
pub(crate) struct Strided {
    pub(crate) ptr: *const f32,
    pub(crate) row: usize,
    pub(crate) col: usize,
}

/// `dst = scale · lhs · rhs` (or `dst += scale · lhs · rhs` when `accumulate`) on the calling
/// thread, for an `m × k` lhs and a `k × n` rhs; `dst` has `dst_row` between rows and `dst_col`
/// between columns.
///
/// # Safety
/// Every operand element addressed by the sizes and strides lies inside its buffer, and the
/// addressed part of `dst` is read or written by nothing else meanwhile.
#[allow(clippy::too_many_arguments)] // gemm's own arguments, grouped as far as they go
pub(crate) unsafe fn product(
    [m, n, k]: [usize; 3],
    dst: *mut f32,
    [dst_row, dst_col]: [usize; 2],
    accumulate: bool,
    lhs: Strided,
    rhs: Strided,
    scale: f32,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_col as isize,
            dst_row as isize,
            accumulate,
            lhs.ptr,
            lhs.col as isize,
            lhs.row as isize,
            rhs.ptr,
            rhs.col as isize,
            rhs.row as isize,
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}
