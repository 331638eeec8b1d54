//! `bts export FILE --format chrome|folded|json`: the call timeline for
//! other tools.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use analysis::model::{image_of, images};
use analysis::{callstream, export, select};

use crate::load::{progress_printer, InspectError};
use crate::streamed::{thread_of, Streamed};

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum ExportFormat {
    /// Chrome Trace Event JSON (Perfetto, chrome://tracing).
    Chrome,
    /// Folded stacks weighted by instructions (flamegraph.pl, inferno).
    Folded,
    /// Function segments as JSON.
    Json,
}

/// `bts export`: each thread decoded as it is written, its records read
/// from the file a chunk at a time (its call index from beside the file,
/// or built once and kept there).
pub fn run(file: &Path, format: ExportFormat, thread: Option<i32>, output: Option<&Path>) -> ExitCode {
    let run = || -> Result<(), InspectError> {
        let t = Streamed::open(file)?;
        let imgs = images(&t.tf);
        let streams = select::export_streams(&t.tf, thread)?;
        let format = match format {
            ExportFormat::Chrome => export::Format::Chrome,
            ExportFormat::Folded => export::Format::Folded,
            ExportFormat::Json => export::Format::Json,
        };
        // A failure to read the trace, kept apart from a failure to write.
        let mut unread: Option<InspectError> = None;
        let mut produce = |w: &mut dyn Write| -> std::io::Result<()> {
            let mut ex = export::Exporter::new(format, w);
            for s in &streams {
                if ex.failed() {
                    break;
                }
                let ordinal = t.ordinal(s);
                let img = image_of(&imgs, &s.kind);
                let (pid, tid, last_pc) = thread_of(&s.kind);
                let done = t.source(ordinal).and_then(|mut src| {
                    let index = crate::index::index_of(file, ordinal, false, || {
                        callstream::build_call_index(
                            &mut src,
                            img,
                            false,
                            last_pc,
                            &mut progress_printer("indexing calls"),
                        )
                    })
                    .map_err(t.bad())?;
                    let th = export::Thread { src: &mut src, index: &index, img, pid, tid, last_pc };
                    ex.thread(th).map_err(|e| match e {
                        export::ExportError::Read(e) => t.bad()(e),
                        export::ExportError::Write(e) => InspectError::Write(e),
                        e => InspectError::Write(std::io::Error::other(e.to_string())),
                    })
                });
                match done {
                    Ok(()) => {}
                    Err(InspectError::Write(e)) => return Err(e),
                    Err(e) => {
                        unread = Some(e);
                        return Err(std::io::Error::other("the trace could not be read"));
                    }
                }
            }
            ex.finish().map_err(|e| match e {
                export::ExportError::Write(e) => e,
                e => std::io::Error::other(e.to_string()),
            })
        };
        let written = match output {
            Some(p) => bts_reader::outfile::write_with(p, &mut produce).map_err(InspectError::from),
            None => {
                let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
                produce(&mut out).map_err(InspectError::from)
            }
        };
        match (unread, written) {
            (Some(e), _) => Err(e),
            (None, w) => w,
        }
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::load::failed(&e),
    }
}
