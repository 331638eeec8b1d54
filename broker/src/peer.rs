//! Who a client is, and what the kernel would let it do by itself.
//!
//! The daemon never lets a client do more than the client could do alone:
//! trace a process only where `ptrace(PTRACE_ATTACH)` would succeed for it
//! (`__ptrace_may_access`: same uids and gids, a dumpable target whose
//! capabilities the client holds, Yama's `ptrace_scope`, or
//! CAP_SYS_PTRACE), see kernel addresses only where perf_event_paranoid
//! would show them, and lock no more memory than its own RLIMIT_MEMLOCK.
//!
//! The credentials come from SO_PEERCRED; capabilities and limits from
//! `/proc/PID` of the peer, read while a pidfd of the peer (SO_PEERPIDFD)
//! proves the pid still names that process.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use ptrace_shim::status_field;

/// CAP_IPC_LOCK: lock memory beyond RLIMIT_MEMLOCK.
const CAP_IPC_LOCK: u32 = 14;
/// CAP_SYS_PTRACE: trace any process.
const CAP_SYS_PTRACE: u32 = 19;
/// CAP_SYS_ADMIN.
const CAP_SYS_ADMIN: u32 = 21;
/// CAP_PERFMON.
const CAP_PERFMON: u32 = 38;
/// `SO_PEERPIDFD` (Linux 6.5).
const SO_PEERPIDFD: libc::c_int = 77;

/// Why a client is refused, in its terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// No such process.
    #[error("no process with pid {0}")]
    NoSuchProcess(i32),
    /// A thread id, not a process.
    #[error("{0} is a thread, not a process: attach to its process")]
    NotAProcess(i32),
    /// The kernel would refuse the client.
    #[error("not allowed to trace pid {pid}: {why}")]
    Denied {
        /// The process.
        pid: i32,
        /// Which rule.
        why: String,
    },
    /// The peer's credentials could not be read.
    #[error("cannot tell who the client is: {0}")]
    Unknown(String),
}

/// A connected client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its pid (SO_PEERCRED).
    pub pid: i32,
    /// Its uid (SO_PEERCRED: the effective uid at connect).
    pub uid: u32,
    /// Its gid.
    pub gid: u32,
    /// Its effective capabilities.
    pub cap_eff: u64,
    /// Its permitted capabilities.
    pub cap_prm: u64,
    /// Its RLIMIT_MEMLOCK in bytes; `u64::MAX` when not limited.
    pub memlock: u64,
}

fn has(caps: u64, cap: u32) -> bool {
    caps & (1u64 << cap) != 0
}

fn ids(pid: i32, key: &str) -> Option<Vec<u32>> {
    status_field(pid, key)?.split_whitespace().map(|v| v.parse().ok()).collect()
}

fn caps(pid: i32, key: &str) -> Option<u64> {
    u64::from_str_radix(&status_field(pid, key)?, 16).ok()
}

/// The soft RLIMIT_MEMLOCK of `pid` from `/proc/PID/limits`, in bytes.
fn memlock_of(pid: i32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = s.lines().find(|l| l.starts_with("Max locked memory"))?;
    let soft = line.trim_start_matches("Max locked memory").split_whitespace().next()?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

/// The credentials of the process at the other end of `stream`, as it connected.
pub(crate) fn peer_cred(stream: &UnixStream) -> std::io::Result<libc::ucred> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid out-pointers of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred)
}

/// A pidfd of the peer, where the kernel offers one.
fn peer_pidfd(stream: &UnixStream) -> Option<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: fd and len are valid out-pointers of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    // SAFETY: on success the kernel gave us a new descriptor we now own.
    (r == 0 && fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A pidfd of process `pid` (Linux 5.3), to tell later whether the pid
/// still names the same process.
pub(crate) fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a non-negative return is a new descriptor we now own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// True while the process behind `pidfd` has not exited (its pid cannot
/// have been reused).
pub(crate) fn pidfd_alive(pidfd: &OwnedFd) -> bool {
    // SAFETY: signal 0 only checks; no siginfo is passed.
    unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), 0, std::ptr::null::<u8>(), 0) == 0
    }
}

