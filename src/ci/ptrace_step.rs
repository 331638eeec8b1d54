//! A CI step under a ptrace recorder: every process followed, each one's
//! trace dropped when it ends unless it crashed (or `--keep always`), so
//! that memory stays bounded over thousands of processes; daemons the step
//! leaves running are detached at its end.

use std::ffi::OsString;

use bts_reader::TraceFile;
use ptrace_shim::{Backend, Outcome, ProcessInfo, Session, Stop};

use super::{Collector, Proc};
use crate::args::RecordArgs;
use crate::record::{detach_left_running, options};

fn proc_of(p: &ProcessInfo) -> Proc {
    Proc { pid: p.pid, command: p.command.clone() }
}

/// The parent and parent chain of `pid`.
fn lineage(session: &Session, pid: i32) -> (i32, Vec<Proc>) {
    let ppid = session.process(pid).map_or(0, |p| p.ppid);
    (ppid, session.parent_chain(pid).iter().map(proc_of).collect())
}

fn command_of(session: &Session, pid: i32) -> Vec<String> {
    session.process(pid).map(|p| p.command.clone()).unwrap_or_default()
}

/// How the step ended under a ptrace recorder.
pub struct Traced {
    /// How the step's command ended.
    pub outcome: Outcome,
    /// Processes traced.
    pub processes: usize,
    /// Processes left running, detached.
    pub left_running: Vec<Proc>,
    /// Why tracing stopped before the step's end (it was detached, and
    /// waited for untraced).
    pub failure: Option<ptrace_shim::Error>,
}

/// Runs the step (the caller has split off the tracer).
pub fn trace(
    command: &[OsString],
    rec: &RecordArgs,
    backend: Backend,
    collector: &mut Collector,
) -> Result<Traced, ptrace_shim::Error> {
    let mut opts = options(rec, backend, true, false);
    opts.report_process_ends = true;
    let mut session = Session::launch(command, opts)?;
    let root = session.root_pid();
    collector.root = root;
    let mut held = std::collections::HashSet::new();
    let result = loop {
        let stop = session.next_stop();
        for n in session.take_notices() {
            crate::errln!("bts: {n}");
        }
        let stop = match stop {
            Ok(s) => s,
            Err(e) => break Err(e),
        };
        match stop {
            Stop::Crash(c) => {
                held.insert(c.pid);
                let (ppid, parents) = lineage(&session, c.pid);
                let cmd = command_of(&session, c.pid);
                if collector.wants_trace(Some(c.signal)) {
                    let tf = TraceFile::from_recording(&session.process_recording(c.pid), c.meta(&cmd));
                    collector.keep(&tf, c.pid, ppid, parents);
                } else if c.pid != root {
                    collector.failed(Proc { pid: c.pid, command: cmd }, ppid, parents, None, Some(c.signal));
                }
                if let Err(e) = session.deliver_crash() {
                    break Err(e);
                }
            }
            Stop::ProcessEnded(e) => {
                if held.remove(&e.pid) {
                    continue;
                }
                if collector.keep_all {
                    keep_end(&mut session, collector, e.pid, e.outcome);
                } else {
                    let (ppid, parents) = lineage(&session, e.pid);
                    let (code, signal) = match e.outcome {
                        Outcome::Exited(c) => (Some(c), None),
                        // A signal bts could not hold (SIGKILL).
                        Outcome::Signaled(s) => (None, Some(s)),
                        Outcome::Detached(_) => (None, None),
                    };
                    collector.failed(
                        Proc { pid: e.pid, command: command_of(&session, e.pid) },
                        ppid,
                        parents,
                        code,
                        signal,
                    );
                }
            }
            Stop::Debug(_) | Stop::Attention => {}
            Stop::Finished(o) => break Ok(o),
        }
    };
    match result {
        Ok(outcome) => {
            if collector.keep_all && !held.contains(&root) && !matches!(outcome, Outcome::Detached(_)) {
                keep_end(&mut session, collector, root, outcome);
            }
            let left = detach_left_running(&mut session).iter().map(proc_of).collect();
            Ok(Traced { outcome, processes: session.processes_seen(), left_running: left, failure: None })
        }
        Err(e) => {
            // Let the step go on untraced, every int3 gone, and wait for
            // it: its status is still the step's.
            let left: Vec<Proc> =
                session.detach_remaining().unwrap_or_default().iter().map(proc_of).collect();
            let outcome = wait_untraced(root);
            let left = left.into_iter().filter(|p| p.pid != root).collect();
            Ok(Traced { outcome, processes: session.processes_seen(), left_running: left, failure: Some(e) })
        }
    }
}

/// Waits for the step's command, detached (it is still bts's child).
fn wait_untraced(pid: i32) -> Outcome {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child; `status` is ours to fill.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Outcome::Exited(i32::from(crate::exit::EXIT_BTS_FAILED));
        }
    }
    if libc::WIFSIGNALED(status) {
        Outcome::Signaled(libc::WTERMSIG(status))
    } else {
        Outcome::Exited(libc::WEXITSTATUS(status))
    }
}

/// Keeps the trace of a process that ended without crashing (`--keep always`).
fn keep_end(session: &mut Session, collector: &mut Collector, pid: i32, how: Outcome) {
    let cmd = command_of(session, pid);
    let tf = TraceFile::from_recording(&session.process_recording(pid), how.meta(&cmd, pid));
    let (ppid, parents) = lineage(session, pid);
    collector.keep(&tf, pid, ppid, parents);
}
