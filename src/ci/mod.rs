//! `bts ci`: a whole CI step traced, every crashing process reported.
//!
//! The recorders drive the step (`ptrace_step`, `vg_step`) and hand each
//! process worth keeping to a [`Collector`], which writes its trace into
//! the artifacts folder and builds its report. What CI systems read is
//! made from the collected [`StepReport`] at the end: the text on stderr
//! (`text`), GitHub's annotations and step summary (`github`), JUnit XML
//! (`junit`) and the JSON document.

pub mod artifacts;
pub mod github;
pub mod junit;
pub mod ptrace_step;
pub mod text;
pub mod vg_step;

use analysis::report::{Report, Selection};
use analysis::stack::Frame;
use bts_reader::TraceFile;
use serde::Serialize;

use self::artifacts::Artifacts;

/// Version of the JSON document's shape.
pub const CI_REPORT_VERSION: u32 = 1;

/// A process, as the report names it.
#[derive(Debug, Clone, Serialize)]
pub struct Proc {
    /// Its pid.
    pub pid: i32,
    /// Its command line.
    pub command: Vec<String>,
}

/// One crashed process.
#[derive(Debug, Clone, Serialize)]
pub struct CrashEntry {
    /// The process that started it.
    pub ppid: i32,
    /// Its parents up to the step's command, nearest first.
    pub parents: Vec<Proc>,
    /// Where it crashed: the first frame with a source line (else the
    /// first frame).
    pub site: Option<Frame>,
    /// The report `bts run` gives (pid, command, outcome, trace_file, threads…).
    #[serde(flatten)]
    pub report: Report,
}

impl CrashEntry {
    /// The signal's name, or what ended the process.
    pub fn what(&self) -> String {
        let o = &self.report.outcome;
        match (&o.signal_name, &o.fault_addr) {
            (Some(s), Some(a)) => format!("{s} at address {a}"),
            (Some(s), None) => s.clone(),
            _ => o.kind.clone(),
        }
    }

    /// The program's name (the first word of its command, without folders).
    pub fn program(&self) -> String {
        let first = self.report.command.first().map(String::as_str).unwrap_or("?");
        first.rsplit('/').next().unwrap_or(first).to_string()
    }
}

/// The signals whose default action dumps core (signal(7)): a program's
/// own fault or abort. A process killed by another signal (SIGTERM from
/// `timeout` or a test's cleanup, SIGPIPE under `| head`, SIGKILL) did
/// not crash: it is listed among the failures, without a trace file.
pub fn is_crash_signal(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGQUIT
            | libc::SIGILL
            | libc::SIGTRAP
            | libc::SIGABRT
            | libc::SIGBUS
            | libc::SIGFPE
            | libc::SIGSEGV
            | libc::SIGSYS
            | libc::SIGXCPU
            | libc::SIGXFSZ
    )
}

/// A process (not the step's command) that failed without crashing: it
/// exited with a code other than 0, or a signal that is not a crash
/// killed it.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// The process.
    pub pid: i32,
    /// The process that started it.
    pub ppid: i32,
    /// Its command line.
    pub command: Vec<String>,
    /// Its exit code.
    pub code: Option<i32>,
    /// The signal that killed it (`SIGTERM`).
    pub signal: Option<String>,
    /// Its trace (with `--keep always` only).
    pub trace_file: Option<String>,
    /// Its parents up to the step's command, nearest first.
    pub parents: Vec<Proc>,
}

/// The whole step.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// [`CI_REPORT_VERSION`].
    pub version: u32,
    /// The step's command.
    pub command: Vec<String>,
    /// Its exit status (128+N for a signal), which bts exits with.
    pub status: i32,
    /// The recorder.
    pub backend: String,
    /// Why this recorder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_note: Option<String>,
    /// Processes traced.
    pub processes: usize,
    /// Every process that crashed (a signal that dumps core), in the
    /// order they died.
    pub crashes: Vec<CrashEntry>,
    /// Every other process (not the step's command) that failed, in the
    /// order they ended.
    pub failures: Vec<Failure>,
    /// Processes the step left running, detached at its end.
    pub left_running: Vec<Proc>,
    /// Where Valgrind goes on writing for the processes left running
    /// under it (to remove once they are gone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valgrind_folder: Option<String>,
    /// The artifacts folder.
    pub artifacts: String,
    /// Trace files removed to stay within `--max-artifacts`.
    pub artifacts_removed: Vec<String>,
}

/// Takes each process to keep: its trace into the artifacts, and for a
/// crash, its report.
pub struct Collector {
    /// The trace files.
    pub artifacts: Artifacts,
    /// Branches per report.
    pub branches: usize,
    /// Every process leaves a trace file (`--keep always`).
    pub keep_all: bool,
    /// The step's command (its status is the step's, not a failure).
    pub root: i32,
    /// Crashes so far.
    pub crashes: Vec<CrashEntry>,
    /// Failures so far.
    pub failures: Vec<Failure>,
    /// The project's folder: a crash site in its sources is preferred to
    /// one in a library's.
    pub workspace: Option<std::path::PathBuf>,
}

