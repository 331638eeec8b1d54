//! The Debug Store (DS) model of `bts`: the 64-bit BTS record format, the
//! context ("escape") records the old kernel allocator interleaved with
//! branches, and the circular per-task / per-CPU buffers that every branch
//! source — hardware or software — delivers into.
//!
//! Nothing here depends on another crate of the workspace.

mod buffer;
mod record;

pub use buffer::BtsBuffer;
pub use record::{BtsRecord, ContextKind, RecordKind, BTS_RECORD_SIZE, FLAG_PREDICTED};

/// Errors of the DS model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A byte slice that should hold whole BTS records does not.
    #[error("{len} bytes is not a whole number of {BTS_RECORD_SIZE}-byte BTS records")]
    Misaligned { len: usize },
    /// A buffer was asked to hold no records at all.
    #[error("a BTS buffer of {bytes} bytes holds no {BTS_RECORD_SIZE}-byte record")]
    BufferTooSmall { bytes: usize },
}
