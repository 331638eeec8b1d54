//! The daemon: it accepts clients on a Unix socket, gives each a pair of
//! threads (one reads and serves its requests, one writes its replies and
//! events from a bounded queue), and runs one session thread per traced
//! process. Every client is a follower in the one hub.
//!
//! Lock order: `sessions`, then a session's inbox or the hub; `clients`
//! and the hub are each taken alone. No lock is held while waiting for
//! another thread: a session being attached is a placeholder entry.

use std::collections::HashMap;
use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ds_alloc::TracerId;
use ptrace_shim::hub::{Hub, SharedHub};

use crate::peer::Peer;
use crate::protocol::{Reply, WireTarget};

mod client;
mod list;
mod session;

/// Replies and events queued for one client before it counts as too slow
/// and is dropped.
pub const OUTBOX: usize = 64;
/// Clients served at once; more are refused (each costs two threads).
pub const MAX_CLIENTS: usize = 1024;
/// How long a frame may take to arrive once begun, and a reply to be
/// taken by the client, unless [`Daemon::set_io_timeout`] says otherwise.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// Another daemon answers on the socket.
    #[error("a daemon already listens on {0}")]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("{0} exists and is not a socket: not replacing it")]
    NotASocket(PathBuf),
    /// Binding or setting up the socket failed.
    #[error("{what} {path}: {source}")]
    Socket {
        /// What was being done.
        what: &'static str,
        /// The socket.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The signal handlers could not be set.
    #[error("signal handlers: {0}")]
    Signals(io::Error),
}

/// What goes out to a client: a reply or event, or a drained buffer sent
/// as a [`Reply::Records`] frame straight from its memory.
pub(crate) enum Outgoing {
    Reply(Reply),
    Records(ds_alloc::BtsBuffer),
}

impl From<Reply> for Outgoing {
    fn from(r: Reply) -> Outgoing {
        Outgoing::Reply(r)
    }
}

/// A connected client, as the session threads and listings see it.
pub(crate) struct ClientEntry {
    pub id: u64,
    pub name: String,
    pub peer: Peer,
    pub outbox: SyncSender<Outgoing>,
    /// To cut the connection of a client that is too slow.
    pub stream: UnixStream,
    pub pebs: Vec<WireTarget>,
    /// Its per-CPU catch-all buffers.
    pub cpus: Vec<(u32, ds_alloc::BtsHandle)>,
}

/// A traced process.
pub(crate) struct SessionEntry {
    pub command: Vec<String>,
    pub backend: &'static str,
    /// The session thread's requests (snapshots, detach), and its flag.
    pub inbox: Arc<Mutex<Vec<session::Ask>>>,
    pub attention: Arc<AtomicBool>,
    /// The session thread, to signal out of `waitpid`.
    pub thread: libc::pid_t,
}

/// What every thread of the daemon shares.
pub(crate) struct Shared {
    pub hub: SharedHub,
    pub sessions: Mutex<HashMap<i32, SessionEntry>>,
    pub clients: Mutex<HashMap<TracerId, ClientEntry>>,
    pub next_id: AtomicU64,
    pub log: Box<dyn Fn(&str) + Send + Sync>,
    pub stopping: AtomicBool,
    /// Milliseconds a begun frame or a reply may take.
    pub io_timeout_ms: AtomicU64,
    /// Connections being served (counted at accept, before any thread).
    pub connections: std::sync::atomic::AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(crate) fn io_timeout(&self) -> Duration {
        Duration::from_millis(self.io_timeout_ms.load(Ordering::SeqCst))
    }

    pub(crate) fn sessions(&self) -> MutexGuard<'_, HashMap<i32, SessionEntry>> {
        lock(&self.sessions)
    }

    pub(crate) fn clients(&self) -> MutexGuard<'_, HashMap<TracerId, ClientEntry>> {
        lock(&self.clients)
    }

    pub(crate) fn hub(&self) -> MutexGuard<'_, Hub> {
        ptrace_shim::hub::lock(&self.hub)
    }

    /// Queues `msg` for client `t`; a client whose queue is full is too
    /// slow and is cut off (its threads then clean up after it).
    pub(crate) fn send(&self, t: TracerId, msg: Reply) {
        let clients = self.clients();
        let Some(c) = clients.get(&t) else { return };
        match c.outbox.try_send(Outgoing::Reply(msg)) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                (self.log)(&format!("client {} ({}, pid {}) is too slow: dropped", c.id, c.name, c.peer.pid));
                let _ = c.stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// Asks the session of `pid` for something, and wakes its thread.
    pub(crate) fn ask(&self, pid: i32, ask: session::Ask) -> bool {
        let sessions = self.sessions();
        let Some(s) = sessions.get(&pid) else { return false };
        lock(&s.inbox).push(ask);
        s.attention.store(true, Ordering::SeqCst);
        // A session still attaching sees its flag when it starts.
        if s.thread != 0 {
            session::wake(s.thread);
        }
        true
    }

    /// Detaches from `pid` if no client follows it any more.
    pub(crate) fn detach_if_unfollowed(&self, pid: i32) {
        if self.hub().followers(pid).is_empty() {
            self.ask(pid, session::Ask::DetachIfUnfollowed);
        }
    }
}

