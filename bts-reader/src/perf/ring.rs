//! The perf mmap ring, byte-exact: the header page and the data ring of the
//! legacy BTS event (24-byte samples: header, from, to), read backwards from
//! `data_head` the way GDB reads it, with wrap-around, records split across
//! the end of the ring, `PERF_RECORD_LOST`, and retries while the head moves.

use ds_alloc::BtsRecord;

/// `PERF_RECORD_LOST`.
pub const PERF_RECORD_LOST: u32 = 2;
/// `PERF_RECORD_SAMPLE`.
pub const PERF_RECORD_SAMPLE: u32 = 9;
/// `PERF_RECORD_AUX`.
pub const PERF_RECORD_AUX: u32 = 11;
/// A BTS sample: header (8), ip = from (8), addr = to (8).
pub const BTS_SAMPLE_SIZE: usize = 24;
/// Offsets in the header page (`struct perf_event_mmap_page`).
pub const OFF_VERSION: usize = 0;
/// Offset of `size` in `perf_event_mmap_page`.
pub const OFF_SIZE: usize = 72;
/// Offset of `data_head`.
pub const OFF_DATA_HEAD: usize = 1024;
/// Offset of `data_tail`.
pub const OFF_DATA_TAIL: usize = 1032;
/// Offset of `data_offset`.
pub const OFF_DATA_OFFSET: usize = 1040;
/// Offset of `data_size`.
pub const OFF_DATA_SIZE: usize = 1048;
/// Offset of `aux_head`.
pub const OFF_AUX_HEAD: usize = 1056;
/// Offset of `aux_tail`.
pub const OFF_AUX_TAIL: usize = 1064;
/// Offset of `aux_offset`.
pub const OFF_AUX_OFFSET: usize = 1072;
/// Offset of `aux_size`.
pub const OFF_AUX_SIZE: usize = 1080;

/// Why a ring could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// The header page is too short.
    #[error("the perf header page is {0} bytes; at least 1088 are needed")]
    ShortHeader(usize),
    /// The ring's size is not a power of two.
    #[error("the ring is {0} bytes: not a power of two")]
    BadRingSize(usize),
    /// The kernel kept writing while the ring was read.
    #[error("the ring kept changing while it was read ({0} tries)")]
    Unstable(u32),
}

/// The fields of the header page a reader needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MmapHeader {
    /// `version`.
    pub version: u32,
    /// `size` of the header as the kernel knows it.
    pub size: u32,
    /// Where the kernel writes next in the data ring.
    pub data_head: u64,
    /// What the reader consumed.
    pub data_tail: u64,
    /// Where the data ring starts in the mapping.
    pub data_offset: u64,
    /// The data ring's size.
    pub data_size: u64,
    /// Where the kernel writes next in the AUX area.
    pub aux_head: u64,
    /// What the reader consumed of the AUX area.
    pub aux_tail: u64,
    /// Where the AUX area starts in the file.
    pub aux_offset: u64,
    /// The AUX area's size.
    pub aux_size: u64,
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

impl MmapHeader {
    /// Reads the header page.
    pub fn parse(page: &[u8]) -> Result<MmapHeader, RingError> {
        if page.len() < OFF_AUX_SIZE + 8 {
            return Err(RingError::ShortHeader(page.len()));
        }
        Ok(MmapHeader {
            version: u32_at(page, OFF_VERSION),
            size: u32_at(page, OFF_SIZE),
            data_head: u64_at(page, OFF_DATA_HEAD),
            data_tail: u64_at(page, OFF_DATA_TAIL),
            data_offset: u64_at(page, OFF_DATA_OFFSET),
            data_size: u64_at(page, OFF_DATA_SIZE),
            aux_head: u64_at(page, OFF_AUX_HEAD),
            aux_tail: u64_at(page, OFF_AUX_TAIL),
            aux_offset: u64_at(page, OFF_AUX_OFFSET),
            aux_size: u64_at(page, OFF_AUX_SIZE),
        })
    }
}

/// A ring the kernel writes into: its head and a copy of its bytes.
pub trait RingSource {
    /// `data_head`, read with acquire semantics.
    fn data_head(&self) -> u64;
    /// The ring's bytes now.
    fn copy(&self, out: &mut Vec<u8>);
}

/// What a read of a BTS ring gave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BtsRead {
    /// Oldest first, in hardware layout.
    pub records: Vec<BtsRecord>,
    /// Records the kernel reported lost (PERF_RECORD_LOST).
    pub lost: u64,
    /// Records with a kernel address (filtered later, by the decoder).
    pub kernel: u64,
    /// The read stopped at a record that is neither a sample nor a loss
    /// (garbage or a torn record): older trace, if any, is not returned.
    pub incomplete: bool,
}

/// A kernel address (bit 63 set), as ds-alloc defines it for every source.
pub use ds_alloc::is_kernel_address as is_kernel;

