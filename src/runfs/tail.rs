//! Incremental tailing of append-only logs. A [`TailReader`] keeps, per file, the inode, the byte
//! offset and the bytes of an unfinished last line; each [`TailReader::poll`] returns only the
//! complete lines appended since the last one, reads in chunks until a deadline so a huge file
//! never stalls the caller, and starts over when the file is truncated or replaced.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Instant;

const CHUNK: usize = 256 * 1024;

/// What one poll found.
#[derive(Debug, Default, PartialEq)]
pub struct Poll {
    /// The file was truncated or replaced: the caller should drop what it derived so far. The
    /// lines below are from the start of the new file.
    pub reset: bool,
    /// Complete lines, without their newline.
    pub lines: Vec<String>,
    /// More bytes are waiting (the deadline cut the read short).
    pub more: bool,
    /// The file does not exist (yet, or any more).
    pub missing: bool,
}

/// Follows one file.
#[derive(Debug)]
pub struct TailReader {
    path: PathBuf,
    inode: Option<u64>,
    offset: u64,
    partial: Vec<u8>,
    /// Lines delivered since the last reset (for line numbers in error messages).
    pub line_no: u64,
}

fn inode_of(meta: &std::fs::Metadata) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some(meta.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

impl TailReader {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        TailReader {
            path: path.into(),
            inode: None,
            offset: 0,
            partial: Vec::new(),
            line_no: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes consumed so far (complete lines plus the buffered partial line).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Skip what is already in the file up to `offset` (a line boundary), as if it had been read:
    /// the next poll returns what comes after. The file's identity is taken now, so a later
    /// replacement still resets.
    pub fn start_at(&mut self, offset: u64) {
        self.restart();
        if let Ok(meta) = std::fs::metadata(&self.path) {
            self.inode = inode_of(&meta);
            self.offset = offset.min(meta.len());
        }
    }

    /// Read what was appended, until EOF or `deadline`.
    pub fn poll(&mut self, deadline: Option<Instant>) -> io::Result<Poll> {
        let mut out = Poll::default();
        let mut file = match crate::untrusted::open_regular(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                out.missing = true;
                if self.inode.is_some() || self.offset > 0 {
                    self.restart();
                    out.reset = true;
                }
                return Ok(out);
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let inode = inode_of(&meta);
        let replaced = self.inode.is_some() && inode != self.inode;
        if replaced || meta.len() < self.offset {
            self.restart();
            out.reset = true;
        }
        self.inode = inode;
        if meta.len() == self.offset {
            return Ok(out);
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            self.offset += n as u64;
            self.split_lines(&buf[..n], &mut out.lines);
            if deadline.is_some_and(|d| Instant::now() >= d) {
                out.more = self.offset < file.metadata()?.len();
                break;
            }
        }
        Ok(out)
    }

    fn restart(&mut self) {
        self.inode = None;
        self.offset = 0;
        self.partial.clear();
        self.line_no = 0;
    }

    fn split_lines(&mut self, bytes: &[u8], lines: &mut Vec<String>) {
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'\n' {
                let line = if self.partial.is_empty() {
                    String::from_utf8_lossy(&bytes[start..i]).into_owned()
                } else {
                    self.partial.extend_from_slice(&bytes[start..i]);
                    let s = String::from_utf8_lossy(&self.partial).into_owned();
                    self.partial.clear();
                    s
                };
                let line = line.strip_suffix('\r').map(str::to_string).unwrap_or(line);
                self.line_no += 1;
                lines.push(line);
                start = i + 1;
            }
        }
        self.partial.extend_from_slice(&bytes[start..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(p: &Path, s: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap();
        f.write_all(s.as_bytes()).unwrap();
    }

    #[test]
    fn returns_only_complete_lines_and_keeps_the_partial_one() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.jsonl");
        let mut t = TailReader::new(&p);
        assert!(t.poll(None).unwrap().missing);
        append(&p, "a\nb\npar");
        assert_eq!(t.poll(None).unwrap().lines, vec!["a", "b"]);
        assert!(t.poll(None).unwrap().lines.is_empty());
        append(&p, "tial\nc\n");
        let poll = t.poll(None).unwrap();
        assert_eq!(poll.lines, vec!["partial", "c"]);
        assert!(!poll.reset);
        assert_eq!(t.line_no, 4);
    }

    #[test]
    fn truncation_and_replacement_start_over() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.jsonl");
        append(&p, "one\ntwo\n");
        let mut t = TailReader::new(&p);
        assert_eq!(t.poll(None).unwrap().lines.len(), 2);
        std::fs::write(&p, "x\n").unwrap(); // truncate + rewrite, shorter
        let poll = t.poll(None).unwrap();
        assert!(poll.reset);
        assert_eq!(poll.lines, vec!["x"]);
        // Replace with a new file (new inode) of the same length.
        let tmp = d.path().join("new");
        std::fs::write(&tmp, "y\n").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        let poll = t.poll(None).unwrap();
        assert!(poll.reset);
        assert_eq!(poll.lines, vec!["y"]);
        std::fs::remove_file(&p).unwrap();
        let poll = t.poll(None).unwrap();
        assert!(poll.missing && poll.reset);
    }

    #[test]
    fn a_past_deadline_reads_one_chunk_and_reports_more() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("big.jsonl");
        let line = "x".repeat(99) + "\n";
        append(&p, &line.repeat(10_000)); // 1 MB, four chunks
        let mut t = TailReader::new(&p);
        let first = t.poll(Some(Instant::now())).unwrap();
        assert!(first.more);
        assert!(first.lines.len() < 10_000);
        let mut total = first.lines.len();
        loop {
            let p = t.poll(None).unwrap();
            total += p.lines.len();
            if !p.more {
                break;
            }
        }
        assert_eq!(total, 10_000);
    }
}
