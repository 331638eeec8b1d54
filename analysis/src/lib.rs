//! What a bts trace says, for the CLI and for tests alike, on a
//! [`bts_reader::TraceFile`] in memory.
//!
//! This crate owns the model of a trace as code (the images of each
//! process, [`model`]), the one rule for which threads a command shows
//! ([`select`]), the decoded timeline of a thread ([`timeline`]), the crash
//! report ([`report`]), GDB's history formats ([`history`]) and the exports
//! ([`export`]), and the history of a trace of any size read a range at a
//! time ([`stream`]: records through `bts-reader`'s stream reader). It does
//! not record, write files, or print: the
//! recorders are in `ptrace-shim` and `bts-reader`, the decoding of
//! instructions in `decode`, and the words to the user in the CLI.

#![warn(missing_docs)]

pub mod callhistory;
pub mod callstream;
pub mod export;
pub mod history;
pub mod info;
mod jsonout;
pub mod model;
pub mod range;
pub mod report;
pub mod select;
pub mod stack;
pub mod stream;
pub mod timeline;

/// Why a trace cannot answer a question.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `--thread TID` names no thread of the trace.
    #[error("no thread {tid} in this trace")]
    NoSuchThread {
        /// The thread asked for.
        tid: i32,
    },
    /// The trace holds no thread at all.
    #[error("the trace holds no thread")]
    NoThreads,
    /// A history range GDB would not take.
    #[error("{0}")]
    Range(#[from] range::RangeError),
}
