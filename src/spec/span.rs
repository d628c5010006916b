//! Where things are in a TOML file: byte spans of keys and values by path, and line/column
//! conversion, so that every spec error can name `file:line:col`.

use std::ops::Range;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One step of a path into the document: a table key or an array index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// A parsed document kept only for looking up spans.
pub struct SpanIndex<'i> {
    root: DeTable<'i>,
    text: &'i str,
}

impl<'i> SpanIndex<'i> {
    /// Parse `text`; on a syntax error returns the error's byte span and message.
    pub fn parse(text: &'i str) -> Result<Self, (Option<Range<usize>>, String)> {
        match DeTable::parse(text) {
            Ok(root) => Ok(SpanIndex {
                root: root.into_inner(),
                text,
            }),
            Err(e) => Err((e.span(), e.message().to_string())),
        }
    }

    /// Walk `path`; returns the span of the last key (or array item) and the value there.
    fn walk(&self, path: &[Seg<'_>]) -> Option<(Range<usize>, &Spanned<DeValue<'i>>)> {
        let mut cur: Option<(Range<usize>, &Spanned<DeValue<'i>>)> = None;
        for seg in path {
            cur = Some(match (seg, cur.map(|(_, v)| v.get_ref())) {
                (Seg::Key(k), None) => entry(&self.root, k)?,
                (Seg::Key(k), Some(DeValue::Table(t))) => entry(t, k)?,
                (Seg::Index(n), Some(DeValue::Array(a))) => {
                    let item = a.get(*n)?;
                    (item.span(), item)
                }
                _ => return None,
            });
        }
        cur
    }

    /// Span of the key at the end of `path` (for an array item: the item itself).
    pub fn key_span(&self, path: &[Seg<'_>]) -> Option<Range<usize>> {
        self.walk(path).map(|(k, _)| k)
    }

    /// Span of the value at `path`.
    pub fn value_span(&self, path: &[Seg<'_>]) -> Option<Range<usize>> {
        self.walk(path).map(|(_, v)| v.span())
    }

    /// Keys of the table at `path` (the root when `path` is empty), with their spans.
    pub fn keys(&self, path: &[Seg<'_>]) -> Vec<(String, Range<usize>)> {
        let table = if path.is_empty() {
            Some(&self.root)
        } else {
            match self.walk(path).map(|(_, v)| v.get_ref()) {
                Some(DeValue::Table(t)) => Some(t),
                _ => None,
            }
        };
        table
            .map(|t| {
                t.iter()
                    .map(|(k, _)| (k.get_ref().to_string(), k.span()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// 1-based line and column (in characters) of byte `offset`.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        line_col(self.text, offset)
    }
}

fn entry<'t, 'i>(
    table: &'t DeTable<'i>,
    key: &str,
) -> Option<(Range<usize>, &'t Spanned<DeValue<'i>>)> {
    table
        .iter()
        .find(|(k, _)| k.get_ref() == key)
        .map(|(k, v)| (k.span(), v))
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one_in_chars() {
        let t = "a = 1\nbé = 2\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 6), (2, 1));
        // 'é' is two bytes but one column.
        assert_eq!(line_col(t, 9), (2, 3));
    }

    #[test]
    fn finds_keys_inside_arrays_of_tables() {
        let t = "[task]\nname = \"arith\"\n\n[[stage]]\nname = \"a\"\n\n[[stage]]\nname = \"b\"\nlr = 0.1\n";
        let idx = SpanIndex::parse(t).unwrap();
        let span = idx
            .key_span(&[Seg::Key("stage"), Seg::Index(1), Seg::Key("lr")])
            .unwrap();
        assert_eq!(idx.line_col(span.start), (9, 1));
        let v = idx
            .value_span(&[Seg::Key("task"), Seg::Key("name")])
            .unwrap();
        assert_eq!(&t[v], "\"arith\"");
        let keys = idx.keys(&[Seg::Key("stage"), Seg::Index(0)]);
        assert_eq!(keys.len(), 1);
    }
}