impl Peer {
    /// The client at the other end of `stream`.
    pub fn of(stream: &UnixStream) -> Result<Peer, AccessError> {
        let cred = peer_cred(stream).map_err(|e| AccessError::Unknown(format!("SO_PEERCRED: {e}")))?;
        let pidfd = peer_pidfd(stream);
        let pid = cred.pid;
        let gone = || AccessError::Unknown(format!("client pid {pid} is gone"));
        let mut cap_eff = caps(pid, "CapEff").ok_or_else(gone)?;
        let mut cap_prm = caps(pid, "CapPrm").ok_or_else(gone)?;
        let limit = memlock_of(pid).ok_or_else(gone)?;
        let uids = ids(pid, "Uid").ok_or_else(gone)?;
        let gids = ids(pid, "Gid").ok_or_else(gone)?;
        let user_ns = fs::read_link(format!("/proc/{pid}/ns/user")).ok();
        // The pid must still name the peer: with a pidfd, it is alive;
        // without (kernels before 6.5), it has the peer's uid at least.
        let same = match &pidfd {
            Some(fd) => pidfd_alive(fd),
            None => uids.get(1) == Some(&cred.uid),
        };
        if !same {
            return Err(gone());
        }
        // Capabilities count only as the kernel would count them for this
        // daemon's processes: held in the daemon's own user namespace (not
        // a namespace the client made for itself), by a process whose ids
        // are all the ones it connected with (not one that exec'd a
        // set-uid program since).
        let own_ns = fs::read_link("/proc/self/ns/user").ok();
        let uniform = uids.iter().all(|&u| u == cred.uid) && gids.iter().all(|&g| g == cred.gid);
        if !uniform || user_ns.is_none() || user_ns != own_ns {
            cap_eff = 0;
            cap_prm = 0;
        }
        let memlock = if has(cap_eff, CAP_IPC_LOCK) { u64::MAX } else { limit };
        Ok(Peer { pid, uid: cred.uid, gid: cred.gid, cap_eff, cap_prm, memlock })
    }

    /// The daemon's own process, as a peer (tests and in-process use).
    pub fn current() -> Result<Peer, AccessError> {
        let pid = std::process::id() as i32;
        let unknown = || AccessError::Unknown("cannot read /proc/self".into());
        let cap_eff = caps(pid, "CapEff").ok_or_else(unknown)?;
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        Ok(Peer {
            pid,
            uid,
            gid,
            cap_eff,
            cap_prm: caps(pid, "CapPrm").ok_or_else(unknown)?,
            memlock: if has(cap_eff, CAP_IPC_LOCK) {
                u64::MAX
            } else {
                memlock_of(pid).ok_or_else(unknown)?
            },
        })
    }

    /// The peer has CAP_SYS_PTRACE.
    pub fn may_trace_anyone(&self) -> bool {
        has(self.cap_eff, CAP_SYS_PTRACE)
    }

    /// Root's view in listings: CAP_SYS_PTRACE, as for reading any process.
    pub fn sees_everyone(&self) -> bool {
        self.may_trace_anyone()
    }

    /// Kernel addresses may be shown to the peer: perf_event_paranoid <= 1,
    /// or CAP_PERFMON or CAP_SYS_ADMIN.
    pub fn may_see_kernel(&self) -> bool {
        paranoid() <= 1 || has(self.cap_eff, CAP_PERFMON) || has(self.cap_eff, CAP_SYS_ADMIN)
    }

    /// The peer may sample a whole CPU: perf_event_paranoid <= 0, or CAP_PERFMON or CAP_SYS_ADMIN.
    pub fn may_watch_cpus(&self) -> bool {
        paranoid() <= 0 || has(self.cap_eff, CAP_PERFMON) || has(self.cap_eff, CAP_SYS_ADMIN)
    }

