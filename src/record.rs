//! `bts run`, `bts attach` and `bts last-branch`: wiring a recorder, the
//! trace file and the report together.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use bts_reader::{CodeRange, Meta, Module, Stream, StreamKind, TraceFile};
use ptrace_shim::front::{self, Side, WorkerEnd};
use ptrace_shim::{sys, Backend, Options, Outcome, Recording, Session, Stop};

use crate::report::{Report, Selection};
use crate::save::{crash_meta, end_meta, process_command, Reporter};
use crate::{BackendArg, OutputArgs, RecordArgs, ReportWhen, EXIT_BTS_FAILED};

/// Why the backend asked for cannot record. The advice is added here, in
/// the CLI: the libraries only say what is wrong.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BackendError {
    #[error("the Valgrind backend is unavailable: {0}; use --backend fast")]
    VgUnavailable(bts_reader::valgrind::Unavailable),
    #[error("{0}; use --backend fast")]
    VgInstall(bts_reader::valgrind::VgError),
    #[error("the Valgrind backend traces launched programs only: use `bts run`")]
    VgAttach,
    #[error("{0}{advice}", advice = if .0.software_recorders_help() { "; use --backend fast" } else { "" })]
    Perf(bts_reader::perf::PerfError),
}

/// What records: a ptrace session (with a hardware source for perf), or
/// the Valgrind tool.
enum Chosen {
    Ptrace(Backend),
    Valgrind(bts_reader::valgrind::Installed),
}

/// The backend to use, and a notice when `auto` fell back from the hardware.
/// `auto` picks perf where hardware BTS works, else the Valgrind tool for a
/// launched program, else the fast ptrace recorder.
fn backend(rec: &RecordArgs, launched: bool) -> Result<(Chosen, Option<String>), BackendError> {
    Ok(match rec.backend {
        BackendArg::Step => (Chosen::Ptrace(Backend::Step), None),
        BackendArg::Fast => (Chosen::Ptrace(Backend::Fast), None),
        BackendArg::Valgrind if launched => {
            if let Some(why) = bts_reader::valgrind::unavailable() {
                return Err(BackendError::VgUnavailable(why));
            }
            let tool = bts_reader::valgrind::install().map_err(BackendError::VgInstall)?;
            (Chosen::Valgrind(tool), None)
        }
        BackendArg::Valgrind => return Err(BackendError::VgAttach),
        // Fails before anything is started.
        BackendArg::Perf => {
            bts_reader::perf::probe_bts().map_err(BackendError::Perf)?;
            (Chosen::Ptrace(Backend::Hardware), None)
        }
        BackendArg::Auto => match bts_reader::perf::probe_bts() {
            Ok(()) => (Chosen::Ptrace(Backend::Hardware), None),
            Err(e) => {
                // The Valgrind tool cannot keep per-CPU buffers or the step log.
                let vg = launched
                    && rec.per_cpu_buffer.is_none()
                    && rec.insn_log.is_none()
                    && bts_reader::valgrind::unavailable().is_none();
                let mut note = format!("hardware BTS unavailable ({e}); recording with the ");
                let chosen = match vg.then(bts_reader::valgrind::install) {
                    Some(Ok(tool)) => {
                        note.push_str("valgrind recorder");
                        Chosen::Valgrind(tool)
                    }
                    Some(Err(e)) => {
                        note.push_str(&format!("fast recorder ({e})"));
                        Chosen::Ptrace(Backend::Fast)
                    }
                    None => {
                        note.push_str("fast recorder");
                        Chosen::Ptrace(Backend::Fast)
                    }
                };
                // SAFETY: isatty only inspects the fd.
                if unsafe { libc::isatty(2) } == 1 {
                    crate::errln!("bts: note: {note}");
                }
                (chosen, Some(note))
            }
        },
    })
}

fn options(rec: &RecordArgs, backend: Backend, follow_fork: bool, no_aslr: bool) -> Options {
    Options {
        backend,
        buffer_bytes: rec.buffer_size,
        follow_fork,
        no_aslr,
        pin_cpu: !rec.no_pin,
        per_cpu_bytes: rec.per_cpu_buffer,
        insn_log: rec.insn_log.clone(),
    }
}

