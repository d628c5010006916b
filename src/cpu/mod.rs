//! Hand-written CPU kernels on plain `f32` slices: the training ops' products and attention,
//! the output head's log-probabilities in chunks of rows,
//! the row kernels, the small-batch packed products (f32 and bf16), llama.cpp's quantised block formats and
//! their integer products, the decoder, a transposition and the fused AdamW step.
//! Imports nothing from the rest of the crate; `model` wraps them for burn (`model::fused`)
//! and builds the decoder from a model (`Gpt::engine`).

pub mod adamw;
pub mod arena;
pub mod attention;
pub mod bf16;
pub mod decoder;
pub mod gemm;
pub mod head;
pub mod math;
pub mod packed;
pub mod packed_bf16;
pub mod pair;
pub mod quant;
pub mod rows;
pub mod shape;
pub(crate) mod simd;
pub mod transpose;
pub mod view;
