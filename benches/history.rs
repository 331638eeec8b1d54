//! `bts history` on a trace too big to decode whole: a generated loop of
//! 20M branch records (480 MB, about 40M instructions). Times building the
//! sparse index (the first run), then printing 5M lines to a file from the
//! middle and from the end (later runs, the index read from beside the file).
//! Goal: >= 5M lines/s. Run: `cargo bench --bench history`.

use std::process::{Command, Stdio};
use std::time::Instant;

#[path = "../tests/common/loop_trace.rs"]
mod loop_trace;

const BTS: &str = env!("CARGO_BIN_EXE_bts");
const N: u64 = 20_000_000;

fn main() {
    let dir = std::env::temp_dir().join(format!("bts-bench-history-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("loop.bts");
    loop_trace::write_loop_trace(&path, 1, N, 0);
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
