//! The call timeline for other tools, one module per format, written a
//! thread at a time as its segments are decoded (bounded memory: nothing
//! of a thread is kept but its live call chain and, for folded stacks,
//! the distinct stacks).

pub mod chrome;
pub mod folded;
pub mod json;

use std::io::{Read, Seek, Write};

use crate::callstream::{calls, CallIndex, CallSink};
use crate::model::Image;
use bts_reader::tracestream::StreamAt;

/// The formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Chrome Trace Event JSON (Perfetto, chrome://tracing).
    Chrome,
    /// Folded stacks weighted by instructions (flamegraph.pl, inferno).
    Folded,
    /// Function segments as JSON.
    Json,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The trace could not be read.
    #[error(transparent)]
    Read(#[from] bts_reader::Error),
    /// The output could not be written.
    #[error("writing: {0}")]
    Write(#[from] std::io::Error),
}

/// One thread to export: its records, its call index and its code.
pub struct Thread<'a, R> {
    /// The thread's records.
    pub src: &'a mut StreamAt<R>,
    /// Its call index.
    pub index: &'a CallIndex,
    /// Its process's image.
    pub img: Option<&'a Image>,
    /// The process.
    pub pid: i32,
    /// The thread.
    pub tid: i32,
    /// Where it stood.
    pub last_pc: Option<u64>,
}

/// A thread as the formats see it.
pub(crate) struct ThreadInfo {
    pid: i32,
    tid: i32,
    instructions: u64,
    min_level: i32,
}

/// What each format does.
pub(crate) trait Writer: CallSink {
    fn begin_thread(&mut self, t: &ThreadInfo);
    fn end_thread(&mut self, t: &ThreadInfo);
    /// The end of the document; the first error met on the way.
    fn finish(&mut self) -> std::io::Result<()>;
}

/// Writes the call timeline of threads, one at a time.
pub struct Exporter<'w> {
    w: Box<dyn Writer + 'w>,
}

impl<'w> Exporter<'w> {
    /// Starts a document of `format` on `out`.
    pub fn new(format: Format, out: &'w mut dyn Write) -> Self {
        let w: Box<dyn Writer + 'w> = match format {
            Format::Chrome => Box::new(chrome::Chrome::new(out)),
            Format::Folded => Box::new(folded::Folded::new(out)),
            Format::Json => Box::new(json::Json::new(out)),
        };
        Exporter { w }
    }

    /// Adds a thread.
    pub fn thread<R: Read + Seek>(&mut self, t: Thread<'_, R>) -> Result<(), ExportError> {
        let info = ThreadInfo {
            pid: t.pid,
            tid: t.tid,
            instructions: t.index.entries,
            min_level: t.index.min_level,
        };
        self.w.begin_thread(&info);
        calls(t.src, t.index, t.img, t.last_pc, 1, &mut *self.w)?;
        self.w.end_thread(&info);
        Ok(())
    }

    /// Ends the document.
    pub fn finish(mut self) -> Result<(), ExportError> {
        Ok(self.w.finish()?)
    }
}

/// A writer that keeps the first error and then writes nothing more.
pub(crate) struct Out<'w> {
    out: &'w mut dyn Write,
    failed: Option<std::io::Error>,
}

impl<'w> Out<'w> {
    pub(crate) fn new(out: &'w mut dyn Write) -> Self {
        Out { out, failed: None }
    }

    /// Writes `s`; false once writing failed.
    pub(crate) fn put(&mut self, s: &str) -> bool {
        if self.failed.is_none() {
            if let Err(e) = self.out.write_all(s.as_bytes()) {
                self.failed = Some(e);
            }
        }
        self.failed.is_none()
    }

    pub(crate) fn finish(&mut self) -> std::io::Result<()> {
        match self.failed.take() {
            Some(e) => Err(e),
            None => self.out.flush(),
        }
    }
}

/// `v` pretty-printed as serde_json does, every line indented by `indent`
/// spaces after the first.
pub(crate) fn pretty_at(v: &serde_json::Value, indent: usize) -> String {
    let text = serde_json::to_string_pretty(v).expect("a Value serializes");
    let pad = " ".repeat(indent);
    text.replace('\n', &format!("\n{pad}"))
}
