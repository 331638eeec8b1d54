//! bts's exit statuses, as `env` and `timeout` give theirs.

use ptrace_shim::Outcome;

/// Exit code for bts's own failures when it wraps a program (as `env` and
/// `timeout` do), so it is not confused with the program's own codes.
pub const EXIT_BTS_FAILED: u8 = 125;

/// The status a traced program ended with, as a shell reports it.
pub fn status(o: Outcome) -> i32 {
    match o {
        Outcome::Exited(c) => c,
        Outcome::Signaled(s) => 128 + s,
        Outcome::Detached(_) => 0,
    }
}

/// The status of a program that could not be executed, as `env` gives it:
/// 127 when it is not found, 126 when it cannot be run.
pub fn exec_failure_status(e: &std::io::Error) -> i32 {
    if e.raw_os_error() == Some(libc::ENOENT) {
        127
    } else {
        126
    }
}

/// An exit code from a status (0..=255).
pub fn code(status: i32) -> std::process::ExitCode {
    std::process::ExitCode::from(status.clamp(0, 255) as u8)
}
