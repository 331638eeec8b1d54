//! Launching a program under trace: the buffers checked first, the child
//! spawned seized, run to its exec.

use std::ffi::OsString;

use ds_alloc::{Allocator, Target};

use crate::recorder;
use crate::spawn::{exec_errno, resolve_program, spawn_seized};
use crate::sys::{self, Wait};
use crate::{Error, Result};

use super::{Options, Session};

/// Checks the buffers can be had before anything is started: a size too
/// small, or over the locked-memory limit, fails here with the amounts.
pub(super) fn preflight(opts: &Options) -> Result<()> {
    let mut a = Allocator::new();
    let t = a.register_current("bts");
    a.request_bts(t, Target::Task(0), opts.buffer_bytes)?;
    if let Some(bytes) = opts.per_cpu_bytes {
        a.request_bts(t, Target::Cpu(0), bytes)?;
    }
    Ok(())
}

pub(super) fn trace_options(launched: bool) -> i32 {
    let mut o = sys::PTRACE_O_TRACESYSGOOD
        | sys::PTRACE_O_TRACECLONE
        | sys::PTRACE_O_TRACEFORK
        | sys::PTRACE_O_TRACEVFORK
        | sys::PTRACE_O_TRACEEXEC
        | sys::PTRACE_O_TRACEEXIT;
    if launched {
        o |= sys::PTRACE_O_EXITKILL;
    }
    o
}

impl Session {
    /// Launches `argv` traced from its first instruction.
    pub fn launch(argv: &[OsString], opts: Options) -> Result<Session> {
        preflight(&opts)?;
        if let Some(first) = argv.first() {
            resolve_program(first)
                .map_err(|source| Error::Exec { program: first.to_string_lossy().into_owned(), source })?;
        }
        // The child inherits the mask across fork and exec.
        // The program's mask before pinning: what threads left running
        // (daemons of a followed child) get back at detach.
        let unpinned = sys::get_affinity(0).ok();
        let pinned = if opts.pin_cpu { Session::pin_self(0).map(|p| p.0) } else { None };
        let (pid, errf) = spawn_seized(argv, opts.no_aslr, trace_options(true))?;
        let recorder = recorder::for_backend(opts.backend, opts.buffer_bytes, opts.insn_log.as_deref())?;
        let mut s = Session::new(opts, pid, true, recorder);
        s.pinned_cpu = pinned;
        if pinned.is_some() {
            s.default_affinity = unpinned;
        }
        s.request_cpu_buffers()?;
        let program = argv[0].to_string_lossy().into_owned();
        // Run to the exec event: that is where recording begins.
        loop {
            match sys::wait(pid).map_err(|e| Error::os("waitpid", e))? {
                None => continue,
                Some(Wait::Event(_, sys::EVENT_EXEC, _)) => break,
                Some(Wait::Event(_, sys::EVENT_EXIT, _))
                | Some(Wait::Exited(..))
                | Some(Wait::Signaled(..)) => {
                    // SAFETY: killing and reaping our own child.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                        libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL);
                    }
                    let source = match exec_errno(&errf) {
                        Some(errno) => std::io::Error::from_raw_os_error(errno),
                        None => std::io::Error::other("it ended before exec"),
                    };
                    return Err(Error::Exec { program, source });
                }
                Some(other) => {
                    let sig = match other {
                        Wait::Signal(_, sig) => sig,
                        _ => 0,
                    };
                    sys::cont(pid, sig).map_err(|e| Error::os("ptrace(PTRACE_CONT)", e))?;
                }
            }
        }
        drop(errf);
        let shown = argv.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        s.processes.started(pid, std::process::id() as sys::Pid, Some(shown));
        let space = s.new_space(pid, 1)?;
        s.add_thread(pid, space, true)?;
        s.resume(pid, 0)?;
        Ok(s)
    }
}
