//! `bts run --backend valgrind`: the program runs under the bts Valgrind
//! tool; its buffers go through ds-alloc into a trace file like any other
//! backend's, and the same report comes out.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;

use bts_reader::valgrind::{self, VgOptions, VgTrace};
use bts_reader::{CodeRange, Module, Stream, StreamKind, TraceFile};
use ds_alloc::{Allocator, Target};
use ptrace_shim::Outcome;

use crate::record::{default_path, end_meta, save_and_report};
use crate::{RecordArgs, ReportWhen, EXIT_BTS_FAILED};

/// Adds one traced image (a process between execs) to the trace file,
/// delivering its records through the allocator.
fn add_image(
    tf: &mut TraceFile,
    t: &VgTrace,
    generation: u32,
    crashed_tid: Option<i32>,
    buffer_bytes: usize,
) {
    let mut alloc = Allocator::new();
    let me = alloc.register_current("bts");
    let mut build_ids: HashMap<String, Option<String>> = HashMap::new();
    let mut seen = BTreeSet::new();
    for m in &t.maps {
        if !seen.insert((m.start, m.end, m.path.clone())) {
            continue;
        }
        let build_id =
            build_ids.entry(m.path.clone()).or_insert_with(|| decode::symbols::build_id(&m.path)).clone();
        tf.modules.push(Module {
            pid: t.pid,
            generation,
            path: m.path.clone(),
            start: m.start,
            end: m.end,
            offset: m.offset,
            build_id,
        });
    }
    let mut pages = BTreeSet::new();
    for th in &t.threads {
        let crashed = crashed_tid == Some(th.os_tid);
        // The tool's buffer was sized by ds-alloc's rule (request plus slack);
        // the allocator's buffer is the same size, so it keeps the same records.
        let records = match alloc.request_bts(me, Target::Task(th.os_tid as u32), buffer_bytes) {
            Ok(h) => {
                alloc.deliver_batch(0, th.os_tid as u32, &th.records);
                alloc.bts_buffer(me, h).map(|b| b.snapshot()).unwrap_or_else(|_| th.records.clone())
            }
            // Over the limit now: keep what the tool kept.
            Err(_) => th.records.clone(),
        };
        let capacity = ds_alloc::alloc::bts_records(buffer_bytes) as u64;
        let kept = records.iter().filter(|r| r.is_branch()).count() as u64;
        let overwritten = th.branches.saturating_sub(kept);
        ds_alloc::pages::touched_pages(records.iter(), Some(th.last_pc), &mut pages);
        tf.streams.push(Stream {
            kind: StreamKind::Thread {
                pid: t.pid,
                generation,
                tid: th.os_tid,
                crashed,
                last_pc: Some(th.last_pc),
            },
            capacity,
            overwritten,
            lost: 0,
            records,
        });
    }
    let by_addr: HashMap<u64, &Vec<u8>> = t.pages.iter().map(|(a, b)| (*a, b)).collect();
    for p in pages {
        if let Some(bytes) = by_addr.get(&p) {
            tf.code.push(CodeRange { pid: t.pid, generation, addr: p, bytes: bytes.to_vec() });
        }
    }
}

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
            return crate::record::exec_failure_status(&e);
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
    // Other signals that would end bts end it (the program runs on under Valgrind).
    let mut pass = || match ptrace_shim::stop_requested() {
        Some(libc::SIGINT) | None => None,
        Some(s) if ptrace_shim::is_stop_request(s) => Some(s),
        Some(s) => ptrace_shim::die_of(s),
    };
    let vr = match valgrind::run(tool, &command, &opts, &mut pass) {
        Ok(r) => r,
        Err(e) => {
            crate::errln!("bts: {e}");
            return i32::from(EXIT_BTS_FAILED);
        }
    };
    for (p, why) in &vr.bad {
        crate::errln!("bts: {}: {why}", p.display());
    }
    if let Some(p) = &vr.end.problem {
        crate::errln!("bts: {p}");
    }
    let signal = vr.status.signal().or(vr.end.signal);
    let code = vr.status.code();
    let root: Vec<&VgTrace> = vr.traces.iter().filter(|t| t.pid == vr.pid).collect();
    let mut meta = match (signal, code) {
        (Some(s), _) => {
            let mut m = end_meta(&shown, vr.pid, Outcome::Signaled(s));
            m.fault_addr = vr
                .end
                .fault_addr
                .filter(|_| matches!(s, libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE));
            if let Some(last) = root.last() {
                m.tid = Some(last.last_tid);
                m.pc = last.threads.iter().find(|t| t.os_tid == last.last_tid).map(|t| t.last_pc);
            }
            m
        }
        (None, c) => end_meta(&shown, vr.pid, Outcome::Exited(c.unwrap_or(0))),
    };
    meta.backend = "valgrind".into();
    meta.note = note;
    let mut tf = TraceFile { meta, ..TraceFile::default() };
    let crashed_tid = signal.and(tf.meta.tid);
    let images: Vec<&VgTrace> = vr.traces.iter().filter(|t| opts.keeps(t.pid, vr.pid)).collect();
    let mut generation: HashMap<i32, u32> = HashMap::new();
    let last_root = root.len();
    let mut root_seen = 0;
    for t in images {
        let g = generation.entry(t.pid).or_insert(0);
        *g += 1;
        let is_last_root = t.pid == vr.pid && {
            root_seen += 1;
            root_seen == last_root
        };
        add_image(&mut tf, t, *g, if is_last_root { crashed_tid } else { None }, rec.buffer_size);
    }
    if root.is_empty() {
        crate::errln!("bts: the Valgrind tool wrote no trace for pid {}", vr.pid);
    }
    let crashed = signal.is_some();
    let status = match (signal, code) {
        (Some(s), _) => 128 + s,
        (None, c) => c.unwrap_or(0),
    };
    if crashed || rec.report == ReportWhen::Always || rec.output.is_some() {
        let path = default_path(rec, vr.pid, vr.pid);
        let print = crashed && rec.report != ReportWhen::Never || rec.report == ReportWhen::Always;
        save_and_report(&tf, Some(&path), &rec.out, print);
    }
    status
}
