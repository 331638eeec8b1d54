//! The Valgrind recorder against its floor, side by side in one run:
//! natively, under `valgrind --tool=none`, and under `bts run --backend
//! valgrind`, on
//!   - the loop program (-O0, one taken branch per iteration),
//!   - the branch-dense loop (-O1: a call, a ret and a conditional every
//!     9 instructions),
//!   - gzip compressing 16 MiB of generated text,
//!   - python3 running a small workload.
//!
//! Goals: <= 1.3x `none` on the branch-dense loop, <= 1.15x on gzip and
//! python3. `none` is also timed with `--vex-guest-chase=no`, as bts runs
//! its tool: chasing changes `none`'s own speed, either way.
//! Run: `cargo bench --bench valgrind [-- ITERATIONS]`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;

const BTS: &str = env!("CARGO_BIN_EXE_bts");

fn build(dir: &Path, fixture: &str, opt: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(format!("{fixture}.c"));
    let bin = dir.join(format!("{fixture}{opt}"));
    assert!(Command::new("cc").arg(opt).arg("-o").arg(&bin).arg(&src).status().expect("cc").success());
    bin
}

/// Best of three wall-clock runs.
fn time(cmd: impl FnMut() -> Command) -> f64 {
    common::best_of(3, cmd)
}

/// The ways of running `argv`, in seconds: natively, under `none` as it
/// runs by default, under `none` without chasing (as bts runs its tool),
/// and under bts.
fn side_by_side(argv: &[String], stdin: Option<&Path>) -> (f64, f64, f64, f64) {
    let with = |mut c: Command| {
        c.stdout(Stdio::null());
        if let Some(p) = stdin {
            c.stdin(std::fs::File::open(p).expect("input"));
        }
        c
    };
    let native = time(|| {
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        with(c)
    });
    let none = time(|| {
        let mut c = Command::new("valgrind");
        c.args(["--tool=none", "-q"]).args(argv);
        with(c)
    });
    let none_nochase = time(|| {
        let mut c = Command::new("valgrind");
        c.args(["--tool=none", "-q", "--vex-guest-chase=no"]).args(argv);
        with(c)
    });
    let bts = time(|| {
        let mut c = Command::new(BTS);
        c.args(["run", "--backend", "valgrind", "--report", "never", "--"]).args(argv);
        with(c)
    });
    (native, none, none_nochase, bts)
}

fn main() {
    let n: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(50_000_000);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-vg");
    std::fs::create_dir_all(&dir).expect("bench dir");
    let text = dir.join("input.txt");
    let mut t = String::new();
    let mut i = 0u64;
    while t.len() < 16 << 20 {
        t += &format!("line {i} of the generated text, {} and some words to compress\n", i * 7919 % 10007);
        i += 1;
    }
    std::fs::write(&text, t).expect("input");
    let loop0 = build(&dir, "loop", "-O0");
    let dense = build(&dir, "call_loop", "-O1");
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    let python = "import json\nd = [{'k': i, 'v': str(i) * 3} for i in range(20000)]\nfor _ in range(5): json.loads(json.dumps(d))";
    let cases: Vec<(String, Vec<String>, Option<&Path>)> = vec![
        (format!("loop -O0, {n} iterations"), s(&[loop0.to_str().unwrap(), &n.to_string()]), None),
        (
            format!("call/ret/jcc loop -O1, {} iterations", n / 2),
            s(&[dense.to_str().unwrap(), &(n / 2).to_string()]),
            None,
        ),
        ("gzip -c of 16 MiB of text".into(), s(&["gzip", "-c"]), Some(text.as_path())),
        ("/usr/bin/python3: json of 20000 dicts, 5x".into(), s(&["/usr/bin/python3", "-c", python]), None),
    ];
    println!(
        "{:<44} {:>9} {:>9} {:>12} {:>9} {:>11} {:>9} {:>17}",
        "", "native s", "none s", "none-nochase", "bts s", "bts/native", "bts/none", "bts/none-nochase"
    );
    for (name, argv, stdin) in &cases {
        let (native, none, nochase, bts) = side_by_side(argv, *stdin);
        println!(
            "{name:<44} {native:>9.3} {none:>9.3} {nochase:>12.3} {bts:>9.3} {:>11.2} {:>9.2} {:>17.2}",
            bts / native,
            bts / none,
            bts / nochase
        );
    }
}
