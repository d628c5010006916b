//! Character tokenizer: special tokens (PAD, BOS, EOS and the R1 tags) plus one token per
//! character of the task's alphabet. Saved as JSON beside every checkpoint and checked on load.

use serde::{Deserialize, Serialize};

pub const PAD: u32 = 0;
pub const BOS: u32 = 1;
pub const EOS: u32 = 2;
pub const THINK: u32 = 3;
pub const THINK_END: u32 = 4;
pub const ANSWER: u32 = 5;
pub const ANSWER_END: u32 = 6;

/// Text of the special tokens, by id.
pub const SPECIALS: [&str; 7] = [
    "<pad>",
    "<bos>",
    "<eos>",
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
];

/// The vocabulary: specials first, then the alphabet in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokenizer {
    pub specials: Vec<String>,
    pub alphabet: Vec<char>,
}

impl Tokenizer {
    pub fn new(alphabet: &str) -> Tokenizer {
        let mut chars: Vec<char> = Vec::new();
        for c in alphabet.chars() {
            if !chars.contains(&c) {
                chars.push(c);
            }
        }
        Tokenizer {
            specials: SPECIALS.iter().map(|s| s.to_string()).collect(),
            alphabet: chars,
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.specials.len() + self.alphabet.len()
    }

    /// Encode text; tags such as `<think>` become their special tokens. Unknown characters are
    /// an error naming the character.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        let mut out = Vec::with_capacity(text.len());
        let mut rest = text;
        'outer: while let Some(c) = rest.chars().next() {
            if c == '<' {
                for (id, s) in self.specials.iter().enumerate().skip(THINK as usize) {
                    if let Some(r) = rest.strip_prefix(s.as_str()) {
                        out.push(id as u32);
                        rest = r;
                        continue 'outer;
                    }
                }
            }
            match self.alphabet.iter().position(|&a| a == c) {
                Some(i) => out.push((self.specials.len() + i) as u32),
                None => return Err(format!("character {c:?} is not in the task's alphabet")),
            }
            rest = &rest[c.len_utf8()..];
        }
        Ok(out)
    }

    /// Decode ids to text; PAD, BOS and EOS are dropped, tags are written out.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut s = String::new();
        for &id in ids {
            let id = id as usize;
            if id < self.specials.len() {
                if id >= THINK as usize {
                    s.push_str(&self.specials[id]);
                }
            } else if let Some(c) = self.alphabet.get(id - self.specials.len()) {
                s.push(*c);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_tags_and_characters() {
        let t = Tokenizer::new("0123456789+=,");
        let text = "<think>12,3</think><answer>15</answer>";
        let ids = t.encode(text).unwrap();
        assert_eq!(ids[0], THINK);
        assert_eq!(*ids.last().unwrap(), ANSWER_END);
        assert_eq!(t.decode(&ids), text);
        assert_eq!(t.vocab_size(), 7 + 13);
        assert!(t.encode("1x").unwrap_err().contains("'x'"));
        // A lone '<' that starts no tag is an ordinary (here unknown) character.
        assert!(t.encode("<th").is_err());
    }
}
