//! The tokenizer of a pretrained model: Hugging Face's `tokenizer.json` through the
//! `tokenizers` crate, or a GGUF file's vocabulary and merges turned into the same tokenizer;
//! with its BOS/EOS ids and its chat template, rendered with minijinja (Python string methods
//! from `minijinja-contrib`'s pycompat, as HF templates use them).

use super::hf_config::Specials;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::Path;

/// A subword tokenizer with its special tokens and chat template.
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    pub bos: Option<u32>,
    /// Every id that ends a completion.
    pub eos: Vec<u32>,
    pub chat_template: Option<String>,
    /// Where the chat template came from (a file, or the GGUF's metadata), to say which is used.
    pub chat_template_source: Option<String>,
}

/// A chat template longer than this is refused: real ones are a few KB, and a huge one would
/// cost seconds to render and tokenise before anything said so.
const MAX_TEMPLATE: usize = 1 << 20;
/// Instructions a template may execute per render (minijinja's fuel): enough for any real
/// template over a long conversation, a bound on a hostile one's nested loops.
const TEMPLATE_FUEL: u64 = 20_000_000;
/// The longest rendered prompt accepted, in bytes, before tokenising it.
const MAX_RENDERED: usize = 4 << 20;

/// A chat message for [`HfTokenizer::chat`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A string, or `{"content": string}` as `tokenizer_config.json` writes added tokens.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl HfTokenizer {
    /// `tokenizer.json`, with the chat template and special tokens of `tokenizer_config.json`
    /// and the EOS ids of `generation_config.json` where present.
    pub fn from_folder(dir: &Path, specials: &Specials) -> Result<HfTokenizer> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            bail!("{}: missing (the model's tokenizer)", path.display());
        }
        // Read as any file the program did not write (a FIFO or device is refused, not waited
        // on), then parsed.
        let text = crate::untrusted::read_small(&path, 1 << 30)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let inner: tokenizers::Tokenizer = text
            .parse()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut tok = HfTokenizer {
            inner,
            bos: specials.bos,
            eos: specials.eos.clone(),
            chat_template: None,
            chat_template_source: None,
        };
        let cfg_path = dir.join("tokenizer_config.json");
        if cfg_path.is_file() {
            let text = crate::untrusted::read_small(&cfg_path, 1 << 30)
                .with_context(|| format!("{}: cannot read", cfg_path.display()))?;
            let v: Value = serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!("{}:{}:{}: {e}", cfg_path.display(), e.line(), e.column())
            })?;
            tok.chat_template_source = Some(cfg_path.display().to_string());
            tok.chat_template = match v.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                // A list of named templates: the default one.
                Some(Value::Array(a)) => a
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .or(a.first())
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                _ => None,
            };
            if tok.bos.is_none() {
                tok.bos = token_text(v.get("bos_token")).and_then(|t| tok.inner.token_to_id(&t));
            }
            if let Some(id) = token_text(v.get("eos_token")).and_then(|t| tok.inner.token_to_id(&t))
                && !tok.eos.contains(&id)
            {
                tok.eos.push(id);
            }
        }
        // transformers 4.43 and later save the template apart; it wins over the config's.
        let jinja = dir.join("chat_template.jinja");
        let json = dir.join("chat_template.json");
        if jinja.is_file() {
            tok.chat_template = Some(
                crate::untrusted::read_small(&jinja, MAX_TEMPLATE as u64)
                    .with_context(|| format!("{}: cannot read", jinja.display()))?,
            );
            tok.chat_template_source = Some(jinja.display().to_string());
        } else if json.is_file() {
            let text = crate::untrusted::read_small(&json, 16 << 20)
                .with_context(|| format!("{}: cannot read", json.display()))?;
            let v: Value = serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!("{}:{}:{}: {e}", json.display(), e.line(), e.column())
            })?;
            let t = v
                .get("chat_template")
                .and_then(Value::as_str)
                .with_context(|| format!("{}: no `chat_template` text", json.display()))?;
            tok.chat_template = Some(t.to_string());
            tok.chat_template_source = Some(json.display().to_string());
        }
        if tok.chat_template.is_none() {
            tok.chat_template_source = None;
        }
        let gen_path = dir.join("generation_config.json");
        if gen_path.is_file()
            && let Ok(v) =
                serde_json::from_str::<Value>(&crate::untrusted::read_small(&gen_path, 16 << 20)?)
        {
            let ids: Vec<u64> = match v.get("eos_token_id") {
                Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).collect(),
                Some(x) => x.as_u64().into_iter().collect(),
                None => Vec::new(),
            };
            for id in ids {
                if id < u32::MAX as u64 && !tok.eos.contains(&(id as u32)) {
                    tok.eos.push(id as u32);
                }
            }
        }
        tok.check(&path)?;
        Ok(tok)
    }

    /// A tokenizer from its `tokenizer.json` text (a GGUF's vocabulary turned into one).
    pub fn from_json(
        json: &str,
        bos: Option<u32>,
        eos: Vec<u32>,
        chat_template: Option<String>,
        origin: &Path,
    ) -> Result<HfTokenizer> {
        let inner: tokenizers::Tokenizer = json
            .parse()
            .map_err(|e| anyhow::anyhow!("{}: the tokenizer: {e}", origin.display()))?;
        let tok = HfTokenizer {
            inner,
            bos,
            eos,
            chat_template_source: chat_template
                .as_ref()
                .map(|_| format!("{} (saved with the tokenizer)", origin.display())),
            chat_template,
        };
        tok.check(origin)?;
        Ok(tok)
    }

    fn check(&self, origin: &Path) -> Result<()> {
        let n = self.vocab_size() as u32;
        for id in self.bos.iter().chain(&self.eos) {
            if *id >= n {
                bail!(
                    "{}: special token id {id} is outside the vocabulary of {n}",
                    origin.display()
                );
            }
        }
        if self.eos.is_empty() {
            bail!(
                "{}: no EOS token id (eos_token_id in config.json or generation_config.json)",
                origin.display()
            );
        }
        Ok(())
    }

    /// Tokens in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`, special tokens written in it (`<|im_start|>`) recognised; with
    /// `add_special`, what the tokenizer's post-processor adds (a BOS for Llama), as
    /// transformers' `tokenizer(text)` does — not for text a chat template wrote.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, add_special)
            .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?
            .get_ids()
            .to_vec())
    }

    /// Text of `ids`, special tokens kept when `specials`.
    pub fn decode(&self, ids: &[u32], specials: bool) -> String {
        self.inner.decode(ids, !specials).unwrap_or_default()
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The tokenizer as `tokenizer.json` text (for export).
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(true)
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// `messages` rendered with the chat template, ending with the assistant's turn opened
    /// when `generation_prompt`.
    pub fn chat(&self, messages: &[Message], generation_prompt: bool) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .context("the model has no chat template (tokenizer_config.json chat_template)")?;
        if template.len() > MAX_TEMPLATE {
            bail!(
                "chat template: {} bytes, more than the {MAX_TEMPLATE} accepted",
                template.len()
            );
        }
        let mut env = minijinja::Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL));
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                // The template's own words: made inert before they reach a terminal.
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    crate::untrusted::display(&msg).into_owned(),
                ))
            },
        );
        // minijinja's errors quote the template's source: made inert (newlines kept).
        let inert = |e: minijinja::Error| {
            let shown = crate::untrusted::printable(&format!("{e:#}")).into_owned();
            anyhow::anyhow!("chat template: {shown}")
        };
        env.add_template("chat", template).map_err(inert)?;
        let tok = |id: Option<u32>| {
            id.and_then(|i| self.inner.id_to_token(i))
                .unwrap_or_default()
        };
        let text = env
            .get_template("chat")
            .and_then(|t| {
                t.render(minijinja::context! {
                    messages => minijinja::Value::from(minijinja::value::Serde(messages)),
                    add_generation_prompt => generation_prompt,
                    bos_token => tok(self.bos),
                    eos_token => tok(self.eos.first().copied()),
                })
            })
            .map_err(inert)?;
        if text.len() > MAX_RENDERED {
            bail!(
                "chat template: the rendered prompt is {} bytes, more than the {MAX_RENDERED} accepted",
                text.len()
            );
        }
        Ok(text)
    }
}
