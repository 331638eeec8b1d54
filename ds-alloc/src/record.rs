//! The 64-bit BTS record: 24 bytes, `from`, `to`, `flags`.

/// Size in bytes of one 64-bit BTS record.
pub const BTS_RECORD_SIZE: usize = 24;

/// `flags` bit 4: the branch was predicted.
pub const FLAG_PREDICTED: u64 = 1 << 4;

/// `from` of a context ("escape") record, without its qualifier nibble.
const ESCAPE: u64 = !0xF;

/// True for a kernel address as BTS records leak them: bit 63 set.
pub const fn is_kernel_address(addr: u64) -> bool {
    addr >> 63 == 1
}

/// One BTS record, exactly as the Debug Store hardware writes it (in
/// memory too: three little-endian u64 on x86-64, no padding, so a slice
/// of records is the bytes the hardware wrote).
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    zerocopy::IntoBytes,
    zerocopy::FromBytes,
    zerocopy::Immutable,
    zerocopy::KnownLayout,
)]
pub struct BtsRecord {
    /// Address of the branch instruction (or of the interrupted instruction
    /// for an asynchronous event).
    pub from: u64,
    /// Address where execution continued.
    pub to: u64,
    /// Flags; bit 4 means "predicted".
    pub flags: u64,
}

/// What a context record says about a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextKind {
    /// An escape qualifier for "branch" (used by old kernels; unused here).
    Branch,
    /// The task arrived on the CPU that owns the buffer.
    TaskArrives,
    /// The task left the CPU that owns the buffer.
    TaskDeparts,
}

impl ContextKind {
    fn qualifier(self) -> u64 {
        match self {
            ContextKind::Branch => 1,
            ContextKind::TaskArrives => 2,
            ContextKind::TaskDeparts => 3,
        }
    }
}

/// A record read back: a branch, or a context record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A branch from `from` to `to`.
    Branch {
        /// The branch instruction.
        from: u64,
        /// Its target.
        to: u64,
        /// The hardware's predicted bit.
        predicted: bool,
    },
    /// A context record with its clock and pid.
    Context {
        /// Arrives or departs.
        kind: ContextKind,
        /// The clock when it happened.
        clock: u64,
        /// The task.
        pid: u64,
    },
}

impl BtsRecord {
    /// A branch record.
    pub const fn branch(from: u64, to: u64) -> Self {
        BtsRecord { from, to, flags: 0 }
    }

    /// A context record the way the 2.6.3x allocator wrote it:
    /// `from = escape | qualifier`, `to = clock`, `flags = pid`.
    pub const fn context(kind: ContextKind, clock: u64, pid: u64) -> Self {
        let q = match kind {
            ContextKind::Branch => 1,
            ContextKind::TaskArrives => 2,
            ContextKind::TaskDeparts => 3,
        };
        BtsRecord { from: ESCAPE | q, to: clock, flags: pid }
    }

    /// Classifies the record.
    pub fn kind(&self) -> RecordKind {
        if self.from & ESCAPE == ESCAPE {
            let kind = match self.from & 0xF {
                2 => Some(ContextKind::TaskArrives),
                3 => Some(ContextKind::TaskDeparts),
                1 => Some(ContextKind::Branch),
                _ => None,
            };
            if let Some(kind) = kind {
                debug_assert_eq!(kind.qualifier(), self.from & 0xF);
                return RecordKind::Context { kind, clock: self.to, pid: self.flags };
            }
        }
        RecordKind::Branch { from: self.from, to: self.to, predicted: self.flags & FLAG_PREDICTED != 0 }
    }

    /// True for a branch record (not a context record).
    #[inline]
    pub fn is_branch(&self) -> bool {
        // The same test as `kind`, without building the kind: this runs
        // for every record delivered.
        self.from & ESCAPE != ESCAPE || !matches!(self.from & 0xF, 1..=3)
    }

    /// The record's 24 bytes, little-endian, as the hardware stores them.
    pub fn to_bytes(&self) -> [u8; BTS_RECORD_SIZE] {
        let mut b = [0u8; BTS_RECORD_SIZE];
        b[0..8].copy_from_slice(&self.from.to_le_bytes());
        b[8..16].copy_from_slice(&self.to.to_le_bytes());
        b[16..24].copy_from_slice(&self.flags.to_le_bytes());
        b
    }

    /// Reads one record from exactly 24 bytes.
    pub fn from_bytes(b: &[u8; BTS_RECORD_SIZE]) -> Self {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        BtsRecord { from: word(0), to: word(8), flags: word(16) }
    }

    /// Records read into memory as their file bytes (`as_mut_bytes`), made
    /// what they mean on a host that is not little-endian.
    pub fn from_le_in_place(records: &mut [BtsRecord]) {
        if cfg!(target_endian = "big") {
            for r in records {
                *r = BtsRecord {
                    from: u64::from_le(r.from),
                    to: u64::from_le(r.to),
                    flags: u64::from_le(r.flags),
                };
            }
        }
    }

    /// Reads a run of records; the slice must hold whole records.
    pub fn parse_all(bytes: &[u8]) -> Result<Vec<BtsRecord>, crate::Error> {
        if !bytes.len().is_multiple_of(BTS_RECORD_SIZE) {
            return Err(crate::Error::Misaligned { len: bytes.len() });
        }
        Ok(bytes
            .chunks_exact(BTS_RECORD_SIZE)
            .map(|c| {
                let mut a = [0u8; BTS_RECORD_SIZE];
                a.copy_from_slice(c);
                BtsRecord::from_bytes(&a)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn layout_matches_hardware() {
        assert_eq!(size_of::<BtsRecord>(), BTS_RECORD_SIZE);
        assert_eq!(offset_of!(BtsRecord, from), 0);
        assert_eq!(offset_of!(BtsRecord, to), 8);
        assert_eq!(offset_of!(BtsRecord, flags), 16);
    }

    #[test]
    fn bytes_round_trip() {
        let r = BtsRecord { from: 0x401000, to: 0x7fff_0000_1234, flags: FLAG_PREDICTED };
        let b = r.to_bytes();
        assert_eq!(&b[0..8], &0x401000u64.to_le_bytes());
        assert_eq!(BtsRecord::from_bytes(&b), r);
        assert_eq!(r.kind(), RecordKind::Branch { from: 0x401000, to: 0x7fff_0000_1234, predicted: true });
    }

    #[test]
    fn context_records_use_the_escape_encoding() {
        let r = BtsRecord::context(ContextKind::TaskDeparts, 99, 1234);
        assert_eq!(r.from, 0xffff_ffff_ffff_fff3);
        assert_eq!(r.to, 99);
        assert_eq!(r.flags, 1234);
        assert_eq!(r.kind(), RecordKind::Context { kind: ContextKind::TaskDeparts, clock: 99, pid: 1234 });
        assert!(!r.is_branch());
        // A kernel address that merely looks high is still a branch.
        assert!(BtsRecord::branch(0xffff_ffff_8100_0000, 0x401000).is_branch());
    }

    #[test]
    fn parse_all_rejects_partial_records() {
        assert!(BtsRecord::parse_all(&[0u8; 25]).is_err());
        assert_eq!(BtsRecord::parse_all(&[0u8; 48]).unwrap().len(), 2);
    }
}