/// The 24 bytes ending at ring offset `end` (1..=size), wrapping.
#[inline]
fn record_before(ring: &[u8], end: usize) -> [u8; BTS_SAMPLE_SIZE] {
    if end >= BTS_SAMPLE_SIZE {
        return ring[end - BTS_SAMPLE_SIZE..end].try_into().expect("24 bytes");
    }
    // Split across the end of the ring: the lower part is at the end.
    let missing = BTS_SAMPLE_SIZE - end;
    let mut out = [0u8; BTS_SAMPLE_SIZE];
    out[..missing].copy_from_slice(&ring[ring.len() - missing..]);
    out[missing..].copy_from_slice(&ring[..end]);
    out
}

#[inline]
fn word(r: &[u8; BTS_SAMPLE_SIZE], at: usize) -> u64 {
    u64::from_le_bytes(r[at..at + 8].try_into().expect("8 bytes"))
}

/// Parses a ring snapshot whose head is `head`.
pub fn parse_bts_ring(ring: &[u8], head: u64) -> Result<BtsRead, RingError> {
    let size = ring.len();
    if size == 0 || !size.is_power_of_two() {
        return Err(RingError::BadRingSize(size));
    }
    let mut out = BtsRead::default();
    let avail = head.min(size as u64) as usize;
    let count = avail / BTS_SAMPLE_SIZE;
    // Filled from the back, so the result is oldest first without a reversal.
    let mut recs = vec![BtsRecord::default(); count];
    let mut next = count;
    // Offset in the ring just past the newest record.
    let mut end = (head % size as u64) as usize;
    if end == 0 && head > 0 {
        end = size;
    }
    for _ in 0..count {
        let r = record_before(ring, end);
        let kind = u32::from_le_bytes(r[0..4].try_into().expect("4"));
        let rsize = u16::from_le_bytes(r[6..8].try_into().expect("2")) as usize;
        if rsize != BTS_SAMPLE_SIZE {
            out.incomplete = true;
            break;
        }
        match kind {
            PERF_RECORD_SAMPLE => {
                let (from, to) = (word(&r, 8), word(&r, 16));
                out.kernel += u64::from(is_kernel(from) | is_kernel(to));
                next -= 1;
                recs[next] = BtsRecord::branch(from, to);
            }
            // id, lost
            PERF_RECORD_LOST => out.lost = out.lost.saturating_add(word(&r, 16)),
            _ => {
                out.incomplete = true;
                break;
            }
        }
        end = if end > BTS_SAMPLE_SIZE { end - BTS_SAMPLE_SIZE } else { end + size - BTS_SAMPLE_SIZE };
    }
    recs.drain(..next);
    out.records = recs;
    Ok(out)
}

/// Reads a live ring: copies it, and tries again if `data_head` moved
/// while copying (the kernel may have overwritten what was being read).
pub fn read_bts_ring(src: &dyn RingSource) -> Result<BtsRead, RingError> {
    const TRIES: u32 = 5;
    let mut buf = Vec::new();
    for _ in 0..TRIES {
        let head = src.data_head();
        src.copy(&mut buf);
        if src.data_head() == head {
            return parse_bts_ring(&buf, head);
        }
    }
    Err(RingError::Unstable(TRIES))
}

/// Events of the data ring of an AUX event, read forwards from 0 to head
/// (records of any size).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuxEvents {
    /// PERF_RECORD_AUX records with PERF_AUX_FLAG_TRUNCATED: trace was lost.
    pub truncated: u64,
    /// PERF_RECORD_AUX records in all.
    pub aux_records: u64,
    /// Records the kernel dropped.
    pub lost: u64,
    /// A record with a bad size ended the scan.
    pub incomplete: bool,
}

/// An AUX record's flag: the data was truncated.
pub const PERF_AUX_FLAG_TRUNCATED: u64 = 0x01;

/// Scans the (unwrapped) data ring of an intel_bts event.
pub fn scan_aux_events(ring: &[u8], head: u64) -> AuxEvents {
    let mut ev = AuxEvents::default();
    let end = (head as usize).min(ring.len());
    let mut pos = 0usize;
    while pos + 8 <= end {
        let kind = u32_at(ring, pos);
        let size = u16::from_le_bytes([ring[pos + 6], ring[pos + 7]]) as usize;
        if size < 8 || pos + size > end {
            ev.incomplete = true;
            break;
        }
        match kind {
            PERF_RECORD_AUX if size >= 32 => {
                ev.aux_records += 1;
                if u64_at(ring, pos + 24) & PERF_AUX_FLAG_TRUNCATED != 0 {
                    ev.truncated += 1;
                }
            }
            PERF_RECORD_LOST if size >= 24 => ev.lost = ev.lost.saturating_add(u64_at(ring, pos + 16)),
            _ => {}
        }
        pos += size;
    }
    ev
}

