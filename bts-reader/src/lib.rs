//! Branch sources for `bts` and the trace file they end in.
//!
//! Owns: the self-contained, versioned trace file (`.bts`) every recorder
//! writes and every command reads; writing user-named files by the shell's
//! rules (`outfile`); the hardware through `perf_event_open` (BTS events,
//! `intel_bts` AUX snapshots, PEBS, the ring parsers, the facts `bts doctor`
//! shows); the bts Valgrind tool (built into the crate, installed only in
//! private folders) and its trace format. Does not own: ptrace, decoding,
//! or what is shown to the user (`ptrace-shim`, `decode`, `analysis`).

#![warn(missing_docs)]

pub mod cut;
pub mod filter;
pub mod newest;
mod newtrace;
pub mod outfile;
pub mod perf;
pub mod recording;
pub mod split;
pub mod tracefile;
pub mod tracestream;
pub mod valgrind;

pub use tracefile::{
    CodeRange, Meta, Module, Registers, SectionSize, Stream, StreamHeader, StreamKind, ThreadState,
    TraceFile, FORMAT_VERSION, OLDEST_VERSION,
};

/// Errors of the branch sources.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The system's error.
        source: std::io::Error,
    },
    /// Not a trace file.
    #[error("not a bts trace file (bad magic)")]
    BadMagic,
    /// A trace file of a version this bts cannot read.
    #[error("trace file format version {found} is not supported (this bts reads versions {OLDEST_VERSION} to {FORMAT_VERSION})")]
    UnsupportedVersion {
        /// Its version.
        found: u32,
    },
    /// The file ends early.
    #[error("trace file is truncated: {0}")]
    Truncated(String),
    /// The file's content is inconsistent.
    #[error("trace file is corrupt: {0}")]
    Corrupt(String),
    /// A stream's records are not whole BTS records.
    #[error("trace file is corrupt: the stream at offset {at}: {source}")]
    Records {
        /// The stream's offset in the file.
        at: usize,
        /// Why.
        source: ds_alloc::Error,
    },
    /// The file could not be written (see [`outfile`]).
    #[error(transparent)]
    Write(#[from] outfile::WriteError),
    /// Two traces to merge hold the same buffer.
    #[error("{buffer} is in both {first} and {second}")]
    MergeOverlap {
        /// The buffer, in words.
        buffer: String,
        /// The first trace that holds it.
        first: String,
        /// The second.
        second: String,
    },
    /// A command named something the trace does not hold: a module, a
    /// thread's or process's buffer (`bts filter`), branches in a range or
    /// a time (`bts cut`).
    #[error("the trace has no {what} (it has: {})", if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    NotInTrace {
        /// What was named: "module `libc`", "buffer of thread 42".
        what: String,
        /// What the trace has instead: a list of names, or a sentence.
        known: Vec<String>,
    },
}

/// The result of reading or writing a trace file.
pub type Result<T> = std::result::Result<T, Error>;
