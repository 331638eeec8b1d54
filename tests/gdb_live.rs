//! Stock GDB on live processes through bts's stub: a launched program and
//! an attached one, GDB's breakpoints beside the recorder's int3 bytes,
//! steps, the crash, Ctrl-C, detach, and GDB going away mid-session.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{branch_rows as rows, fixture, gdb_script, scratch, text, BTS};

/// `bts gdb` in batch mode with `commands`, on TARGET (`-- CMD` or `--attach=PID`).
fn gdb(dir: &Path, target: &[&str], commands: &str) -> String {
    common::gdb_batch(dir, target, commands)
}

#[test]
fn a_launched_program_with_breakpoints_steps_and_its_crash() {
    let dir = scratch("gdb_live_launch");
    let prog = fixture("null_call");
    let out = gdb(
        &dir,
        &["--", prog.to_str().unwrap()],
        "break c\ncontinue\nbt\n\
         break *c+49\ncontinue\n\
         stepi\nprintf \"RIP=%#lx C=%#lx\\n\", $rip, &c\n\
         last-branch 3\nmonitor last-branch 3\n\
         record instruction-history\n\
         delete\ncontinue\nbt\ncontinue",
    );
    // GDB's breakpoint at c; the stack is the live one.
    assert!(out.contains("Breakpoint 1, c (x=7)"), "{out}");
    let frames: Vec<&str> = out.lines().filter(|l| l.starts_with('#')).collect();
    assert!(
        frames.iter().any(|l| l.contains(" in a (x=3)")) && frames.iter().any(|l| l.contains(" in main ()")),
        "{out}"
    );
    // A breakpoint on the loop's branch, where the recorder has its own int3.
    assert!(out.contains("Breakpoint 2, 0x"), "{out}");
    // One step from the taken `jl` lands at the loop body (c+27).
    let line = out.lines().find_map(|l| l.strip_prefix("RIP=")).expect("printf");
    let (rip, c) = line.split_once(" C=").unwrap();
    let rip = u64::from_str_radix(rip.trim_start_matches("0x"), 16).unwrap();
    let c = u64::from_str_radix(c.trim().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(rip - c, 27, "{out}");
    // The recorder saw that branch beside GDB's breakpoint: GDB's
    // last-branch (through its btrace) and the stub's own report agree.
    let r = rows(&out);
    assert!(r.len() >= 6, "{out}");
    assert_eq!(r[..3], r[3..6], "{out}");
    assert_eq!(r[2].0, "conditional", "{out}");
    assert!(out.contains("<c+49>:\tjl"), "{out}");
    // The crash is reported at the fault, with the live stack; then it takes its course.
    assert!(out.contains("Program received signal SIGSEGV"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("#1") && l.contains(" in c (")), "{out}");
    assert!(out.contains("Program terminated with signal SIGSEGV"), "{out}");
    // The program's own output went to the terminal, not into the protocol.
    assert!(out.contains("calling a"), "{out}");
}

fn start_ticker(dir: &Path) -> (Child, std::path::PathBuf) {
    let log = dir.join("ticker.out");
    let child = Command::new(fixture("ticker"))
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while std::fs::read_to_string(&log).unwrap_or_default().lines().count() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(10), "ticker did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    (child, log)
}

/// The ticker's output untraced.
fn ticker_native() -> String {
    text(&Command::new(fixture("ticker")).output().unwrap().stdout)
}

#[test]
fn attach_break_detach_leaves_the_program_as_it_was() {
    let dir = scratch("gdb_live_attach");
    let (mut child, log) = start_ticker(&dir);
    let pid = child.id().to_string();
    let out =
        gdb(&dir, &[&format!("--attach={pid}")], "break nanosleep\ncontinue\nbt 3\nlast-branch 2\ndetach");
    assert!(out.contains("Breakpoint 1, ") && out.contains("nanosleep"), "{out}");
    assert!(out.lines().any(|l| l.starts_with('#') && l.contains(" in main ")), "{out}");
    let status = child.wait().unwrap();
    assert!(status.success(), "ticker ended with {status}: {out}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), ticker_native());
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    assert!(!st.contains("TracerPid:\t") || st.contains("TracerPid:\t0"));
}

#[test]
fn gdb_killed_mid_session_leaves_the_program_unharmed() {
    let dir = scratch("gdb_live_gdb_killed");
    let (mut child, log) = start_ticker(&dir);
    // GDB stops the program at a breakpoint, then sits in `shell sleep`.
    let script = gdb_script(&dir, "break nanosleep\ncontinue\nshell touch stopped\nshell sleep 30");
    let mut g = Command::new(BTS)
        .args(["gdb", "--gdb-arg=-nx", "--gdb-arg=-batch", "--gdb-arg=-x"])
        .arg(format!("--gdb-arg={}", script.display()))
        .arg(format!("--attach={}", child.id()))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !dir.join("stopped").exists() {
        assert!(t0.elapsed() < Duration::from_secs(20), "GDB never stopped the program");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    assert!(!status.contains("TracerPid:\t0\n"), "not traced: {status}");
    let lines = std::fs::read_to_string(&log).unwrap().lines().count();
    assert!(lines < 40, "the program finished before GDB was killed");
    // Kill GDB (and the `bts gdb` that started it) while it holds the program.
    let gdbs = Command::new("pgrep").args(["-P", &g.id().to_string()]).output().unwrap();
    for p in text(&gdbs.stdout).split_whitespace() {
        let _ = Command::new("kill").args(["-9", p]).status();
    }
    let _ = g.kill();
    let _ = g.wait();
    let status = child.wait().unwrap();
    assert!(status.success(), "ticker ended with {status}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), ticker_native());
}

/// One packet, framed.
fn packet(p: &str) -> Vec<u8> {
    let sum = p.bytes().fold(0u8, |s, b| s.wrapping_add(b));
    format!("${p}#{sum:02x}").into_bytes()
}

/// Reads one reply packet's payload (acks skipped).
fn reply(r: &mut impl Read) -> String {
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    let mut in_packet = false;
    loop {
        r.read_exact(&mut b).expect("a reply");
        match b[0] {
            b'$' if !in_packet => in_packet = true,
            b'#' if in_packet => {
                let mut cs = [0u8; 2];
                r.read_exact(&mut cs).unwrap();
                return String::from_utf8_lossy(&got).into_owned();
            }
            c if in_packet => got.push(c),
            _ => {}
        }
    }
}

#[test]
fn ctrl_c_stops_a_running_program_and_detach_lets_it_finish() {
    let dir = scratch("gdb_live_ctrl_c");
    let (mut child, log) = start_ticker(&dir);
    let mut stub = Command::new(BTS)
        .args(["gdbserver", "--stdio", &format!("--attach={}", child.id())])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to = stub.stdin.take().unwrap();
    let mut from = stub.stdout.take().unwrap();
    to.write_all(&packet("QStartNoAckMode")).unwrap();
    assert_eq!(reply(&mut from), "OK");
    to.write_all(&packet("?")).unwrap();
    assert!(reply(&mut from).starts_with('T'));
    to.write_all(&packet("vCont;c")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = std::fs::read_to_string(&log).unwrap().lines().count();
    to.write_all(&[0x03]).unwrap();
    let stop = reply(&mut from);
    assert!(stop.starts_with("T02thread:"), "{stop}");
    // Stopped: no line while GDB looks.
    let stopped_at = std::fs::read_to_string(&log).unwrap().lines().count();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), stopped_at);
    assert!(stopped_at >= before);
    to.write_all(&packet("D")).unwrap();
    assert_eq!(reply(&mut from), "OK");
    let status = child.wait().unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read_to_string(&log).unwrap(), ticker_native());
    drop(to);
    assert!(stub.wait().unwrap().success());
}

#[test]
fn threads_hit_breakpoints_and_replay_their_own_history() {
    let dir = scratch("gdb_live_threads");
    let prog = fixture("threads_loop");
    let out = gdb(
        &dir,
        &["--", prog.to_str().unwrap(), "2"],
        "break work\ncontinue\ncontinue\ncontinue\nthread apply all bt 1\n\
         reverse-stepi\ninfo record\nrecord goto end\ndelete\ncontinue",
    );
    // Each worker, a new thread GDB learns of as it comes, stops at work.
    let hits: Vec<&str> = out.lines().filter(|l| l.contains("hit Breakpoint 1, work (arg=0x")).collect();
    assert_eq!(hits.len(), 3, "{out}");
    for arg in ["0x1", "0x2", "0x3"] {
        assert!(hits.iter().any(|h| h.contains(&format!("arg={arg})"))), "{out}");
    }
    // GDB records every thread (record btrace bts on the new ones too) and
    // replays the newest thread's history back from work.
    assert!(!out.contains("does not support branch tracing"), "{out}");
    assert!(out.contains("Replay in progress."), "{out}");
    assert!(out.contains("Recording format: Branch Trace Store."), "{out}");
    // Then the program runs to its end as it would untraced.
    let native = text(&Command::new(&prog).arg("2").output().unwrap().stdout);
    let checksum = native.lines().find(|l| l.starts_with("checksum")).unwrap();
    assert!(out.contains(checksum), "{out}");
    assert!(out.contains("exited normally"), "{out}");
}

#[test]
fn registers_and_memory_are_written_and_kill_ends_a_launched_program() {
    let dir = scratch("gdb_live_write_kill");
    let prog = fixture("null_call");
    let out = gdb(
        &dir,
        &["--", prog.to_str().unwrap()],
        "break b\ncontinue\ninfo threads\nset $rbx = 0x1234\nprintf \"RBX=%#lx\\n\", $rbx\n\
         set var hook = (void *) 0x42\nprintf \"HOOK=%p\\n\", hook\nkill",
    );
    assert!(out.contains("RBX=0x1234"), "{out}");
    assert!(out.contains("HOOK=0x42"), "{out}");
    assert!(out.contains("killed"), "{out}");
    // The launched program is gone.
    let pid: i32 = out
        .lines()
        .find_map(|l| l.split("Thread ").nth(1))
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    let t0 = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(t0.elapsed() < Duration::from_secs(10), "pid {pid} lives on: {out}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_attached_program_stops_at_a_breakpoint_then_crashes_under_gdb() {
    let dir = scratch("gdb_live_attach_crash");
    let log = dir.join("out");
    let mut child =
        Command::new(fixture("sleepy_crash")).stdout(std::fs::File::create(&log).unwrap()).spawn().unwrap();
    let t0 = Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("ready") {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = gdb(
        &dir,
        &[&format!("--attach={}", child.id())],
        "break late_fault\ncontinue\nlast-branch 2\ncontinue\nbt\nlast-branch 1\ncontinue",
    );
    assert!(out.contains("Breakpoint 1, ") && out.contains("late_fault ()"), "{out}");
    assert!(out.contains("Program received signal SIGSEGV"), "{out}");
    // At the crash: the call through NULL, from late_fault, live stack and recorded branch alike.
    assert!(out.lines().any(|l| l.starts_with("#1") && l.contains(" in late_fault ()")), "{out}");
    let last = out.lines().rfind(|l| l.contains(" -> 0x0")).unwrap_or_else(|| panic!("{out}"));
    assert!(last.contains("call") && last.contains("<late_fault+"), "{last}");
    assert!(out.contains("Program terminated with signal SIGSEGV"), "{out}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGSEGV));
}

#[test]
fn a_port_in_use_fails_before_the_process_is_touched() {
    let dir = scratch("gdb_live_port_in_use");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let (mut child, log) = start_ticker(&dir);
    let out = Command::new(BTS)
        .args(["gdbserver", "--listen", &port, &format!("--attach={}", child.id())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cannot listen on 127.0.0.1:"), "{}", text(&out.stderr));
    assert!(child.wait().unwrap().success());
    assert_eq!(std::fs::read_to_string(&log).unwrap(), ticker_native());
}
