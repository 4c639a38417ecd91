//! What the CPU kernels ([`crate::conv`], [`crate::attention_softmax`]) share: recognising burn's
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

/// A contiguous `f32` tensor holding `values`.
pub(crate) fn flex(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(Shape::from(shape)),
        DType::F32,
    )
}
