//! `bts attach` on real running processes.

mod common;
use common::*;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts a fixture and waits for its "ready" line.
fn start(name: &str, args: &[&str]) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child =
        Command::new(fixture(name)).args(args).stdout(Stdio::piped()).stdin(Stdio::null()).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    (child, out)
}

fn spawn_bts(dir: &std::path::Path, args: &[&str]) -> Child {
    Command::new(BTS)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_with_output(mut c: Child) -> (Option<i32>, String, String) {
    let mut out = String::new();
    let mut err = String::new();
    c.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (c.wait().unwrap().code(), out, err)
}

/// The bytes of every executable mapping of the main program.
fn text_bytes(pid: u32, exe: &std::path::Path) -> Vec<(u64, Vec<u8>)> {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let exe = std::fs::canonicalize(exe).unwrap();
    let mut out = Vec::new();
    for l in maps.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let exec_lib = f.get(5).is_some_and(|p| *p == exe.to_str().unwrap() || p.contains("libc.so"));
        if f[1].contains('x') && exec_lib {
            let (s, e) = f[0].split_once('-').unwrap();
            let (s, e) = (u64::from_str_radix(s, 16).unwrap(), u64::from_str_radix(e, 16).unwrap());
            let mut b = vec![0u8; (e - s) as usize];
            mem.read_exact_at(&mut b, s).unwrap();
            out.push((s, b));
        }
    }
    assert!(!out.is_empty());
    out
}

/// Waits until something traces `pid`.
fn wait_attached(pid: u32) {
    let t0 = Instant::now();
    while tracer_pid(pid) == "0" {
        assert!(t0.elapsed() < Duration::from_secs(20), "bts did not attach");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn tracer_pid(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:").map(|v| v.trim().to_string()))
        .unwrap()
}

#[test]
fn interrupting_bts_detaches_and_the_process_finishes_as_before() {
    let dir = scratch("attach_interrupt");
    // The expected output, untraced. The program runs long enough (about
    // 2 s untraced) to outlive two attach-and-detach rounds on a loaded
    // machine: with 60 rounds it once ended before the second detach.
    let native = Command::new(fixture("long_loop")).arg("200").output().unwrap();
    let expected = text(&native.stdout);
    let (mut child, mut out) = start("long_loop", &["200"]);
    let pid = child.id();
    let before = text_bytes(pid, &fixture("long_loop"));
    for (sig, name) in [(libc::SIGINT, "int"), (libc::SIGTERM, "term")] {
        let file = format!("attach-{name}.bts");
        let mut b = spawn_bts(&dir, &["attach", "--json", "-o", &file, &pid.to_string()]);
        // Give it time to attach and record.
        wait_attached(pid);
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(b.id() as i32, sig) };
        let _ = &mut b;
        let (code, stdout, stderr) = wait_with_output(b);
        assert_eq!(code, Some(0), "{stderr}");
        let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(r["outcome"]["kind"], "detached");
        assert_eq!(r["pid"], pid);
        let t = &r["threads"][0];
        assert!(t["recorded"].as_u64().unwrap() > 10, "{t}");
        assert!(dir.join(&file).exists());
        assert_eq!(tracer_pid(pid), "0", "still traced after detach");
        assert_eq!(text_bytes(pid, &fixture("long_loop")), before, "code changed after detach");
    }
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(format!("ready\n{rest}"), expected);
}

#[test]
fn attach_to_a_multithreaded_process_traces_every_thread() {
    let dir = scratch("attach_threads");
    let native = Command::new(fixture("threads_loop")).arg("150").output().unwrap();
    let (mut child, mut out) = start("threads_loop", &["150"]);
    let pid = child.id();
    let b = spawn_bts(&dir, &["attach", "--json", &pid.to_string()]);
    wait_attached(pid);
    std::thread::sleep(Duration::from_millis(400));
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(b.id() as i32, libc::SIGINT) };
    let (code, stdout, stderr) = wait_with_output(b);
    assert_eq!(code, Some(0), "{stderr}");
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let threads = r["threads"].as_array().unwrap();
    assert_eq!(threads.len(), 4, "main and three workers: {threads:?}");
    let busy = threads.iter().filter(|t| t["recorded"].as_u64().unwrap() > 100).count();
    assert!(busy >= 3, "the workers were recorded: {threads:?}");
    for t in threads {
        let tid = t["tid"].as_i64().unwrap();
        let task = std::path::PathBuf::from(format!("/proc/{pid}/task/{tid}"));
        if task.exists() {
            // Each thread got its own CPU mask back.
            let allowed = std::fs::read_to_string(task.join("status"))
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:").map(|v| v.trim().to_string()))
                .unwrap();
            let mine = std::fs::read_to_string("/proc/self/status")
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:").map(|v| v.trim().to_string()))
                .unwrap();
            assert_eq!(allowed, mine, "thread {tid}");
        }
    }
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}: {stderr}");
    assert_eq!(format!("ready\n{rest}"), text(&native.stdout));
}

