//! The language model: shape ([`config`]), tokenizer, transformer with KV cache, sampler,
//! checkpoint (de)serialisation, and the thin burn glue over [`crate::cpu`]'s kernels (the
//! fused training ops, the fused AdamW, and `Gpt::engine` for the CPU decoder). Knows nothing
//! of stages or screens.

pub mod checkpoint;
pub mod config;
mod engine;
mod extents;
mod flex;
pub mod frozen;
pub mod fused;
pub mod gguf;
pub mod gguf_write;
pub mod lora;
pub mod mla;
pub mod moe;
pub mod mtp;
pub mod optim;
pub mod pretrained;
pub mod qlora;
mod rope;
pub mod sample;
pub mod speculative;
pub mod text;
pub mod tokenizer;
pub mod transformer;

pub use config::ModelConfig;
pub use transformer::{Gpt, KvCache, Prefix};

use burn::tensor::Device;

/// The name of the device [`device`] selects, as run.json records it: `cpu`, `cuda` or `wgpu`.
pub fn device_name() -> String {
    match std::env::var("STAGELOOP_DEVICE")
        .unwrap_or_default()
        .as_str()
    {
        "" | "cpu" | "flex" => "cpu".to_string(),
        other => other.to_string(),
    }
}

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