/// Turns a recording into a trace file.
pub fn to_trace_file(r: &Recording, mut meta: Meta) -> TraceFile {
    meta.backend = r.backend.name().to_string();
    let mut build_ids: HashMap<String, Option<String>> = HashMap::new();
    let mut tf = TraceFile { meta, ..TraceFile::default() };
    for img in &r.images {
        for m in &img.maps {
            let build_id =
                build_ids.entry(m.path.clone()).or_insert_with(|| decode::symbols::build_id(&m.path)).clone();
            tf.modules.push(Module {
                pid: img.pid,
                generation: img.generation,
                path: m.path.clone(),
                start: m.start,
                end: m.end,
                offset: m.offset,
                build_id,
            });
        }
        for t in &img.threads {
            tf.streams.push(Stream {
                kind: StreamKind::Thread {
                    pid: img.pid,
                    generation: img.generation,
                    tid: t.tid,
                    crashed: t.crashed,
                    last_pc: t.last_pc,
                },
                capacity: t.buffer.capacity() as u64,
                overwritten: t.buffer.branches_overwritten(),
                lost: t.lost,
                records: t.buffer.snapshot(),
            });
        }
        for (addr, bytes) in &img.code {
            tf.code.push(CodeRange {
                pid: img.pid,
                generation: img.generation,
                addr: *addr,
                bytes: bytes.clone(),
            });
        }
    }
    for (cpu, b) in &r.cpus {
        tf.streams.push(Stream {
            kind: StreamKind::Cpu { cpu: *cpu },
            capacity: b.capacity() as u64,
            overwritten: b.branches_overwritten(),
            lost: 0,
            records: b.snapshot(),
        });
    }
    tf
}

/// Drives a session to its end; returns how the first process ended.
fn drive(
    session: &mut Session,
    rec: &RecordArgs,
    reporter: &mut Reporter,
    command: &[String],
    note: Option<&str>,
) -> Result<Outcome, ptrace_shim::Error> {
    let mut crashed = false;
    let root = session.root_pid();
    loop {
        let stop = session.next_stop();
        for n in session.take_notices() {
            crate::errln!("bts: {n}");
        }
        match stop? {
            Stop::Crash(c) => {
                crashed |= c.pid == root;
                let recording = session.recording();
                // A followed child is named by its own command line (it is held: /proc has it).
                let cmd = if c.pid == root { command.to_vec() } else { process_command(c.pid) };
                let mut meta = crash_meta(&cmd, &c);
                meta.note = note.map(str::to_string);
                let tf = to_trace_file(&recording, meta);
                reporter.save(&tf, c.pid, rec.report != ReportWhen::Never);
                session.deliver_crash()?;
            }
            Stop::Finished(o) => {
                let detached = matches!(o, Outcome::Detached(_));
                let clean = matches!(o, Outcome::Exited(_));
                // Killed by a signal bts could not hold (SIGKILL): keep the trace.
                let killed = matches!(o, Outcome::Signaled(_)) && !crashed;
                if detached || killed || rec.report == ReportWhen::Always || rec.output.is_some() && clean {
                    let recording = session.recording();
                    let mut meta = end_meta(command, root, o);
                    meta.note = note.map(str::to_string);
                    let tf = to_trace_file(&recording, meta);
                    let print = (detached || killed) && rec.report != ReportWhen::Never
                        || rec.report == ReportWhen::Always;
                    reporter.save(&tf, root, print);
                }
                return Ok(o);
            }
        }
    }
}

/// Puts the tracing into a worker process that survives the SIGKILL of
/// the process the user started (see `ptrace_shim::front`). None in the
/// worker, which goes on; the status to end with in the front.
fn split_off_tracer() -> Option<i32> {
    match front::split() {
        Ok(Side::Worker) => None,
        Ok(Side::Front { end: WorkerEnd::Exited(code), .. }) => Some(code),
        Ok(Side::Front { worker, end: WorkerEnd::Signaled(sig) }) => {
            if sig == libc::SIGKILL {
                crate::errln!(
                    "bts: its tracer (pid {worker}) was killed by SIGKILL: the program may be left with \
                     breakpoints in it; kill bts itself, not bts-tracer, to stop tracing safely"
                );
            }
            ptrace_shim::die_of(sig)
        }
        Err(e) => {
            crate::errln!("bts: {e}");
            Some(i32::from(EXIT_BTS_FAILED))
        }
    }
}

/// After the reports are out: a signal that asked bts to go (other than
/// the ordinary stop requests) now ends it, the program running on.
fn end_by_signal(o: Outcome, pid: i32) {
    if let Outcome::Detached(sig) = o {
        if !ptrace_shim::is_stop_request(sig) {
            if sig == front::front_gone_signal() && front::front_is_gone() {
                crate::errln!("bts: bts was killed: its tracer detached from pid {pid}, which runs on");
            } else {
                crate::errln!(
                    "bts: {} received: detached from pid {pid}, which runs on",
                    sys::signal_name(sig)
                );
            }
            ptrace_shim::die_of(sig);
        }
    }
}

fn status(o: Outcome) -> i32 {
    match o {
        Outcome::Exited(c) => c,
        Outcome::Signaled(s) => 128 + s,
        Outcome::Detached(_) => 0,
    }
}

