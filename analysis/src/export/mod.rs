//! The call timeline for other tools, one module per format, written a
//! thread at a time as its segments are decoded (bounded memory: nothing
//! of a thread is kept but its live call chain and, for folded stacks,
//! the distinct stacks).

pub mod chrome;
pub mod folded;
pub mod json;

use std::io::{Read, Seek, Write};

pub(crate) use crate::jsonout::{pretty_at, Out};

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
    /// Before the segments of thread `t`.
    fn begin_thread(&mut self, t: &ThreadInfo);
    /// After them.
    fn end_thread(&mut self, t: &ThreadInfo);
    /// Writing failed: nothing more will be written.
    fn failed(&self) -> bool;
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

    /// Writing failed already (the error comes from [`Exporter::finish`]):
    /// adding more threads is no use.
    pub fn failed(&self) -> bool {
        self.w.failed()
    }

    /// Adds a thread. Only reading the trace fails here; a failure to
    /// write is kept for [`Exporter::finish`] (and [`Exporter::failed`]).
    pub fn thread<R: Read + Seek>(&mut self, t: Thread<'_, R>) -> bts_reader::Result<()> {
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

    /// Ends the document; the first error writing met.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.w.finish()
    }
}
