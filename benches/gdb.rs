//! Stock GDB on a bts trace of over a million branches, against bts's own
//! history, side by side on the same file: the time from `target remote`
//! to the first `record function-call-history` output (bts's stub serving,
//! GDB decoding), and `bts history --calls`. Run: `cargo bench --bench gdb [-- FIB_N]`.
//!
//! The traced program computes fib(N) recursively (N = 27: about 2.5
//! million taken branches, calls and returns nested 27 deep), recorded
//! with the Valgrind recorder when it is installed, else the fast one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const BTS: &str = env!("CARGO_BIN_EXE_bts");

const FIB: &str = "#include <stdio.h>\n#include <stdlib.h>\n\
__attribute__((noinline)) long fib(long n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }\n\
int main(int argc, char **argv) { printf(\"%ld\\n\", fib(argc > 1 ? atol(argv[1]) : 27)); return 0; }\n";

fn build(dir: &Path) -> PathBuf {
    let src = dir.join("fib.c");
    std::fs::write(&src, FIB).expect("fib.c");
    let bin = dir.join("fib");
    let ok = Command::new("cc").args(["-O1", "-g", "-o"]).arg(&bin).arg(&src).status().expect("cc").success();
    assert!(ok, "compiling fib.c");
    bin
}

fn timed(cmd: &mut Command) -> (f64, String) {
    let t0 = Instant::now();
    let out = cmd.output().expect("run");
    let secs = t0.elapsed().as_secs_f64();
    assert!(out.status.success(), "{:?}: {}", cmd, String::from_utf8_lossy(&out.stderr));
    (secs, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn main() {
    let n: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(27);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-gdb");
    std::fs::create_dir_all(&dir).expect("bench dir");
    let bin = build(&dir);
    let file = dir.join("fib.bts");
    let backend =
        if Command::new("valgrind").arg("--version").output().is_ok() { "valgrind" } else { "fast" };
    let out = Command::new(BTS)
        .args([
            "run",
            "--backend",
            backend,
            "--buffer-size",
            "96M",
            "--report",
            "always",
            "--json",
            "-n",
            "0",
            "-o",
        ])
        .arg(&file)
        .arg("--")
        .arg(&bin)
        .arg(n.to_string())
        .output()
        .expect("bts run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = &stdout[stdout.find("\n{").map(|i| i + 1).unwrap_or(0)..];
    let r: serde_json::Value = serde_json::from_str(json).expect("report");
    let branches =
        r["threads"].as_array().expect("threads").iter().map(|t| t["recorded"].as_u64().unwrap_or(0)).max();
    let branches = branches.unwrap_or(0);
    assert!(branches >= 1_000_000, "only {branches} branches recorded");

    let stub = format!("target remote | {BTS} gdbserver --stdio {}", file.display());
    let (gdb_secs, gdb_out) = timed(
        Command::new("gdb")
            .args([
                "-nx",
                "-batch",
                "-iex",
                "set sysroot /",
                "-ex",
                &stub,
                "-ex",
                "record function-call-history",
            ])
            .arg(&bin),
    );
    let numbered = |s: &str| {
        s.lines().filter(|l| l.split('\t').next().is_some_and(|n| n.parse::<u64>().is_ok())).count()
    };
    assert!(numbered(&gdb_out) >= 5, "GDB's history:\n{gdb_out}");
    let (bts_secs, bts_out) = timed(Command::new(BTS).args(["history", "--calls"]).arg(&file));
    assert!(numbered(&bts_out) >= 5, "{bts_out}");

    println!("fib({n}) recorded by {backend}: {branches} branches in the trace");
    println!("{:<52} {:>10}", "from target remote to function-call-history", "seconds");
    println!("{:<52} {:>10.3}", "gdb + bts gdbserver", gdb_secs);
    println!("{:<52} {:>10.3}", "bts history --calls", bts_secs);
    println!("bts history is {:.1}x faster than GDB on the same trace", gdb_secs / bts_secs);
}
