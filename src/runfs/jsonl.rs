//! Append-only JSON Lines writer: one `write` call per line, so a reader (or a crash) never sees
//! two records interleaved, and at worst the last line is incomplete. Non-finite floats become
//! `null` (serde_json's behaviour, relied on here and tested).

use serde::Serialize;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// An open `*.jsonl` file in append mode.
pub struct JsonlWriter {
    file: File,
    path: PathBuf,
    buf: Vec<u8>,
    /// The file's length after the last complete line: a failed write (a full disk) is cut
    /// back to it, so no torn line stays behind.
    len: u64,
}

impl JsonlWriter {
    /// Open (creating if needed) `path` for appending. A last line left incomplete by a crash
    /// is terminated first, so the next record starts on a line of its own.
    pub fn append(path: &Path) -> io::Result<JsonlWriter> {
        Self::open(path).map_err(|e| super::atomic::named(path, e))
    }

    fn open(path: &Path) -> io::Result<JsonlWriter> {
        let mut file = super::atomic::append_own(path)?;
        let len = file.metadata()?.len();
        if len > 0 {
            use std::io::{Read, Seek, SeekFrom};
            file.seek(SeekFrom::Start(len - 1))?;
            let mut last = [0u8; 1];
            file.read_exact(&mut last)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
            }
        }
        let len = file.metadata()?.len();
        Ok(JsonlWriter {
            file,
            path: path.to_path_buf(),
            buf: Vec::with_capacity(256),
            len,
        })
    }

    /// Append one record as one line, in one write. The error names the file.
    pub fn write<T: Serialize>(&mut self, record: &T) -> io::Result<()> {
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, record).map_err(io::Error::other)?;
        self.buf.push(b'\n');
        match self.file.write_all(&self.buf) {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Part of the line may be on disk: cut it off (freeing blocks needs none).
                let _ = self.file.set_len(self.len);
                Err(super::atomic::named(&self.path, e))
            }
        }
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nan_and_inf_are_written_as_null() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.jsonl");
        let mut w = JsonlWriter::append(&p).unwrap();
        let rec: std::collections::BTreeMap<&str, f64> =
            [("step", 1.0), ("loss", f64::NAN), ("x", f64::INFINITY)].into();
        w.write(&rec).unwrap();
        let s = std::fs::read_to_string(&p).unwrap();
        assert_eq!(s, "{\"loss\":null,\"step\":1.0,\"x\":null}\n");
    }

    #[test]
    fn reopening_after_a_torn_line_starts_a_fresh_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.jsonl");
        std::fs::write(&p, "{\"step\":1}\n{\"step\":2,\"lo").unwrap();
        let mut w = JsonlWriter::append(&p).unwrap();
        w.write(&json!({"step": 3})).unwrap();
        let s = std::fs::read_to_string(&p).unwrap();
        assert_eq!(s, "{\"step\":1}\n{\"step\":2,\"lo\n{\"step\":3}\n");
    }
}
