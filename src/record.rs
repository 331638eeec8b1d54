//! What `bts run` and `bts attach` share: choosing the backend, the tracer
//! process split, and driving a ptrace session to its end with a report
//! and a trace file for every crash.

use bts_reader::TraceFile;
use ptrace_shim::front::{self, Side, WorkerEnd};
use ptrace_shim::{sys, Backend, Options, Outcome, Session, Stop};

use crate::args::{BackendArg, RecordArgs, ReportWhen};
use crate::exit::EXIT_BTS_FAILED;
use crate::save::{process_command, Reporter};

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
pub(crate) enum Chosen {
    Ptrace(Backend),
    Valgrind(bts_reader::valgrind::Installed),
}

/// The backend to use, and a notice when `auto` fell back from the hardware.
/// `auto` picks perf where hardware BTS works, else the Valgrind tool for a
/// launched program, else the fast ptrace recorder.
pub(crate) fn backend(rec: &RecordArgs, launched: bool) -> Result<(Chosen, Option<String>), BackendError> {
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

pub(crate) fn options(rec: &RecordArgs, backend: Backend, follow_fork: bool, no_aslr: bool) -> Options {
    Options {
        backend,
        buffer_bytes: rec.buffer_size,
        follow_fork,
        no_aslr,
        pin_cpu: !rec.no_pin,
        per_cpu_bytes: rec.per_cpu_buffer,
        insn_log: rec.insn_log.clone(),
        stack_bytes: rec.stack_size,
        report_process_ends: false,
        ..Options::default()
    }
}

/// Drives a session to its end; returns how the first process ended.
pub(crate) fn drive(
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
                // A followed child's file holds that child alone.
                let recording =
                    if c.pid == root { session.recording() } else { session.process_recording(c.pid) };
                // A followed child is named by its own command line (it is held: /proc has it).
                let cmd = if c.pid == root { command.to_vec() } else { process_command(c.pid) };
                let mut meta = c.meta(&cmd);
                meta.note = note.map(str::to_string);
                let tf = TraceFile::from_recording(&recording, meta);
                reporter.save(&tf, c.pid, rec.report != ReportWhen::Never);
                session.deliver_crash()?;
            }
            // No debugger here, and process ends are not asked for.
            Stop::Debug(_) | Stop::ProcessEnded(_) | Stop::Attention => {}
            Stop::Finished(o) => {
                detach_left_running(session);
                if let Some(print) = end_trace(rec, o, crashed) {
                    let recording = session.recording();
                    let mut meta = o.meta(command, root);
                    meta.note = note.map(str::to_string);
                    let tf = TraceFile::from_recording(&recording, meta);
                    reporter.save(&tf, root, print);
                }
                return Ok(o);
            }
        }
    }
}

/// Whether the trace of the first process is kept when tracing ends as
/// `o` (`crashed`: its crash was reported already), and if so whether its
/// report is printed: a detach, and a death by a signal bts could not hold
/// (SIGKILL), keep it; `--report always` and `-o` on a clean exit too.
pub(crate) fn end_trace(rec: &RecordArgs, o: Outcome, crashed: bool) -> Option<bool> {
    let detached = matches!(o, Outcome::Detached(_));
    let clean = matches!(o, Outcome::Exited(_));
    let killed = matches!(o, Outcome::Signaled(_)) && !crashed;
    let keep = detached || killed || rec.report == ReportWhen::Always || rec.output.is_some() && clean;
    keep.then_some(
        (detached || killed) && rec.report != ReportWhen::Never || rec.report == ReportWhen::Always,
    )
}

/// Followed processes that outlive the first one (daemons it started) are
/// detached and run on; each is named. Returns them.
pub(crate) fn detach_left_running(session: &mut Session) -> Vec<ptrace_shim::ProcessInfo> {
    match session.detach_remaining() {
        Ok(left) => {
            for p in &left {
                crate::errln!(
                    "bts: pid {} ({}) was still running when pid {} ended: detached, it runs on",
                    p.pid,
                    p.command.join(" "),
                    session.root_pid()
                );
            }
            left
        }
        Err(e) => {
            crate::errln!("bts: could not detach the processes left running: {e}");
            Vec::new()
        }
    }
}

/// Puts the tracing into a worker process that survives the SIGKILL of
/// the process the user started (see `ptrace_shim::front`). None in the
/// worker, which goes on; the status to end with in the front.
pub(crate) fn split_off_tracer() -> Option<i32> {
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
pub(crate) fn end_by_signal(o: Outcome, pid: i32) {
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
