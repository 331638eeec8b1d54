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
//!
//! This machine's speed wanders by a third from one run to the next, so
//! each figure is CPU time (user and system, of the command and all it
//! waited for), the four ways of a case run in rounds one after another
//! (in an order that turns each round), and a ratio is the median of the
//! rounds' ratios: a slow spell slows both sides of it. The best of all
//! rounds' ratios, min over min, is printed beside it.
//! Run: `cargo bench --bench valgrind [-- ROUNDS [ITERATIONS] [WORD...]]`
//! (9 rounds, 50M iterations of the loops, by default; a WORD picks the
//! cases whose names hold it, e.g. `gzip`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;
use common::{cpu_time, median};

const BTS: &str = env!("CARGO_BIN_EXE_bts");

fn build(dir: &Path, fixture: &str, opt: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(format!("{fixture}.c"));
    let bin = dir.join(format!("{fixture}{opt}"));
    assert!(Command::new("cc").arg(opt).arg("-o").arg(&bin).arg(&src).status().expect("cc").success());
    bin
}

/// The ways a case is run: natively, under `none` as it runs by default,
/// under `none` without chasing (as bts runs its tool), and under bts.
const WAYS: usize = 4;
const NATIVE: usize = 0;
const NONE: usize = 1;
const NOCHASE: usize = 2;
const BTS_RUN: usize = 3;

/// The command of way `way` of running `argv`.
fn command(way: usize, argv: &[String], stdin: Option<&Path>) -> Command {
    let mut c = match way {
        NATIVE => Command::new(&argv[0]),
        NONE | NOCHASE => {
            let mut c = Command::new("valgrind");
            c.args(["--tool=none", "-q"]);
            if way == NOCHASE {
                c.arg("--vex-guest-chase=no");
            }
            c.arg(&argv[0]);
            c
        }
        _ => {
            let mut c = Command::new(BTS);
            c.args(["run", "--backend", "valgrind", "--report", "never", "--"]).arg(&argv[0]);
            c
        }
    };
    c.args(&argv[1..]).stdout(Stdio::null());
    if let Some(p) = stdin {
        c.stdin(std::fs::File::open(p).expect("input"));
    }
    c
}

/// `rounds` rounds of the four ways, in CPU seconds: `t[round][way]`.
fn rounds(rounds: usize, argv: &[String], stdin: Option<&Path>) -> Vec<[f64; WAYS]> {
    (0..rounds)
        .map(|r| {
            let mut t = [0.0; WAYS];
            for k in 0..WAYS {
                let way = (r + k) % WAYS;
                t[way] = cpu_time(command(way, argv, stdin));
            }
            t
        })
        .collect()
}

/// bts against way `way`: the median of the rounds' ratios, and the best
/// bts time over the best time of that way.
fn ratio(t: &[[f64; WAYS]], way: usize) -> (f64, f64) {
    let per_round: Vec<f64> = t.iter().map(|r| r[BTS_RUN] / r[way]).collect();
    let best = |w: usize| t.iter().map(|r| r[w]).fold(f64::MAX, f64::min);
    (median(&per_round), best(BTS_RUN) / best(way))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    // A word that is not a number picks the cases whose names hold it.
    let only: Vec<&String> = args.iter().filter(|a| a.parse::<u64>().is_err()).collect();
    let mut numbers = args.iter().filter_map(|a| a.parse::<u64>().ok());
    let n_rounds = numbers.next().unwrap_or(9).max(1) as usize;
    let n = numbers.next().unwrap_or(50_000_000);
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
    println!("{n_rounds} rounds; CPU seconds, median of the rounds; bts/x: median of the rounds' ratios (min over min)");
    println!(
        "{:<44} {:>8} {:>8} {:>12} {:>8} {:>11} {:>15} {:>17}",
        "", "native", "none", "none-nochase", "bts", "bts/native", "bts/none", "bts/none-nochase"
    );
    for (name, argv, stdin) in &cases {
        if !only.is_empty() && !only.iter().any(|w| name.contains(w.as_str())) {
            continue;
        }
        let t = rounds(n_rounds, argv, *stdin);
        let med = |w: usize| median(&t.iter().map(|r| r[w]).collect::<Vec<_>>());
        let (native, _) = ratio(&t, NATIVE);
        let (none, none_best) = ratio(&t, NONE);
        let (nochase, nochase_best) = ratio(&t, NOCHASE);
        println!(
            "{name:<44} {:>8.3} {:>8.3} {:>12.3} {:>8.3} {native:>11.2} {:>15} {:>17}",
            med(NATIVE),
            med(NONE),
            med(NOCHASE),
            med(BTS_RUN),
            format!("{none:.2} ({none_best:.2})"),
            format!("{nochase:.2} ({nochase_best:.2})"),
        );
    }
}
