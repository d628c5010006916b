//! One writer per run folder: a running stage holds an exclusive lock (`flock` on Unix) on the
//! run's `lock` file, which names its pid. A second writer is refused with the holder's pid;
//! the notebook signals a run's process only when that process holds the lock.
//!
//! The lock is the kernel's, not the file's existence: it goes with the process (a killed stage
//! leaves the file but not the lock), so a stale `lock` file never blocks a resume.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file inside a run folder.
pub const LOCK: &str = "lock";

/// The held lock of a run folder; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Take `dir`'s lock for this process, or fail naming the run and the pid that holds it.
    pub fn acquire(dir: &Path) -> anyhow::Result<RunLock> {
        let path = dir.join(LOCK);
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut opts, libc::O_NOFOLLOW);
        let mut file = opts.open(&path).map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot open the run's lock: {e}{}",
                path.display(),
                if path.is_symlink() {
                    " (it is a symbolic link; a run's lock must be its own file)"
                } else {
                    ""
                }
            )
        })?;
        if own_file(dir, &file).is_none() {
            anyhow::bail!(
                "{}: not the run's own lock file (another name links to it, or it is not a \
                 regular file on the run folder's disk)",
                path.display()
            );
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let who = read_pid(&mut file)
                    .map(|p| format!("pid {p}"))
                    .unwrap_or_else(|| "another process".into());
                anyhow::bail!(
                    "run {} is already being written by {who} ({} is locked); stop it first or \
                     start a new run with --fresh",
                    dir.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| dir.display().to_string()),
                    path.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                anyhow::bail!("{}: cannot lock: {e}", path.display())
            }
        }
        let pid = std::process::id().to_string();
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(pid.as_bytes()))
            .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))?;
        Ok(RunLock { _file: file, path })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The pid a lock file names (its whole text, a decimal number).
fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// `file` when it is `dir`'s own lock: a regular file with one name, on the run folder's own
/// device (a hard link to some other process's lock file has two names).
fn own_file<'a>(dir: &Path, file: &'a File) -> Option<&'a File> {
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let folder = std::fs::metadata(dir).ok()?;
        if meta.nlink() != 1 || meta.dev() != folder.dev() {
            return None;
        }
    }
    Some(file)
}

/// Open `dir`'s lock file for reading: never through a symbolic link, never blocking on a FIFO,
/// and only when it is the run's own file ([`own_file`]).
fn open_own(dir: &Path) -> Option<File> {
    let mut opts = OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut opts, libc::O_NOFOLLOW | libc::O_NONBLOCK);
    let file = opts.open(dir.join(LOCK)).ok()?;
    own_file(dir, &file)?;
    Some(file)
}

/// The pid of the process that holds `dir`'s lock now, if one does. The file's text names it;
/// on Linux the kernel's table of locks (`/proc/locks`) must confirm that this pid holds a lock
/// on this very file, so a hand-written pid is never believed. A lock that is a symbolic link,
/// a hard link or no regular file is no run's lock: nobody holds it.
pub fn holder(dir: &Path) -> Option<u32> {
    let mut file = open_own(dir)?;
    match file.try_lock_shared() {
        // Nobody holds it: the shared lock taken here is released as the file closes.
        Ok(()) => None,
        Err(TryLockError::WouldBlock) => {
            let pid = read_pid(&mut file).filter(|&p| p > 1)?;
            kernel_confirms(&file, pid).then_some(pid)
        }
        Err(TryLockError::Error(_)) => None,
    }
}

/// The stage writing run folder `dir`: the pid that holds its own lock ([`holder`]) and, where
/// the system says (Linux), is this program running `run` on the experiment the folder is in.
/// The notebook signals nothing else.
pub fn stage_of(dir: &Path) -> Option<u32> {
    let pid = holder(dir)?;
    runs_experiment(pid, dir).then_some(pid)
}

