//! `bts daemon`: many tracers of one program through one daemon, each with
//! its own buffers and charges, the kernel's access rules, and clients
//! that misbehave. Every test runs a real daemon and real programs.

mod common;
use common::daemon::{attach_req, settled, size, tracers_of, wait_for, Daemon, Target};
use common::*;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use broker::protocol::{self, ErrorKind, Reply, Request, WireOutcome, WireTarget};
use broker::ClientError;
use bts_reader::TraceFile;
use ptrace_shim::legacy::{
    PtraceBtsConfig, PTRACE_BTS_CLEAR, PTRACE_BTS_DRAIN, PTRACE_BTS_SIZE, PTRACE_BTS_STATUS,
};

const SEC: Duration = Duration::from_secs(1);

/// The untraced program's output.
fn reference_output(dir: &std::path::Path) -> String {
    let go = dir.join("ref.go");
    std::fs::write(&go, b"").unwrap();
    let out =
        Command::new(fixture("daemon_target")).arg(&go).arg("block").stdin(Stdio::null()).output().unwrap();
    text(&out.stdout)
}

#[test]
fn two_attaches_through_the_daemon_trace_one_program_side_by_side() {
    let d = Daemon::start("two");
    let mut t = Target::start(&d.dir, "two", "crash");
    let pid = t.pid().to_string();
    let run_client = |out: &str, size: &str| {
        Command::new(BTS)
            .args(["attach", &d.flag(), "--backend", "fast", "--buffer-size", size, "-o", out, &pid])
            .current_dir(&d.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = run_client("a.bts", "64K");
    let b = run_client("b.bts", "8K");
    wait_for(20 * SEC, "two tracers", || tracers_of(&d.list(), t.pid()).len() == 2);
    t.go();
    let printed = t.wait_done();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let status = t.child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGSEGV), "the program crashes as it would untraced");
    assert_eq!(printed, reference_output(&d.dir), "its output is unchanged");
    let mut lasts = Vec::new();
    for (out, file, cap) in [(&a, "a.bts", 64 * 1024), (&b, "b.bts", 8 * 1024)] {
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(139), "{err}");
        assert!(err.contains("got SIGSEGV at address 0x0"), "{err}");
        assert!(err.contains("<crash") && err.contains("-> 0x0"), "the NULL call is the last branch: {err}");
        let tf = TraceFile::read(&d.dir.join(file)).unwrap();
        let stream = tf.thread_streams().next().unwrap();
        assert_eq!(stream.capacity as usize, ds_alloc::alloc::bts_records(cap), "each has its own size");
        lasts.push(stream.records.iter().rev().take(40).copied().collect::<Vec<_>>());
    }
    assert_eq!(lasts[0], lasts[1], "both saw the same branches");
    wait_for(10 * SEC, "the daemon to let go", || d.list().tasks.is_empty());
}

