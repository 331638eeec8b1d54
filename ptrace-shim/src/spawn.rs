//! Launching a program held at its first instruction, traced.

use std::ffi::{CString, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::sys::{self, Pid};
use crate::{Error, Result};

/// Finds the file `execvp` would run for `program`, or the error it would
/// give (`ENOENT`: not found; `EACCES`: not executable; `EISDIR`: a folder),
/// so bts can fail before it starts anything, and name the cause.
pub fn resolve_program(program: &std::ffi::OsStr) -> std::result::Result<PathBuf, std::io::Error> {
    let p = Path::new(program);
    let candidates: Vec<PathBuf> = if program.as_bytes().contains(&b'/') {
        vec![p.to_path_buf()]
    } else {
        let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        std::env::split_paths(&path).map(|d| d.join(p)).collect()
    };
    let mut found = None;
    for c in candidates {
        match std::fs::metadata(&c) {
            Ok(m) if m.is_dir() => found = found.or(Some(libc::EISDIR)),
            Ok(m) if m.permissions().mode() & 0o111 == 0 => found = Some(libc::EACCES),
            // Root may run any file with an execute bit; others need theirs.
            Ok(_) if access_x(&c) => return Ok(c),
            Ok(_) => found = Some(libc::EACCES),
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => found = Some(libc::EACCES),
            Err(_) => {}
        }
    }
    Err(std::io::Error::from_raw_os_error(found.unwrap_or(libc::ENOENT)))
}

fn access_x(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_bytes()) else { return false };
    // SAFETY: a valid NUL-terminated path; access only reads it.
    unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
}

/// A forked child held before its exec until [`Held::release`].
#[derive(Debug)]
pub struct Held {
    /// The child.
    pub pid: Pid,
    gate: std::os::fd::OwnedFd,
    errf: std::fs::File,
}

impl Held {
    /// Lets the child exec; returns the pipe on which it reports an exec failure.
    pub fn release(self) -> std::fs::File {
        drop(self.gate);
        self.errf
    }

    /// Kills the child that will not be run, and reaps it.
    pub fn kill(self) {
        // SAFETY: killing and reaping our own child.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// Forks a child that waits, before it execs `argv`, for the parent to
/// [`Held::release`] it: whoever will trace it (a daemon) attaches first.
pub fn spawn_held(argv: &[OsString], no_aslr: bool) -> Result<Held> {
    if argv.is_empty() {
        return Err(Error::NoCommand);
    }
    let cargs: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::NulInArgument)?;
    let mut ptrs: Vec<*const libc::c_char> = cargs.iter().map(|c| c.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let mut gate = [0i32; 2];
    let mut errpipe = [0i32; 2];
    // SAFETY: pipe2 writes two fds into the arrays.
    unsafe {
        if libc::pipe2(gate.as_mut_ptr(), libc::O_CLOEXEC) != 0
            || libc::pipe2(errpipe.as_mut_ptr(), libc::O_CLOEXEC) != 0
        {
            return Err(Error::os("pipe", std::io::Error::last_os_error()));
        }
    }
    // SAFETY: the child only calls async-signal-safe functions (read,
    // personality, execvp, write, _exit) on data prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::os("fork", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: see above; the child never returns.
        unsafe {
            libc::close(gate[1]);
            libc::close(errpipe[0]);
            let mut b = 0u8;
            libc::read(gate[0], &mut b as *mut u8 as *mut libc::c_void, 1);
            if no_aslr {
                libc::personality(libc::ADDR_NO_RANDOMIZE as libc::c_ulong);
            }
            libc::execvp(ptrs[0], ptrs.as_ptr());
            let e = *libc::__errno_location();
            libc::write(errpipe[1], &e as *const i32 as *const libc::c_void, 4);
            libc::_exit(127);
        }
    }
    // SAFETY: closing our copies of the child's ends, and taking over ours.
    unsafe {
        libc::close(gate[0]);
        libc::close(errpipe[1]);
        use std::os::fd::FromRawFd;
        Ok(Held {
            pid,
            gate: std::os::fd::OwnedFd::from_raw_fd(gate[1]),
            errf: std::fs::File::from_raw_fd(errpipe[0]),
        })
    }
}

/// Forks and execs `argv` with the child held until the parent has seized it.
pub(crate) fn spawn_seized(argv: &[OsString], no_aslr: bool, options: i32) -> Result<(Pid, std::fs::File)> {
    let held = spawn_held(argv, no_aslr)?;
    let pid = held.pid;
    if let Err(e) = sys::seize(pid, options) {
        held.kill();
        return Err(Error::os("ptrace(PTRACE_SEIZE) of the launched program", e));
    }
    Ok((pid, held.release()))
}

/// The errno a child wrote before it failed to exec, if it did.
pub fn exec_errno(mut errf: &std::fs::File) -> Option<i32> {
    let mut buf = [0u8; 4];
    errf.read_exact(&mut buf).ok()?;
    Some(i32::from_le_bytes(buf))
}
