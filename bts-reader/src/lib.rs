//! Branch sources for `bts` and the trace file they end in.
//!
//! Owns: the self-contained, versioned trace file (`.bts`) every recorder
//! writes and every command reads; writing user-named files by the shell's
//! rules (`outfile`); the hardware through `perf_event_open` (BTS events,
//! `intel_bts` AUX snapshots, PEBS, the ring parsers, the facts `bts doctor`
//! shows); the bts Valgrind tool (built into the crate, installed only in
//! private folders) and its trace format. Does not own: ptrace, decoding,
//! or what is shown to the user (`ptrace-shim`, `decode`, `analysis`).

pub mod outfile;
pub mod perf;
pub mod recording;
pub mod tracefile;
pub mod valgrind;

pub use tracefile::{CodeRange, Meta, Module, Stream, StreamKind, TraceFile, FORMAT_VERSION};

/// Errors of the branch sources.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("not a bts trace file (bad magic)")]
    BadMagic,
    #[error("trace file format version {found} is not supported (this bts reads version {FORMAT_VERSION})")]
    UnsupportedVersion { found: u32 },
    #[error("trace file is truncated: {0}")]
    Truncated(String),
    #[error("trace file is corrupt: {0}")]
    Corrupt(String),
    #[error("trace file is corrupt: the stream at offset {at}: {source}")]
    Records { at: usize, source: ds_alloc::Error },
    #[error(transparent)]
    Write(#[from] outfile::WriteError),
}

pub type Result<T> = std::result::Result<T, Error>;
