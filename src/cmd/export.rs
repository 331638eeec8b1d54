//! `bts export FILE --format chrome|folded|json`: the call timeline for
//! other tools.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use analysis::export;
use analysis::model::{image_of, images};
use analysis::select;
use analysis::timeline::{analyze, Analysis};

use crate::load::{load, progress_printer, InspectError};

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum ExportFormat {
    /// Chrome Trace Event JSON (Perfetto, chrome://tracing).
    Chrome,
    /// Folded stacks weighted by instructions (flamegraph.pl, inferno).
    Folded,
    /// Function segments as JSON.
    Json,
}

/// `bts export`.
pub fn run(file: &Path, format: ExportFormat, thread: Option<i32>, output: Option<&Path>) -> ExitCode {
    let run = || -> Result<(), InspectError> {
        let tf = load(file)?;
        let imgs = images(&tf);
        let streams = select::export_streams(&tf, thread)?;
        let mut progress = progress_printer("decoding");
        let analyses: Vec<Analysis> =
            streams.iter().map(|s| analyze(s, image_of(&imgs, &s.kind), false, &mut progress)).collect();
        let text = match format {
            ExportFormat::Chrome => serde_json::to_string(&export::chrome::events(&analyses)).expect("json"),
            ExportFormat::Folded => export::folded::stacks(&analyses),
            ExportFormat::Json => {
                serde_json::to_string_pretty(&export::json::segments(&analyses)).expect("json")
            }
        };
        match output {
            Some(p) => Ok(bts_reader::outfile::write(p, text.as_bytes())?),
            None => Ok(std::io::stdout().lock().write_all(text.as_bytes())?),
        }
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crate::errln!("bts: {e}");
            ExitCode::FAILURE
        }
    }
}