#[test]
fn a_process_killed_while_attached_keeps_its_trace() {
    let dir = scratch("attach_killed");
    let (mut child, _out) = start("long_loop", &["300"]);
    let pid = child.id();
    let b = spawn_bts(&dir, &["attach", "--json", &pid.to_string()]);
    wait_attached(pid);
    std::thread::sleep(Duration::from_millis(200));
    child.kill().unwrap();
    let (code, stdout, stderr) = wait_with_output(b);
    assert_eq!(code, Some(128 + 9), "{stderr}");
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["outcome"]["signal_name"], "SIGKILL", "{stdout}");
    assert!(r["threads"][0]["recorded"].as_u64().unwrap() > 0);
    assert!(dir.join(format!("bts-{pid}.bts")).exists());
    let _ = child.wait();
}

#[test]
fn attach_reports_a_crash_of_the_attached_process() {
    let dir = scratch("attach_crash");
    let (mut child, _out) = start("sleepy_crash", &[]);
    let pid = child.id();
    let b = spawn_bts(&dir, &["attach", "--json", "-n", "8", &pid.to_string()]);
    let (code, stdout, stderr) = wait_with_output(b);
    assert_eq!(code, Some(139), "{stderr}");
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["outcome"]["signal_name"], "SIGSEGV");
    let t = crashed_thread(&r);
    let last = t["branches"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["to"], "0x0");
    assert!(last["from_sym"].as_str().unwrap().starts_with("late_fault+"), "{last}");
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGSEGV));
    assert!(dir.join(format!("bts-{pid}.bts")).exists());
}

#[test]
fn attach_follows_a_process_to_its_exit_and_keeps_the_trace() {
    let dir = scratch("attach_exit");
    let (mut child, _out) = start("long_loop", &["30"]);
    let pid = child.id();
    let b = spawn_bts(&dir, &["attach", "--report", "always", "--json", &pid.to_string()]);
    let (code, stdout, stderr) = wait_with_output(b);
    assert_eq!(code, Some(0), "{stderr}");
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["outcome"]["kind"], "exit");
    assert_eq!(r["outcome"]["code"], 0);
    let br = r["threads"][0]["branches"].as_array().unwrap();
    let into_exit =
        br.iter().any(|b| b["to_sym"].as_str().is_some_and(|s| s.to_ascii_lowercase().starts_with("_exit")));
    assert!(into_exit, "the trace ends in _exit: {br:?}");
    assert!(child.wait().unwrap().success());
    assert!(dir.join(format!("bts-{pid}.bts")).exists());
}

#[test]
fn attach_errors_name_the_cause() {
    let dir = scratch("attach_errors");
    let out = bts(&dir, &["attach", "999999999"]);
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(err.contains("no process with pid 999999999"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    // A process that has exited but was not reaped yet.
    let mut zombie = Command::new("true").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let out = bts(&dir, &["attach", &zombie.id().to_string()]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("has already exited"), "{}", text(&out.stderr));
    zombie.wait().unwrap();
    // A process that something else already traces.
    let mut first =
        spawn_bts(&dir, &["run", "--backend", "fast", "--", fixture("long_loop").to_str().unwrap(), "100"]);
    // bts -> bts-tracer -> the program.
    let tracer = first_child(first.id() as i32);
    let target = first_child(tracer);
    let out = bts(&dir, &["attach", &target.to_string()]);
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("not allowed to trace pid {target}")), "{err}");
    assert!(err.contains(&format!("already traced by pid {tracer}")), "{err}");
    // Killing bts detaches: the program would run on.
    // SAFETY: signalling a process this test started.
    unsafe { libc::kill(target, libc::SIGKILL) };
    first.wait().unwrap();
}
