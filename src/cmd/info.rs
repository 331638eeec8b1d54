//! `bts info FILE`: what a trace file holds, at a glance.

use std::path::Path;
use std::process::ExitCode;

use analysis::info::Info;

/// `bts info FILE [--json]`.
pub fn run(file: &Path, json: bool) -> ExitCode {
    let tf = match crate::load::load(file) {
        Ok(t) => t,
        Err(e) => {
            crate::errln!("bts: {e}");
            return ExitCode::FAILURE;
        }
    };
    let info = Info::of(&tf);
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&info).expect("the info serializes"));
    } else {
        crate::out::out(&format!("file:     {}\n{}", file.display(), info.to_text()));
    }
    ExitCode::SUCCESS
}
