//! `bts attach PID`: trace a running process until it crashes, exits, or
//! bts is asked to stop; then detach, leaving it as it was.

use std::process::ExitCode;

use ptrace_shim::{Outcome, Session};

use crate::args::{RecordArgs, ReportWhen};
use crate::exit::{self, EXIT_BTS_FAILED};
use crate::record::{backend, drive, end_by_signal, options, split_off_tracer, Chosen};
use crate::save::{process_command, Reporter};

/// `bts attach PID`.
pub fn run(rec: &RecordArgs, pid: i32) -> ExitCode {
    let (be, note) = match backend(rec, false) {
        Ok((Chosen::Ptrace(be), note)) => (be, note),
        Ok((Chosen::Valgrind(_), _)) => unreachable!("valgrind is not chosen for attach"),
        Err(e) => {
            crate::errln!("bts: {e}");
            return ExitCode::from(EXIT_BTS_FAILED);
        }
    };
    if let Some(status) = split_off_tracer() {
        return exit::code(status);
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
            exit::code(exit::status(o))
        }
        Err(e) => {
            crate::errln!("bts: tracing failed: {e}");
            ExitCode::from(EXIT_BTS_FAILED)
        }
    }
}
