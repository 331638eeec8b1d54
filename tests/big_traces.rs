//! Trace tools on a trace of several GiB, made by the test and removed
//! after: `bts cut` keeps to bounded memory (its peak RSS is read from the
//! kernel) and its output is the right records, a valid trace.

mod common;
use common::*;

use std::io::BufWriter;

use bts_reader::tracestream::TraceWriter;
use bts_reader::{Meta, StreamHeader, StreamKind, TraceFile};
use ds_alloc::BtsRecord;

/// Records of the generated trace: 2.4 GB of them.
const RECORDS: u64 = 100_000_000;

fn record(i: u64) -> BtsRecord {
    BtsRecord::branch(0x401000 + (i % 4096) * 4, 0x402000 + (i % 977) * 8)
}

/// The peak RSS of the largest child this process has waited for, in KiB.
fn children_peak_kib() -> i64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    ru.ru_maxrss
}

#[test]
fn cutting_a_multi_gib_trace_takes_bounded_memory() {
    let dir = scratch("big_cut");
    let big = dir.join("big.bts");
    {
        let meta = Meta {
            command: vec!["generated".into()],
            pid: 42,
            outcome: "exit".into(),
            code: Some(0),
            ..Meta::default()
        };
        let f = std::fs::File::create(&big).unwrap();
        let mut w = TraceWriter::new(BufWriter::with_capacity(1 << 20, f), &meta, &[]).unwrap();
        let kind =
            StreamKind::Thread { pid: 42, generation: 1, tid: 42, crashed: false, last_pc: Some(0x401000) };
        w.begin_stream(&StreamHeader { kind, capacity: RECORDS, overwritten: 7, lost: 0, count: RECORDS })
            .unwrap();
        let mut chunk = Vec::with_capacity(1 << 16);
        for i in 0..RECORDS {
            chunk.push(record(i));
            if chunk.len() == chunk.capacity() {
                w.records(&chunk).unwrap();
                chunk.clear();
            }
        }
        w.records(&chunk).unwrap();
        w.finish().unwrap();
    }
    let size = std::fs::metadata(&big).unwrap().len();
    assert!(size > 2 << 30, "a trace of {size} bytes");

    let before = children_peak_kib();
    let out = bts(&dir, &["cut", "big.bts", "--last", "1000", "-o", "small.bts"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let peak = children_peak_kib().max(before);
    eprintln!("bts cut --last 1000: peak RSS {peak} KiB on a {size}-byte trace");
    assert!(peak < 150 * 1024, "bts cut peaked at {peak} KiB on a {size}-byte trace");

    let small = TraceFile::read(&dir.join("small.bts")).unwrap();
    assert_eq!(small.streams.len(), 1);
    let s = &small.streams[0];
    let want: Vec<BtsRecord> = (RECORDS - 1000..RECORDS).map(record).collect();
    assert_eq!(s.records, want);
    assert_eq!(s.overwritten, 7 + RECORDS - 1000, "what was cut off counts as overwritten");
    let _ = std::fs::remove_dir_all(&dir);
}
