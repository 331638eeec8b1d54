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
        // The call indexes first (from beside the file, or built and kept
        // there): reading the trace fails here, before any output.
        let ordinals: Vec<usize> = streams.iter().map(|s| t.ordinal(s)).collect();
        let mut sources = ordinals.iter().map(|&o| t.source(o)).collect::<Result<Vec<_>, _>>()?;
        let indexes = crate::index::indexes_of(file, &ordinals, false, |k| {
            let (_, _, last_pc) = thread_of(&streams[k].kind);
            let img = image_of(&imgs, &streams[k].kind);
            let progress = &mut progress_printer("indexing calls");
            callstream::build_call_index(&mut sources[k], img, false, last_pc, progress)
        })
        .map_err(t.bad())?;
        let mut threads = Vec::with_capacity(streams.len());
        for ((s, src), index) in streams.iter().zip(sources).zip(indexes) {
            let img = image_of(&imgs, &s.kind);
            let (pid, tid, last_pc) = thread_of(&s.kind);
            threads.push((src, index, img, pid, tid, last_pc));
        }
        // A failure to read the trace while writing, kept apart from a
        // failure to write.
        let mut unread: Option<bts_reader::Error> = None;
        let mut produce = |w: &mut dyn Write| -> std::io::Result<()> {
            let mut ex = export::Exporter::new(format, w);
            for (src, index, img, pid, tid, last_pc) in &mut threads {
                if ex.failed() {
                    break;
                }
                let th = export::Thread { src, index, img: *img, pid: *pid, tid: *tid, last_pc: *last_pc };
                if let Err(e) = ex.thread(th) {
                    unread = Some(e);
                    return Err(std::io::Error::other("the trace could not be read"));
                }
            }
            ex.finish()
        };
        let written = match output {
            Some(p) => bts_reader::outfile::write_with(p, &mut produce).map_err(InspectError::from),
            None => {
                let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
                produce(&mut out).map_err(InspectError::from)
            }
        };
        match unread {
            Some(e) => Err(t.bad()(e)),
            None => written,
        }
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::load::failed(&e),
    }
}
