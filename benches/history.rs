//! `bts history` on a trace too big to decode whole: a generated loop of
//! 20M branch records (480 MB, about 22M instructions). Times building the
//! sparse index (the first run), then printing 5M lines to a file from the
//! middle and from the end (later runs, the index read from beside the file).
//! Goal: >= 5M lines/s. Then the same for the call history (`--calls`:
//! building the call index, then 1M segments from the middle) and a whole
//! `bts export --format folded`. Run: `cargo bench --bench history`.

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
    let run_args = |args: &[&str]| {
        let out = std::fs::File::create(dir.join("out.txt")).unwrap();
        let t0 = Instant::now();
        let mut cmd = Command::new(BTS);
        cmd.arg(args[0]).arg(&path).args(&args[1..]);
        let st = cmd.stdout(out).stderr(Stdio::inherit()).status().unwrap();
        assert!(st.success());
        let secs = t0.elapsed().as_secs_f64();
        let lines = std::fs::read_to_string(dir.join("out.txt")).unwrap().lines().count();
        (secs, lines)
    };
    let run = |range: &str| match range {
        "" => run_args(&["history"]),
        r => run_args(&["history", r]),
    };
    let (build, _) = run("1,+10");
    println!("trace of {N} records: first `bts history` (scan, build and keep the index): {build:.2} s");
    for (what, range) in [("from the middle", "10000000,+5000000"), ("the first 5M", "1,+5000000")] {
        let (secs, lines) = run(range);
        println!(
            "  {lines} lines {what} to a file: {secs:.2} s, {:.2}M lines/s (goal >= 5M lines/s)",
            lines as f64 / secs / 1e6
        );
    }
    let (secs, lines) = run("");
    println!("  the last {lines} lines: {:.3} s", secs);
    let (build, _) = run_args(&["history", "--calls", "1,+10"]);
    println!("first `bts history --calls` (build and keep the call index): {build:.2} s");
    let (secs, lines) = run_args(&["history", "--calls", "--insn-range", "5000000,+1000000"]);
    println!(
        "  {lines} call-history lines from the middle: {secs:.2} s, {:.2}M lines/s",
        lines as f64 / secs / 1e6
    );
    let (secs, lines) = run_args(&["history", "--calls", "--json", "5000000,+100000"]);
    println!("  100000 call-history segments as JSON from the middle ({lines} lines): {secs:.2} s");
    let (secs, lines) = run_args(&["export", "--format", "folded"]);
    println!("`bts export --format folded` of the whole trace ({lines} stacks): {secs:.2} s");
    let _ = std::fs::remove_dir_all(&dir);
}
