//! What `history`, `export` and `last-branch` share: loading a trace file,
//! and their errors, each naming the file or the option at fault.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use bts_reader::TraceFile;

/// Why a command on a saved trace failed.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The file could not be read (the error names the path).
    #[error(transparent)]
    Io(bts_reader::Error),
    /// The file is not a sound trace.
    #[error("{}: {source}", path.display())]
    Bad { path: PathBuf, source: bts_reader::Error },
    /// `--kernel` without the right to see kernel addresses.
    #[error("--kernel needs root or kernel.perf_event_paranoid <= 1")]
    KernelNotAllowed,
    /// The trace cannot answer (no such thread, bad range).
    #[error(transparent)]
    Trace(#[from] analysis::Error),
    /// The chosen thread recorded nothing.
    #[error("the trace of this thread holds no branches")]
    NoBranches,
    /// The answer could not be written.
    #[error("writing: {0}")]
    Write(#[from] std::io::Error),
    /// The output file could not be written.
    #[error(transparent)]
    WriteFile(#[from] bts_reader::outfile::WriteError),
}

/// Says why a command on a saved trace failed (on stderr) and gives its
/// exit code. A closed pipe (`bts history … | head`) is not worth a
/// message, as everywhere in bts (`crate::out`).
pub fn failed(e: &InspectError) -> std::process::ExitCode {
    if !matches!(e, InspectError::Write(w) if w.kind() == std::io::ErrorKind::BrokenPipe) {
        crate::errln!("bts: {e}");
    }
    std::process::ExitCode::FAILURE
}

/// Reads a trace file.
pub fn load(file: &Path) -> Result<TraceFile, InspectError> {
    TraceFile::read(file).map_err(|e| bad_file(file, e))
}

/// Reads a trace file with the newest `each` branches of each buffer at
/// most (`None`: all), and the branches of each left out.
pub fn load_newest(file: &Path, each: Option<u64>) -> Result<(TraceFile, Vec<u64>), InspectError> {
    match each {
        Some(each) => bts_reader::newest::read_newest_each(file, each).map_err(|e| bad_file(file, e)),
        None => load(file).map(|tf| {
            let n = tf.streams.len();
            (tf, vec![0; n])
        }),
    }
}

fn bad_file(file: &Path, e: bts_reader::Error) -> InspectError {
    match e {
        bts_reader::Error::Io { .. } => InspectError::Io(e),
        e => InspectError::Bad { path: file.to_path_buf(), source: e },
    }
}

/// `--kernel` only for a caller allowed to see kernel addresses.
pub fn kernel_allowed(kernel: bool) -> Result<bool, InspectError> {
    if kernel && !decode::kernel::may_see_kernel() {
        return Err(InspectError::KernelNotAllowed);
    }
    Ok(kernel)
}

/// A progress line on stderr, for long work, when stderr is a terminal.
pub fn progress_printer(what: &'static str) -> impl FnMut(usize, usize) {
    let tty = std::io::stderr().is_terminal();
    move |done, total| {
        if tty && total > 200_000 {
            crate::out::err(&format!("\r{what}: {:>3}%", done * 100 / total.max(1)));
            if done >= total {
                crate::out::err(&format!("\r{:width$}\r", "", width = what.len() + 6));
            }
            let _ = std::io::stderr().flush();
        }
    }
}
