//! The perf buffers built byte for byte as the kernel lays them out, and
//! read back: wrapped data, a record split across the end, lost records,
//! kernel addresses, a moving head, garbage.

use std::cell::{Cell, RefCell};

use bts_reader::perf::ring::{
    self, parse_aux_snapshot, parse_bts_ring, read_bts_ring, scan_aux_events, MmapHeader, RingSource,
    PERF_RECORD_AUX, PERF_RECORD_LOST, PERF_RECORD_SAMPLE,
};
use ds_alloc::BtsRecord;

/// A ring as the kernel writes it: records appended at `head`, wrapping.
struct KernelRing {
    data: Vec<u8>,
    head: u64,
}

impl KernelRing {
    fn new(size: usize) -> Self {
        KernelRing { data: vec![0; size], head: 0 }
    }
    fn put(&mut self, bytes: &[u8]) {
        let size = self.data.len() as u64;
        for (i, b) in bytes.iter().enumerate() {
            self.data[((self.head + i as u64) % size) as usize] = *b;
        }
        self.head += bytes.len() as u64;
    }
    fn header(kind: u32, size: u16) -> Vec<u8> {
        let mut h = kind.to_le_bytes().to_vec();
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(&size.to_le_bytes());
        h
    }
    fn sample(&mut self, from: u64, to: u64) {
        let mut b = Self::header(PERF_RECORD_SAMPLE, 24);
        b.extend_from_slice(&from.to_le_bytes());
        b.extend_from_slice(&to.to_le_bytes());
        self.put(&b);
    }
    fn lost(&mut self, n: u64) {
        let mut b = Self::header(PERF_RECORD_LOST, 24);
        b.extend_from_slice(&0x55u64.to_le_bytes()); // id
        b.extend_from_slice(&n.to_le_bytes());
        self.put(&b);
    }
    /// The header page with this ring's head, as the kernel fills it.
    fn header_page(&self) -> Vec<u8> {
        let mut p = vec![0u8; 4096];
        p[ring::OFF_SIZE..ring::OFF_SIZE + 4].copy_from_slice(&1088u32.to_le_bytes());
        p[ring::OFF_DATA_HEAD..ring::OFF_DATA_HEAD + 8].copy_from_slice(&self.head.to_le_bytes());
        p[ring::OFF_DATA_OFFSET..ring::OFF_DATA_OFFSET + 8].copy_from_slice(&4096u64.to_le_bytes());
        p[ring::OFF_DATA_SIZE..ring::OFF_DATA_SIZE + 8]
            .copy_from_slice(&(self.data.len() as u64).to_le_bytes());
        p
    }
}

fn br(i: u64) -> BtsRecord {
    BtsRecord::branch(0x400000 + i * 16, 0x500000 + i * 16)
}

#[test]
fn unwrapped_ring_through_the_header_page() {
    let mut k = KernelRing::new(4096);
    for i in 0..5 {
        k.sample(br(i).from, br(i).to);
    }
    let hdr = MmapHeader::parse(&k.header_page()).unwrap();
    assert_eq!((hdr.data_head, hdr.data_offset, hdr.data_size), (120, 4096, 4096));
    let r = parse_bts_ring(&k.data, hdr.data_head).unwrap();
    assert_eq!(r.records, (0..5).map(br).collect::<Vec<_>>());
    assert_eq!((r.lost, r.kernel, r.incomplete), (0, 0, false));
    assert!(MmapHeader::parse(&[0u8; 1000]).is_err());
}

#[test]
fn wrapped_ring_with_a_record_split_across_the_end() {
    let mut k = KernelRing::new(4096);
    for i in 0..200 {
        k.sample(br(i).from, br(i).to);
    }
    assert_eq!(k.head, 4800);
    // Record 170 sits at 4080..4104: header and `from` at the end, `to` at the start.
    assert_eq!(&k.data[4080..4084], &PERF_RECORD_SAMPLE.to_le_bytes());
    assert_eq!(&k.data[4088..4096], &br(170).from.to_le_bytes());
    assert_eq!(&k.data[0..8], &br(170).to.to_le_bytes());
    let r = parse_bts_ring(&k.data, k.head).unwrap();
    // 4096 bytes hold 170 whole records: 30..199.
    assert_eq!(r.records.len(), 170);
    assert_eq!(r.records.first(), Some(&br(30)));
    assert_eq!(r.records.last(), Some(&br(199)));
    assert!(r.records.contains(&br(170)));
    assert!(!r.incomplete);
}