/// Whether process `pid` is this program (by its executable's name) started as
/// `run EXP …` with `EXP` the experiment that holds run folder `dir` (`EXP/runs/<id>`), read
/// from `/proc/<pid>/cmdline` relative to its working folder. True where there is no `/proc`.
pub fn runs_experiment(pid: u32, dir: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let name = |p: &Path| {
            let n = p.file_name()?.to_string_lossy().into_owned();
            Some(n.trim_end_matches(" (deleted)").to_string())
        };
        let ours = std::env::current_exe().ok().and_then(|p| name(&p));
        let theirs = std::fs::read_link(proc.join("exe"))
            .ok()
            .and_then(|p| name(&p));
        // This program: the same executable name as the caller's, or stageloop's own name (a
        // test harness asking about a real stage).
        if theirs.is_none() || (theirs != ours && theirs.as_deref() != Some("stageloop")) {
            return false;
        }
        let (Ok(raw), Ok(cwd)) = (
            std::fs::read(proc.join("cmdline")),
            std::fs::read_link(proc.join("cwd")),
        ) else {
            return false;
        };
        let args: Vec<&std::ffi::OsStr> = raw
            .split(|b| *b == 0)
            .map(std::ffi::OsStr::from_bytes)
            .collect();
        let Some(at) = args.iter().position(|a| *a == "run") else {
            return false;
        };
        let Some(want) = dir
            .parent()
            .and_then(Path::parent)
            .and_then(|e| e.canonicalize().ok())
        else {
            return false;
        };
        args[at + 1..].iter().any(|a| {
            let p = cwd.join(a);
            let folder = if p.is_dir() {
                Some(p.as_path())
            } else {
                p.parent()
            };
            folder.and_then(|f| f.canonicalize().ok()).as_ref() == Some(&want)
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (pid, dir);
        true
    }
}

/// Whether `/proc/locks` lists a `flock` by `pid` on `file`'s inode (true where there is no
/// such table to ask).
fn kernel_confirms(file: &File, pid: u32) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        let (Ok(meta), Ok(table)) = (file.metadata(), std::fs::read_to_string("/proc/locks"))
        else {
            return false;
        };
        holds(&table, pid, meta.ino())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, pid);
        true
    }
}

/// Whether a `/proc/locks` table has a FLOCK line by `pid` on inode `ino`. Lines read
/// `1: FLOCK  ADVISORY  WRITE 4242 fd:01:123456 0 EOF` (the device in hex, then the inode).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn holds(table: &str, pid: u32, ino: u64) -> bool {
    table.lines().any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(at) = f.iter().position(|w| *w == "FLOCK") else {
            return false;
        };
        let inode = f
            .get(at + 4)
            .and_then(|d| d.rsplit(':').next())
            .and_then(|i| i.parse::<u64>().ok());
        f.get(at + 3).and_then(|p| p.parse::<u32>().ok()) == Some(pid) && inode == Some(ino)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_with_the_holders_pid_until_the_first_lets_go() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(holder(d.path()), None, "no lock file yet");
        let first = RunLock::acquire(d.path()).unwrap();
        assert_eq!(holder(d.path()), Some(std::process::id()));
        let e = RunLock::acquire(d.path()).unwrap_err().to_string();
        assert!(
            e.contains(&format!("pid {}", std::process::id())) && e.contains("lock"),
            "{e}"
        );
        drop(first);
        assert_eq!(holder(d.path()), None, "a left-over file is not a lock");
        let _again = RunLock::acquire(d.path()).unwrap();
    }

    #[test]
    fn the_kernels_lock_table_must_name_the_pid_and_the_file() {
        let t = "1: FLOCK  ADVISORY  WRITE 4242 fd:01:123456 0 EOF\n\
                 2: POSIX  ADVISORY  WRITE 77 fd:01:999 0 EOF\n";
        assert!(holds(t, 4242, 123456));
        assert!(!holds(t, 4243, 123456), "another pid");
        assert!(!holds(t, 4242, 123457), "another file");
        assert!(!holds(t, 77, 999), "POSIX locks are not ours");
    }

    #[test]
    fn a_lock_file_nobody_holds_names_no_holder_whatever_it_says() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(LOCK), "1").unwrap();
        assert_eq!(holder(d.path()), None);
    }
}