#[test]
fn clear_and_drain_touch_only_the_callers_buffer() {
    let d = Daemon::start("clear");
    let mut t = Target::start(&d.dir, "clear", "block");
    let (mut a, mut b) = (d.client("a"), d.client("b"));
    assert!(matches!(
        a.call(&attach_req(t.pid(), 64 * 1024)).unwrap(),
        Reply::Attached { joined: false, .. }
    ));
    assert!(matches!(b.call(&attach_req(t.pid(), 32 * 1024)).unwrap(), Reply::Attached { joined: true, .. }));
    t.go();
    t.wait_done();
    let tid = t.pid();
    let before = settled(&mut b, tid);
    assert!(before > 600, "the work's branches are there: {before}");
    // CLEAR, as the legacy command and as a request.
    assert_eq!(a.legacy(PTRACE_BTS_CLEAR, tid as u32, 0, &[]).unwrap().0, 0);
    assert_eq!(size(&mut a, tid), 0);
    assert_eq!(size(&mut b, tid), before, "the other tracer keeps its records");
    b.call_ok(&Request::Clear { pid: t.pid() }).unwrap();
    assert_eq!(size(&mut b, tid), 0);
    // New records go to both again; DRAIN reads one's own, whole, then empties it.
    let (_, st) = b.legacy(PTRACE_BTS_STATUS, tid as u32, 0, &[]).unwrap();
    let cfg = PtraceBtsConfig::from_bytes(&st).unwrap();
    assert_eq!(cfg.bts_size, 32 * 1024);
    t.child.stdin.as_mut().unwrap().write_all(b"x").unwrap();
    wait_for(10 * SEC, "records after the clear", || size(&mut a, tid) > 0 && size(&mut b, tid) > 0);
    let n = settled(&mut a, tid);
    let (count, raw) = a.legacy(PTRACE_BTS_DRAIN, tid as u32, 0, &[]).unwrap();
    assert_eq!(count, n);
    assert_eq!(raw.len(), n as usize * 24);
    assert_eq!(size(&mut a, tid), 0, "drained");
    assert!(size(&mut b, tid) > 0, "b's records stay");
    let records = b.drain(tid).unwrap();
    assert!(!records.is_empty() && records.len() % 24 == 0);
    // Nobody's buffers but one's own.
    let mut c = d.client("c");
    match c.legacy(PTRACE_BTS_SIZE, tid as u32, 0, &[]) {
        Err(ClientError::Refused { kind: ErrorKind::NotFound, message }) => {
            assert!(message.contains("attach to it first"), "{message}")
        }
        other => panic!("another client's buffer was readable: {other:?}"),
    }
    drop((a, b));
    wait_for(10 * SEC, "the detach", || t.tracer_pid() == 0);
    assert!(t.finish().success());
}

