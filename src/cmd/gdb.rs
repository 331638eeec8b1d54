//! `bts gdb FILE`: stock GDB on a saved trace, in one command: the
//! executable, bts's stub on a pipe, and the `last-branch` command.
//! `bts gdbinit` prints that command's script.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, ExitCode};

use crate::args::GdbTarget;

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

/// The program `argv0` names, as the shell would find it.
fn which(argv0: &std::ffi::OsStr) -> Option<String> {
    let p = Path::new(argv0);
    if p.components().count() > 1 {
        return std::fs::canonicalize(p).ok().map(|p| p.display().to_string());
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path).map(|d| d.join(p)).find(|c| c.is_file()).map(|c| c.display().to_string())
    })
}

/// What GDB loads as the executable, and the stub's arguments.
fn plan(target: &GdbTarget) -> Result<(Option<String>, Vec<String>), String> {
    let mut args = vec!["gdbserver".to_string(), "--stdio".to_string()];
    if let Some(file) = &target.file {
        // Checked here, so that a bad file is a clear error, not a failed
        // `target remote` inside GDB.
        let (tf, _) = crate::load::load_newest(file, target.gdb_branches.0).map_err(|e| e.to_string())?;
        let t = gdb_remote::PostMortem::new(tf, file.display().to_string())
            .map_err(|e| format!("{}: {e}", file.display()))?;
        args.push(format!("--gdb-branches={}", target.gdb_branches));
        args.push(file.display().to_string());
        return Ok((gdb_remote::Target::exec_file(&t), args));
    }
    args.push(format!("--buffer-size={}", target.buffer_size));
    if let Some(pid) = target.attach {
        if pid <= 0 || !Path::new(&format!("/proc/{pid}")).exists() {
            return Err(format!("no process {pid}"));
        }
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok().map(|p| p.display().to_string());
        args.push(format!("--attach={pid}"));
        return Ok((exe, args));
    }
    let exe = target.command.first().and_then(|a| which(a));
    args.push("--".into());
    args.extend(target.command.iter().map(|a| a.to_string_lossy().into_owned()));
    Ok((exe, args))
}

/// `bts gdb (FILE | --attach PID | -- CMD) [--gdb-arg ARG]...`.
pub fn run(target: &GdbTarget, gdb: &Path, gdb_args: &[String]) -> ExitCode {
    let (exec, stub_args) = match plan(target) {
        Ok(p) => p,
        Err(e) => {
            crate::errln!("bts: {e}");
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
    let mut stub = format!("target remote | exec {}", sh_quote(&me.display().to_string()));
    for a in &stub_args {
        stub.push(' ');
        stub.push_str(&sh_quote(a));
    }
    let mut cmd = Command::new(gdb);
    // The trace's modules are this machine's files (bts read them when it
    // recorded): no file transfer over the stub.
    cmd.arg("-q").arg("-iex").arg("set sysroot /").arg("-x").arg(&script);
    if let Some(exe) = &exec {
        cmd.arg(exe);
    }
    // GDB runs -x and -ex in order: the user's own come once connected.
    cmd.arg("-ex").arg(stub);
    if target.file.is_none() {
        // Live: GDB's record-btrace on bts's recording, new threads too.
        cmd.arg("-ex").arg("record btrace bts");
    }
    cmd.args(gdb_args);
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
