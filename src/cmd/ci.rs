//! `bts ci -- COMMAND`: a CI step traced whole; every crashing process
//! reported on stderr, in the artifacts folder, and where CI systems look
//! (GitHub annotations and step summary, JUnit XML, JSON).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::args::{CiArgs, Keep};
use crate::ci::artifacts::Artifacts;
use crate::ci::{github, junit, ptrace_step, text, vg_step, Collector, StepEnd, StepReport};
use crate::exit::{self, exec_failure_status, EXIT_BTS_FAILED};
use crate::record::{backend, end_by_signal, split_off_tracer, Chosen};
use crate::save::write_report;
use ptrace_shim::Outcome;

/// `bts ci`.
pub fn run(args: &CiArgs) -> ExitCode {
    exit::code(run_status(args))
}

fn run_status(args: &CiArgs) -> i32 {
    let rec = args.record_args();
    let command: Vec<String> = args.command.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    let (chosen, note) = match backend(&rec, true) {
        Ok(c) => c,
        Err(e) => {
            crate::errln!("bts: {e}");
            return i32::from(EXIT_BTS_FAILED);
        }
    };
    // Fail as a shell would when the step cannot be executed.
    if let Err(e) = ptrace_shim::spawn::resolve_program(&args.command[0]) {
        crate::errln!("bts: cannot execute {}: {e}", command[0]);
        return exec_failure_status(&e);
    }
    let artifacts = match Artifacts::open(&args.artifacts, args.max_artifacts) {
        Ok(a) => a,
        Err(e) => {
            crate::errln!("bts: {e}");
            return i32::from(EXIT_BTS_FAILED);
        }
    };
    let mut collector = Collector::new(artifacts, args.branches, args.keep == Keep::Always, workspace());
    let mut detached_by = None;
    let end = match chosen {
        Chosen::Valgrind(tool) => {
            if let Err(e) = ptrace_shim::install_stop_handlers() {
                crate::errln!("bts: cannot install signal handlers: {e}");
                return i32::from(EXIT_BTS_FAILED);
            }
            match vg_step::trace(&tool, &args.command, args.buffer_size, &note, &mut collector) {
                Ok(t) => StepEnd {
                    command,
                    status: t.status,
                    backend: "valgrind".into(),
                    note,
                    processes: t.processes,
                    left_running: t.left_running,
                    valgrind_folder: t.folder,
                },
                Err(e) => {
                    crate::errln!("bts: {e}");
                    return i32::from(EXIT_BTS_FAILED);
                }
            }
        }
        Chosen::Ptrace(be) => {
            if let Some(status) = split_off_tracer() {
                return status;
            }
            match ptrace_step::trace(&args.command, &rec, be, &mut collector) {
                Ok(t) => {
                    if let Some(e) = &t.failure {
                        crate::errln!("bts: tracing failed: {e}; the step ran on untraced");
                    }
                    let status = match t.outcome {
                        // bts was told to go by a signal: the step runs on
                        // unchecked, which is not a pass.
                        Outcome::Detached(sig) => {
                            detached_by = Some(sig);
                            128 + sig
                        }
                        o => exit::status(o),
                    };
                    StepEnd {
                        command,
                        status,
                        backend: be.name().to_string(),
                        note,
                        processes: t.processes,
                        left_running: t.left_running,
                        valgrind_folder: None,
                    }
                }
                Err(ptrace_shim::Error::Exec { source, .. }) => {
                    crate::errln!("bts: cannot execute {}: {source}", command[0]);
                    return exec_failure_status(&source);
                }
                Err(e) => {
                    crate::errln!("bts: {e}");
                    return i32::from(EXIT_BTS_FAILED);
                }
            }
        }
    };
    let root = collector.root;
    let report = collector.finish(end);
    let published = publish(&report, args);
    if let Some(sig) = detached_by {
        end_by_signal(Outcome::Detached(sig), root);
    }
    if !published {
        return i32::from(EXIT_BTS_FAILED);
    }
    report.status
}

/// The project's folder: GitHub's workspace, else where bts runs.
fn workspace() -> Option<PathBuf> {
    std::env::var_os("GITHUB_WORKSPACE")
        .filter(|w| !w.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
}

/// Everything the step's report goes to. False when a file asked for
/// could not be written.
fn publish(report: &StepReport, args: &CiArgs) -> bool {
    let mut ok = true;
    crate::out::err(&text::step_text(report));
    let workspace = workspace();
    if std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true") {
        // The step's last line may lack its newline: a workflow command
        // must start a line.
        if !report.crashes.is_empty() {
            crate::out::out("\n");
        }
        for c in &report.crashes {
            crate::outln!("{}", github::annotation(c, workspace.as_deref()));
        }
        if let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY").filter(|p| !p.is_empty()) {
            let path = Path::new(&path);
            if let Err(e) = github::append_summary(path, &github::summary(report, workspace.as_deref())) {
                crate::errln!("bts: could not write the step summary {}: {e}", path.display());
            }
        }
    }
    if let Some(p) = &args.json {
        let doc = serde_json::to_string_pretty(report).expect("the report serializes") + "\n";
        ok &= write_report(p, doc.as_bytes(), "JSON report");
    }
    if let Some(p) = &args.junit {
        match junit::to_xml(report) {
            Ok(xml) => ok &= write_report(p, xml.as_bytes(), "JUnit report"),
            Err(e) => {
                crate::errln!("bts: could not make the JUnit report: {e}");
                ok = false;
            }
        }
    }
    ok
}
