//! A real `bts daemon` for a test, and the target program its clients trace.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use broker::protocol::{Listing, Request, WireBackend};
use broker::Client;

use super::{fixture, BTS};

/// A daemon on its own socket, stopped (SIGTERM) when dropped.
pub struct Daemon {
    pub child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
}

impl Daemon {
    /// Starts `bts daemon` in a fresh folder everyone may enter.
    pub fn start(test: &str) -> Daemon {
        let dir = PathBuf::from(format!("/tmp/bts-daemon-test-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let socket = dir.join("bts.sock");
        let child = Command::new(BTS)
            .args(["daemon", "--io-timeout-ms", "1500", "--socket"])
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
            .spawn()
            .unwrap();
        let d = Daemon { child, dir, socket };
        wait_for(Duration::from_secs(10), "the daemon's socket", || {
            Client::connect(&d.socket, "probe").is_ok()
        });
        d
    }

    /// `--daemon=SOCKET`.
    pub fn flag(&self) -> String {
        format!("--daemon={}", self.socket.display())
    }

    /// A library client.
    pub fn client(&self, name: &str) -> Client {
        Client::connect(&self.socket, name).unwrap()
    }

    /// The listing, as root sees it.
    pub fn list(&self) -> Listing {
        self.client("test list").list().unwrap()
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// Peak and current resident memory of the daemon, in bytes.
    pub fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |k: &str| -> u64 {
            let line = status.lines().find(|l| l.starts_with(k)).unwrap();
            line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    /// Stops it with SIGTERM; its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `ok` until it holds, or fails the test naming `what`.
pub fn wait_for(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The target program, waiting for its go file.
pub struct Target {
    pub child: Child,
    pub go: PathBuf,
}

impl Target {
    /// Starts `daemon_target GO MODE` (MODE: crash or block); stdout piped.
    pub fn start(dir: &Path, name: &str, mode: &str) -> Target {
        let go = dir.join(format!("{name}.go"));
        let child = Command::new(fixture("daemon_target"))
            .arg(&go)
            .arg(mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Target { child, go }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Lets it run its work.
    pub fn go(&self) {
        std::fs::write(&self.go, b"").unwrap();
    }

    /// Waits until it printed "done" (blocked on stdin in block mode).
    pub fn wait_done(&mut self) -> String {
        use std::io::BufRead;
        let out = self.child.stdout.as_mut().unwrap();
        let mut r = std::io::BufReader::new(out);
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap() == 0 {
                return text;
            }
            text.push_str(&line);
            if line == "done\n" {
                return text;
            }
        }
    }

    /// The tracer pid the kernel shows for it.
    pub fn tracer_pid(&self) -> i32 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines().find_map(|l| l.strip_prefix("TracerPid:")).unwrap().trim().parse().unwrap()
    }

    /// Closes its stdin (block mode ends) and waits for it.
    pub fn finish(mut self) -> std::process::ExitStatus {
        drop(self.child.stdin.take());
        self.child.wait().unwrap()
    }
}

/// An attach request of `bytes` per thread with the fast recorder.
pub fn attach_req(pid: i32, bytes: u64) -> Request {
    Request::Attach {
        pid,
        buffer_bytes: bytes,
        backend: WireBackend::Fast,
        pin_cpu: false,
        stack_bytes: 4096,
        from_exec: false,
    }
}

/// The ids of the tracers of `pid` in a listing.
pub fn tracers_of(l: &Listing, pid: i32) -> Vec<u64> {
    l.tasks.iter().find(|t| t.pid == pid).map(|t| t.tracers.clone()).unwrap_or_default()
}

/// Records in client `c`'s buffer of thread `tid` (legacy SIZE).
pub fn size(c: &mut broker::Client, tid: i32) -> i64 {
    c.legacy(ptrace_shim::legacy::PTRACE_BTS_SIZE, tid as u32, 0, &[]).unwrap().0
}

/// The size once the program stopped making branches (blocked in read).
pub fn settled(c: &mut broker::Client, tid: i32) -> i64 {
    let mut last = -1;
    loop {
        let now = size(c, tid);
        if now == last {
            return now;
        }
        last = now;
        std::thread::sleep(Duration::from_millis(150));
    }
}
