//! A CI step under the Valgrind tool: Valgrind follows every exec and
//! fork by itself (`--trace-children=yes`); each process's log names its
//! parent and says how it ended. Only the processes kept are turned into
//! trace files, one at a time. Valgrind cannot let go of a process:
//! daemons the step leaves running stay under it, unharmed, and are named.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;

use bts_reader::valgrind::{self, VgOptions, VgRun, VgTrace};

use super::{Collector, Proc};
use crate::vg::{build, exit_meta, signal_meta, signal_to_pass, status_of};

/// How the step ended under Valgrind.
pub struct Traced {
    /// The step's status.
    pub status: i32,
    /// Processes traced.
    pub processes: usize,
    /// Processes still running under Valgrind.
    pub left_running: Vec<Proc>,
    /// Where Valgrind goes on writing for them.
    pub folder: Option<String>,
}

/// Runs the step under the tool.
pub fn trace(
    tool: &valgrind::Installed,
    command: &[OsString],
    buffer_bytes: usize,
    note: &Option<String>,
    collector: &mut Collector,
) -> Result<Traced, valgrind::VgError> {
    let records = ds_alloc::alloc::bts_records(buffer_bytes) as u64;
    let opts = VgOptions { records, follow_children: true, no_aslr: false };
    let vr = valgrind::run(tool, command, &opts, &mut signal_to_pass)?;
    collector.root = vr.pid;
    if let Some(p) = &vr.end.problem {
        crate::errln!("bts: {p}; use --backend fast for this step");
    }
    let shown: Vec<String> = command.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    // In the order they ended: --max-artifacts drops the oldest.
    for &pid in vr.end_order() {
        let end = &vr.ends[&pid];
        let ppid = end.parent.unwrap_or(0);
        let root_signal = if pid == vr.pid { vr.status.signal() } else { None };
        let sig = end.signal.or(root_signal);
        let ended = sig.is_some() || end.exit_code.is_some();
        if !ended && vr.left_running().contains(&pid) {
            continue;
        }
        // Dead with no end in its log: only SIGKILL leaves none.
        let sig = if ended || pid == vr.pid { sig } else { Some(libc::SIGKILL) };
        if !collector.wants_trace(sig) || !vr.has_trace(pid) {
            if pid != vr.pid {
                let who = Proc { pid, command: command_of(&vr, pid) };
                collector.failed(who, ppid, parents(&vr, pid, &shown), end.exit_code, sig);
            }
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
            None => {
                let code = if pid == vr.pid { vr.status.code() } else { end.exit_code };
                exit_meta(&cmd, pid, code.unwrap_or(0), note)
            }
        };
        let tf = build(meta, &images, buffer_bytes);
        collector.keep(&tf, pid, ppid, parents(&vr, pid, &shown));
    }
    let status = status_of(vr.status);
    let left = vr.left_running().iter().map(|&pid| Proc { pid, command: command_of(&vr, pid) }).collect();
    let folder = vr.kept_folder().map(|p| p.display().to_string());
    Ok(Traced { status, processes: vr.ends.len(), left_running: left, folder })
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
        let Some(ppid) = vr.ends.get(&at).and_then(|e| e.parent) else { break };
        if !vr.ends.contains_key(&ppid) {
            break;
        }
        let command = if ppid == vr.pid { shown.to_vec() } else { command_of(vr, ppid) };
        out.push(Proc { pid: ppid, command });
        at = ppid;
    }
    out
}
