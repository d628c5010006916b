//! The integration tests as one binary: each test binary links the whole optimised crate, so
//! one link instead of nine saves minutes of a fresh build. `tests/tui_tmux.rs` stays apart (it
//! drives the real binary in tmux). One module per area.

mod analysis_polars;
mod architecture;
mod cli;
mod common;
mod deepseek;
mod foreign;
mod fuzz;
mod grpo;
mod handoff;
mod lora;
mod model_decode;
mod model_fused;
mod notebook;
mod pretrained;
mod qlora;
mod spec_validation;
mod stages_e2e;
