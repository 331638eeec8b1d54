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
use crate::save::{crash_meta, end_meta};

fn proc_of(p: &ProcessInfo) -> Proc {
    Proc { pid: p.pid, command: p.command.clone() }
}

/// The parent and parent chain of `pid`.
fn lineage(session: &Session, pid: i32) -> (i32, Vec<Proc>) {
    let ppid = session.process(pid).map_or(0, |p| p.ppid);
    (ppid, session.parent_chain(pid).iter().map(proc_of).collect())
}

/// Runs the step (the caller has split off the tracer): how the step's
/// command ended, how many processes ran, and those left running.
pub fn trace(
    command: &[OsString],
    rec: &RecordArgs,
    backend: Backend,
    keep_all: bool,
    collector: &mut Collector,
) -> Result<(Outcome, usize, Vec<Proc>), ptrace_shim::Error> {
    let mut opts = options(rec, backend, true, false);
    opts.report_process_ends = true;
    let mut session = Session::launch(command, opts)?;
    let root = session.root_pid();
    let mut crashed = std::collections::HashSet::new();
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
                crashed.insert(c.pid);
                let cmd = session.process(c.pid).map(|p| p.command.clone()).unwrap_or_default();
                let tf = TraceFile::from_recording(&session.process_recording(c.pid), crash_meta(&cmd, &c));
                let (ppid, parents) = lineage(&session, c.pid);
                collector.keep(&tf, c.pid, ppid, parents);
                if let Err(e) = session.deliver_crash() {
                    break Err(e);
                }
            }
            Stop::ProcessEnded(e) => {
                if let Outcome::Exited(code) = e.outcome {
                    let command = session.process(e.pid).map(|p| p.command.clone()).unwrap_or_default();
                    let (ppid, parents) = lineage(&session, e.pid);
                    collector.exited(Proc { pid: e.pid, command }, ppid, parents, code);
                }
                if keep_all && !crashed.contains(&e.pid) {
                    keep_end(&mut session, collector, e.pid, e.outcome);
                }
            }
            Stop::Debug(_) => {}
            Stop::Finished(o) => break Ok(o),
        }
    };
    let outcome = match result {
        Ok(o) => o,
        Err(e) => {
            // Keep what was recorded of every process still there.
            crate::errln!("bts: tracing failed: {e}");
            detach_left_running(&mut session);
            return Err(e);
        }
    };
    if keep_all && !crashed.contains(&root) {
        keep_end(&mut session, collector, root, outcome);
    }
    let left = detach_left_running(&mut session).iter().map(proc_of).collect();
    Ok((outcome, session.processes_seen(), left))
}

/// Keeps the trace of a process that ended without crashing (`--keep always`).
fn keep_end(session: &mut Session, collector: &mut Collector, pid: i32, how: Outcome) {
    let cmd = session.process(pid).map(|p| p.command.clone()).unwrap_or_default();
    let tf = TraceFile::from_recording(&session.process_recording(pid), end_meta(&cmd, pid, how));
    let (ppid, parents) = lineage(session, pid);
    collector.keep(&tf, pid, ppid, parents);
}
