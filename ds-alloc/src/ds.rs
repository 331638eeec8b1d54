//! The 64-bit Debug Store save area and the DEBUGCTL bits that drive BTS.

/// DEBUGCTL MSR bits.
pub mod debugctl {
    /// Last branch records on.
    pub const LBR: u64 = 1 << 0;
    /// Single-step on branches.
    pub const BTF: u64 = 1 << 1;
    /// Branch trace messages on.
    pub const TR: u64 = 1 << 6;
    /// Branch trace messages go to the BTS buffer.
    pub const BTS: u64 = 1 << 7;
    /// Interrupt when the BTS buffer reaches its threshold.
    pub const BTINT: u64 = 1 << 8;
    /// No BTS records in ring 0.
    pub const BTS_OFF_OS: u64 = 1 << 9;
    /// No BTS records above ring 0.
    pub const BTS_OFF_USR: u64 = 1 << 10;
}

/// Number of PEBS counter-reset slots in the save area.
pub const PEBS_COUNTERS: usize = 8;

/// The 64-bit DS save area, as the hardware reads it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DsArea {
    /// The first byte of the BTS buffer.
    pub bts_buffer_base: u64,
    /// Where the next BTS record goes.
    pub bts_index: u64,
    /// One past the last byte of the BTS buffer.
    pub bts_absolute_maximum: u64,
    /// The BTS index at which an interrupt is raised.
    pub bts_interrupt_threshold: u64,
    /// The first byte of the PEBS buffer.
    pub pebs_buffer_base: u64,
    /// Where the next PEBS record goes.
    pub pebs_index: u64,
    /// One past the last byte of the PEBS buffer.
    pub pebs_absolute_maximum: u64,
    /// The PEBS index at which an interrupt is raised.
    pub pebs_interrupt_threshold: u64,
    /// Each counter's reset value after a PEBS record.
    pub pebs_counter_reset: [u64; PEBS_COUNTERS],
}

impl DsArea {
    /// A BTS configuration for a buffer of `bytes` at `base`: circular
    /// (threshold beyond the maximum), never interrupting.
    pub fn circular_bts(base: u64, bytes: u64) -> DsArea {
        DsArea {
            bts_buffer_base: base,
            bts_index: base,
            bts_absolute_maximum: base + bytes,
            bts_interrupt_threshold: base + bytes + crate::BTS_RECORD_SIZE as u64,
            ..DsArea::default()
        }
    }

    /// True if BTS writes wrap around instead of interrupting.
    pub fn bts_is_circular(&self) -> bool {
        self.bts_interrupt_threshold > self.bts_absolute_maximum
    }

    /// The 64-bit save area's bytes.
    pub fn to_bytes(&self) -> [u8; 128] {
        let mut out = [0u8; 128];
        let words = [
            self.bts_buffer_base,
            self.bts_index,
            self.bts_absolute_maximum,
            self.bts_interrupt_threshold,
            self.pebs_buffer_base,
            self.pebs_index,
            self.pebs_absolute_maximum,
            self.pebs_interrupt_threshold,
        ];
        for (i, w) in words.iter().chain(self.pebs_counter_reset.iter()).enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Reads the 128-byte save area.
    pub fn from_bytes(b: &[u8; 128]) -> DsArea {
        let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        let mut reset = [0u64; PEBS_COUNTERS];
        for (i, r) in reset.iter_mut().enumerate() {
            *r = w(8 + i);
        }
        DsArea {
            bts_buffer_base: w(0),
            bts_index: w(1),
            bts_absolute_maximum: w(2),
            bts_interrupt_threshold: w(3),
            pebs_buffer_base: w(4),
            pebs_index: w(5),
            pebs_absolute_maximum: w(6),
            pebs_interrupt_threshold: w(7),
            pebs_counter_reset: reset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn save_area_layout() {
        assert_eq!(offset_of!(DsArea, bts_buffer_base), 0x00);
        assert_eq!(offset_of!(DsArea, bts_index), 0x08);
        assert_eq!(offset_of!(DsArea, bts_absolute_maximum), 0x10);
        assert_eq!(offset_of!(DsArea, bts_interrupt_threshold), 0x18);
        assert_eq!(offset_of!(DsArea, pebs_buffer_base), 0x20);
        assert_eq!(offset_of!(DsArea, pebs_index), 0x28);
        assert_eq!(offset_of!(DsArea, pebs_absolute_maximum), 0x30);
        assert_eq!(offset_of!(DsArea, pebs_interrupt_threshold), 0x38);
        assert_eq!(offset_of!(DsArea, pebs_counter_reset), 0x40);
        assert_eq!(size_of::<DsArea>(), 0x40 + 8 * PEBS_COUNTERS);
    }

    #[test]
    fn circular_configuration_round_trips() {
        let ds = DsArea::circular_bts(0x1000, 24 * 100);
        assert!(ds.bts_is_circular());
        let b = ds.to_bytes();
        assert_eq!(&b[0x10..0x18], &(0x1000u64 + 2400).to_le_bytes());
        assert_eq!(DsArea::from_bytes(&b), ds);
        assert_eq!(debugctl::BTS | debugctl::TR, 0xc0);
        assert_eq!(debugctl::BTS_OFF_OS, 0x200);
    }
}
