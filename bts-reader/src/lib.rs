//! Branch sources for `bts`. Today: the self-contained, versioned trace file
//! (`.bts`) that every recorder writes and every command reads.

pub mod outfile;
pub mod perf;
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