/// Raw BTS records of an AUX area in snapshot mode. The driver keeps whole
/// records (the tail past the last whole record is padding); `aux_head` is
/// absolute and grows.
pub fn parse_aux_snapshot(aux: &[u8], aux_head: u64) -> (Vec<BtsRecord>, bool) {
    let real = (aux.len() / BTS_SAMPLE_SIZE * BTS_SAMPLE_SIZE) as u64;
    if real == 0 {
        return (Vec::new(), false);
    }
    let wrapped = aux_head > real;
    let count =
        if wrapped { real } else { aux_head - aux_head % BTS_SAMPLE_SIZE as u64 } / BTS_SAMPLE_SIZE as u64;
    let head = aux_head % real;
    let head = head - head % BTS_SAMPLE_SIZE as u64;
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..count {
        let back = (count - i) * BTS_SAMPLE_SIZE as u64;
        let at = ((head + real - back % real) % real) as usize;
        let b: [u8; 24] = aux[at..at + 24].try_into().expect("24 bytes");
        out.push(BtsRecord::from_bytes(&b));
    }
    (out, wrapped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::mem::offset_of;

    use perf_event_open_sys::bindings::perf_event_mmap_page;

    #[test]
    fn header_page_offsets_match_the_kernel() {
        assert_eq!(offset_of!(perf_event_mmap_page, version), OFF_VERSION);
        assert_eq!(offset_of!(perf_event_mmap_page, size), OFF_SIZE);
        assert_eq!(offset_of!(perf_event_mmap_page, data_head), OFF_DATA_HEAD);
        assert_eq!(offset_of!(perf_event_mmap_page, data_tail), OFF_DATA_TAIL);
        assert_eq!(offset_of!(perf_event_mmap_page, data_offset), OFF_DATA_OFFSET);
        assert_eq!(offset_of!(perf_event_mmap_page, data_size), OFF_DATA_SIZE);
        assert_eq!(offset_of!(perf_event_mmap_page, aux_head), OFF_AUX_HEAD);
        assert_eq!(offset_of!(perf_event_mmap_page, aux_tail), OFF_AUX_TAIL);
        assert_eq!(offset_of!(perf_event_mmap_page, aux_offset), OFF_AUX_OFFSET);
        assert_eq!(offset_of!(perf_event_mmap_page, aux_size), OFF_AUX_SIZE);
        assert_eq!(std::mem::size_of::<perf_event_open_sys::bindings::perf_event_header>(), 8);
    }

    struct Moving {
        heads: Vec<u64>,
        calls: Cell<usize>,
        ring: Vec<u8>,
        later: Vec<u8>,
    }

    impl RingSource for Moving {
        fn data_head(&self) -> u64 {
            let i = self.calls.get();
            self.calls.set(i + 1);
            self.heads[i.min(self.heads.len() - 1)]
        }
        fn copy(&self, out: &mut Vec<u8>) {
            out.clear();
            out.extend_from_slice(if self.calls.get() <= 1 { &self.ring } else { &self.later });
        }
    }

    fn sample(from: u64, to: u64) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&PERF_RECORD_SAMPLE.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&24u16.to_le_bytes());
        b.extend_from_slice(&from.to_le_bytes());
        b.extend_from_slice(&to.to_le_bytes());
        b
    }

    #[test]
    fn head_moving_during_a_read_is_retried() {
        let mut ring = vec![0u8; 64];
        ring[..24].copy_from_slice(&sample(1, 2));
        let mut later = ring.clone();
        later[24..48].copy_from_slice(&sample(3, 4));
        let src = Moving { heads: vec![24, 48, 48, 48], calls: Cell::new(0), ring, later };
        let r = read_bts_ring(&src).unwrap();
        assert_eq!(r.records, vec![BtsRecord::branch(1, 2), BtsRecord::branch(3, 4)]);
        let never = Moving {
            heads: (0..20).map(|i| i * 24).collect(),
            calls: Cell::new(0),
            ring: vec![0; 64],
            later: vec![0; 64],
        };
        assert_eq!(read_bts_ring(&never), Err(RingError::Unstable(5)));
    }

    #[test]
    fn aux_snapshot_unwrapped_and_wrapped() {
        let mut aux = vec![0u8; 100]; // 4 whole records and 4 bytes of padding
        for (i, r) in (0..4u64).map(|i| BtsRecord::branch(i, i + 10)).enumerate() {
            aux[i * 24..i * 24 + 24].copy_from_slice(&r.to_bytes());
        }
        let (recs, wrapped) = parse_aux_snapshot(&aux, 48);
        assert!(!wrapped);
        assert_eq!(recs, vec![BtsRecord::branch(0, 10), BtsRecord::branch(1, 11)]);
        // Written 6 records: slots 0,1 hold records 4,5; slots 2,3 hold 2,3.
        aux[0..24].copy_from_slice(&BtsRecord::branch(4, 14).to_bytes());
        aux[24..48].copy_from_slice(&BtsRecord::branch(5, 15).to_bytes());
        let (recs, wrapped) = parse_aux_snapshot(&aux, 6 * 24);
        assert!(wrapped);
        let froms: Vec<u64> = recs.iter().map(|r| r.from).collect();
        assert_eq!(froms, vec![2, 3, 4, 5]);
    }
}