impl Collector {
    /// A collector with nothing collected yet.
    pub fn new(
        artifacts: Artifacts,
        branches: usize,
        keep_all: bool,
        workspace: Option<std::path::PathBuf>,
    ) -> Self {
        Collector {
            artifacts,
            branches,
            keep_all,
            root: 0,
            crashes: Vec::new(),
            failures: Vec::new(),
            workspace,
        }
    }

    /// Whether a process that ended this way needs its trace built: a
    /// crash always, anything with `--keep always`.
    pub fn wants_trace(&self, signal: Option<i32>) -> bool {
        self.keep_all || signal.is_some_and(is_crash_signal)
    }

    /// Saves the trace of process `pid` (a crash, or any process with
    /// `--keep always`); reports a crash, notes a failure. A file that
    /// cannot be written is said once; the report still comes.
    pub fn keep(&mut self, tf: &TraceFile, pid: i32, ppid: i32, parents: Vec<Proc>) {
        let crash = tf.meta.signal.is_some_and(is_crash_signal);
        let written = match self.artifacts.save(tf, pid, crash) {
            Ok(p) => p.map(|p| p.display().to_string()),
            Err(e) => {
                crate::errln!("bts: could not save the trace of pid {pid}: {e}");
                None
            }
        };
        if !crash {
            let signal = tf.meta.signal_name.clone();
            let code = tf.meta.code.filter(|&c| c != 0);
            if signal.is_some() || code.is_some() && pid != self.root {
                let who = Proc { pid, command: tf.meta.command.clone() };
                self.failures.push(Failure {
                    pid,
                    ppid,
                    command: who.command,
                    code,
                    signal,
                    trace_file: written,
                    parents,
                });
            }
            return;
        }
        let sel = Selection { branches: self.branches, insns: 12, thread: None, cpu: None };
        let report = Report::build(tf, written, &sel);
        let site = crash_site(&report, self.workspace.as_deref());
        let entry = CrashEntry { ppid, parents, site, report };
        crate::errln!(
            "bts: pid {pid} ({}) got {}{}",
            entry.report.command.join(" "),
            entry.what(),
            entry.report.trace_file.as_deref().map(|f| format!("; trace saved to {f}")).unwrap_or_default()
        );
        self.crashes.push(entry);
    }

    /// Notes a process (not the step's command) that ended with `code`,
    /// or was killed by `signal`, whose trace is not kept.
    pub fn failed(
        &mut self,
        who: Proc,
        ppid: i32,
        parents: Vec<Proc>,
        code: Option<i32>,
        signal: Option<i32>,
    ) {
        let code = code.filter(|&c| c != 0);
        if code.is_none() && signal.is_none() {
            return;
        }
        let signal = signal.map(ptrace_shim::sys::signal_name);
        self.failures.push(Failure {
            pid: who.pid,
            ppid,
            command: who.command,
            code,
            signal,
            trace_file: None,
            parents,
        });
    }

    /// The step's report, once it is over.
    pub fn finish(mut self, end: StepEnd) -> StepReport {
        // Files removed to stay within the limit no longer back a report.
        for c in &mut self.crashes {
            if c.report.trace_file.as_deref().is_some_and(|f| !self.artifacts.kept(f)) {
                c.report.trace_file = None;
            }
        }
        for f in &mut self.failures {
            if f.trace_file.as_deref().is_some_and(|t| !self.artifacts.kept(t)) {
                f.trace_file = None;
            }
        }
        StepReport {
            version: CI_REPORT_VERSION,
            command: end.command,
            status: end.status,
            backend: end.backend,
            backend_note: end.note,
            processes: end.processes,
            crashes: self.crashes,
            failures: self.failures,
            left_running: end.left_running,
            valgrind_folder: end.valgrind_folder,
            artifacts: self.artifacts.dir().display().to_string(),
            artifacts_removed: self.artifacts.removed().iter().map(|p| p.display().to_string()).collect(),
        }
    }
}

/// How a step ended, as a recorder saw it.
pub struct StepEnd {
    /// The step's command.
    pub command: Vec<String>,
    /// Its status.
    pub status: i32,
    /// The recorder.
    pub backend: String,
    /// Why this recorder.
    pub note: Option<String>,
    /// Processes traced.
    pub processes: usize,
    /// Processes left running.
    pub left_running: Vec<Proc>,
    /// The folder Valgrind goes on writing to for them.
    pub valgrind_folder: Option<String>,
}

/// The crash site: the crashed thread's first frame in a source file of
/// the workspace (an `abort()` is reported where the project called it,
/// not in libc), else its first frame with a source line, else its first.
pub fn crash_site(r: &Report, workspace: Option<&std::path::Path>) -> Option<Frame> {
    let t = r.threads.iter().find(|t| t.crashed).or(r.threads.last())?;
    let with_line = |f: &&Frame| f.file.is_some() && f.line.is_some();
    let ours = |f: &&Frame| {
        let file = f.file.as_deref().map(std::path::Path::new);
        with_line(f) && workspace.zip(file).is_some_and(|(w, p)| p.is_absolute() && p.starts_with(w))
    };
    t.stack.iter().find(ours).or_else(|| t.stack.iter().find(with_line)).or(t.stack.first()).cloned()
}
