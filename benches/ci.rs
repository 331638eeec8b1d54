//! `bts ci` against its floor on a CI-like step of many short processes:
//! a shell loop of small C programs (the tests of a suite) and `make -j2`
//! of a small C project (a real multi-process tool: make, cc, cc1, as,
//! collect2, ld), run
//!   - untraced,
//!   - under `valgrind --tool=none --trace-children=yes` (the floor),
//!   - under `bts ci --backend valgrind` (what `auto` picks without BTS).
//!
//! The fast (ptrace) recorder stops at every branch: a compiler's millions
//! of branches take it minutes, so it is timed on the loop alone.
//!
//! Goal: `bts ci` <= 1.3x the Valgrind floor. Also prints the processes
//! the step ran (as bts counts them) and the cost per process.
//! Run: `cargo bench --bench ci [-- ROUNDS]` (ROUNDS of the loop, default 40).

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::best_of as time;

const BTS: &str = env!("CARGO_BIN_EXE_bts");

/// The test programs the loop runs: small, but each a whole process
/// start-up (dynamic loading, libc initialisation) with a little work.
const PROGRAMS: [(&str, &str); 4] = [
    ("hello", "#include <stdio.h>\nint main(void) { puts(\"ok\"); return 0; }\n"),
    (
        "sum",
        "#include <stdio.h>\nint main(void) { long s = 0; for (int i = 0; i < 100000; i++) s += i % 7; \
         printf(\"%ld\\n\", s); return 0; }\n",
    ),
    (
        "sort",
        "#include <stdio.h>\n#include <stdlib.h>\nstatic int cmp(const void *a, const void *b) \
         { return *(const int *)a - *(const int *)b; }\nint main(void) { int v[2000]; \
         for (int i = 0; i < 2000; i++) v[i] = (i * 7919) % 2003; qsort(v, 2000, sizeof v[0], cmp); \
         printf(\"%d\\n\", v[1000]); return 0; }\n",
    ),
    (
        "words",
        "#include <stdio.h>\n#include <string.h>\nint main(void) { char b[4096]; int n = 0; \
         for (int i = 0; i < 200; i++) { snprintf(b, sizeof b, \"word %d of many\", i); n += strlen(b); } \
         printf(\"%d\\n\", n); return 0; }\n",
    ),
];

/// The step's folder: the programs built, a C project with a Makefile,
/// and the step script.
fn prepare() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-ci");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("project")).expect("bench dir");
    for (name, src) in PROGRAMS {
        let c = dir.join(format!("{name}.c"));
        std::fs::write(&c, src).expect("write");
        let ok = Command::new("cc").args(["-O1", "-o"]).arg(dir.join(name)).arg(&c).status().expect("cc");
        assert!(ok.success());
    }
    let mut objs = Vec::new();
    for i in 0..6 {
        let body =
            format!("int f{i}(int x) {{ int s = 0; for (int k = 0; k < x; k++) s += k ^ {i}; return s; }}\n");
        std::fs::write(dir.join(format!("project/f{i}.c")), body).expect("write");
        objs.push(format!("f{i}.o"));
    }
    let calls: String = (0..6).map(|i| format!("int f{i}(int); ")).collect();
    let sum: String = (0..6).map(|i| format!("f{i}(10) + ")).collect();
    std::fs::write(
        dir.join("project/main.c"),
        format!("{calls}\nint main(void) {{ return ({sum}0) == 0; }}\n"),
    )
    .expect("write");
    objs.push("main.o".into());
    std::fs::write(
        dir.join("project/Makefile"),
        format!("app: {objs}\n\tcc -o $@ $^\n%.o: %.c\n\tcc -O1 -c -o $@ $<\n", objs = objs.join(" ")),
    )
    .expect("write");
    std::fs::write(
        dir.join("step.sh"),
        "#!/bin/sh\n# A test step: the suite's programs, then a build.\nset -e\nrounds=$1\ncd \"$(dirname \"$0\")\"\n\
         for i in $(seq \"$rounds\"); do ./hello >/dev/null; ./sum >/dev/null; ./sort >/dev/null; \
         ./words >/dev/null; done\n[ \"$2\" = nomake ] && exit 0\nrm -f project/*.o project/app\nmake -s -j2 -C project >/dev/null\n",
    )
    .expect("write");
    dir
}

/// The seconds of the step under each way of running it, and the
/// processes bts counted.
struct Row {
    untraced: f64,
    floor: f64,
    traced: Vec<(&'static str, f64)>,
    processes: u64,
}

fn measure(dir: &Path, rounds: usize, make: bool, backends: &[&'static str]) -> Row {
    let step = dir.join("step.sh");
    let arts = dir.join("artifacts");
    let json = dir.join("ci.json");
    let args: Vec<String> =
        if make { vec![rounds.to_string()] } else { vec![rounds.to_string(), "nomake".into()] };
    let untraced = time(3, || {
        let mut c = Command::new("sh");
        c.arg(&step).args(&args);
        c
    });
    let floor = time(2, || {
        let mut c = Command::new("valgrind");
        c.args(["--tool=none", "--trace-children=yes", "-q", "sh"]).arg(&step).args(&args);
        c
    });
    let mut processes = 0;
    let mut traced = Vec::new();
    for &backend in backends {
        let t = time(2, || {
            let mut c = Command::new(BTS);
            c.args(["ci", "--backend", backend, "--artifacts"]).arg(&arts).arg("--json").arg(&json);
            c.args(["--", "sh"]).arg(&step).args(&args);
            c
        });
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).expect("ci.json")).expect("json");
        processes = doc["processes"].as_u64().unwrap_or(0);
        traced.push((backend, t));
    }
    Row { untraced, floor, traced, processes }
}

fn print(title: &str, r: &Row) {
    println!("{title}: {} processes (bts's count)", r.processes);
    println!("  {:<44} {:>9} {:>9} {:>12}", "", "seconds", "x floor", "ms/process");
    let per = |s: f64| (s - r.untraced) * 1000.0 / r.processes.max(1) as f64;
    let mut rows = vec![
        ("untraced".to_string(), r.untraced),
        ("valgrind --tool=none --trace-children=yes".into(), r.floor),
    ];
    rows.extend(r.traced.iter().map(|(b, t)| (format!("bts ci --backend {b}"), *t)));
    for (name, s) in rows {
        println!("  {name:<44} {s:>9.3} {:>9.2} {:>12.1}", s / r.floor, per(s));
    }
}

fn main() {
    assert!(Command::new("make").arg("--version").output().is_ok(), "the bench needs make");
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(40);
    let dir = prepare();
    let whole = measure(&dir, rounds, true, &["valgrind"]);
    print(&format!("CI step: {rounds} rounds of 4 small programs, then make -j2 of 7 files"), &whole);
    let loop_only = measure(&dir, rounds, false, &["valgrind", "fast"]);
    print(&format!("the loop alone ({rounds} rounds of 4 small programs)"), &loop_only);
    println!(
        "bts ci (valgrind) / floor on the whole step: {:.2}x (goal <= 1.3x)",
        whole.traced[0].1 / whole.floor
    );
}
