//! The Valgrind backend against its floor: the loop program (one taken
//! branch per iteration) at 10^8 iterations natively, under
//! `valgrind --tool=none`, and under `bts run --backend valgrind`, side by
//! side. Goals: <= 8x native, <= 1.7x `none`.
//! Run: `cargo bench --bench valgrind [-- ITERATIONS]`.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

const BTS: &str = env!("CARGO_BIN_EXE_bts");

fn build_loop() -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/loop.c");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench");
    std::fs::create_dir_all(&dir).expect("bench dir");
    let bin = dir.join("loop-vg");
    assert!(Command::new("cc").args(["-O0", "-o"]).arg(&bin).arg(&src).status().expect("cc").success());
    bin
}

/// Best of three wall-clock runs.
fn time(cmd: impl FnMut() -> Command) -> f64 {
    common::best_of(3, cmd)
}

fn main() {
    let n: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(100_000_000);
    let bin = build_loop();
    let native = time(|| {
        let mut c = Command::new(&bin);
        c.arg(n.to_string());
        c
    });
    let none = time(|| {
        let mut c = Command::new("valgrind");
        c.args(["--tool=none", "-q"]).arg(&bin).arg(n.to_string());
        c
    });
    let bts = time(|| {
        let mut c = Command::new(BTS);
        c.args(["run", "--backend", "valgrind", "--report", "never", "--"]).arg(&bin).arg(n.to_string());
        c
    });
    println!("loop program, {n} iterations (one taken branch each)");
    println!("{:<28} {:>9} {:>10} {:>16}", "", "seconds", "x native", "branches/s");
    for (name, s) in [("native", native), ("valgrind --tool=none", none), ("bts --backend valgrind", bts)] {
        println!("{name:<28} {s:>9.3} {:>10.2} {:>16.0}", s / native, n as f64 / s);
    }
    println!("bts / none: {:.2}x", bts / none);
}
