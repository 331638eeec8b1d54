//! `bts run --backend valgrind`: the program runs under the bts Valgrind
//! tool; its buffers go through ds-alloc into a trace file like any other
//! backend's, and the same report comes out.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;

use bts_reader::valgrind::{self, VgEnd, VgOptions, VgTrace};
use bts_reader::{Meta, TraceFile};
use ds_alloc::{Allocator, Target};
use iced_x86::{FlowControl, Mnemonic};
use ptrace_shim::Outcome;

use crate::args::{RecordArgs, ReportWhen};
use crate::exit::{exec_failure_status, EXIT_BTS_FAILED};
use crate::save::Reporter;

/// `bts run --backend valgrind`: the program's status, or 125.
pub fn run(
    tool: &valgrind::Installed,
    rec: &RecordArgs,
    follow_fork: bool,
    no_aslr: bool,
    command: Vec<OsString>,
    note: Option<String>,
) -> i32 {
    let shown: Vec<String> = command.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    // ds-alloc sizes the buffers, slack included, and checks the limit first.
    let mut alloc = Allocator::new();
    let me = alloc.register_current("bts");
    if let Err(e) = alloc.request_bts(me, Target::Task(0), rec.buffer_size) {
        crate::errln!("bts: {e}");
        return i32::from(EXIT_BTS_FAILED);
    }
    // Fail as the ptrace recorders do when the program cannot be executed.
    if let Some(first) = command.first() {
        if let Err(e) = ptrace_shim::spawn::resolve_program(first) {
            crate::errln!("bts: cannot execute {}: {e}", first.to_string_lossy());
            return exec_failure_status(&e);
        }
    }
    let records = ds_alloc::alloc::bts_records(rec.buffer_size) as u64;
    let opts = VgOptions { records, follow_children: follow_fork, no_aslr };
    // Ctrl-C reaches the program by itself (same process group); bts stays
    // to read the trace, and passes SIGTERM and SIGHUP on.
    if let Err(e) = ptrace_shim::install_stop_handlers() {
        crate::errln!("bts: cannot install signal handlers: {e}");
        return i32::from(EXIT_BTS_FAILED);
    }
    let mut vr = match valgrind::run(tool, &command, &opts, &mut signal_to_pass) {
        Ok(r) => r,
        Err(e) => {
            crate::errln!("bts: {e}");
            return i32::from(EXIT_BTS_FAILED);
        }
    };
    vr.load_all();
    if let Some(dir) = vr.kept_folder() {
        let pids: Vec<String> = vr.left_running().iter().map(|p| p.to_string()).collect();
        crate::errln!(
            "bts: still running under Valgrind: pid {}; Valgrind goes on writing their logs to {} \
             (remove it once they are gone)",
            pids.join(", "),
            dir.display()
        );
    }
    for (p, why) in &vr.bad {
        crate::errln!("bts: {}: {why}", p.display());
    }
    if let Some(p) = &vr.end.problem {
        crate::errln!("bts: {p}; use --backend fast for this program");
    }
    let signal = vr.status.signal().or(vr.end.signal);
    let code = vr.status.code();
    let kept: Vec<&VgTrace> = vr.traces.iter().filter(|t| opts.keeps(t.pid, vr.pid)).collect();
    if !vr.traces.iter().any(|t| t.pid == vr.pid) {
        crate::errln!("bts: the Valgrind tool wrote no trace for pid {}", vr.pid);
    }
    let mut reporter = Reporter::new(rec, vr.pid);
    // Every followed child that died of a signal: its own file and report.
    let mut children: Vec<i32> = kept.iter().map(|t| t.pid).filter(|&p| p != vr.pid).collect();
    children.dedup();
    for child in children {
        let Some(sig) = vr.ends.get(&child).and_then(|e| e.signal) else { continue };
        let own: Vec<&VgTrace> = kept.iter().copied().filter(|t| t.pid == child).collect();
        let command = own.last().map(|t| t.command.clone()).unwrap_or_default();
        let meta = signal_meta(&command, child, sig, &vr.ends[&child], &own, &note);
        let tf = build(meta, &own, rec.buffer_size);
        reporter.save(&tf, child, rec.report != ReportWhen::Never);
    }
    let root: Vec<&VgTrace> = vr.traces.iter().filter(|t| t.pid == vr.pid).collect();
    let meta = match (signal, code) {
        (Some(s), _) => signal_meta(&shown, vr.pid, s, &vr.end, &root, &note),
        (None, c) => exit_meta(&shown, vr.pid, c.unwrap_or(0), &note),
    };
    let tf = build(meta, &kept, rec.buffer_size);
    let crashed = signal.is_some();
    // Valgrind's log may tell a signal its own status does not.
    let status = match (signal, code) {
        (Some(s), _) => 128 + s,
        (None, c) => c.unwrap_or(0),
    };
    if crashed || rec.report == ReportWhen::Always || rec.output.is_some() {
        let print = crashed && rec.report != ReportWhen::Never || rec.report == ReportWhen::Always;
        reporter.save(&tf, vr.pid, print);
    }
    reporter.finish();
    status
}

