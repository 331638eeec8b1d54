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
    // bts info counts every record, a section at a time.
    let info = bts(&dir, &["info", "--json", "big.bts"]);
    assert!(info.status.success(), "{}", text(&info.stderr));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["branches"], RECORDS);
    let bytes: u64 = info["sections"].as_array().unwrap().iter().map(|s| s["bytes"].as_u64().unwrap()).sum();
    assert_eq!(bytes, size, "the sections add up to the file");
    let peak = children_peak_kib().max(before);
    eprintln!("bts cut --last 1000, bts info: peak RSS {peak} KiB on a {size}-byte trace");
    assert!(peak < 150 * 1024, "bts cut or info peaked at {peak} KiB on a {size}-byte trace");

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
    let tail = common::loop_trace::write_loop_trace(&big, 42, N, 1000);
    let (code, module) = common::loop_trace::loop_image(42);
    use common::loop_trace::LAST_PC;
    // In process: the index, then the last entries; the peak read after.
    let (tf, extents) = bts_reader::tracestream::scan(&big, true).unwrap();
    let imgs = analysis::model::images(&tf);
    let img = imgs.get(&(42, 1));
    let f = std::fs::File::open(&big).unwrap();
    let mut src = bts_reader::tracestream::StreamAt::new(f, extents[0].data, extents[0].count);
    let index = build_index(&mut src, img, false, Some(LAST_PC), &mut |_, _| {}).unwrap();
    let total = index.entries;
    assert!(total > N, "{total} entries");
    // The same range, decoded in full from the tail's own records.
    let mut small = TraceFile::default();
    small.meta.pid = 42;
    small.modules.push(module.clone());
    small.code.push(code.clone());
    small.streams.push(bts_reader::Stream {
        kind: StreamKind::Thread { pid: 42, generation: 1, tid: 42, crashed: true, last_pc: Some(LAST_PC) },
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
    entries(&mut src, &index, img, Some(LAST_PC), shift + 1, total, &mut |e| got.push(*e)).unwrap();
    // The call history's way: its index, then the last segments from the
    // checkpoint before them, against the full decode of the tail.
    let calls_index =
        analysis::callstream::build_call_index(&mut src, img, false, Some(LAST_PC), &mut |_, _| {}).unwrap();
    let last_segments = {
        let mut c =
            Collect { lo: calls_index.segments - 99, min_level: calls_index.min_level, got: Vec::new() };
        analysis::callstream::calls(&mut src, &calls_index, img, Some(LAST_PC), c.lo, &mut c).unwrap();
        c.got
    };
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
    let seg_shift = calls_index.segments - full.segments.len() as u64;
    let want_segments: Vec<_> = full.segments[full.segments.len() - 100..]
        .iter()
        .map(|s| {
            let idx = |i: Option<usize>| i.map(|i| i + seg_shift as usize);
            (
                s.number + seg_shift as usize,
                s.level,
                s.insn_begin + shift,
                s.insn_end + shift,
                idx(s.up),
                idx(s.prev),
            )
        })
        .collect();
    assert_eq!(last_segments, want_segments);
    assert_eq!(want_segments.last().unwrap().3, total, "the last segment ends at the last instruction");
    // The CLI: the last lines, with the current instruction, in bounded memory.
    let out = bts(&dir, &["history", "loop.bts"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines = text(&out.stdout);
    assert!(lines.lines().last().unwrap().starts_with(&format!("{total}\t=> {LAST_PC:#018x}")), "{lines}");
    assert_eq!(lines.lines().count(), 10);
    assert!(dir.join("loop.bts.idx").exists(), "the index is kept beside the trace");
    let again = bts(&dir, &["history", "loop.bts", &format!("{},+5", total - 200)]);
    assert_eq!(text(&again.stdout).lines().count(), 5);
    // The report reads the newest records only.
    let report = bts(&dir, &["last-branch", "loop.bts"]);
    let rtext = text(&report.stdout) + &text(&report.stderr);
    assert!(report.status.success(), "{rtext}");
    assert!(rtext.contains("Last 16 branches of thread 42 (crashed)"), "{rtext}");
    // The records it did not read are in the trace, not lost.
    assert!(rtext.contains(&format!("({} older in the trace, 0 lost before it)", N - 16)), "{rtext}");
    // The call history and the exports, in bounded memory too.
    let calls = text(&bts(&dir, &["history", "loop.bts", "--calls", "--insn-range"]).stdout);
    let last = calls.lines().last().unwrap().to_string();
    assert!(last.starts_with(&format!("{}\t??\tinst ", calls_index.segments)), "{calls}");
    assert!(last.ends_with(&format!(",{total}")), "{calls}");
    let json = bts(
        &dir,
        &[
            "history",
            "loop.bts",
            "--calls",
            "--json",
            &format!("{},{}", calls_index.segments - 9999, calls_index.segments),
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let items = v["calls"].as_array().unwrap();
    assert_eq!(items.len(), 10000);
    assert_eq!(items.last().unwrap()["number"], calls_index.segments);
    let folded = bts(&dir, &["export", "--format", "folded", "loop.bts"]);
    assert!(folded.status.success(), "{}", text(&folded.stderr));
    let weights: u64 =
        text(&folded.stdout).lines().map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap()).sum();
    assert_eq!(weights, total, "folded weights add up to every instruction");
    let peak = children_peak_kib();
    eprintln!("bts history (instructions, calls), last-branch, export: peak RSS {peak} KiB");
    assert!(peak < 150 * 1024, "bts history, last-branch or export peaked at {peak} KiB");
    std::fs::remove_file(&big).unwrap();
}

/// A segment as (number, level, first and last instruction, up, prev).
type Shape = (usize, i32, u64, u64, Option<usize>, Option<usize>);

/// Segments `lo..`.
struct Collect {
    lo: u64,
    min_level: i32,
    got: Vec<Shape>,
}

impl analysis::callstream::CallSink for Collect {
    fn event(&mut self, e: decode::calls::CallEvent<'_>) -> bool {
        if let decode::calls::CallEvent::Closed { segment: s, .. } = e {
            if s.number as u64 >= self.lo {
                self.got.push((s.number, s.level - self.min_level, s.insn_begin, s.insn_end, s.up, s.prev));
            }
        }
        true
    }
}
