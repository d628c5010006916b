//! The text side of a model, as the stages see it: the character tokenizer of stageloop's own
//! models, or a pretrained model's subword tokenizer with its chat template. It turns a task's
//! prompt into the ids the model is given (BOS + characters; or a chat with an R1-style system
//! message and the prompt as the user's turn), encodes completions for supervised targets,
//! decodes sampled ids for the verifiers, and names the ids that end a completion.

use super::pretrained::tokenizer::Message;
use super::pretrained::{HfTokenizer, gguf_model, hf_config};
use super::tokenizer::{BOS, EOS, Tokenizer};
use super::{ModelConfig, gguf::Gguf};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// DeepSeek-R1-Zero's system prompt (its `<think>`/`<answer>` format is what the format reward
/// and the verifiers read).
pub const R1_SYSTEM: &str = "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The assistant first thinks about the reasoning process in the mind and then provides the user with the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>.";

/// How a pretrained model's prompts are written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptStyle {
    /// Through the chat template (else the prompt as it is, with what the tokenizer adds).
    pub chat: bool,
    /// The system message of chat prompts.
    pub system: Option<String>,
}

/// A pretrained model's tokenizer and prompt style.
pub struct Chat {
    pub tok: HfTokenizer,
    pub style: PromptStyle,
}

/// The text side of a model.
#[derive(Clone)]
pub enum Text {
    Chars(Tokenizer),
    Pretrained(Arc<Chat>),
}

impl PartialEq for Text {
    /// Character tokenizers by their alphabet; pretrained ones by vocabulary, special ids,
    /// template and prompt style (two copies of one model's tokenizer).
    fn eq(&self, other: &Text) -> bool {
        match (self, other) {
            (Text::Chars(a), Text::Chars(b)) => a == b,
            (Text::Pretrained(a), Text::Pretrained(b)) => {
                a.tok.vocab_size() == b.tok.vocab_size()
                    && a.tok.bos == b.tok.bos
                    && a.tok.eos == b.tok.eos
                    && a.tok.chat_template == b.tok.chat_template
                    && a.style == b.style
            }
            _ => false,
        }
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Text::Chars(t) => write!(f, "Chars({} tokens)", t.vocab_size()),
            Text::Pretrained(c) => write!(f, "Pretrained({} tokens)", c.tok.vocab_size()),
        }
    }
}

impl Text {
    pub fn vocab_size(&self) -> usize {
        match self {
            Text::Chars(t) => t.vocab_size(),
            Text::Pretrained(c) => c.tok.vocab_size(),
        }
    }

    /// The ids the model is given for a task prompt.
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        match self {
            Text::Chars(t) => {
                let mut ids = vec![BOS];
                ids.extend(t.encode(prompt).map_err(anyhow::Error::msg)?);
                Ok(ids)
            }
            Text::Pretrained(c) if c.style.chat && c.tok.chat_template.is_some() => {
                let mut msgs = Vec::new();
                if let Some(s) = c.style.system.as_ref().filter(|s| !s.is_empty()) {
                    msgs.push(Message {
                        role: "system".into(),
                        content: s.clone(),
                    });
                }
                msgs.push(Message {
                    role: "user".into(),
                    content: prompt.to_string(),
                });
                c.tok.encode(&c.tok.chat(&msgs, true)?, false)
            }
            Text::Pretrained(c) => c.tok.encode(prompt, true),
        }
    }

    /// A completion's ids (a supervised target), without EOS.
    pub fn completion_ids(&self, completion: &str) -> Result<Vec<u32>> {
        match self {
            Text::Chars(t) => t.encode(completion).map_err(anyhow::Error::msg),
            Text::Pretrained(c) => c.tok.encode(completion, false),
        }
    }

    /// A completion's text (EOS already removed).
    pub fn decode(&self, ids: &[u32]) -> String {
        match self {
            Text::Chars(t) => t.decode(ids),
            Text::Pretrained(c) => c.tok.decode(ids, false),
        }
    }

    /// The ids that end a completion; the first is the one supervised targets end with.
    pub fn eos(&self) -> Vec<u32> {
        match self {
            Text::Chars(_) => vec![EOS],
            Text::Pretrained(c) => c.tok.eos.clone(),
        }
    }

    /// The character tokenizer, for what only stageloop's own models have (their alphabet check).
    pub fn chars(&self) -> Option<&Tokenizer> {
        match self {
            Text::Chars(t) => Some(t),
            Text::Pretrained(_) => None,
        }
    }
}

/// The prompt style a `[model]` with `from` asks for.
pub fn style(chat: Option<bool>, system: Option<&str>) -> PromptStyle {
    PromptStyle {
        chat: chat.unwrap_or(true),
        system: Some(system.unwrap_or(R1_SYSTEM).to_string()).filter(|s| !s.is_empty()),
    }
}

/// The shape and text of a pretrained model (a Hugging Face folder or a GGUF file) without its
/// weights.
pub fn pretrained_meta(path: &Path, style: PromptStyle) -> Result<(ModelConfig, Text)> {
    let (cfg, tok) = if path.is_file() {
        let g = Gguf::open(path)?;
        let cfg =
            gguf_model::config(&g).map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
        (cfg, gguf_model::tokenizer(&g)?)
    } else {
        let (cfg, specials) = hf_config::read(path)?;
        (cfg, HfTokenizer::from_folder(path, &specials)?)
    };
    Ok((cfg, Text::Pretrained(Arc::new(Chat { tok, style }))))
}

/// What a pretrained-derived checkpoint keeps besides `tokenizer.json` (`text.json`).
#[derive(Serialize, Deserialize)]
struct TextMeta {
    bos: Option<u32>,
    eos: Vec<u32>,
    chat_template: Option<String>,
    style: PromptStyle,
}

/// The file of a pretrained-derived checkpoint that says its text is not the character tokenizer.
pub const TEXT_META: &str = "text.json";

/// A checkpoint's tokenizer: the character tokenizer's JSON, or a pretrained model's
/// `tokenizer.json`.
pub const TOKENIZER: &str = "tokenizer.json";

/// Write a pretrained text side into a checkpoint folder (`tokenizer.json` + `text.json`).
pub fn save_pretrained(dir: &Path, c: &Chat) -> Result<()> {
    let json = c.tok.to_json()?;
    crate::runfs::atomic::write_file(&dir.join(TOKENIZER), json.as_bytes())?;
    let meta = TextMeta {
        bos: c.tok.bos,
        eos: c.tok.eos.clone(),
        chat_template: c.tok.chat_template.clone(),
        style: c.style.clone(),
    };
    crate::runfs::atomic::write_json(&dir.join(TEXT_META), &meta)?;
    Ok(())
}

/// Read what [`save_pretrained`] wrote.
pub fn load_pretrained(dir: &Path) -> Result<Text> {
    let meta: TextMeta = crate::runfs::atomic::read_json(&dir.join(TEXT_META))?;
    let tok_path = dir.join(TOKENIZER);
    let json = crate::untrusted::read_small(&tok_path, 1 << 30)
        .with_context(|| format!("{}: cannot read", tok_path.display()))?;
    let tok = HfTokenizer::from_json(&json, meta.bos, meta.eos, meta.chat_template, &tok_path)?;
    Ok(Text::Pretrained(Arc::new(Chat {
        tok,
        style: meta.style,
    })))
}
