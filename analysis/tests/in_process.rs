//! The analysis driven in process, on trace files built in memory: no
//! recorder, no CLI.

use analysis::export;
use analysis::model::{image_of, images};
use analysis::report::{Report, Selection};
use analysis::select;
use analysis::timeline::analyze;
use bts_reader::{CodeRange, Meta, Stream, StreamKind, TraceFile};
use ds_alloc::BtsRecord;

const PID: i32 = 100;

/// main at 0x1000: `call f` (f at 0x1010), then an int3 the thread stands
/// at; f: `nop; ret`.
fn code() -> Vec<u8> {
    let mut c = vec![0x90u8; 0x20];
    c[0..5].copy_from_slice(&[0xe8, 0x0b, 0x00, 0x00, 0x00]); // call 0x1010
    c[5] = 0xcc; // where the thread stands at the end
    c[0x10] = 0x90; // nop
    c[0x11] = 0xc3; // ret
    c
}

fn thread(tid: i32, crashed: bool, records: Vec<BtsRecord>) -> Stream {
    Stream {
        kind: StreamKind::Thread { pid: PID, generation: 0, tid, crashed, last_pc: Some(0x1005) },
        capacity: 100,
        overwritten: 0,
        lost: 0,
        records,
    }
}

fn trace(crashed_tid: Option<i32>) -> TraceFile {
    let calls = vec![BtsRecord::branch(0x1000, 0x1010), BtsRecord::branch(0x1011, 0x1005)];
    TraceFile {
        meta: Meta {
            command: vec!["prog".into()],
            pid: PID,
            backend: "fast".into(),
            outcome: "signal".into(),
            signal: Some(11),
            signal_name: Some("SIGSEGV".into()),
            tid: crashed_tid,
            pc: Some(0x1005),
            ..Meta::default()
        },
        modules: Vec::new(),
        streams: vec![
            thread(PID, crashed_tid == Some(PID), calls.clone()),
            thread(PID + 1, crashed_tid == Some(PID + 1), calls),
        ],
        code: vec![CodeRange { pid: PID, generation: 0, addr: 0x1000, bytes: code() }],
        states: Vec::new(),
    }
}

fn tid_of(s: &Stream) -> i32 {
    match s.kind {
        StreamKind::Thread { tid, .. } => tid,
        StreamKind::Cpu { .. } => -1,
    }
}

#[test]
fn the_crashed_thread_is_the_one_shown_else_the_main_thread() {
    let tf = trace(Some(PID + 1));
    assert_eq!(tid_of(select::one_thread(&tf, None).unwrap()), PID + 1);
    assert_eq!(tid_of(select::one_thread(&tf, Some(PID)).unwrap()), PID);
    assert_eq!(select::one_thread(&tf, Some(7)).unwrap_err(), analysis::Error::NoSuchThread { tid: 7 });
    let tf = trace(None);
    assert_eq!(tid_of(select::one_thread(&tf, None).unwrap()), PID);
    assert_eq!(select::report_streams(&tf, None, None).len(), 2);
    assert!(select::report_streams(&tf, None, Some(3)).is_empty());
}

#[test]
fn the_report_shows_the_crashed_thread_last_with_its_call_and_return() {
    let tf = trace(Some(PID));
    let sel = Selection { branches: 16, insns: 12, thread: None, cpu: None };
    let r = Report::build(&tf, None, &sel);
    assert_eq!(r.threads.len(), 2);
    let last = r.threads.last().unwrap();
    assert!(last.crashed && last.tid == PID);
    let kinds: Vec<&str> = last.branches.iter().map(|b| b.kind).collect();
    assert_eq!(kinds, ["call", "return"]);
    assert_eq!(last.branches[0].to, "0x1010");
    assert!(last.last_instructions.last().unwrap().current);
}

#[test]
fn exports_see_one_call_per_thread() {
    use analysis::callstream::build_call_index;
    use bts_reader::tracestream::{scan, StreamAt};
    let tf = trace(Some(PID));
    let dir = std::env::temp_dir().join(format!("bts-in-process-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.bts");
    std::fs::write(&path, tf.to_bytes()).unwrap();
    let (_, extents) = scan(&path, true).unwrap();
    let imgs = images(&tf);
    let streams = select::export_streams(&tf, None).unwrap();
    assert_eq!(streams.len(), 2);
    // main -> f -> main: three segments each.
    // The trace starts at the call's target: f (level 1, instructions 1-2),
    // then main after the return (level 0, instruction 3, where it stands).
    for s in &streams {
        let a = analyze(s, image_of(&imgs, &s.kind), false, &mut |_, _| {});
        let segs: Vec<(i32, u64, u64)> =
            a.segments.iter().map(|s| (s.level, s.insn_begin, s.insn_end)).collect();
        assert_eq!(segs, [(1, 1, 2), (0, 3, 3)]);
    }
    let export = |format| {
        let mut out = Vec::new();
        let mut ex = export::Exporter::new(format, &mut out);
        for s in &streams {
            let ordinal = tf.streams.iter().position(|x| std::ptr::eq(x, *s)).unwrap();
            let e = extents[ordinal];
            let mut src = StreamAt::new(std::fs::File::open(&path).unwrap(), e.data, e.count);
            let img = image_of(&imgs, &s.kind);
            let StreamKind::Thread { pid, tid, last_pc, .. } = s.kind else { panic!("a thread") };
            let index = build_call_index(&mut src, img, false, last_pc, &mut |_, _| {}).unwrap();
            assert_eq!((index.segments, index.min_level), (2, -1));
            ex.thread(export::Thread { src: &mut src, index: &index, img, pid, tid, last_pc }).unwrap();
        }
        ex.finish().unwrap();
        String::from_utf8(out).unwrap()
    };
    // No modules, no names: every stack is `??`, 3 instructions per thread.
    assert_eq!(export(export::Format::Folded), "?? 6\n");
    let chrome: serde_json::Value = serde_json::from_str(&export(export::Format::Chrome)).unwrap();
    let events = chrome["traceEvents"].as_array().unwrap();
    // Per thread: a thread-name event and two function instances (f, main).
    assert_eq!(events.iter().filter(|e| e["ph"] == "X").count(), 4, "{chrome}");
    let f = events.iter().find(|e| e["ph"] == "X" && e["ts"] == 1).unwrap();
    assert_eq!((&f["dur"], &f["args"]["level"]), (&serde_json::json!(2), &serde_json::json!(1)), "{f}");
    let json: serde_json::Value = serde_json::from_str(&export(export::Format::Json)).unwrap();
    let threads = json["threads"].as_array().unwrap();
    assert_eq!(threads.len(), 2);
    assert_eq!(threads[0]["instructions"], 3);
    assert_eq!(threads[0]["segments"][1]["level"], 0);
    std::fs::remove_dir_all(&dir).unwrap();
}
