//! `bts gdb FILE`: stock GDB on a saved trace, in one command: the
//! executable, bts's stub on a pipe, and the `last-branch` command.
//! `bts gdbinit` prints that command's script.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, ExitCode};

/// The GDB script `bts gdbinit` prints and `bts gdb` loads.
pub const SCRIPT: &str = include_str!("gdbinit.gdb");

/// `bts gdbinit`.
pub fn gdbinit() -> ExitCode {
    crate::out::out(SCRIPT);
    if crate::out::stdout_failed() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Quotes `s` for `sh -c` (GDB runs `target remote | CMD` through the shell).
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `bts gdb FILE [-- GDB-ARGS]`.
pub fn run(file: &Path, gdb: &Path, gdb_args: &[String]) -> ExitCode {
    // Check the file here, so that a bad one is a clear error, not a
    // failed `target remote` inside GDB.
    let tf = match crate::load::load(file) {
        Ok(t) => t,
        Err(e) => {
            crate::errln!("bts: {e}");
            return ExitCode::FAILURE;
        }
    };
    let exec = match gdb_remote::PostMortem::new(tf, file.display().to_string()) {
        Ok(t) => gdb_remote::Target::exec_file(&t),
        Err(e) => {
            crate::errln!("bts: {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let me = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            crate::errln!("bts: cannot find the bts executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The script goes in a fresh private folder, removed after GDB ends.
    let dir = match tempfile::Builder::new().prefix("bts-gdb.").tempdir() {
        Ok(d) => d,
        Err(e) => {
            crate::errln!("bts: cannot make a private folder for the GDB script: {e}");
            return ExitCode::FAILURE;
        }
    };
    let script = dir.path().join("bts.gdb");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&script)
        .and_then(|mut f| std::io::Write::write_all(&mut f, SCRIPT.as_bytes()));
    if let Err(e) = written {
        crate::errln!("bts: {}: {e}", script.display());
        return ExitCode::FAILURE;
    }
    let stub = format!(
        "target remote | exec {} gdbserver --stdio {}",
        sh_quote(&me.display().to_string()),
        sh_quote(&file.display().to_string())
    );
    let mut cmd = Command::new(gdb);
    // The trace's modules are this machine's files (bts read them when it
    // recorded): no file transfer over the stub.
    cmd.arg("-q").arg("-iex").arg("set sysroot /").arg("-x").arg(&script);
    if let Some(exe) = &exec {
        cmd.arg(exe);
    }
    // GDB runs -x and -ex in order: the user's own come once connected.
    cmd.arg("-ex").arg(stub).args(gdb_args);
    // Ctrl-C is GDB's: bts only waits.
    // SAFETY: setting signal dispositions to SIG_IGN in this process.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) => {
            crate::errln!("bts: cannot run {}: {e}", gdb.display());
            return ExitCode::from(crate::exit::EXIT_BTS_FAILED);
        }
    };
    drop(dir);
    crate::exit::code(status.code().unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::sh_quote;

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(sh_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
    }
}
