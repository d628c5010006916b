//! The `stageloop` binary: parse the command line and hand over to a command.

use clap::Parser;

fn main() {
    keep_freed_memory();
    // A write past RLIMIT_FSIZE fails with EFBIG instead of killing the process, so a stage
    // records why it failed (as on a full disk).
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to SIG_IGN touches no memory of ours; called
    // before any other thread exists.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let cli = stageloop::cli::Cli::parse();
    if let Err(e) = stageloop::cli::dispatch(cli) {
        // Errors quote specs, paths and run folders: printed inert.
        let inert = |s: String| stageloop::untrusted::printable(&s).into_owned();
        if let Some(spec_errors) = e.downcast_ref::<stageloop::spec::SpecErrors>() {
            for err in &spec_errors.0 {
                eprintln!("error: {}", inert(err.to_string()));
            }
        } else {
            eprintln!("error: {}", inert(format!("{e:#}")));
        }
        std::process::exit(1);
    }
}

/// Keep freed blocks of up to 32 MB in the heap for reuse, and grow the heap 64 MB past each
/// request. burn allocates and frees tensors of a few megabytes at every op; by default glibc
/// returns such blocks to the kernel and each new one costs page faults and zeroing (a visible
/// share of a training step; docs/PERF.md).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}