/// A daemon, bound and ready to serve.
pub struct Daemon {
    listener: UnixListener,
    path: Option<PathBuf>,
    shared: Arc<Shared>,
}

/// `LISTEN_FDS` from systemd's socket activation: the listening socket it
/// passed as fd 3, if it passed one to this process.
fn activated_listener() -> Option<UnixListener> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    let fds: u32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    if pid != std::process::id() || fds < 1 {
        return None;
    }
    const SD_LISTEN_FDS_START: RawFd = 3;
    // SAFETY: systemd passed fd 3 to this process as a listening socket it
    // no longer uses; we take ownership of it once.
    Some(unsafe { UnixListener::from_raw_fd(SD_LISTEN_FDS_START) })
}

impl Daemon {
    /// Binds `path` (or takes the socket systemd passed): 0666 when run as
    /// root, since access is checked per request; 0600 otherwise. A stale
    /// socket (nobody answers) is replaced; a live one is an error.
    pub fn bind(path: &Path, log: Box<dyn Fn(&str) + Send + Sync>) -> Result<Daemon, DaemonError> {
        let shared = Arc::new(Shared {
            hub: Hub::new().shared(),
            sessions: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            log,
            stopping: AtomicBool::new(false),
            io_timeout_ms: AtomicU64::new(IO_TIMEOUT.as_millis() as u64),
            connections: std::sync::atomic::AtomicUsize::new(0),
        });
        session::install_wake_handler().map_err(DaemonError::Signals)?;
        if let Some(listener) = activated_listener() {
            return Ok(Daemon { listener, path: None, shared });
        }
        let sock = |what, source| DaemonError::Socket { what, path: path.to_path_buf(), source };
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(DaemonError::NotASocket(path.to_path_buf()));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(DaemonError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(|e| sock("removing the stale socket", e))?;
        }
        let listener = UnixListener::bind(path).map_err(|e| sock("binding", e))?;
        // SAFETY: geteuid cannot fail.
        let mode = if unsafe { libc::geteuid() } == 0 { 0o666 } else { 0o600 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| sock("chmod", e))?;
        Ok(Daemon { listener, path: Some(path.to_path_buf()), shared })
    }

    /// Sets how long a client may take to finish a frame it began, or to
    /// take a reply, before it is dropped.
    pub fn set_io_timeout(&self, t: Duration) {
        self.shared.io_timeout_ms.store(t.as_millis().max(1) as u64, Ordering::SeqCst);
    }

    /// Serves until `stop` is set (by SIGTERM or SIGINT, say); then
    /// detaches from every process, leaving each as it was, and removes
    /// the socket it made.
    pub fn run(self, stop: &AtomicBool) -> io::Result<()> {
        self.listener.set_nonblocking(true)?;
        while !stop.load(Ordering::SeqCst) {
            match self.listener.accept() {
                Ok((stream, _)) => client::spawn(&self.shared, stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut pfd =
                        libc::pollfd { fd: listener_fd(&self.listener), events: libc::POLLIN, revents: 0 };
                    // SAFETY: one valid pollfd; a signal or the timeout ends the wait.
                    unsafe { libc::poll(&mut pfd, 1, 100) };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    (self.shared.log)(&format!("accept: {e}"));
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            session::rewake(&self.shared);
        }
        self.shutdown();
        Ok(())
    }

    fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let pids: Vec<i32> = self.shared.sessions().keys().copied().collect();
        for pid in pids {
            self.shared.ask(pid, session::Ask::Detach);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.shared.sessions().is_empty() && Instant::now() < deadline {
            session::rewake(&self.shared);
            std::thread::sleep(Duration::from_millis(20));
        }
        // Each client's reader ends; its writer sends what is queued (the
        // traces of the detach) and ends.
        for c in self.shared.clients().values() {
            let _ = c.stream.shutdown(std::net::Shutdown::Read);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.shared.clients().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Only the socket: never a file someone put at its name meanwhile.
        if let Some(p) = &self.path {
            use std::os::unix::fs::FileTypeExt;
            if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

fn listener_fd(l: &UnixListener) -> RawFd {
    use std::os::fd::AsRawFd;
    l.as_raw_fd()
}
