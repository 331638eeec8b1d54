//! An executable mapping of a traced image: the one mapping type every
//! part of bts uses (/proc/PID/maps as ptrace reads it, the Valgrind tool's
//! list, the trace file's module list, the symbolizer).

use serde::{Deserialize, Serialize};

/// Code of a file (or a pseudo file such as `[vdso]`) mapped at
/// `start..end`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    /// The mapped file, or a pseudo name such as `[vdso]`.
    pub path: String,
    /// The first address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// File offset mapped at `start`.
    pub offset: u64,
}

impl Mapping {
    /// `addr` lies in the mapping.
    pub fn contains(&self, addr: u64) -> bool {
        (self.start..self.end).contains(&addr)
    }
}
