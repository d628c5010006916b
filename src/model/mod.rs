//! The language model: shape ([`config`]), tokenizer, transformer with KV cache, the CPU
//! decoding fast path ([`infer`]), sampler, and checkpoint (de)serialisation. Knows nothing of
//! stages or screens.

mod arena;
pub mod attention;
pub mod checkpoint;
pub mod config;
pub mod fused;
pub mod infer;
pub mod matmul;
pub mod packed;
pub mod pair;
pub mod sample;
mod simd;
pub mod tokenizer;
pub mod transformer;

pub use config::ModelConfig;
pub use transformer::{Gpt, KvCache};

use burn::tensor::Device;

/// The device stages compute on: burn's `flex` CPU backend by default; `STAGELOOP_DEVICE=cuda`
/// or `wgpu` selects a GPU when the binary was built with that cargo feature.
pub fn device() -> anyhow::Result<Device> {
    let want = std::env::var("STAGELOOP_DEVICE").unwrap_or_default();
    match want.as_str() {
        "" | "cpu" | "flex" => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(0usize)),
        #[cfg(feature = "wgpu")]
        "wgpu" => Ok(Device::wgpu(burn::tensor::DeviceKind::default())),
        other => anyhow::bail!(
            "STAGELOOP_DEVICE={other}: this build supports cpu{}{}",
            if cfg!(feature = "cuda") { ", cuda" } else { "" },
            if cfg!(feature = "wgpu") { ", wgpu" } else { "" }
        ),
    }
}
