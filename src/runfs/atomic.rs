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
    let tmp = temp_beside(path);
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| named(path, e))
}

/// Read a JSON file written by [`write_json`]: an unreadable file or bad JSON is an error
/// naming the file (and line and column).
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = fs::read_to_string(path)
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
