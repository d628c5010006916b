//! The training stages' optimizer: AdamW whose step on burn's CPU backend is one fused pass
//! ([`crate::cpu::adamw`]), and burn's own AdamW on other backends. Its state is burn's
//! `AdamWState`, so optimizer checkpoints are the same files either way.

use super::flex;
use crate::cpu::adamw::{self, Hyper};
use burn::backend::flex::FlexTensor;
use burn::optim::{
    AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, LearningRate, ModuleOptimizer, Optimizer,
};
use burn::tensor::{DType, Device, Tensor, TensorData};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Parameter updates the fused path has made in this process (tests check that it ran).
static FUSED_UPDATES: AtomicUsize = AtomicUsize::new(0);

/// How many parameter updates took the fused path so far in this process.
pub fn fused_updates() -> usize {
    FUSED_UPDATES.load(Ordering::Relaxed)
}

/// AdamW (no AMSGrad, no cautious decay), fused on the CPU backend.
#[derive(Clone)]
pub struct FusedAdamW {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
    /// burn's AdamW with the same settings, for tensors not on the CPU backend.
    other: AdamW,
}

impl FusedAdamW {
    pub fn new(beta_1: f32, beta_2: f32, epsilon: f32, weight_decay: f32) -> FusedAdamW {
        let other = AdamWConfig::new()
            .with_beta_1(beta_1)
            .with_beta_2(beta_2)
            .with_epsilon(epsilon)
            .with_weight_decay(weight_decay)
            .build();
        FusedAdamW {
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
            other,
        }
    }

    /// A module optimizer over it.
    pub fn init(self) -> ModuleOptimizer {
        ModuleOptimizer::from(self)
    }
}

/// A flex tensor, or the tensor given back when it is not one.
type Flexed<const D: usize> = Result<FlexTensor, Box<Tensor<D>>>;

fn back<const D: usize>(x: Flexed<D>) -> Tensor<D> {
    x.map_or_else(|t| *t, flex::tensor)
}

/// An `f32` flex tensor as a contiguous one of its own, so it can be updated in place (copied
/// when it is strided or its memory is shared).
fn owned(f: FlexTensor) -> FlexTensor {
    let mut f = flex::contiguous(f);
    if !unique(&mut f) {
        f = FlexTensor::from_data(f.clone().into_data());
    }
    f
}

/// Whether a contiguous tensor's memory is its own (not shared with another handle).
fn unique(f: &mut FlexTensor) -> bool {
    f.try_storage_mut::<f32>().is_some()
}

/// The range of its storage a contiguous tensor covers.
fn whole(f: &FlexTensor) -> Option<std::ops::Range<usize>> {
    f.layout().contiguous_offsets().map(|(a, b)| a..b)
}

/// The values of a tensor [`owned`] returned, to update.
fn values(f: &mut FlexTensor) -> &mut [f32] {
    let range = whole(f).expect("owned tensors are contiguous");
    &mut f
        .try_storage_mut::<f32>()
        .expect("owned tensors are not shared")[range]
}

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let shape = tensor.shape();
        let (time, moments) = match state {
            Some(s) => (
                s.momentum.time + 1,
                Some((s.momentum.moment_1, s.momentum.moment_2)),
            ),
            None => (1, None),
        };
        // Moved, not cloned, into flex tensors: a second handle would make each one shared and
        // force a copy before the update in place.
        let (t, g) = (flex::of(tensor), flex::of(grad));
        let moments = moments.map(|(m, v)| (flex::of(m), flex::of(v)));
        let f32 = |x: &Flexed<D>| matches!(x, Ok(f) if f.dtype() == DType::F32);
        if !(f32(&t) && f32(&g) && moments.as_ref().is_none_or(|(m, v)| f32(m) && f32(v))) {
            let state = moments.map(|(m, v)| {
                AdamWState::new(AdaptiveMomentumState {
                    time: time - 1,
                    moment_1: back(m),
                    moment_2: back(v),
                    max_moment_2: None,
                })
            });
            return self.other.step(lr, back(t), back(g), state);
        }
        let zeros = || FlexTensor::from_data(TensorData::zeros::<f32, _>(shape.clone()));
        let (Ok(t), Ok(g)) = (t, g) else {
            unreachable!("checked to be flex tensors above")
        };
        let (m, v) = match moments {
            Some((Ok(m), Ok(v))) => (m, v),
            None => (zeros(), zeros()),
            Some(_) => unreachable!("checked to be flex tensors above"),
        };
        let (mut m, mut v) = (owned(m), owned(v));
        let mut t = flex::contiguous(t);
        let g = flex::contiguous(g);
        let h = Hyper::at(
            time,
            lr,
            self.beta_1,
            self.beta_2,
            self.epsilon,
            self.weight_decay,
        );
        let g = g.as_slice::<f32>().expect("made contiguous above");
        // The parameter in place, or into fresh memory when another handle shares it (GRPO
        // keeps the step's policy, a copy of the model's handles, through its update).
        if unique(&mut t) {
            adamw::step(values(&mut t), g, values(&mut m), values(&mut v), h);
        } else {
            let p = t.as_slice::<f32>().expect("made contiguous above");
            let new = adamw::step_into(p, g, values(&mut m), values(&mut v), h);
            t = FlexTensor::from_data(TensorData::new(new, shape.clone()));
        }
        FUSED_UPDATES.fetch_add(1, Ordering::Relaxed);
        let state = AdamWState::new(AdaptiveMomentumState {
            time,
            moment_1: flex::tensor(m),
            moment_2: flex::tensor(v),
            max_moment_2: None,
        });
        (flex::tensor(t), Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        <AdamW as Optimizer>::to_device(state, device)
    }
}
