//! bts's own output, written so that a closed or full stdout or stderr
//! never takes bts down: `bts run` still exits with the program's status.
//! The first failure is reported once on stderr, if stderr still works; a
//! closed pipe (`bts history … | head`) is not worth a message.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static STDOUT_FAILED: AtomicBool = AtomicBool::new(false);
static STDERR_FAILED: AtomicBool = AtomicBool::new(false);

fn write_to(mut w: impl Write, text: &str, failed: &AtomicBool, name: &str) {
    if failed.load(Ordering::Relaxed) {
        return;
    }
    if let Err(e) = w.write_all(text.as_bytes()).and_then(|_| w.flush()) {
        failed.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe && name == "stdout" {
            err(&format!("bts: cannot write to {name}: {e}\n"));
        }
    }
}

/// Writes to stdout.
pub fn out(text: &str) {
    write_to(std::io::stdout().lock(), text, &STDOUT_FAILED, "stdout");
}

/// Writes to stderr.
pub fn err(text: &str) {
    write_to(std::io::stderr().lock(), text, &STDERR_FAILED, "stderr");
}

/// True when something bts meant to print on stdout was lost.
pub fn stdout_failed() -> bool {
    STDOUT_FAILED.load(Ordering::Relaxed)
}

/// `println!` to stdout, never panicking.
#[macro_export]
macro_rules! outln {
    ($($t:tt)*) => { $crate::out::out(&format!("{}\n", format_args!($($t)*))) };
}

/// `eprintln!` to stderr, never panicking.
#[macro_export]
macro_rules! errln {
    ($($t:tt)*) => { $crate::out::err(&format!("{}\n", format_args!($($t)*))) };
}
