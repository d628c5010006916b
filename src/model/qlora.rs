//! QLoRA's start: a LoRA model's frozen base quantised as `[model] quantize` says (see
//! [`super::frozen`]), from a GGUF file's own blocks or from its f32 weights.

use crate::cpu::quant::Kind;
pub use crate::spec::types::Quantize;

/// `model` (a LoRA model) with its block matrices frozen as `q` says: unchanged for `none`;
/// for `auto`, the blocks of `base` when it is a GGUF file (read in place, as the file has
/// them), else Q8_0; `q8_0` / `q4_1` quantised from the f32 weights. A matrix whose
/// inputs are not whole 32-element blocks is an error naming it.
pub fn freeze(
    model: super::Gpt,
    q: Quantize,
    base: Option<&std::path::Path>,
    cfg: &super::ModelConfig,
) -> anyhow::Result<super::Gpt> {
    use anyhow::Context;
    if model.has_frozen() {
        // Loaded from a QLoRA checkpoint, which froze it already.
        return Ok(model);
    }
    let kind = match q.resolved(base) {
        Quantize::None => return Ok(model),
        Quantize::Auto => {
            let path = base.expect("resolved to the file's blocks only for a GGUF base");
            let (g, file_cfg, _) = super::pretrained::gguf_model::open(path)?;
            anyhow::ensure!(
                file_cfg.shape() == cfg.shape(),
                "{}: the model's shape differs from the file's",
                path.display()
            );
            let layers = super::pretrained::gguf_engine::block_matrices(&g, &file_cfg)?;
            return Ok(model.with_frozen(layers));
        }
        Quantize::Q8_0 => Kind::Q8_0,
        Quantize::Q4_1 => Kind::Q4_1,
        Quantize::Q4K => Kind::Q4K,
    };
    model.quantized_base(kind).context("[model] quantize")
}
