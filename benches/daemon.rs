//! The broker's costs, on a branch-dense loop program that times its own
//! work (so start-up, attach and reports are not counted):
//!   - fan-out: the loop traced by 1, 2 and 4 tracers through `bts daemon`,
//!     against one in-process `bts attach` (the fast recorder throughout);
//!   - draining a full 64 MiB buffer over the socket.
//!
//! Goals: 4 tracers <= 1.2x the cost of 1; the daemon path <= 1.1x the
//! in-process path; a drain at >= 1 GB/s.
//! Run: `cargo bench --bench daemon [-- ITERATIONS [DRAIN_MIB]]` (loop iterations,
//! default 20000; the drained buffer's MiB, default 64).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use broker::protocol::{Reply, Request, WireBackend};
use broker::Client;

const BTS: &str = env!("CARGO_BIN_EXE_bts");

/// Waits for its go file, runs `iterations` rounds of a call, a return and
/// a conditional, prints the nanoseconds that took, and exits; with
/// `forever`, runs rounds until killed.
const LOOP: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
__attribute__((noinline)) static unsigned long step(unsigned long h, int i) {
    return (i & 1) ? h * 1099511628211UL : h ^ (unsigned long)i;
}
static long now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000000L + t.tv_nsec; }
int main(int argc, char **argv) {
    while (access(argv[1], F_OK) != 0) usleep(10000);
    long n = atol(argv[2]);
    int forever = argc > 3 && strcmp(argv[3], "forever") == 0;
    unsigned long h = 1469598103934665603UL;
    long t0 = now();
    for (long i = 0; i < n || forever; i++) h = step(h, (int)i);
    printf("%ld %lu\n", now() - t0, h % 7);
    return 0;
}
"#;

fn build(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let src = dir.join("loop.c");
    std::fs::write(&src, LOOP).unwrap();
    let bin = dir.join("loop");
    let ok = Command::new("cc").args(["-O1", "-o"]).arg(&bin).arg(&src).status().unwrap();
    assert!(ok.success());
    bin
}

fn start_loop(bin: &Path, go: &Path, iterations: &str, forever: bool) -> Child {
    let _ = std::fs::remove_file(go);
    let mut c = Command::new(bin);
    c.arg(go).arg(iterations);
    if forever {
        c.arg("forever");
    }
    c.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap()
}

/// Waits for the loop to end; the nanoseconds its work took.
fn work_ns(child: Child) -> f64 {
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().parse().unwrap()
}

