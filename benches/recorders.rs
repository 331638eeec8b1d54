//! Taken branches per second of the `step` and `fast` recorders, side by
//! side, on the loop program (`tests/fixtures/loop.c`, one taken branch per
//! iteration). Run: `cargo bench --bench recorders [-- ITERATIONS]`.
//!
//! Each recorder traces the program twice: with 0 iterations (start-up and
//! exit only) and with ITERATIONS; the loop's own rate is the difference of
//! branches over the difference of time, so start-up does not blur it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const BTS: &str = env!("CARGO_BIN_EXE_bts");

fn build_loop() -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/loop.c");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench");
    std::fs::create_dir_all(&dir).expect("bench dir");
    let bin = dir.join("loop");
    let ok = Command::new("cc").args(["-O0", "-g", "-o"]).arg(&bin).arg(&src).status().expect("cc").success();
    assert!(ok, "compiling loop.c");
    bin
}

/// (taken branches recorded, seconds) of one traced run.
fn traced(backend: &str, bin: &Path, n: u64, dir: &Path) -> (u64, f64) {
    let file = dir.join(format!("{backend}-{n}.bts"));
    let t0 = Instant::now();
    let out = Command::new(BTS)
        .args(["run", "--backend", backend, "--report", "always", "--json", "-n", "0", "-o"])
        .arg(&file)
        .arg("--")
        .arg(bin)
        .arg(n.to_string())
        .output()
        .expect("run bts");
    let secs = t0.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = &stdout[stdout.find("\n{").map(|i| i + 1).unwrap_or(0)..];
    let r: serde_json::Value = serde_json::from_str(json).expect("report");
    let t = &r["threads"][0];
    let branches = t["recorded"].as_u64().unwrap() + t["lost"].as_u64().unwrap();
    (branches, secs)
}

fn main() {
    let n: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(20_000);
    let bin = build_loop();
    let dir = bin.parent().unwrap().to_path_buf();
    let t0 = Instant::now();
    let native = Command::new(&bin).arg(n.to_string()).output().expect("loop");
    let native_secs = t0.elapsed().as_secs_f64();
    assert!(native.status.success());
    println!("loop program, {n} iterations (native run: {:.4} s)", native_secs);
    println!(
        "{:<8} {:>12} {:>10} {:>16} {:>18}",
        "recorder", "branches", "seconds", "branches/s (all)", "branches/s (loop)"
    );
    let mut loop_rates = Vec::new();
    for backend in ["step", "fast"] {
        let (b0, s0) = traced(backend, &bin, 0, &dir);
        let (b1, s1) = traced(backend, &bin, n, &dir);
        let all = b1 as f64 / s1;
        let lp = (b1 - b0) as f64 / (s1 - s0).max(1e-9);
        println!("{backend:<8} {b1:>12} {s1:>10.3} {all:>16.0} {lp:>18.0}");
        loop_rates.push(lp);
    }
    println!("fast / step on the loop: {:.1}x", loop_rates[1] / loop_rates[0]);
}
