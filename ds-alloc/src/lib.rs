//! The Debug Store (DS) model of `bts`: the 64-bit save area, BTS and PEBS
//! record formats, the context ("escape") records the old kernel allocator
//! interleaved with branches, circular buffers, and the multi-tracer
//! allocator every branch source — hardware or software — delivers into.
//!
//! Owns the records, the buffers and who is charged for them. Does not own
//! any source of records (hardware, ptrace, Valgrind) or any file format.
//! Nothing here depends on another crate of the workspace.

pub mod alloc;
mod buffer;
pub mod ds;
pub mod pages;
pub mod pebs;
mod record;
mod slab;

pub use alloc::{Allocator, BtsHandle, PebsHandle, Target, TracerId, KERNEL_SLACK};
pub use buffer::BtsBuffer;
pub use ds::DsArea;
pub use pebs::{PebsConfig, PebsFormat, PebsRecord};
pub use record::{is_kernel_address, BtsRecord, ContextKind, RecordKind, BTS_RECORD_SIZE, FLAG_PREDICTED};

/// Errors of the DS model.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A byte slice that should hold whole BTS records does not.
    #[error("{len} bytes is not a whole number of {BTS_RECORD_SIZE}-byte BTS records")]
    Misaligned { len: usize },
    /// A buffer was asked to hold no records at all.
    #[error("a buffer of {bytes} bytes holds no record")]
    BufferTooSmall { bytes: usize },
    #[error(
        "locked-memory limit exceeded for {tracer}: RLIMIT_MEMLOCK is {limit_bytes} bytes, \
         {charged_bytes} are in use, this buffer needs {requested_bytes} more \
         (raise it with `ulimit -l`, or ask for smaller buffers)"
    )]
    MemlockExceeded { tracer: String, limit_bytes: u64, charged_bytes: u64, requested_bytes: u64 },
    #[error("PEBS on {target} is busy: owned by {owner}")]
    PebsBusy { target: String, owner: String },
    #[error("no such tracer (it unregistered)")]
    UnknownTracer,
    #[error("no such buffer (it was released)")]
    UnknownHandle,
    #[error("that buffer belongs to another tracer")]
    NotYours,
    #[error("PEBS record truncated at byte {at}")]
    PebsTruncated { at: usize },
    #[error("adaptive PEBS record declares {declared} bytes but its groups take {parsed}")]
    PebsBadSize { declared: usize, parsed: usize },
}
