//! Giving the terminal back on the paths a panic hook does not see. ratatui's panic hook restores
//! the screen after a panic; an abort (a failed allocation, a stack overflow, `abort()`) runs no
//! Rust code, and would leave the user's shell in the alternate screen with echo off. A SIGABRT
//! handler restores the saved terminal modes and leaves the alternate screen, then lets the abort
//! go on.

use std::sync::OnceLock;

/// The terminal modes before the notebook changed them.
static SAVED: OnceLock<libc::termios> = OnceLock::new();

/// Leave the alternate screen, show the cursor, stop mouse reporting and bracketed paste.
const RESTORE: &[u8] =
    b"\x1b[?1049l\x1b[?25h\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?2004l\r\n";

extern "C" fn on_abort(_sig: libc::c_int) {
    // Only async-signal-safe calls: tcsetattr(3) and write(2) on saved plain data.
    if let Some(t) = SAVED.get() {
        // SAFETY: `t` points to a valid termios saved before raw mode; tcsetattr reads it only.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t) };
    }
    // SAFETY: writes a static byte slice of the given length to stdout.
    unsafe { libc::write(libc::STDOUT_FILENO, RESTORE.as_ptr().cast(), RESTORE.len()) };
    // SA_RESETHAND put the default action back. Raise the signal again (it is blocked until
    // this handler returns, then delivered): a SIGABRT sent by another process ends this one as
    // it would have, and abort(3)'s own would too.
    // SAFETY: raise(3) is async-signal-safe and takes a plain signal number.
    unsafe { libc::raise(libc::SIGABRT) };
}

/// Save the terminal's modes (call before entering raw mode) and install the SIGABRT handler.
pub fn install_abort_guard() {
    // SAFETY: a zeroed termios is a valid out-parameter for tcgetattr, which fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr writes into `t`, a valid termios owned by this frame.
    if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } == 0 {
        let _ = SAVED.set(t);
    }
    // SAFETY: a zeroed sigaction is valid; we set the handler, flags and an empty mask, and
    // `on_abort` only makes async-signal-safe calls. SA_ONSTACK runs it on the alternate
    // signal stack Rust installs, so it also works after a stack overflow.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_abort as *const () as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESETHAND | libc::SA_ONSTACK;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGABRT, &sa, std::ptr::null_mut());
    }
}
