//! The Debug Store (DS) model of `bts`: the 64-bit save area, BTS and PEBS
//! record formats, the context ("escape") records the old kernel allocator
//! interleaved with branches, circular buffers, and the multi-tracer
//! allocator every branch source — hardware or software — delivers into.
//!
//! Owns the records, the buffers and who is charged for them. Does not own
//! any source of records (hardware, ptrace, Valgrind) or any file format.
//! Nothing here depends on another crate of the workspace.

#![warn(missing_docs)]

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
    Misaligned {
        /// The slice's length.
        len: usize,
    },
    /// A buffer was asked to hold no records at all.
    #[error("a buffer of {bytes} bytes holds no record")]
    BufferTooSmall {
        /// The size asked for.
        bytes: usize,
    },
    /// The tracer's locked-memory limit would be exceeded.
    #[error(
        "locked-memory limit exceeded for {tracer}: RLIMIT_MEMLOCK is {limit_bytes} bytes, \
         {charged_bytes} are in use, this buffer needs {requested_bytes} more \
         (raise it with `ulimit -l`, or ask for smaller buffers)"
    )]
    MemlockExceeded {
        /// The tracer.
        tracer: String,
        /// Its RLIMIT_MEMLOCK.
        limit_bytes: u64,
        /// What its buffers are charged already.
        charged_bytes: u64,
        /// What the new buffer would be charged.
        requested_bytes: u64,
    },
    /// PEBS has one owner per target, and another tracer has it.
    #[error("PEBS on {target} is busy: owned by {owner}")]
    PebsBusy {
        /// The target.
        target: String,
        /// The tracer that owns it.
        owner: String,
    },
    /// The tracer is not registered (any more).
    #[error("no such tracer (it unregistered)")]
    UnknownTracer,
    /// The buffer is not there (any more).
    #[error("no such buffer (it was released)")]
    UnknownHandle,
    /// A tracer touched another tracer's buffer.
    #[error("that buffer belongs to another tracer")]
    NotYours,
    /// A PEBS record ends early.
    #[error("PEBS record truncated at byte {at}")]
    PebsTruncated {
        /// Where.
        at: usize,
    },
    /// An adaptive PEBS record's size disagrees with its groups.
    #[error("adaptive PEBS record declares {declared} bytes but its groups take {parsed}")]
    PebsBadSize {
        /// The size the record declares.
        declared: usize,
        /// The size its groups take.
        parsed: usize,
    },
}
