//! Decoding of BTS branch traces: the code an execution ran through, the
//! kind of every branch, instructions between branches, and symbols.
//!
//! Owns: what an instruction is (iced-x86; the one definition of a system
//! call instruction), the kernel filter, the flow walk between records,
//! GDB-style call segments, symbols and source lines (addr2line). Does not
//! own: which threads to show or how (`analysis`), nor reading trace files
//! (`bts-reader`).

#![warn(missing_docs)]

pub mod calls;
pub mod classify;
pub mod code;
pub mod disasm;
pub mod flow;
pub mod kernel;
pub mod mapping;
pub mod minidebug;
pub mod symbols;

pub use classify::{classify, BranchKind};
pub use code::CodeMap;
pub use disasm::{format_insn, last_instructions, straight_line, Walked};
pub use mapping::Mapping;
pub use symbols::{Symbol, Symbolizer};
