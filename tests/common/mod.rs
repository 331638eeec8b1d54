//! Shared helpers of the end-to-end tests: fixture programs compiled at
//! test time, and running the real `bts` binary.
#![allow(dead_code)]

pub mod daemon;
pub mod loop_trace;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const BTS: &str = env!("CARGO_BIN_EXE_bts");

static BUILD: Mutex<()> = Mutex::new(());

/// Compiles `tests/fixtures/NAME.c` (once per test run) and returns the binary.
pub fn fixture(name: &str) -> PathBuf {
    fixture_with(name, "", &[])
}

/// Compiles `tests/fixtures/NAME.c` with extra compiler flags into a binary
/// named NAME + `suffix`.
pub fn fixture_with(name: &str, suffix: &str, flags: &[&str]) -> PathBuf {
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(format!("{name}.c"));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join(format!("{name}{suffix}"));
    let fresh = match (std::fs::metadata(&bin), std::fs::metadata(&src)) {
        (Ok(b), Ok(s)) => b.modified().unwrap() >= s.modified().unwrap(),
        _ => false,
    };
    if !fresh {
        let out = Command::new("cc")
            .args(["-g", "-O0", "-fno-stack-protector", "-pthread"])
            .args(flags)
            .arg("-o")
            .arg(&bin)
            .arg(&src)
            .output()
            .expect("a C compiler (cc) is needed to build the fixtures");
        assert!(out.status.success(), "compiling {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    bin
}

/// A fresh scratch directory for one test.
pub fn scratch(test: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("scratch").join(test);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `bts ARGS` in `dir`.
pub fn bts(dir: &Path, args: &[&str]) -> Output {
    output_within(Command::new(BTS).args(args).current_dir(dir).stdin(Stdio::null()), LIMIT)
}

/// How long one run of bts may take in a test before it counts as hung.
pub const LIMIT: Duration = Duration::from_secs(180);

/// `cmd.output()`, but a command still running after `limit` is killed and
/// the test fails there, saying so, instead of stalling the whole run.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start the command");
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still ran after {limit:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

/// Reads `r` to its end on a thread of its own.
fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Parses bts's JSON report: the last document on stdout, after whatever
/// the traced program printed there itself.
pub fn json(out: &Output) -> serde_json::Value {
    let stdout = text(&out.stdout);
    let start = stdout.rfind("\n{\n").map(|i| i + 1).unwrap_or(0);
    serde_json::from_str(&stdout[start..])
        .unwrap_or_else(|e| panic!("bad JSON ({e}): stdout={stdout} stderr={}", text(&out.stderr)))
}

/// The crashed thread of a JSON report.
pub fn crashed_thread(report: &serde_json::Value) -> &serde_json::Value {
    report["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["crashed"] == true)
        .expect("a crashed thread in the report")
}

/// (from, to) of every branch of a thread in a JSON report.
pub fn pairs(thread: &serde_json::Value) -> Vec<(String, String)> {
    thread["branches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["from"].as_str().unwrap().to_string(), b["to"].as_str().unwrap().to_string()))
        .collect()
}

/// Records `bin` with `backend` (ASLR off, buffers of `buffer`) into
/// `dir/file`, and returns the run's output and the whole trace as
/// `last-branch --json --all-threads` reports it.
pub fn record_whole(
    dir: &Path,
    backend: &str,
    bin: &Path,
    file: &str,
    buffer: &str,
) -> (Output, serde_json::Value) {
    let out = bts(
        dir,
        &[
            "run",
            "--backend",
            backend,
            "--no-aslr",
            "--buffer-size",
            buffer,
            "--report",
            "never",
            "-o",
            file,
            "--",
            bin.to_str().unwrap(),
        ],
    );
    assert_ne!(out.status.code(), Some(125), "{}", text(&out.stderr));
    let r = json(&bts(dir, &["last-branch", "--json", "--all-threads", "-n", "100000000", file]));
    (out, r)
}

/// The first child of `pid`, waited for up to ten seconds.
pub fn first_child(pid: i32) -> i32 {
    let t0 = std::time::Instant::now();
    loop {
        let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(p) = kids.split_whitespace().next() {
            return p.parse().unwrap();
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(10), "pid {pid} has no child");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Writes a GDB command file (no paging, no wrapping) into `dir`.
pub fn gdb_script(dir: &Path, commands: &str) -> PathBuf {
    let script = dir.join("cmds.gdb");
    std::fs::write(&script, format!("set pagination off\nset width 0\n{commands}\n")).unwrap();
    script
}

/// `bts gdb TARGET...` in batch mode running `commands`: what GDB printed.
pub fn gdb_batch(dir: &Path, target: &[&str], commands: &str) -> String {
    let script = gdb_script(dir, commands);
    let out = output_within(
        Command::new(BTS)
            .args(["gdb", "--gdb-arg=-nx", "--gdb-arg=-batch", "--gdb-arg=-x"])
            .arg(format!("--gdb-arg={}", script.display()))
            .args(target)
            .current_dir(dir)
            .stdin(Stdio::null()),
        LIMIT,
    );
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!all.contains("panicked"), "{all}");
    all
}

/// (kind, from, to) of each branch row of a bts report (or GDB's last-branch).
pub fn branch_rows(s: &str) -> Vec<(String, String, String)> {
    s.lines()
        .filter(|l| l.contains(" -> ") && l.trim_start().starts_with('-'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let arrow = f.iter().position(|w| *w == "->")?;
            Some((f.get(1)?.to_string(), f.get(2)?.to_string(), f.get(arrow + 1)?.to_string()))
        })
        .collect()
}

/// True when the tests run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no arguments.
    unsafe { libc::geteuid() == 0 }
}

/// A command run as the unprivileged user 65534.
pub fn as_nobody(program: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(program);
    c
}

/// A folder everyone may enter (for tests that run as another user).
pub fn open_scratch(test: &str) -> PathBuf {
    let d = scratch(test);
    let mut p = d.clone();
    while p.pop() {
        if p == Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap() {
            break;
        }
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755));
    }
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
    d
}

/// A fixture others may run.
pub fn shared_fixture(name: &str) -> PathBuf {
    let bin = fixture(name);
    let mut p = bin.clone();
    while p.pop() {
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755));
        if p.ends_with("target") {
            break;
        }
    }
    bin
}
