//! The perf ring and AUX parsers on arbitrary bytes: never a panic.
#![no_main]

use bts_reader::perf::ring;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let head = u64::from_le_bytes(data[..8].try_into().unwrap());
    let body = &data[8..];
    // The largest power-of-two prefix is the ring.
    if !body.is_empty() {
        let size = 1usize << (usize::BITS - 1 - body.len().leading_zeros());
        let _ = ring::parse_bts_ring(&body[..size], head);
    }
    let _ = ring::parse_bts_ring(body, head);
    let _ = ring::parse_aux_snapshot(body, head);
    let _ = ring::scan_aux_events(body, head);
    let _ = ring::MmapHeader::parse(body);
    for fmt in [0u8, 1, 2, 3, 4] {
        let _ = ds_alloc::PebsRecord::parse_all(ds_alloc::PebsFormat::from_caps(fmt), body);
    }
});
