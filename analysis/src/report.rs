//! The crash report and `last-branch` output, text and JSON, built from a
//! trace file so that a live crash and a saved trace read the same.

use std::collections::HashMap;

use bts_reader::{Stream, StreamKind, TraceFile};
use decode::{classify, format_insn, last_instructions, BranchKind, CodeMap};

use crate::model::{images, Image};
use decode::kernel::{self, Filter, Transfer};
use serde::Serialize;

/// Version of the JSON report's shape.
pub const REPORT_VERSION: u32 = 1;

/// One decoded branch.
#[derive(Debug, Clone, Serialize)]
pub struct Branch {
    /// The branch instruction, hex.
    pub from: String,
    /// Where it went, hex.
    pub to: String,
    /// `function+offset` of `from`.
    pub from_sym: Option<String>,
    /// `function+offset` of `to`.
    pub to_sym: Option<String>,
    /// `file:line` of `from`.
    pub from_line: Option<String>,
    /// `file:line` of `to`.
    pub to_line: Option<String>,
    /// `call`, `return`, `jump`, `conditional`, `syscall` or `async`.
    pub kind: &'static str,
}

/// One instruction of the run up to the stop.
#[derive(Debug, Clone, Serialize)]
pub struct Insn {
    /// Its address, hex.
    pub addr: String,
    /// `function+offset`.
    pub sym: Option<String>,
    /// `file:line`.
    pub line: Option<String>,
    /// The instruction, disassembled.
    pub text: String,
    /// The instruction where the thread stood (not executed).
    pub current: bool,
    /// When the code was inlined: the functions it was inlined into,
    /// innermost first, as `function (file:line)`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inlined_into: Vec<String>,
}

