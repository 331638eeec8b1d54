//! Surviving SIGKILL: the process the user started is not the tracer.
//!
//! A tracer that dies uncleanly (SIGKILL, the OOM killer) leaves its int3
//! bytes in the tracee, and threads stopped at one of them die of SIGTRAP
//! as soon as the kernel detaches them. Nothing outside the tracer can
//! repair that: a thread stopped at a planted int3 has rip one past the
//! site and a SIGTRAP that the kernel delivers the moment the dead
//! tracer's `exit_ptrace` lets it go; only its tracer can rewind rip and
//! cancel that signal. (Holding the dying tracer at its
//! `PTRACE_EVENT_EXIT` stop keeps the tracees stopped, but no one can act
//! for it from there.)
//!
//! So bts splits in two before it traces anything. The *front* (the
//! process the user started, whose pid `$!`, `timeout` and CI runners
//! hold) does nothing but wait for the *worker* child and end as it ends;
//! it forwards every catchable signal sent to it. The worker traces, with
//! `PR_SET_PDEATHSIG` set to [`FRONT_GONE`]: if the front is killed, even
//! by SIGKILL, the worker receives that signal, detaches cleanly (every
//! byte and rip restored), saves the trace and ends. Killing the worker
//! itself by SIGKILL remains fatal to the tracees; its name, `bts-tracer`,
//! keeps it out of `killall bts` and `pgrep -x bts`.

use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::prctl;
use nix::unistd::{fork, getpid, getppid, ForkResult, Pid};

use crate::{signals, Error, Result};

/// The signal the worker receives when the front is gone. Real-time
/// signals are never sent by the kernel or a terminal on their own.
pub fn front_gone_signal() -> i32 {
    libc::SIGRTMAX()
}

/// How the worker ended, as the front saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerEnd {
    /// It exited with this code.
    Exited(i32),
    /// It was ended by this signal.
    Signaled(i32),
}

/// Which side of [`split`] the caller is on.
#[derive(Debug)]
pub enum Side {
    /// The worker: go on and trace.
    Worker,
    /// The front, once the worker ended (the worker's pid and end).
    Front {
        /// The worker's pid.
        worker: i32,
        /// How it ended.
        end: WorkerEnd,
    },
}

static WORKER: AtomicI32 = AtomicI32::new(0);
static FRONT: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let (code, sender) = unsafe { ((*info).si_code, (*info).si_pid()) };
    let worker = WORKER.load(Ordering::SeqCst);
    // A terminal's signal (SI_KERNEL) went to the whole process group, the
    // worker included; the worker's own SIGPIPE is its own business.
    if code == libc::SI_KERNEL || sender == worker || worker <= 0 {
        return;
    }
    // SAFETY: kill is async-signal-safe; the worker is our child.
    unsafe { libc::kill(worker, sig) };
}

/// Splits bts into the front and the worker (see the module
/// documentation). Must be called while bts has a single thread and before
/// anything is traced. Returns [`Side::Worker`] in the child at once, and
/// [`Side::Front`] in the parent when the child has ended.
pub fn split() -> Result<Side> {
    let threads = std::fs::read_dir("/proc/self/task").map_err(|e| Error::os("/proc/self/task", e))?.count();
    if threads != 1 {
        return Err(Error::Threaded { threads });
    }
    let front = getpid();
    // SAFETY: the process has one thread (checked above), so the child
    // may run any code, as after any fork of a single-threaded program.
    match unsafe { fork() }.map_err(|e| Error::os("fork", e.into()))? {
        ForkResult::Child => {
            become_worker(front)?;
            Ok(Side::Worker)
        }
        ForkResult::Parent { child } => {
            WORKER.store(child.as_raw(), Ordering::SeqCst);
            for sig in signals::caught() {
                // A handler that cannot be installed leaves that signal's
                // default action: the worker then sees FRONT_GONE.
                let _ = signals::set_handler(sig, forward);
            }
            Ok(Side::Front { worker: child.as_raw(), end: wait_worker(child)? })
        }
    }
}

fn become_worker(front: Pid) -> Result<()> {
    FRONT.store(front.as_raw(), Ordering::SeqCst);
    // The handlers first, so that FRONT_GONE is caught once it can come.
    signals::install_stop_handlers().map_err(|e| Error::os("signal handlers", e))?;
    let name = c"bts-tracer";
    prctl::set_name(name).map_err(|e| Error::os("PR_SET_NAME", e.into()))?;
    // SAFETY: PR_SET_PDEATHSIG with a valid signal number; nix's wrapper
    // takes only the classic signals, not the real-time one used here.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, front_gone_signal() as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(Error::os("PR_SET_PDEATHSIG", std::io::Error::last_os_error()));
    }
    // The front may have died before the line above.
    if getppid() != front {
        signals::note_signal(front_gone_signal());
    }
    Ok(())
}

fn wait_worker(child: Pid) -> Result<WorkerEnd> {
    // libc, not nix: nix's WaitStatus cannot hold a real-time signal.
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child into a local int.
        if unsafe { libc::waitpid(child.as_raw(), &mut status, 0) } >= 0 {
            if libc::WIFEXITED(status) {
                return Ok(WorkerEnd::Exited(libc::WEXITSTATUS(status)));
            }
            if libc::WIFSIGNALED(status) {
                return Ok(WorkerEnd::Signaled(libc::WTERMSIG(status)));
            }
            continue;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(Error::os("waitpid", e));
        }
    }
}

/// True in the worker once the front that started it is gone.
pub fn front_is_gone() -> bool {
    let front = FRONT.load(Ordering::SeqCst);
    front != 0 && getppid().as_raw() != front
}
