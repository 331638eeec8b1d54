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

/// The last entries of the history of a trace of about 1 GB, decoded from
/// its index in bounded memory, are what a full decode of its tail gives;
/// `bts history` prints them in bounded memory too.
#[test]
fn the_end_of_a_huge_history_is_decoded_in_bounded_memory() {
    use analysis::stream::{build_index, entries};
    const N: u64 = 40_000_000;
    let dir = scratch("big_history");
    let big = dir.join("loop.bts");
    let tail = common::loop_trace::write_loop_trace(&big, 42, N, 500);
    let (code, module) = common::loop_trace::loop_image(42);
    // In process: the index, then the last entries; the peak read after.
    let (tf, extents) = bts_reader::tracestream::scan(&big, true).unwrap();
    let imgs = analysis::model::images(&tf);
    let img = imgs.get(&(42, 1));
    let f = std::fs::File::open(&big).unwrap();
    let mut src = bts_reader::tracestream::StreamAt::new(f, extents[0].data, extents[0].count);
    let index = build_index(&mut src, img, false, Some(0x1001)).unwrap();
    let total = index.entries;
    assert!(total > N, "{total} entries");
    // The same range, decoded in full from the tail's own records.
    let mut small = TraceFile::default();
    small.meta.pid = 42;
    small.modules.push(module.clone());
    small.code.push(code.clone());
    small.streams.push(bts_reader::Stream {
        kind: StreamKind::Thread { pid: 42, generation: 1, tid: 42, crashed: true, last_pc: Some(0x1001) },
        capacity: tail.len() as u64,
        overwritten: 0,
        lost: 0,
        records: tail,
    });
    let simgs = analysis::model::images(&small);
    let full = analysis::timeline::analyze(&small.streams[0], simgs.get(&(42, 1)), false, &mut |_, _| {});
    let shift = total - full.entries.len() as u64;
    let want: Vec<_> = full
        .entries
        .iter()
        .map(|e| match *e {
            analysis::timeline::Entry::Insn { number, addr, current } => {
                analysis::timeline::Entry::Insn { number: number + shift, addr, current }
            }
            analysis::timeline::Entry::Gap { number, kind, at } => {
                analysis::timeline::Entry::Gap { number: number + shift, kind, at }
            }
        })
        .collect();
    // The index's way: from the point before, only the range.
    let mut got = Vec::new();
    entries(&mut src, &index, img, Some(0x1001), shift + 1, total, &mut |e| got.push(*e)).unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    eprintln!("in-process peak RSS after indexing and decoding {N} records: {peak_kib} KiB");
    assert!(peak_kib < 150 * 1024, "peak RSS {peak_kib} KiB after decoding a trace of {N} records");
    assert!(want.len() > 900, "{}", want.len());
    let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
    assert!(
        got.len() == want.len() && first_diff.is_none(),
        "{} entries against {}; first difference at {first_diff:?}: {:?} / {:?}",
        got.len(),
        want.len(),
        first_diff.map(|i| got[i]),
        first_diff.map(|i| want[i])
    );
    // The CLI: the last lines, with the current instruction, in bounded memory.
    let out = bts(&dir, &["history", "loop.bts"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines = text(&out.stdout);
    assert!(lines.lines().last().unwrap().starts_with(&format!("{total}\t=> 0x0000000000001001")), "{lines}");
    assert_eq!(lines.lines().count(), 10);
    assert!(dir.join("loop.bts.idx").exists(), "the index is kept beside the trace");
    let again = bts(&dir, &["history", "loop.bts", &format!("{},+5", total - 200)]);
    assert_eq!(text(&again.stdout).lines().count(), 5);
    // The report reads the newest records only.
    let report = bts(&dir, &["last-branch", "loop.bts"]);
    let rtext = text(&report.stdout) + &text(&report.stderr);
    assert!(report.status.success(), "{rtext}");
    assert!(rtext.contains("Last 16 branches of thread 42 (crashed)"), "{rtext}");
    let peak = children_peak_kib();
    eprintln!("bts history and last-branch: peak RSS {peak} KiB");
    assert!(peak < 150 * 1024, "bts history or last-branch peaked at {peak} KiB");
    std::fs::remove_file(&big).unwrap();
}