    /// Whether the kernel would let the peer ptrace process `pid`.
    pub fn may_trace(&self, pid: i32) -> Result<(), AccessError> {
        if pid <= 0 || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return Err(AccessError::NoSuchProcess(pid));
        }
        let tgid = status_field(pid, "Tgid").and_then(|t| t.parse::<i32>().ok());
        if tgid.is_some_and(|t| t != pid) {
            return Err(AccessError::NotAProcess(pid));
        }
        let denied = |why: String| Err(AccessError::Denied { pid, why });
        if pid == std::process::id() as i32 {
            return denied("it is the daemon itself".into());
        }
        let scope = yama_scope();
        if scope >= 3 {
            return denied("kernel.yama.ptrace_scope is 3: nobody may attach".into());
        }
        if self.may_trace_anyone() {
            return Ok(());
        }
        if scope == 2 {
            return denied("kernel.yama.ptrace_scope is 2: attaching needs CAP_SYS_PTRACE".into());
        }
        let (Some(uids), Some(gids)) = (ids(pid, "Uid"), ids(pid, "Gid")) else {
            return Err(AccessError::NoSuchProcess(pid));
        };
        if uids.iter().take(3).any(|&u| u != self.uid) {
            return denied(format!(
                "it runs as uid {} and you are uid {}; tracing another user's process needs CAP_SYS_PTRACE",
                uids.get(1).copied().unwrap_or(u32::MAX),
                self.uid
            ));
        }
        if gids.iter().take(3).any(|&g| g != self.gid) {
            return denied(format!(
                "its gids ({}) are not all your gid {}: it changed group (set-gid); tracing it needs CAP_SYS_PTRACE",
                gids.iter().take(3).map(|g| g.to_string()).collect::<Vec<_>>().join(", "),
                self.gid
            ));
        }
        if !dumpable(pid, uids.get(1).copied().unwrap_or(0)) {
            return denied(
                "it is not dumpable (set-uid, file capabilities, or prctl); tracing it needs CAP_SYS_PTRACE"
                    .into(),
            );
        }
        let target_caps = caps(pid, "CapPrm").unwrap_or(u64::MAX);
        if target_caps & !self.cap_prm != 0 {
            return denied("it holds capabilities you do not; tracing it needs CAP_SYS_PTRACE".into());
        }
        if scope == 1 && !descends_from(pid, self.pid) {
            return denied(
                "kernel.yama.ptrace_scope is 1: only a process's ancestors may attach to it (or CAP_SYS_PTRACE)"
                    .into(),
            );
        }
        Ok(())
    }
}

fn read_int(path: &str) -> Option<i64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn paranoid() -> i64 {
    read_int("/proc/sys/kernel/perf_event_paranoid").unwrap_or(2)
}

/// Yama's `ptrace_scope` (0 where Yama is absent).
fn yama_scope() -> i64 {
    read_int("/proc/sys/kernel/yama/ptrace_scope").unwrap_or(0)
}

/// A non-dumpable process's `/proc/PID` belongs to root (the kernel's
/// `task_dump_owner`), whoever it runs as.
fn dumpable(pid: i32, euid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    match fs::metadata(format!("/proc/{pid}")) {
        Ok(m) => m.uid() == euid || euid == 0,
        Err(_) => false,
    }
}

fn descends_from(mut pid: i32, ancestor: i32) -> bool {
    for _ in 0..4096 {
        if pid == ancestor {
            return true;
        }
        match status_field(pid, "PPid").and_then(|p| p.parse::<i32>().ok()) {
            Some(p) if p > 0 => pid = p,
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_process_reads_as_a_peer() {
        let me = Peer::current().unwrap();
        assert_eq!(me.pid, std::process::id() as i32);
        assert!(me.memlock > 0);
        assert!(matches!(me.may_trace(me.pid), Err(AccessError::Denied { .. })), "never the daemon itself");
        assert_eq!(me.may_trace(i32::MAX), Err(AccessError::NoSuchProcess(i32::MAX)));
    }

    #[test]
    fn another_uid_is_refused_without_cap_sys_ptrace() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let pid = child.id() as i32;
        let stranger = Peer { pid: 1, uid: 65534, gid: 65534, cap_eff: 0, cap_prm: 0, memlock: 0 };
        let me = Peer::current().unwrap();
        let r = stranger.may_trace(pid);
        let mine = me.may_trace(pid);
        let _ = child.kill();
        let _ = child.wait();
        let e = r.unwrap_err().to_string();
        if me.uid != 65534 {
            assert!(e.contains("uid 65534") && e.contains("CAP_SYS_PTRACE"), "{e}");
        }
        assert_eq!(mine, Ok(()), "its parent, same uid, may");
    }
}