#[test]
fn a_client_killed_with_sigkill_is_refunded_and_the_other_goes_on() {
    let d = Daemon::start("kill");
    let mut t = Target::start(&d.dir, "kill", "block");
    let mut killed = Command::new(BTS)
        .args(["attach", &d.flag(), "--backend", "fast", "--buffer-size", "256K", &t.pid().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(20 * SEC, "the first tracer", || tracers_of(&d.list(), t.pid()).len() == 1);
    let mut b = d.client("survivor");
    b.call(&attach_req(t.pid(), 64 * 1024)).unwrap();
    let l = d.list();
    let row = |l: &broker::protocol::Listing, pid: u32| {
        l.tracers.iter().find(|r| r.client_pid == pid as i32).cloned()
    };
    let killed_row = row(&l, killed.id()).expect("the CLI client is listed");
    assert!(killed_row.charged_bytes >= 256 * 1024, "{killed_row:?}");
    let survivor = |l: &broker::protocol::Listing| {
        l.tracers.iter().find(|r| r.name == "survivor").map(|r| r.charged_bytes)
    };
    let b_charge = survivor(&l);
    assert!(b_charge.unwrap() >= 64 * 1024);
    killed.kill().unwrap();
    killed.wait().unwrap();
    wait_for(10 * SEC, "the killed client to be forgotten", || row(&d.list(), killed.id()).is_none());
    let l = d.list();
    assert_eq!(survivor(&l), b_charge, "the other's charge is untouched");
    assert_eq!(tracers_of(&l, t.pid()).len(), 1, "and it still traces");
    t.go();
    t.wait_done();
    assert!(size(&mut b, t.pid()) > 600, "the survivor recorded the work");
    let trace = b.call_trace(&Request::Detach { pid: t.pid() }).unwrap();
    let tf = TraceFile::from_bytes(&trace).unwrap();
    assert_eq!(tf.meta.outcome, "detached");
    wait_for(10 * SEC, "the last tracer's detach", || t.tracer_pid() == 0);
    assert!(d.list().tracers.iter().all(|r| r.charged_bytes == 0), "charges balance to zero");
    assert!(t.finish().success(), "the program runs on unharmed");
}

#[test]
fn pebs_has_one_owner_across_clients() {
    let d = Daemon::start("pebs");
    let t = Target::start(&d.dir, "pebs", "block");
    let (mut a, mut b) = (d.client("vtune"), d.client("perf"));
    let req =
        Request::RequestPebs { target: WireTarget::Task(t.pid()), format: 4, reset: 10_000, records: 64 };
    a.call_ok(&req).unwrap();
    match b.call(&req) {
        Err(ClientError::Refused { kind: ErrorKind::Busy, message }) => {
            assert!(message.contains("busy: owned by vtune"), "{message}")
        }
        other => panic!("a second PEBS owner: {other:?}"),
    }
    let listed = d.list();
    let owner = listed.tracers.iter().find(|r| r.name == "vtune").unwrap();
    assert_eq!(owner.pebs, vec![WireTarget::Task(t.pid())]);
    assert!(owner.charged_bytes > 0, "PEBS buffers are charged too");
    drop(a);
    wait_for(10 * SEC, "the owner to go", || d.list().tracers.iter().all(|r| r.name != "vtune"));
    b.call_ok(&req).unwrap();
    b.call_ok(&Request::ReleasePebs { target: WireTarget::Task(t.pid()) }).unwrap();
    t.finish();
}

#[test]
fn unprivileged_clients_get_no_more_than_the_kernel_gives_them() {
    let d = Daemon::start("nobody");
    if !is_root() {
        // As an ordinary user, against one's own daemon: root's init is refused.
        let out = bts(&d.dir, &["attach", &d.flag(), "--backend", "fast", "1"]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{err}");
        assert!(err.contains("runs as uid 0 and you are uid"), "{err}");
        return;
    }
    let bin = shared_fixture("daemon_target");
    let go = d.dir.join("nobody.go");
    let spawn_as = |uid: Option<&str>| {
        let mut c = match uid {
            Some(u) => {
                let mut c = Command::new("setpriv");
                c.args([
                    format!("--reuid={u}"),
                    format!("--regid={u}"),
                    "--clear-groups".into(),
                    "--".into(),
                ]);
                c.arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        c.arg(&go)
            .arg("crash")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let attach_as_nobody = |pid: u32| {
        as_nobody(BTS)
            .args(["attach", &d.flag(), "--backend", "fast", &pid.to_string()])
            .current_dir(&d.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let mut roots = spawn_as(None);
    let mut others = spawn_as(Some("65533"));
    // A root client traces root's program meanwhile: nobody must not see it.
    let mut rc = d.client("root's tracer");
    rc.call(&attach_req(roots.id() as i32, 8192)).unwrap();
    let out = attach_as_nobody(roots.id());
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("runs as uid 0 and you are uid 65534") && err.contains("CAP_SYS_PTRACE"), "{err}");
    let out = attach_as_nobody(others.id());
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("runs as uid 65533 and you are uid 65534"), "{err}");
    let listing =
        as_nobody(BTS).args(["ctl", "--socket"]).arg(&d.socket).args(["tracers", "--json"]).output().unwrap();
    let shown: broker::protocol::Listing = serde_json::from_slice(&listing.stdout).unwrap();
    assert!(shown.tracers.iter().all(|r| r.uid == 65534), "nobody sees only its own tracers: {shown:?}");
    assert!(shown.tasks.is_empty(), "nor root's traced processes: {shown:?}");
    // Its own program: traced, reported.
    let mut own = spawn_as(Some("65534"));
    let nobody = as_nobody(BTS)
        .args(["attach", &d.flag(), "--backend", "fast", "--buffer-size", "16K", &own.id().to_string()])
        .current_dir(&d.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(20 * SEC, "nobody's tracer", || tracers_of(&d.list(), own.id() as i32).len() == 1);
    std::fs::write(&go, b"").unwrap();
    let out = nobody.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(139), "{err}");
    assert!(err.contains("-> 0x0"), "{err}");
    for c in [&mut roots, &mut others, &mut own] {
        let _ = c.kill();
        let _ = c.wait();
    }
    // A set-uid program exec'd under the daemon is root's: nobody stops
    // tracing it at the exec, and it runs as it would untraced.
    let su = std::path::Path::new("/usr/bin/su");
    if su.exists() {
        let out = as_nobody(BTS)
            .args([
                "run",
                &d.flag(),
                "--backend",
                "fast",
                "--report",
                "always",
                "--",
                "/usr/bin/su",
                "--version",
            ])
            .current_dir(&d.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
        assert!(text(&out.stdout).contains("su from util-linux"), "it ran: {}", text(&out.stdout));
        assert!(err.contains("exec'd a program you may not trace"), "{err}");
        assert!(!err.contains("trace saved"), "nothing of root's program is kept: {err}");
    }
}

fn raw(d: &Daemon) -> UnixStream {
    let s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(10 * SEC)).unwrap();
    s
}

fn read_reply(s: &mut UnixStream) -> Option<Reply> {
    protocol::read_frame(s, protocol::MAX_REPLY).ok().and_then(|p| protocol::decode_reply(&p).ok())
}

fn closed(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

#[test]
fn garbage_on_the_socket_drops_that_client_and_nobody_else() {
    let d = Daemon::start("garbage");
    let mut t = Target::start(&d.dir, "garbage", "block");
    let mut good = d.client("good");
    good.call(&attach_req(t.pid(), 64 * 1024)).unwrap();
    // Junk instead of a Hello.
    let mut s = raw(&d);
    s.write_all(&[0xff, 0xfe, 0x00, 0x00, 0xde, 0xad]).unwrap();
    assert!(matches!(read_reply(&mut s), Some(Reply::Error { kind: ErrorKind::Invalid, .. })));
    assert!(closed(&mut s));
    // Another version.
    let mut s = raw(&d);
    protocol::write_msg(&mut s, &Request::Hello { version: 99, name: "future".into() }).unwrap();
    match read_reply(&mut s) {
        Some(Reply::Error { message, .. }) => {
            assert!(message.contains("version 99") && message.contains("version 1"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // A good Hello, then an oversized frame; then one that never ends.
    for tail in [
        &(u32::MAX).to_le_bytes()[..],
        &[200, 0, 0, 0, 1, 2, 3][..],
        &[0x05, 0x00, 0x00, 0x00, 0x2a, 0xff, 0xff, 0xff, 0xff][..],
    ] {
        let mut s = raw(&d);
        protocol::write_msg(&mut s, &Request::Hello { version: protocol::VERSION, name: "bad".into() })
            .unwrap();
        assert!(matches!(read_reply(&mut s), Some(Reply::Hello { .. })));
        s.write_all(tail).unwrap();
        assert!(
            matches!(read_reply(&mut s), Some(Reply::Error { kind: ErrorKind::Invalid, .. })),
            "{tail:?}"
        );
        assert!(closed(&mut s));
    }
    assert!(d.log().contains("dropped"), "{}", d.log());
    // The good client was never disturbed.
    t.go();
    t.wait_done();
    assert!(size(&mut good, t.pid()) > 600);
    assert_eq!(tracers_of(&d.list(), t.pid()).len(), 1);
    drop(good);
    wait_for(10 * SEC, "the detach", || t.tracer_pid() == 0);
    assert!(t.finish().success());
}

#[test]
fn sigterm_stops_the_daemon_and_every_program_runs_on() {
    let mut d = Daemon::start("term");
    let mut t = Target::start(&d.dir, "term", "block");
    let mut c = d.client("watcher");
    c.call(&attach_req(t.pid(), 64 * 1024)).unwrap();
    assert_ne!(t.tracer_pid(), 0);
    assert!(d.stop().success(), "{}", d.log());
    match c.next_event(Some(10 * SEC)).unwrap() {
        Some(Reply::Ended { outcome: WireOutcome::Detached, trace, .. }) => {
            TraceFile::from_bytes(&trace).unwrap();
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.tracer_pid(), 0, "detached");
    assert!(!d.socket.exists(), "the socket is removed");
    t.go();
    assert_eq!(t.wait_done(), reference_output(&d.dir));
    assert!(t.finish().success());
}

#[test]
fn run_through_the_daemon_reports_as_in_process() {
    let d = Daemon::start("run");
    let bin = fixture("null_call");
    let out =
        bts(&d.dir, &["run", &d.flag(), "--backend", "fast", "-o", "r.bts", "--", bin.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(139), "{err}");
    assert!(err.contains(&format!("{} (pid", bin.display())), "named by its own command: {err}");
    let tf = TraceFile::read(&d.dir.join("r.bts")).unwrap();
    assert_eq!(tf.meta.command, vec![bin.display().to_string()]);
    let records = &tf.thread_streams().next().unwrap().records;
    assert_eq!(
        records.iter().rev().find(|r| r.is_branch()).unwrap().to,
        0,
        "the NULL call is the last branch"
    );
    // Exit statuses pass through.
    let out = bts(&d.dir, &["run", &d.flag(), "--backend", "fast", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let out = bts(&d.dir, &["run", &d.flag(), "--", "/nonexistent/program"]);
    assert_eq!(out.status.code(), Some(127));
    // No daemon there: a clear error.
    let out = bts(&d.dir, &["attach", "--daemon=/nonexistent/bts.sock", "1"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("cannot reach the bts daemon at /nonexistent/bts.sock"));
}

#[test]
fn a_socket_passed_by_systemd_is_served() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let dir = scratch("daemon_activation");
    let path = dir.join("activated.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" daemon --socket /run/bts-not-this.sock", BTS]);
    // SAFETY: dup2 and fcntl are async-signal-safe; fd 3 becomes the
    // listening socket, open across exec, as systemd passes it.
    unsafe {
        cmd.pre_exec(move || {
            let r = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(fd, 3) };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut daemon = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    drop(listener);
    let mut c = None;
    wait_for(10 * SEC, "the activated daemon", || {
        c = broker::Client::connect(&path, "activated").ok();
        c.is_some()
    });
    let listing = c.unwrap().list().unwrap();
    assert_eq!(listing.daemon_pid, daemon.id());
    assert!(!std::path::Path::new("/run/bts-not-this.sock").exists(), "it did not bind a socket of its own");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().unwrap().success());
    assert!(path.exists(), "systemd's socket is systemd's to remove");
}

#[test]
fn a_cpu_catch_all_coexists_with_task_buffers() {
    let d = Daemon::start("cpu");
    let mut t = Target::start(&d.dir, "cpu", "block");
    let mut a = d.client("per-task");
    a.call(&attach_req(t.pid(), 64 * 1024)).unwrap();
    let mut c = d.client("per-cpu");
    // Root may watch a whole CPU; the old allocator and today's perf would
    // refuse a per-CPU user beside a per-task one.
    c.call_ok(&Request::CpuBuffer { cpu: 0, bytes: 64 * 1024 }).unwrap();
    for (req, kind) in [
        (Request::CpuBuffer { cpu: 0, bytes: 4096 }, ErrorKind::Invalid),
        (Request::CpuBuffer { cpu: 1 << 20, bytes: 4096 }, ErrorKind::NotFound),
        (Request::DrainCpu { cpu: 1 }, ErrorKind::NotFound),
    ] {
        match c.call(&req) {
            Err(ClientError::Refused { kind: k, .. }) => assert_eq!(k, kind, "{req:?}"),
            other => panic!("{req:?}: {other:?}"),
        }
    }
    t.go();
    t.wait_done();
    assert!(settled(&mut a, t.pid()) > 600, "the task's branches go to its tracer's buffer");
    let l = d.list();
    let row = l.tracers.iter().find(|r| r.name == "per-cpu").unwrap();
    assert_eq!(row.cpus.len(), 1);
    assert!(row.charged_bytes >= 64 * 1024, "{row:?}");
    assert_eq!(row.cpus[0].records, 0, "a followed task's records never reach the catch-all");
    match c.call(&Request::DrainCpu { cpu: 0 }).unwrap() {
        Reply::Records(r) => assert!(r.is_empty()),
        other => panic!("{other:?}"),
    }
    drop(c);
    wait_for(10 * SEC, "the catch-all's refund", || d.list().tracers.iter().all(|r| r.name != "per-cpu"));
    drop(a);
    wait_for(10 * SEC, "the detach", || t.tracer_pid() == 0);
    assert!(t.finish().success());
}
