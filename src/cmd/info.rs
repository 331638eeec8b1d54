//! `bts info FILE`: what a trace file holds, at a glance, read a section
//! at a time (a trace of any size in bounded memory).

use std::path::Path;
use std::process::ExitCode;

use analysis::info::Info;

/// `bts info FILE [--json]`.
pub fn run(file: &Path, json: bool) -> ExitCode {
    let info = match Info::read(file) {
        Ok(i) => i,
        // A read error's own path is "the trace": name the file.
        Err(bts_reader::Error::Io { source, .. }) => {
            crate::errln!("bts: {}: {source}", file.display());
            return ExitCode::FAILURE;
        }
        Err(e) => {
            crate::errln!("bts: {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&info).expect("the info serializes"));
    } else {
        crate::out::out(&format!("file:     {}\n{}", file.display(), info.to_text()));
    }
    ExitCode::SUCCESS
}
