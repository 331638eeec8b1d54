//! A CI step under the Valgrind tool: Valgrind follows every exec and
//! fork by itself (`--trace-children=yes`); each process's log names its
//! parent and says how it ended. Only the processes kept are turned into
//! trace files. Valgrind cannot let go of a process: daemons the step
//! leaves running stay under it, unharmed, and are named.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;

use bts_reader::valgrind::{self, VgEnd, VgOptions, VgRun, VgTrace};
use ptrace_shim::Outcome;

use super::{Collector, Proc};
use crate::save::end_meta;
use crate::vg::{build, signal_meta};

/// Runs the step under the tool: its status, the processes seen and those
/// left running.
pub fn trace(
    tool: &valgrind::Installed,
    command: &[OsString],
    buffer_bytes: usize,
    keep_all: bool,
    note: &Option<String>,
    collector: &mut Collector,
) -> Result<(i32, usize, Vec<Proc>), valgrind::VgError> {
    let records = ds_alloc::alloc::bts_records(buffer_bytes) as u64;
    let opts = VgOptions { records, follow_children: true, no_aslr: false };
    // Ctrl-C reaches the step by itself (same process group); SIGTERM and
    // SIGHUP are passed on; bts stays to read the traces.
    let mut pass = || match ptrace_shim::stop_requested() {
        Some(libc::SIGINT) | None => None,
        Some(s) if ptrace_shim::is_stop_request(s) => Some(s),
        Some(s) => ptrace_shim::die_of(s),
    };
    let vr = valgrind::run(tool, command, &opts, &mut pass)?;
    if let Some(p) = &vr.end.problem {
        crate::errln!("bts: {p}; use --backend fast for this step");
    }
    let shown: Vec<String> = command.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    let mut pids: Vec<i32> = vr.ends.keys().copied().collect();
    pids.sort_unstable();
    for &pid in &pids {
        let end = &vr.ends[&pid];
        if let (Some(code), None, false) = (end.exit_code, end.signal, pid == vr.pid) {
            let who = Proc { pid, command: command_of(&vr, pid) };
            collector.exited(who, end.parent.unwrap_or(0), parents(&vr, pid, &shown), code);
        }
        let sig = end.signal.or(if pid == vr.pid { vr.status.signal() } else { None });
        if sig.is_none() && !keep_all || !vr.has_trace(pid) {
            continue;
        }
        // One process's traces at a time: a step may have thousands.
        let (traces, bad) = vr.load(pid);
        for (p, why) in &bad {
            crate::errln!("bts: {}: {why}", p.display());
        }
        let images: Vec<&VgTrace> = traces.iter().collect();
        let own = images.last().map(|t| t.command.clone()).filter(|c| !c.is_empty());
        let cmd = if pid == vr.pid { shown.clone() } else { own.unwrap_or_else(|| end.command.clone()) };
        let meta = match sig {
            Some(sig) => signal_meta(&cmd, pid, sig, end, &images, note),
            None if keep_all => {
                let code = if pid == vr.pid { vr.status.code() } else { end.exit_code };
                let code = code.unwrap_or(0);
                let mut m = end_meta(&cmd, pid, Outcome::Exited(code));
                m.backend = "valgrind".into();
                m.note = note.clone();
                m
            }
            None => continue,
        };
        let tf = build(meta, &images, buffer_bytes);
        let ppid = end.parent.unwrap_or(0);
        collector.keep(&tf, pid, ppid, parents(&vr, pid, &shown));
    }
    let status = match (vr.status.signal(), vr.status.code()) {
        (Some(s), _) => 128 + s,
        (None, c) => c.unwrap_or(0),
    };
    Ok((status, pids.len(), left_running(&vr)))
}

/// A process's command line, as its log gives it (of its last exec).
fn command_of(vr: &VgRun, pid: i32) -> Vec<String> {
    vr.ends.get(&pid).map(|e| e.command.clone()).unwrap_or_default()
}

/// The parents of `pid` that ran under the tool, nearest first.
fn parents(vr: &VgRun, pid: i32, shown: &[String]) -> Vec<Proc> {
    let mut out = Vec::new();
    let mut at = pid;
    while at != vr.pid && out.len() <= vr.ends.len() {
        let Some(ppid) = vr.ends.get(&at).and_then(|e: &VgEnd| e.parent) else { break };
        if !vr.ends.contains_key(&ppid) {
            break;
        }
        let command = if ppid == vr.pid { shown.to_vec() } else { command_of(vr, ppid) };
        out.push(Proc { pid: ppid, command });
        at = ppid;
    }
    out
}

/// Processes whose log has no end yet (the tool logs the exit status, and
/// Valgrind the fatal signal) that are still alive.
fn left_running(vr: &VgRun) -> Vec<Proc> {
    let mut out: Vec<Proc> = vr
        .ends
        .iter()
        .filter(|(&pid, end)| pid != vr.pid && end.exit_code.is_none() && end.signal.is_none())
        .map(|(pid, _)| pid)
        // SAFETY: signal 0 only checks that the process exists.
        .filter(|&&pid| unsafe { libc::kill(pid, 0) } == 0)
        .map(|&pid| Proc { pid, command: command_of(vr, pid) })
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}
