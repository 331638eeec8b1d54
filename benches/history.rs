//! `bts history` on a trace too big to decode whole: a generated loop of
//! 20M branch records (480 MB, about 40M instructions). Times building the
//! sparse index (the first run), then printing 5M lines to a file from the
//! middle and from the end (later runs, the index read from beside the file).
//! Goal: >= 5M lines/s. Run: `cargo bench --bench history`.

use std::io::BufWriter;
use std::process::{Command, Stdio};
use std::time::Instant;

use bts_reader::tracestream::TraceWriter;
use bts_reader::{CodeRange, Meta, Module, StreamHeader, StreamKind};
use ds_alloc::BtsRecord;

const BTS: &str = env!("CARGO_BIN_EXE_bts");
const N: u64 = 20_000_000;

fn main() {
    let dir = std::env::temp_dir().join(format!("bts-bench-history-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("loop.bts");
    // 1000 nop; 1001 jne 1005; 1003 jmp 1000; 1005 jmp 1000.
    let mut code = vec![0x90, 0x75, 0x02, 0xeb, 0xfb, 0xeb, 0xf9];
    code.resize(4096, 0xcc);
    let module = Module {
        pid: 1,
        generation: 1,
        map: decode::Mapping { start: 0x1000, end: 0x2000, offset: 0, path: "[loop]".into() },
        build_id: None,
    };
    {
        let meta = Meta { command: vec!["loop".into()], pid: 1, outcome: "exit".into(), ..Meta::default() };
        let f = std::fs::File::create(&path).unwrap();
        let mut w = TraceWriter::new(BufWriter::with_capacity(1 << 20, f), &meta, &[module]).unwrap();
        let kind =
            StreamKind::Thread { pid: 1, generation: 1, tid: 1, crashed: false, last_pc: Some(0x1000) };
        w.begin_stream(&StreamHeader { kind, capacity: N, overwritten: 0, lost: 0, count: N }).unwrap();
        let (mut x, mut chunk, mut made) = (1u32, Vec::with_capacity(1 << 16), 0u64);
        while made < N {
            x = x.wrapping_mul(1103515245).wrapping_add(12345);
            if x & 0x100 != 0 && made + 2 <= N {
                chunk.extend([BtsRecord::branch(0x1001, 0x1005), BtsRecord::branch(0x1005, 0x1000)]);
                made += 2;
            } else {
                chunk.push(BtsRecord::branch(0x1003, 0x1000));
                made += 1;
            }
            if chunk.len() >= (1 << 16) - 2 || made == N {
                w.records(&chunk).unwrap();
                chunk.clear();
            }
        }
        w.code(&CodeRange { pid: 1, generation: 1, addr: 0x1000, bytes: code }).unwrap();
        w.finish().unwrap();
    }
    let run = |range: &str| {
        let out = std::fs::File::create(dir.join("out.txt")).unwrap();
        let t0 = Instant::now();
        let mut cmd = Command::new(BTS);
        cmd.arg("history").arg(&path);
        if !range.is_empty() {
            cmd.arg(range);
        }
        let st = cmd.stdout(out).stderr(Stdio::inherit()).status().unwrap();
        assert!(st.success());
        let secs = t0.elapsed().as_secs_f64();
        let lines = std::fs::read_to_string(dir.join("out.txt")).unwrap().lines().count();
        (secs, lines)
    };
    let (build, _) = run("1,+10");
    println!("trace of {N} records: first `bts history` (scan, build and keep the index): {build:.2} s");
    for (what, range) in [("from the middle", "30000000,+5000000"), ("the first 5M", "1,+5000000")] {
        let (secs, lines) = run(range);
        println!(
            "  {lines} lines {what} to a file: {secs:.2} s, {:.2}M lines/s (goal >= 5M lines/s)",
            lines as f64 / secs / 1e6
        );
    }
    let (secs, lines) = run("");
    println!("  the last {lines} lines: {:.3} s", secs);
    let _ = std::fs::remove_dir_all(&dir);
}
