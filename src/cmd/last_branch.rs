//! `bts last-branch FILE`: the report's branch list from a saved trace.

use std::path::Path;
use std::process::ExitCode;

use analysis::report::{Report, Selection};
use bts_reader::StreamKind;

use crate::args::OutputArgs;

/// Branches read of a trace, over all its buffers: the report shows the
/// newest branches (and the call stack they leave), so a trace of any size
/// is read in bounded memory (1M branches, about 40 MB as the report works).
const NEWEST: u64 = 1 << 20;

/// `bts last-branch FILE`.
pub fn run(out: &OutputArgs, thread: Option<i32>, cpu: Option<u32>, file: &Path) -> ExitCode {
    let (tf, unread) = match bts_reader::newest::read_newest(file, NEWEST) {
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
    let report = Report::build_partial(&tf, Some(file.display().to_string()), &sel, &unread);
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