#[test]
fn lost_records_are_counted_and_kernel_records_kept() {
    let mut k = KernelRing::new(8192);
    k.sample(1, 2);
    k.lost(7);
    k.sample(0xffff_ffff_8100_0000, 0x401000); // an interrupt leaking a kernel address
    k.lost(3);
    k.sample(3, 4);
    let r = parse_bts_ring(&k.data, k.head).unwrap();
    assert_eq!(r.lost, 10);
    assert_eq!(r.kernel, 1);
    assert_eq!(
        r.records,
        vec![
            BtsRecord::branch(1, 2),
            BtsRecord::branch(0xffff_ffff_8100_0000, 0x401000),
            BtsRecord::branch(3, 4)
        ]
    );
}

#[test]
fn huge_loss_counts_saturate() {
    // Found by the fuzzer: two losses summing past u64::MAX.
    let mut k = KernelRing::new(4096);
    k.lost(u64::MAX);
    k.lost(5);
    let r = parse_bts_ring(&k.data, k.head).unwrap();
    assert_eq!(r.lost, u64::MAX);
    assert_eq!(scan_aux_events(&k.data, k.head).lost, u64::MAX);
}

#[test]
fn a_garbage_record_size_stops_the_read_with_the_newer_records() {
    let mut k = KernelRing::new(4096);
    k.sample(1, 2);
    let mut garbage = KernelRing::header(PERF_RECORD_SAMPLE, 40);
    garbage.extend_from_slice(&[0xab; 16]);
    k.put(&garbage);
    k.sample(3, 4);
    k.sample(5, 6);
    let r = parse_bts_ring(&k.data, k.head).unwrap();
    assert!(r.incomplete);
    assert_eq!(r.records, vec![BtsRecord::branch(3, 4), BtsRecord::branch(5, 6)]);
    // An unknown record type stops it too.
    let mut k = KernelRing::new(4096);
    k.sample(1, 2);
    let mut other = KernelRing::header(99, 24);
    other.extend_from_slice(&[0; 16]);
    k.put(&other);
    k.sample(3, 4);
    let r = parse_bts_ring(&k.data, k.head).unwrap();
    assert!(r.incomplete);
    assert_eq!(r.records, vec![BtsRecord::branch(3, 4)]);
    assert!(parse_bts_ring(&[0u8; 1000], 24).is_err(), "not a power of two");
}

/// A ring the "kernel" keeps writing into while the first read copies it.
struct Busy {
    ring: RefCell<KernelRing>,
    reads: Cell<u32>,
}

impl RingSource for Busy {
    fn data_head(&self) -> u64 {
        self.ring.borrow().head
    }
    fn copy(&self, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.ring.borrow().data);
        let n = self.reads.get();
        self.reads.set(n + 1);
        if n == 0 {
            // The kernel wrote more (and overwrote the oldest) during the copy.
            let mut k = self.ring.borrow_mut();
            for i in 1000..1010 {
                k.sample(br(i).from, br(i).to);
            }
        }
    }
}

#[test]
fn data_head_moving_during_a_read_is_read_again() {
    let mut k = KernelRing::new(4096);
    for i in 0..180 {
        k.sample(br(i).from, br(i).to);
    }
    let src = Busy { ring: RefCell::new(k), reads: Cell::new(0) };
    let r = read_bts_ring(&src).unwrap();
    assert_eq!(src.reads.get(), 2, "the first copy was discarded");
    assert_eq!(r.records.last(), Some(&br(1009)));
    assert_eq!(r.records.len(), 170);
}

#[test]
fn intel_bts_aux_snapshot_and_truncation() {
    // AUX area of 2 pages: 341 whole records, 8 bytes of padding.
    let mut aux = vec![0u8; 8192];
    let real = 8192 / 24 * 24;
    let total = 400u64; // wrapped once
    for i in 0..total {
        let at = (i as usize * 24) % real;
        aux[at..at + 24].copy_from_slice(&br(i).to_bytes());
    }
    let (recs, wrapped) = parse_aux_snapshot(&aux, total * 24);
    assert!(wrapped);
    assert_eq!(recs.len(), 341);
    assert_eq!(recs.first(), Some(&br(400 - 341)));
    assert_eq!(recs.last(), Some(&br(399)));
    // The data ring: two PERF_RECORD_AUX, one truncated, and a loss.
    let mut data = KernelRing::new(4096);
    for flags in [0u64, 1] {
        let mut b = KernelRing::header(PERF_RECORD_AUX, 32);
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&8192u64.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        data.put(&b);
    }
    data.lost(2);
    let ev = scan_aux_events(&data.data, data.head);
    assert_eq!((ev.aux_records, ev.truncated, ev.lost, ev.incomplete), (2, 1, 2, false));
    // A zero-size record cannot loop forever.
    let mut bad = KernelRing::new(4096);
    bad.put(&KernelRing::header(PERF_RECORD_AUX, 0));
    assert!(scan_aux_events(&bad.data, 64).incomplete);
}