/// What bts does with a signal it gets while the program runs under
/// Valgrind: SIGTERM and SIGHUP are passed on to it (Ctrl-C reaches it by
/// itself, in the same process group); any other signal that would end
/// bts ends it, the program running on.
pub(crate) fn signal_to_pass() -> Option<i32> {
    match ptrace_shim::stop_requested() {
        Some(libc::SIGINT) | None => None,
        Some(s) if ptrace_shim::is_stop_request(s) => Some(s),
        Some(s) => ptrace_shim::die_of(s),
    }
}

/// The status Valgrind ended with, as a shell gives it.
pub(crate) fn status_of(st: std::process::ExitStatus) -> i32 {
    match (st.signal(), st.code()) {
        (Some(s), _) => 128 + s,
        (None, c) => c.unwrap_or(0),
    }
}

/// The metadata of a process that exited with `code` under Valgrind.
pub(crate) fn exit_meta(command: &[String], pid: i32, code: i32, note: &Option<String>) -> Meta {
    let mut m = Outcome::Exited(code).meta(command, pid);
    m.backend = "valgrind".into();
    m.note = note.clone();
    m
}

/// The trace file of `traces` (images of one or more processes, in order),
/// through the one builder every backend uses. The crashed thread named by
/// `meta` is marked in its process's last image.
pub(crate) fn build(meta: Meta, traces: &[&VgTrace], buffer_bytes: usize) -> TraceFile {
    let crash = meta.tid.filter(|_| meta.signal.is_some()).map(|tid| (meta.pid, tid));
    let recording = valgrind::recording(traces, crash, buffer_bytes, meta.pid);
    TraceFile::from_recording(&recording, meta)
}

/// What a process that died of `sig` under Valgrind reports: the fault
/// address and the thread and pc where it stood, from Valgrind's log and the
/// tool's last image of it.
pub(crate) fn signal_meta(
    command: &[String],
    pid: i32,
    sig: i32,
    end: &VgEnd,
    images: &[&VgTrace],
    note: &Option<String>,
) -> Meta {
    let mut m = Outcome::Signaled(sig).meta(command, pid);
    let Some(last) = images.last() else { return m };
    m.tid = Some(last.last_tid);
    let mut code = decode::CodeMap::default();
    for (addr, bytes) in &last.pages {
        code.insert(*addr, bytes.clone());
    }
    let tool_pc = last.threads.iter().find(|t| t.os_tid == last.last_tid).map(|t| t.last_pc);
    let pc = end.pc.or(tool_pc);
    // What the kernel would say (si_addr), from what Valgrind's log says.
    let (pc, fault) = match sig {
        libc::SIGSEGV | libc::SIGBUS => (pc, end.fault_addr),
        // Valgrind's pc for SIGFPE is the start of the faulting run (it
        // keeps the guest pc exact only at memory accesses): the fault is
        // the first division from there. The kernel's si_addr is its pc.
        libc::SIGFPE => {
            let div = pc.and_then(|p| first_division(&code, p)).or(pc);
            (div, div)
        }
        libc::SIGILL => (pc, pc),
        // int3 (the byte before the pc): the kernel's si_addr is 0.
        libc::SIGTRAP => {
            let mut b = [0u8; 1];
            let int3 = pc.is_some_and(|p| code.read(p.wrapping_sub(1), &mut b) == 1 && b[0] == 0xcc);
            (pc, int3.then_some(0))
        }
        _ => (pc, None),
    };
    m.pc = pc;
    m.fault_addr = fault;
    m.backend = "valgrind".into();
    m.note = note.clone();
    m
}

/// The first division at or after `pc` in straight-line code.
fn first_division(code: &decode::CodeMap, pc: u64) -> Option<u64> {
    let mut a = pc;
    for _ in 0..32 {
        let insn = decode::classify::decode_at(code, a)?;
        if matches!(insn.mnemonic(), Mnemonic::Div | Mnemonic::Idiv) {
            return Some(a);
        }
        if insn.flow_control() != FlowControl::Next {
            return None;
        }
        a = insn.next_ip();
    }
    None
}
