//! `bts run -- PROGRAM`: launch a program traced; report if it crashes.

use std::ffi::OsString;
use std::process::ExitCode;

use bts_reader::TraceFile;
use ptrace_shim::{Outcome, Session};

use crate::args::RecordArgs;
use crate::exit::{self, exec_failure_status, EXIT_BTS_FAILED};
use crate::record::{backend, drive, end_by_signal, options, split_off_tracer, Chosen};

use crate::save::Reporter;

pub fn run(rec: &RecordArgs, follow_fork: bool, no_aslr: bool, command: Vec<OsString>) -> ExitCode {
    exit::code(run_status(rec, follow_fork, no_aslr, command))
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
            exit::status(o)
        }
        Err(e) => {
            crate::errln!("bts: tracing failed: {e}");
            // Keep what was recorded.
            let recording = session.recording();
            let tf = TraceFile::from_recording(&recording, Outcome::Exited(0).meta(&shown, root));
            reporter.save(&tf, root, false);
            reporter.finish();
            i32::from(EXIT_BTS_FAILED)
        }
    }
}