/// The outer frames of an inlined address, `function (file:line)`.
fn inlined_into(img: Option<&Image>, addr: u64) -> Vec<String> {
    let Some(img) = img else { return Vec::new() };
    let frames = img.syms.frames(addr);
    frames
        .iter()
        .skip(1)
        .map(|f| {
            let name = f.function.clone().unwrap_or_else(|| "??".into());
            match (&f.file, f.line) {
                (Some(file), Some(l)) => format!("{name} ({}:{l})", file.rsplit('/').next().unwrap_or(file)),
                _ => name,
            }
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
/// One thread's part of the report.
pub struct ThreadReport {
    /// The thread (-1 for a CPU's catch-all stream).
    pub tid: i32,
    /// For a CPU's catch-all stream: the CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    /// The thread that crashed.
    pub crashed: bool,
    /// Records lost before the kept ones (overwritten or dropped).
    pub lost: u64,
    /// Branches in the trace for this thread (the report shows the last N).
    pub recorded: usize,
    /// Oldest first.
    pub branches: Vec<Branch>,
    /// The last instructions executed, then the one the thread stopped at.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub last_instructions: Vec<Insn>,
    /// Where the thread stopped, then the calls it had not returned from,
    /// newest first (from the branches: no unwinding needed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stack: Vec<crate::stack::Frame>,
}

#[derive(Debug, Clone, Serialize)]
/// How the process ended.
pub struct OutcomeReport {
    /// `signal`, `exit` or `detached`.
    pub kind: String,
    /// The fatal signal.
    pub signal: Option<i32>,
    /// Its name (`SIGSEGV`).
    pub signal_name: Option<String>,
    /// The fault address, hex, for signals the CPU raises.
    pub fault_addr: Option<String>,
    /// The thread that got it.
    pub tid: Option<i32>,
    /// The exit code, or the signal's `si_code`.
    pub code: Option<i32>,
}

#[derive(Debug, Clone, Serialize)]
/// The report of one crash (or end) of one process.
pub struct Report {
    /// [`REPORT_VERSION`].
    pub version: u32,
    /// The program's command line.
    pub command: Vec<String>,
    /// Its pid.
    pub pid: i32,
    /// The recorder.
    pub backend: String,
    /// Why this backend (when `auto` fell back from the hardware).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_note: Option<String>,
    /// How it ended.
    pub outcome: OutcomeReport,
    /// The trace file the report was made from.
    pub trace_file: Option<String>,
    /// The threads shown, the crashed one last.
    pub threads: Vec<ThreadReport>,
    /// The reports of other processes that crashed in the same run
    /// (followed children), each with its own command and trace file.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_reports: Vec<Report>,
}

/// Which threads a report covers.
#[derive(Debug, Clone, Copy)]
pub struct Selection {
    /// How many branches to show per thread.
    pub branches: usize,
    /// How many instructions before the stop to show.
    pub insns: usize,
    /// Only this thread.
    pub thread: Option<i32>,
    /// Show this CPU's catch-all stream instead of threads.
    pub cpu: Option<u32>,
}

fn hex(a: u64) -> String {
    format!("{a:#x}")
}

fn sym_name(img: Option<&Image>, addr: u64) -> (Option<String>, Option<String>) {
    let Some(img) = img else { return (None, None) };
    let s = img.syms.lookup(addr);
    let name = s.name_offset();
    ((!name.is_empty()).then_some(name), s.file_line())
}

fn thread_report(
    tf_images: &HashMap<(i32, u32), Image>,
    (s, unread): (&Stream, u64),
    sel: &Selection,
    crash_pc: Option<u64>,
    root_pid: i32,
) -> ThreadReport {
    let (img, tid, crashed, last_pc, cpu) = match s.kind {
        StreamKind::Thread { pid, generation, tid, crashed, last_pc } => {
            (tf_images.get(&(pid, generation)), tid, crashed, last_pc, None)
        }
        // A CPU's records may come from any process: symbols of the first.
        StreamKind::Cpu { cpu } => {
            let img =
                tf_images.iter().filter(|(k, _)| k.0 == root_pid).max_by_key(|(k, _)| k.1).map(|(_, i)| i);
            (img, -1, false, None, Some(cpu))
        }
    };
    let empty = CodeMap::new();
    let code = img.map(|i| &i.code).unwrap_or(&empty);
    // Kernel addresses never reach the report: the filter folds them into
    // system-call and asynchronous transfers.
    let filtered = kernel::filter(&s.records, code, Filter::default());
    let branches: Vec<(u64, u64)> = filtered.iter().map(|b| (b.from, b.to)).collect();
    let kinds: Vec<BranchKind> = filtered
        .iter()
        .map(|b| match b.transfer {
            Transfer::Branch => classify(code, b.from, b.to),
            Transfer::Syscall => BranchKind::Syscall,
            Transfer::Async | Transfer::Resume => BranchKind::Async,
        })
        .collect();
    let skip = branches.len().saturating_sub(sel.branches);
    let shown = branches[skip..]
        .iter()
        .zip(&kinds[skip..])
        .map(|(&(from, to), kind)| {
            let (from_sym, from_line) = sym_name(img, from);
            let (to_sym, to_line) = sym_name(img, to);
            Branch { from: hex(from), to: hex(to), from_sym, to_sym, from_line, to_line, kind: kind.as_str() }
        })
        .collect();
    let mut last = Vec::new();
    let mut stack = Vec::new();
    let pc = if crashed { crash_pc.or(last_pc) } else { last_pc };
    if let (Some(pc), true) = (pc, sel.insns > 0 && (crashed || sel.thread.is_some())) {
        let recs: Vec<(u64, u64, bool)> =
            branches.iter().zip(&kinds).map(|(&(f, t), k)| (f, t, *k != BranchKind::Async)).collect();
        for insn in last_instructions(code, &recs, pc, sel.insns) {
            let (sym, line) = sym_name(img, insn.ip());
            let inl = inlined_into(img, insn.ip());
            last.push(Insn {
                addr: hex(insn.ip()),
                sym,
                line,
                text: format_insn(&insn),
                current: false,
                inlined_into: inl,
            });
        }
        let (sym, line) = sym_name(img, pc);
        let text = match decode::classify::decode_at(code, pc) {
            Some(i) => format_insn(&i),
            None => "<no code at this address>".to_string(),
        };
        let inl = inlined_into(img, pc);
        last.push(Insn { addr: hex(pc), sym, line, text, current: true, inlined_into: inl });
        stack = crate::stack::call_stack(img, &branches, &kinds, pc);
    }
    ThreadReport {
        tid,
        cpu,
        crashed,
        lost: s.overwritten + s.lost,
        recorded: branches.len() + unread as usize,
        branches: shown,
        last_instructions: last,
        stack,
    }
}

impl Report {
    /// The report on `tf` for the threads `sel` chooses.
    pub fn build(tf: &TraceFile, trace_file: Option<String>, sel: &Selection) -> Report {
        Report::build_partial(tf, trace_file, sel, &[])
    }

    /// [`Report::build`] of a trace read in part: `unread[i]` of stream
    /// i's oldest branches were left out (see
    /// [`bts_reader::newest::read_newest`]). They count as older branches
    /// in the trace, not as lost.
    pub fn build_partial(
        tf: &TraceFile,
        trace_file: Option<String>,
        sel: &Selection,
        unread: &[u64],
    ) -> Report {
        let imgs = images(tf);
        let m = &tf.meta;
        // `report_streams` hands out references into `tf.streams`: a
        // stream's place is where its reference points.
        let unread_of = |s: &Stream| {
            let i = tf.streams.iter().position(|x| std::ptr::eq(x, s));
            i.and_then(|i| unread.get(i)).copied().unwrap_or(0)
        };
        let mut threads: Vec<ThreadReport> = crate::select::report_streams(tf, sel.thread, sel.cpu)
            .into_iter()
            .map(|s| thread_report(&imgs, (s, unread_of(s)), sel, m.pc, m.pid))
            .collect();
        // The crashed thread last: nearest the prompt.
        threads.sort_by_key(|t| (t.crashed, t.tid));
        Report {
            version: REPORT_VERSION,
            command: m.command.clone(),
            pid: m.pid,
            backend: m.backend.clone(),
            backend_note: m.note.clone(),
            outcome: OutcomeReport {
                kind: m.outcome.clone(),
                signal: m.signal,
                signal_name: m.signal_name.clone(),
                fault_addr: m.fault_addr.map(hex),
                tid: m.tid,
                code: m.code,
            },
            trace_file,
            threads,
            other_reports: Vec::new(),
        }
    }

    /// The report as one JSON document.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serializes")
    }

    /// The human-readable report.
    pub fn to_text(&self, all_threads: bool) -> String {
        let mut out = String::new();
        let cmd = self.command.join(" ");
        let o = &self.outcome;
        match o.kind.as_str() {
            "signal" => {
                out += &format!(
                    "bts: {cmd} (pid {}) got {}",
                    self.pid,
                    o.signal_name.clone().unwrap_or_else(|| "a signal".into())
                );
                if let Some(a) = &o.fault_addr {
                    out += &format!(" at address {a}");
                }
                if let Some(t) = o.tid {
                    out += &format!(" in thread {t}");
                }
                out += "\n";
            }
            "exit" => {
                out += &format!("bts: {cmd} (pid {}) exited with code {}\n", self.pid, o.code.unwrap_or(0))
            }
            "detached" => out += &format!("bts: detached from {cmd} (pid {}); it runs on\n", self.pid),
            k => out += &format!("bts: {cmd} (pid {}): {k}\n", self.pid),
        }
        if let Some(f) = &self.trace_file {
            out += &format!("bts: trace saved to {f} ({} recorder)\n", self.backend);
        }
        if let Some(n) = &self.backend_note {
            out += &format!("bts: note: {n}\n");
        }
        let focus: Vec<&ThreadReport> = if all_threads {
            self.threads.iter().collect()
        } else {
            let crashed: Vec<&ThreadReport> = self.threads.iter().filter(|t| t.crashed).collect();
            if crashed.is_empty() {
                self.threads.iter().filter(|t| t.tid == self.pid).take(1).collect()
            } else {
                crashed
            }
        };
        let others: Vec<String> = self
            .threads
            .iter()
            .filter(|t| !focus.iter().any(|f| f.tid == t.tid))
            .map(|t| format!("{} ({} branches)", t.tid, t.recorded))
            .collect();
        for t in &focus {
            out += &thread_text(t);
        }
        if focus.is_empty() && self.threads.len() == 1 {
            out += &thread_text(&self.threads[0]);
        }
        if !others.is_empty() {
            out += &format!(
                "\nOther threads: {} (all threads: --all-threads, or --thread TID)\n",
                others.join(", ")
            );
        }
        out
    }
}

fn thread_text(t: &ThreadReport) -> String {
    let mut out = String::new();
    let older = t.recorded - t.branches.len();
    let whose = match t.cpu {
        Some(c) => format!("the catch-all buffer of cpu {c}"),
        None => format!("thread {}", t.tid),
    };
    out += &format!(
        "\nLast {} branches of {whose}{}, oldest first ({} older in the trace, {} lost before it):\n",
        t.branches.len(),
        if t.crashed { " (crashed)" } else { "" },
        older,
        t.lost
    );
    let side = |addr: &str, sym: &Option<String>, line: &Option<String>| {
        let mut s = addr.to_string();
        if let Some(sym) = sym {
            s += &format!(" <{sym}>");
        }
        if let Some(l) = line {
            s += &format!(" {l}");
        }
        s
    };
    let rows: Vec<(String, &str, String, String)> = t
        .branches
        .iter()
        .enumerate()
        .map(|(i, b)| {
            (
                format!("{}", i as i64 - t.branches.len() as i64),
                b.kind,
                side(&b.from, &b.from_sym, &b.from_line),
                side(&b.to, &b.to_sym, &b.to_line),
            )
        })
        .collect();
    let wn = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let wf = rows.iter().map(|r| r.2.len()).max().unwrap_or(0);
    // Long names (C++, Rust) would make lines too wide: then `to` goes on
    // a line of its own.
    let wide = wf + rows.iter().map(|r| r.3.len()).max().unwrap_or(0) > 140;
    for (n, kind, from, to) in &rows {
        if wide {
            out += &format!("  {n:>wn$}  {kind:<11} {from}\n  {:>wn$}  {:<11} -> {to}\n", "", "");
        } else {
            out += &format!("  {n:>wn$}  {kind:<11} {from:<wf$}  -> {to}\n");
        }
    }
    if !t.last_instructions.is_empty() {
        out += "\nLast instructions executed:\n";
        let w = t
            .last_instructions
            .iter()
            .map(|i| i.addr.len() + i.sym.as_ref().map_or(0, |s| s.len() + 3))
            .max()
            .unwrap_or(0);
        for i in &t.last_instructions {
            let mut head = i.addr.clone();
            if let Some(s) = &i.sym {
                head += &format!(" <{s}>");
            }
            let mark = if i.current { "=>" } else { "  " };
            let line = i.line.as_deref().map(|l| format!("   {l}")).unwrap_or_default();
            let inl = match i.inlined_into.first() {
                Some(outer) => format!("   [inlined into {outer}]"),
                None => String::new(),
            };
            out += &format!("  {mark} {head:<w$}  {}{line}{inl}\n", i.text);
        }
    }
    out
}