/// `bts run`: the program's exit status, or 125 when bts itself failed.
pub fn run_status(rec: &RecordArgs, follow_fork: bool, no_aslr: bool, command: Vec<OsString>) -> i32 {
    let shown: Vec<String> = command.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    let (be, note) = match backend(rec, true) {
        Ok((Chosen::Ptrace(be), note)) => (be, note),
        // Valgrind plants nothing in the program: bts dying harms nothing.
        Ok((Chosen::Valgrind(tool), note)) => {
            return crate::vg::run(&tool, rec, follow_fork, no_aslr, command, note)
        }
        Err(e) => {
            crate::errln!("bts: {e}");
            return i32::from(EXIT_BTS_FAILED);
        }
    };
    if let Some(status) = split_off_tracer() {
        return status;
    }
    let mut session = match Session::launch(&command, options(rec, be, follow_fork, no_aslr)) {
        Ok(s) => s,
        Err(e) => {
            crate::errln!("bts: {e}");
            return match &e {
                ptrace_shim::Error::Exec { source, .. } => exec_failure_status(source),
                _ => i32::from(EXIT_BTS_FAILED),
            };
        }
    };
    let root = session.root_pid();
    let mut reporter = Reporter::new(rec, root);
    let result = drive(&mut session, rec, &mut reporter, &shown, note.as_deref());
    match result {
        Ok(o) => {
            reporter.finish();
            end_by_signal(o, root);
            status(o)
        }
        Err(e) => {
            crate::errln!("bts: tracing failed: {e}");
            // Keep what was recorded.
            let recording = session.recording();
            let tf = to_trace_file(&recording, end_meta(&shown, root, Outcome::Exited(0)));
            reporter.save(&tf, root, false);
            reporter.finish();
            i32::from(EXIT_BTS_FAILED)
        }
    }
}

/// The status of a program that could not be executed, as `env` gives it:
/// 127 when it is not found, 126 when it cannot be run.
pub(crate) fn exec_failure_status(e: &std::io::Error) -> i32 {
    if e.raw_os_error() == Some(libc::ENOENT) {
        127
    } else {
        126
    }
}

pub fn run(rec: &RecordArgs, follow_fork: bool, no_aslr: bool, command: Vec<OsString>) -> ExitCode {
    ExitCode::from(run_status(rec, follow_fork, no_aslr, command).clamp(0, 255) as u8)
}

/// `bts attach PID`.
pub fn attach(rec: &RecordArgs, pid: i32) -> ExitCode {
    let (be, note) = match backend(rec, false) {
        Ok((Chosen::Ptrace(be), note)) => (be, note),
        Ok((Chosen::Valgrind(_), _)) => unreachable!("valgrind is not chosen for attach"),
        Err(e) => {
            crate::errln!("bts: {e}");
            return ExitCode::from(EXIT_BTS_FAILED);
        }
    };
    if let Some(status) = split_off_tracer() {
        return ExitCode::from(status.clamp(0, 255) as u8);
    }
    let mut session = match Session::attach(pid, options(rec, be, false, false)) {
        Ok(s) => s,
        Err(e) => {
            crate::errln!("bts: {e}");
            return ExitCode::from(EXIT_BTS_FAILED);
        }
    };
    // Read once the threads are stopped: a process still inside execve has
    // no command line yet.
    let command = process_command(pid);
    crate::errln!("bts: attached to pid {pid} ({}); Ctrl-C detaches", command.join(" "));
    let mut reporter = Reporter::new(rec, pid);
    let result = drive(&mut session, rec, &mut reporter, &command, note.as_deref());
    reporter.finish();
    match result {
        Ok(o) => {
            if let Outcome::Exited(code) = o {
                let saved = if rec.report == ReportWhen::Always || rec.output.is_some() {
                    ""
                } else {
                    " (no trace kept: --report always or -o keeps one)"
                };
                crate::errln!("bts: pid {pid} ({}) exited with code {code}{saved}", command.join(" "));
            }
            end_by_signal(o, pid);
            ExitCode::from(status(o).clamp(0, 255) as u8)
        }
        Err(e) => {
            crate::errln!("bts: tracing failed: {e}");
            ExitCode::from(EXIT_BTS_FAILED)
        }
    }
}

/// `bts last-branch FILE`.
pub fn last_branch(out: &OutputArgs, thread: Option<i32>, cpu: Option<u32>, file: &Path) -> ExitCode {
    let tf = match TraceFile::read(file) {
        Ok(t) => t,
        // An I/O error names the path already.
        Err(e @ bts_reader::Error::Io { .. }) => {
            crate::errln!("bts: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            crate::errln!("bts: {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    if let Some(t) = thread {
        let known = tf.thread_streams().any(|s| matches!(s.kind, StreamKind::Thread { tid, .. } if tid == t));
        if !known {
            crate::errln!("bts: {}: no thread {t} in this trace", file.display());
            return ExitCode::FAILURE;
        }
    }
    if let Some(c) = cpu {
        if !tf.streams.iter().any(|s| s.kind == StreamKind::Cpu { cpu: c }) {
            crate::errln!("bts: {}: no catch-all buffer of cpu {c} in this trace", file.display());
            return ExitCode::FAILURE;
        }
    }
    let sel = Selection { branches: out.branches, insns: out.insns, thread, cpu };
    let report = Report::build(&tf, Some(file.display().to_string()), &sel);
    if out.json {
        crate::outln!("{}", report.to_json());
    } else {
        crate::out::out(&report.to_text(out.all_threads || thread.is_some() || cpu.is_some()));
    }
    if crate::out::stdout_failed() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
