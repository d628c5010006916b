//! Crash-safe writes: a file or a folder is written under a temporary name beside its target
//! and renamed into place, so a reader sees the old version or the new one, never half of one.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

fn temp_beside(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// `e` with `path` in its message (a full disk's "No space left on device" alone names no file).
pub fn named(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Write `bytes` to `path` atomically (temp file, fsync, rename). The error names `path`.
pub fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_with(path, |f| f.write_all(bytes))
}

/// Write `path` atomically through `write`: into a temporary file created beside it (a new
/// file: a symbolic link planted under that name is never followed), synced, then renamed over
/// `path` (which replaces a link there rather than writing through it). The error names `path`.
pub fn write_with(
    path: &Path,
    write: impl FnOnce(&mut fs::File) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = temp_beside(path);
    // A temporary of this pid left by an earlier failure (or planted): removed, not followed.
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        write(&mut f)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| named(path, e))
}

/// Open `path` to append to it (created when missing, readable too), never through a symbolic
/// link and only when it is a regular file: a log or notes file of a run folder that links
/// elsewhere (a shell's rc file) is refused, naming it, instead of written through.
pub fn append_own(path: &Path) -> io::Result<fs::File> {
    let mut opts = fs::OpenOptions::new();
    opts.read(true).append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut opts, libc::O_NOFOLLOW | libc::O_NONBLOCK);
    let refuse = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}: {why}; stageloop writes only a run's own files",
                path.display()
            ),
        )
    };
    let file = match opts.open(path) {
        Ok(f) => f,
        Err(_) if path.is_symlink() => return Err(refuse("a symbolic link")),
        Err(e) => return Err(named(path, e)),
    };
    if !file.metadata().map_err(|e| named(path, e))?.is_file() {
        return Err(refuse("not a regular file"));
    }
    Ok(file)
}

/// Read a JSON file written by [`write_json`]: an unreadable file or bad JSON is an error
/// naming the file (and line and column).
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = crate::untrusted::read_small(path, 1 << 30)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}:{}:{}: {e}", path.display(), e.line(), e.column()))
}

/// Write `value` as pretty JSON to `path` atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    write_file(path, &bytes)
}

/// A folder being filled under a temporary name; [`TempDir::publish`] renames it into place.
/// Dropped without publishing, it is removed.
pub struct TempDir {
    tmp: PathBuf,
    target: PathBuf,
    published: bool,
}

impl TempDir {
    /// Start a folder that will become `target`.
    pub fn new(target: &Path) -> io::Result<TempDir> {
        let tmp = temp_beside(target);
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        Ok(TempDir {
            tmp,
            target: target.to_path_buf(),
            published: false,
        })
    }

    /// Where to write the folder's files.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Rename into place, replacing an older folder of the same name.
    pub fn publish(mut self) -> io::Result<PathBuf> {
        if self.target.exists() {
            fs::remove_dir_all(&self.target)?;
        }
        fs::rename(&self.tmp, &self.target)?;
        self.published = true;
        Ok(self.target.clone())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_and_atomic_writes_never_write_through_a_planted_link() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("bashrc");
        fs::write(&outside, "keep\n").unwrap();
        let run = d.path().join("run");
        fs::create_dir(&run).unwrap();
        for name in ["bookmarks.jsonl", "notes.md", "stdout.log"] {
            std::os::unix::fs::symlink(&outside, run.join(name)).unwrap();
            let e = append_own(&run.join(name)).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains("symbolic link"), "{e}");
        }
        let e = super::super::jsonl::JsonlWriter::append(&run.join("stdout.log"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("symbolic link"), "{e}");
        // An atomic write replaces a link at the target, and a link at its temporary name is
        // removed, never followed.
        let target = run.join("metrics.csv");
        std::os::unix::fs::symlink(&outside, &target).unwrap();
        std::os::unix::fs::symlink(&outside, temp_beside(&target)).unwrap();
        write_file(&target, b"step\n1\n").unwrap();
        assert_eq!(fs::read_to_string(&outside).unwrap(), "keep\n");
        assert!(!target.is_symlink());
        assert_eq!(fs::read_to_string(&target).unwrap(), "step\n1\n");
        // A FIFO is no file to append to (and opening it does not block).
        let fifo = run.join("fifo.jsonl");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = append_own(&fifo).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn write_file_replaces_whole_contents_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("run.json");
        write_file(&p, b"first version, long").unwrap();
        write_file(&p, b"second").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn unpublished_temp_dir_is_removed() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("step-1");
        {
            let t = TempDir::new(&target).unwrap();
            fs::write(t.path().join("x"), b"1").unwrap();
        }
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
        let t = TempDir::new(&target).unwrap();
        fs::write(t.path().join("x"), b"1").unwrap();
        t.publish().unwrap();
        assert!(target.join("x").is_file());
    }
}
