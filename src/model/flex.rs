//! burn's CPU backend (`flex`) at the level of its tensors, for the glue over [`crate::cpu`]:
//! the flex tensor behind a [`Tensor`] and back, and a contiguous copy only when one is needed.

use burn::backend::flex::FlexTensor;
use burn::backend::{BackendTensor, DispatchAutodiffContext, DispatchTensor, DispatchTensorKind};
use burn::tensor::Tensor;

/// The flex tensor behind `t`, or `t` given back when it is on another backend or tracked by
/// autodiff.
pub(crate) fn of<const D: usize>(t: Tensor<D>) -> Result<FlexTensor, Box<Tensor<D>>> {
    match t.into_dispatch() {
        DispatchTensor {
            kind: DispatchTensorKind::Flex(BackendTensor::Float(f)),
            autodiff: DispatchAutodiffContext::Disabled,
        } => Ok(f),
        other => Err(Box::new(Tensor::from_dispatch(other))),
    }
}

/// A flex tensor as a [`Tensor`] (untracked).
pub(crate) fn tensor<const D: usize>(f: FlexTensor) -> Tensor<D> {
    Tensor::from_dispatch(DispatchTensor {
        kind: DispatchTensorKind::Flex(BackendTensor::Float(f)),
        autodiff: DispatchAutodiffContext::Disabled,
    })
}

/// `t` itself when its values are one contiguous run, a contiguous copy when it is strided.
pub(crate) fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

/// The values as `f32` (one copy; a conversion first if the backend stores another type).
pub(crate) fn f32s<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("data converted to f32 reads back as f32")
}
