//! GDB's remote serial protocol, served from bts traces, so that stock
//! GDB's `record btrace`, `record instruction-history`,
//! `record function-call-history`, `reverse-stepi` and friends work on
//! machines without branch-trace hardware.
//!
//! Owns: the packet framing ([`packet`]) and parser ([`command`]), the
//! protocol's loop over a [`server::Target`] ([`server`]), the x86-64
//! target description ([`tdesc`]), GDB's btrace documents ([`btrace`]),
//! placing modules for GDB ([`elf`]), and the saved-trace target
//! ([`postmortem`]) and the live one over a recording session ([`live`]). Does not own: recording (`ptrace-shim`), trace files
//! (`bts-reader`), reports (`analysis`), or what the CLI tells the user.
//! The `gdbstub` crate has no btrace packets and no way to add them,
//! hence this small layer of our own.

#![warn(missing_docs)]

pub mod btrace;
pub mod command;
pub mod elf;
pub mod live;
pub mod packet;
pub mod postmortem;
pub mod server;
pub mod tdesc;

pub use live::Live;
pub use postmortem::PostMortem;
pub use server::{serve, Target};

/// Why the stub stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection failed.
    #[error("connection: {0}")]
    Io(#[source] std::io::Error),
    /// The trace has no thread to serve.
    #[error("the trace holds no thread to debug")]
    NoThreads,
}
