//! Text from run folders and datasets is data: before it reaches a terminal, a file name or a
//! spreadsheet cell it is made inert here. Imports nothing of the crate.
//!
//! - [`display`]: control characters (C0, DEL, C1: escape sequences, bells, OSC titles and
//!   clipboard writes) and bidirectional overrides (text that reads differently than it is)
//!   become visible stand-ins, so printing a run's name can never drive the terminal.
//! - [`file_name`]: a name safe as one path component (no separators, no controls, no
//!   leading dot).
//! - [`csv_cell`]: a cell a spreadsheet will not run as a formula (`= + - @` first).

use std::borrow::Cow;

/// Whether `c` must not reach a terminal as it is.
pub fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// The visible stand-in for an unsafe character: the Unicode control picture of a C0 control
/// or DEL (`␛` for ESC), `�` otherwise.
fn stand_in(c: char) -> char {
    match c as u32 {
        n @ 0..=0x1F => char::from_u32(0x2400 + n).unwrap_or('\u{FFFD}'),
        0x7F => '\u{2421}',
        _ => '\u{FFFD}',
    }
}

/// `s` with every control character and bidirectional override replaced by a visible
/// stand-in (one line of text: newlines and tabs are replaced too).
pub fn display(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| if unsafe_char(c) { stand_in(c) } else { c })
            .collect(),
    )
}

/// `s` as one file-name component: ASCII letters, digits, `.`, `-` and `_` kept, anything
/// else `_`; never empty, never starting with a dot, at most 100 bytes.
pub fn file_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    if out.is_empty() || out.starts_with('.') {
        out.insert(0, '_');
    }
    out
}

/// `s` as a CSV text cell that spreadsheets show as text: a cell starting with `=`, `+`, `-`,
/// `@`, a tab or a carriage return (which they would evaluate as a formula) gets a leading `'`.
pub fn csv_cell(s: &str) -> Cow<'_, str> {
    match s.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => Cow::Owned(format!("'{s}")),
        _ => Cow::Borrowed(s),
    }
}

/// `s` as printed by the command line: every unsafe character but newline and tab written as
/// the JSON escape `\uXXXX` (inside JSON output that is the same string; in text it is visible
/// and inert). serde_json escapes only C0 controls, so C1 controls and bidi overrides in a run
/// folder's strings would otherwise reach the terminal raw.
pub fn printable(s: &str) -> Cow<'_, str> {
    let escaped = |c: char| unsafe_char(c) && c != '\n' && c != '\t';
    if !s.chars().any(escaped) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if escaped(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Open a file this program did not write (a run folder's log, a model's config, a dataset)
/// for reading: without blocking on a FIFO, and only when it is a regular file once open (a
/// FIFO, a device such as `/dev/zero` behind a link, or a folder is refused, naming the path).
pub fn open_regular(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut opts, libc::O_NONBLOCK);
    let f = opts.open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(f)
}

/// The text of a small file this program did not write ([`open_regular`]), refused past `max`
/// bytes instead of read without bound.
pub fn read_small(path: &std::path::Path, max: u64) -> std::io::Result<String> {
    use std::io::Read;
    let f = open_regular(path)?;
    let len = f.metadata()?.len();
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{len} bytes, more than the {max} read"),
        ));
    }
    let mut text = String::new();
    f.take(max).read_to_string(&mut text)?;
    Ok(text)
}

/// The bytes of a file this program did not write ([`open_regular`]), whatever its size.
pub fn read_bytes(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = open_regular(path)?;
    let mut out = Vec::with_capacity(f.metadata()?.len() as usize);
    f.read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_and_bidi_overrides_become_visible() {
        let osc = "run\u{1b}]0;pwned\u{7}\u{9b}2J\u{202e}gnp.exe";
        let shown = display(osc);
        assert!(!shown.chars().any(unsafe_char), "{shown}");
        assert_eq!(shown, "run␛]0;pwned␇\u{FFFD}2J\u{FFFD}gnp.exe");
        assert!(matches!(display("plain text, ünïcode ✓"), Cow::Borrowed(_)));
        assert_eq!(display("a\nb\tc"), "a␊b␉c");
    }

    #[test]
    fn file_names_stay_one_harmless_component() {
        assert_eq!(file_name("rewards/accuracy/mean"), "rewards_accuracy_mean");
        assert_eq!(file_name("eval/pass@1"), "eval_pass_1");
        assert_eq!(file_name("../../etc/passwd"), "_.._.._etc_passwd");
        assert_eq!(file_name("\u{1b}]52;c;aGk=\u{7}"), "__52_c_aGk__");
        assert_eq!(file_name(""), "_");
        assert_eq!(file_name(".hidden"), "_.hidden");
        assert_eq!(file_name(&"x".repeat(500)).len(), 100);
    }

    #[test]
    fn formula_cells_are_neutralised() {
        for bad in ["=cmd|' /C calc'!A0", "+1", "-2+3", "@SUM(A1)", "\t=1"] {
            assert!(csv_cell(bad).starts_with('\''), "{bad}");
        }
        assert_eq!(csv_cell("loss"), "loss");
        assert_eq!(csv_cell(""), "");
    }
}