fn wait_until(mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < Duration::from_secs(300), "timed out");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn traced_by(pid: u32) -> bool {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines().any(|l| l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0"))
}

fn attach_req(pid: i32, bytes: u64) -> Request {
    Request::Attach {
        pid,
        buffer_bytes: bytes,
        backend: WireBackend::Fast,
        pin_cpu: true,
        stack_bytes: 4096,
        from_exec: false,
    }
}

/// The loop's work under one in-process `bts attach`, in ns.
fn in_process(bin: &Path, dir: &Path, iterations: &str) -> f64 {
    let go = dir.join("go");
    let child = start_loop(bin, &go, iterations, false);
    let pid = child.id();
    let mut tracer = Command::new(BTS)
        .args(["attach", "--backend", "fast", "--report", "never", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(|| traced_by(pid));
    std::fs::write(&go, b"").unwrap();
    let ns = work_ns(child);
    tracer.wait().unwrap();
    ns
}

/// The loop's work under `tracers` clients of the daemon, in ns.
fn through_daemon(bin: &Path, dir: &Path, socket: &Path, iterations: &str, tracers: usize) -> f64 {
    let go = dir.join("go");
    let child = start_loop(bin, &go, iterations, false);
    let pid = child.id() as i32;
    let mut clients: Vec<Client> =
        (0..tracers).map(|i| Client::connect(socket, &format!("bench {i}")).unwrap()).collect();
    for c in &mut clients {
        c.call(&attach_req(pid, 64 * 1024)).unwrap();
    }
    std::fs::write(&go, b"").unwrap();
    let ns = work_ns(child);
    for c in &mut clients {
        while !matches!(c.next_event(Some(Duration::from_secs(60))).unwrap(), Some(Reply::Ended { .. })) {}
    }
    ns
}

fn best(n: usize, mut f: impl FnMut() -> f64) -> f64 {
    (0..n).map(|_| f()).fold(f64::MAX, f64::min)
}

fn main() {
    let numbers: Vec<String> = std::env::args().skip(1).filter(|a| a.parse::<u64>().is_ok()).collect();
    let iterations = numbers.first().cloned().unwrap_or_else(|| "20000".into());
    let drain_mib: u64 = numbers.get(1).and_then(|n| n.parse().ok()).unwrap_or(64);
    let dir = std::env::temp_dir().join(format!("bts-bench-daemon-{}", std::process::id()));
    let bin = build(&dir);
    let socket = dir.join("bts.sock");
    let mut daemon =
        Command::new(BTS).args(["daemon", "--socket"]).arg(&socket).stderr(Stdio::null()).spawn().unwrap();
    wait_until(|| Client::connect(&socket, "probe").is_ok());

    let untraced = best(3, || {
        let go = dir.join("go");
        let c = start_loop(&bin, &go, &iterations, false);
        std::fs::write(&go, b"").unwrap();
        work_ns(c)
    });
    let inproc = best(3, || in_process(&bin, &dir, &iterations));
    let by: Vec<(usize, f64)> = [1, 2, 4]
        .iter()
        .map(|&n| (n, best(3, || through_daemon(&bin, &dir, &socket, &iterations, n))))
        .collect();
    let per = |ns: f64| ns / 1e3 / (iterations.parse::<f64>().unwrap() * 3.0);
    println!("loop of {iterations} rounds (3 taken branches each), best of 3, the loop's own clock:");
    println!("  untraced                 {:>10.1} ms", untraced / 1e6);
    println!("  in-process bts attach    {:>10.1} ms  ({:.2} us/branch)", inproc / 1e6, per(inproc));
    for (n, ns) in &by {
        println!("  daemon, {n} tracer(s)      {:>10.1} ms  ({:.2} us/branch)", ns / 1e6, per(*ns));
    }
    let one = by[0].1;
    println!("  4 tracers / 1 tracer:    {:.3}  (goal <= 1.2)", by[2].1 / one);
    println!("  daemon / in-process:     {:.3}  (goal <= 1.1)", one / inproc);

    // Drain: a 64 MiB buffer, full, over the socket.
    let go = dir.join("go");
    let mut child = start_loop(&bin, &go, "0", true);
    let mut c = Client::connect(&socket, "drainer").unwrap();
    c.call(&attach_req(child.id() as i32, drain_mib << 20)).unwrap();
    std::fs::write(&go, b"").unwrap();
    let full = |c: &mut Client| {
        let l = c.list().unwrap();
        let b =
            l.tracers.iter().find(|t| t.name == "drainer").and_then(|t| t.buffers.first()).cloned().unwrap();
        b.records * 24 >= b.bytes - 24
    };
    let mut bytes = Vec::new();
    for round in ["first (fresh client memory)", "again (memory reused)"] {
        let t0 = Instant::now();
        wait_until(|| full(&mut c));
        let filled = t0.elapsed();
        let t0 = Instant::now();
        c.drain_into(child.id() as i32, &mut bytes).unwrap();
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "drain of a full {drain_mib} MiB buffer, {round}: {} records (filled in {:.1} s) in {:.1} ms, {:.2} GB/s  (goal >= 1 GB/s)",
            bytes.len() / 24,
            filled.as_secs_f64(),
            secs * 1e3,
            bytes.len() as f64 / secs / 1e9
        );
    }
    drop(c);
    let _ = child.kill();
    let _ = child.wait();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
