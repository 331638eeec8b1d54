//! Decoding of BTS branch traces: the code an execution ran through, the
//! kind of every branch, instructions between branches, and symbols.

pub mod calls;
pub mod classify;
pub mod code;
pub mod disasm;
pub mod flow;
pub mod kernel;
pub mod symbols;

pub use classify::{classify, BranchKind};
pub use code::CodeMap;
pub use disasm::{format_insn, last_instructions, straight_line, Walked};
pub use symbols::{ModuleInfo, Symbol, Symbolizer};

/// Errors of the decoder.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {msg}")]
    Module { path: String, msg: String },
}
