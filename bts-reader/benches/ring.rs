//! Ring parsing throughput: wrapped perf rings of BTS samples, built as the
//! kernel writes them, parsed whole, for a ring that fits the caches (1 MiB,
//! GDB's default is 64 KiB) and one that does not (64 MiB).
//! Goal: >= 100M records/s. Run: `cargo bench -p bts-reader --bench ring`.

use std::time::Instant;

use bts_reader::perf::ring::{parse_aux_snapshot, parse_bts_ring, PERF_RECORD_SAMPLE};

fn main() {
    for size in [1 << 20, 64 << 20] {
        bench(size);
    }
}

fn bench(size: usize) {
    let mut ring = vec![0u8; size];
    let total = (size / 24 + 1000) as u64; // wrapped, with a split record
    let mut head = 0u64;
    for i in 0..total {
        let mut rec = [0u8; 24];
        rec[..4].copy_from_slice(&PERF_RECORD_SAMPLE.to_le_bytes());
        rec[6..8].copy_from_slice(&24u16.to_le_bytes());
        rec[8..16].copy_from_slice(&(0x400000 + i).to_le_bytes());
        rec[16..24].copy_from_slice(&(0x500000 + i).to_le_bytes());
        for (k, b) in rec.iter().enumerate() {
            ring[((head + k as u64) % size as u64) as usize] = *b;
        }
        head += 24;
    }
    let rounds = (256 << 20) / size;
    let mut n = 0;
    let t0 = Instant::now();
    for _ in 0..rounds {
        n += parse_bts_ring(std::hint::black_box(&ring), head).expect("parses").records.len();
    }
    let s = t0.elapsed().as_secs_f64();
    println!(
        "{:>3} MiB perf ring (BTS event):   {n:>9} records in {s:.3} s: {:>11.0} records/s",
        size >> 20,
        n as f64 / s
    );
    let mut n = 0;
    let t0 = Instant::now();
    for _ in 0..rounds {
        n += parse_aux_snapshot(std::hint::black_box(&ring), head).0.len();
    }
    let s = t0.elapsed().as_secs_f64();
    println!(
        "{:>3} MiB AUX snapshot (intel_bts): {n:>9} records in {s:.3} s: {:>11.0} records/s",
        size >> 20,
        n as f64 / s
    );
}
