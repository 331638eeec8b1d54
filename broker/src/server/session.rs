//! One session thread per traced process: it attaches, runs the recording
//! session, and sends each follower its own trace at a crash and at the
//! end. Other threads reach it through its inbox and a signal that takes
//! it out of `waitpid` (SIGURG, caught by a handler that does nothing).

use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};

use bts_reader::{Meta, TraceFile};
use ds_alloc::TracerId;
use ptrace_shim::hub::Follow;
use ptrace_shim::{Options, Outcome, Recording, Session, Stop};

use super::{lock, Shared};
use crate::protocol::{ErrorKind, Reply, WireOutcome};

/// The signal that wakes a session thread.
const WAKE: i32 = libc::SIGURG;

/// What a session thread is asked from outside.
pub(crate) enum Ask {
    /// The follower's trace now, answered on the channel.
    Snapshot { tracer: TracerId, reply: Sender<Reply> },
    /// Detach (the daemon stops).
    Detach,
    /// Detach if nobody follows the process any more.
    DetachIfUnfollowed,
}

extern "C" fn on_wake(_: libc::c_int) {}

/// Installs the do-nothing handler, without SA_RESTART: a blocked
/// `waitpid` returns EINTR and the session looks at its flags.
pub(crate) fn install_wake_handler() -> io::Result<()> {
    // SAFETY: a zeroed sigaction with a handler that does nothing is valid.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_wake as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(WAKE, &sa, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Signals the session thread `tid` of this process.
pub(crate) fn wake(tid: libc::pid_t) {
    // SAFETY: signalling a thread of our own process with a caught signal.
    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, WAKE) };
}

/// Wakes every session thread (the accept loop calls this every 100 ms):
/// a signal that came just before a thread blocked in `waitpid` was lost,
/// and a detach waits for stopped threads by this tick, as bts's own
/// interval timer ticks in-process.
pub(crate) fn rewake(shared: &Shared) {
    for s in shared.sessions().values() {
        if s.thread != 0 {
            wake(s.thread);
        }
    }
}

/// What starting a session needs.
pub(crate) struct Start {
    pub pid: i32,
    pub opts: Options,
    pub first: TracerId,
    pub follow: Follow,
    /// The entry's inbox and flag, made with its placeholder.
    pub inbox: Arc<Mutex<Vec<Ask>>>,
    pub attention: Arc<AtomicBool>,
}

/// How long attaching may take before the client is answered.
const ATTACH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn error_reply(e: &ptrace_shim::Error) -> Reply {
    use ptrace_shim::Error as E;
    let kind = match e {
        E::PermissionDenied { .. } => ErrorKind::Denied,
        E::NoSuchProcess { .. } | E::Zombie { .. } | E::NotAProcess { .. } => ErrorKind::NotFound,
        E::Alloc(_) => ErrorKind::Limit,
        _ => ErrorKind::Failed,
    };
    Reply::error(kind, e.to_string())
}

/// The threads of process `pid` now.
pub(crate) fn threads_of(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()
}

/// What a session thread says once attached: the command line and its own tid.
pub(crate) type Ready = Result<(Vec<String>, libc::pid_t), Reply>;

/// Attaches to `start.pid` on a new thread, with `start.first` following
/// it. Returns once attached (or failed, or after [`ATTACH_TIMEOUT`]: the
/// thread then lets the process go when it is done attaching).
pub(crate) fn start(shared: &Arc<Shared>, start: Start) -> Ready {
    let (tx, rx) = mpsc::channel();
    let sh = Arc::clone(shared);
    let spawned =
        std::thread::Builder::new().name(format!("session {}", start.pid)).spawn(move || run(sh, start, tx));
    if let Err(e) = spawned {
        return Err(Reply::error(ErrorKind::Failed, format!("cannot start a session thread: {e}")));
    }
    match rx.recv_timeout(ATTACH_TIMEOUT) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(Reply::error(
            ErrorKind::Failed,
            "attaching took longer than 30 s (a thread that does not stop?)",
        )),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(Reply::error(ErrorKind::Failed, "the session thread died"))
        }
    }
}

/// Removes the session's entry and every follower of its process when the
/// session thread ends, however it ends (a panic too).
struct Cleanup {
    shared: Arc<Shared>,
    pid: i32,
    inbox: Arc<Mutex<Vec<Ask>>>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut sessions = self.shared.sessions();
        // Only this session's entry: a later one may have the same pid.
        if sessions.get(&self.pid).is_some_and(|e| Arc::ptr_eq(&e.inbox, &self.inbox)) {
            sessions.remove(&self.pid);
        }
        let mut hub = self.shared.hub();
        for t in hub.followers(self.pid) {
            hub.unfollow(t, self.pid);
        }
    }
}

/// Lets the process go, quietly (nobody follows it).
fn let_go(session: &mut Session) {
    session.request_detach();
    while let Ok(stop) = session.next_stop() {
        match stop {
            Stop::Finished(_) => break,
            Stop::Crash(_) if session.deliver_crash().is_err() => break,
            _ => {}
        }
    }
}

fn run(shared: Arc<Shared>, mut start: Start, ready: Sender<Ready>) {
    let pid = start.pid;
    start.opts.attention = Some(Arc::clone(&start.attention));
    start.opts.hub = Some(Arc::clone(&shared.hub));
    let mut session = match Session::attach(pid, start.opts) {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(error_reply(&e)));
            return;
        }
    };
    let command = ptrace_shim::process_command(pid);
    let followed = {
        let mut hub = shared.hub();
        hub.follow(start.first, pid, &threads_of(pid), start.follow)
    };
    if let Err(e) = followed {
        let _ = ready.send(Err(Reply::error(ErrorKind::Limit, e.to_string())));
        return let_go(&mut session);
    }
    // SAFETY: gettid cannot fail.
    let thread = unsafe { libc::gettid() };
    if ready.send(Ok((command.clone(), thread))).is_err() {
        // The client was answered already (too slow): nobody follows.
        shared.hub().unfollow(start.first, pid);
        return let_go(&mut session);
    }
    let _cleanup = Cleanup { shared: Arc::clone(&shared), pid, inbox: Arc::clone(&start.inbox) };
    let outcome = serve(&shared, &mut session, pid, &command, &start.inbox);
    (shared.log)(&format!("pid {pid} ({}): {outcome}", command.join(" ")));
}

/// Runs the session to its end; says how it ended.
fn serve(
    shared: &Shared,
    session: &mut Session,
    pid: i32,
    command: &[String],
    inbox: &Mutex<Vec<Ask>>,
) -> String {
    let mut failed = false;
    loop {
        let stop = session.next_stop();
        for n in session.take_notices() {
            let msg = Reply::Notice { pid, message: n.to_string() };
            match n.follower() {
                Some(t) if n.ends_following() => {
                    // No trace: what it recorded before the exec is all it may have, and it has it.
                    shared.send(t, msg);
                    shared.send(t, Reply::Ended { pid, outcome: WireOutcome::Detached, trace: Vec::new() });
                }
                Some(t) => shared.send(t, msg),
                None => {
                    let followers = shared.hub().followers(pid);
                    followers.into_iter().for_each(|t| shared.send(t, msg.clone()));
                }
            }
        }
        // Nobody follows it any more (the last follower left, or an exec
        // took the process beyond every follower's rights): let it go.
        if shared.hub().followers(pid).is_empty() {
            session.request_detach();
        }
        match stop {
            Ok(Stop::Crash(c)) => {
                let meta = c.meta(command);
                let followers = shared.hub().followers(pid);
                for t in followers {
                    let trace = trace_for(shared, session, t, meta.clone());
                    shared.send(t, Reply::Crash { pid, trace });
                }
                if let Err(e) = session.deliver_crash() {
                    failed = true;
                    (shared.log)(&format!("pid {pid}: {e}"));
                    session.request_detach();
                }
            }
            Ok(Stop::Finished(o)) => {
                let outcome = match o {
                    Outcome::Exited(c) => WireOutcome::Exited(c),
                    Outcome::Signaled(s) => WireOutcome::Signaled(s),
                    Outcome::Detached(_) => WireOutcome::Detached,
                };
                let followers = shared.hub().followers(pid);
                for t in followers {
                    let trace = trace_for(shared, session, t, o.meta(command, pid));
                    shared.send(t, Reply::Ended { pid, outcome, trace });
                }
                return match o {
                    Outcome::Exited(c) => format!("exited with code {c}"),
                    Outcome::Signaled(s) => format!("killed by {}", ptrace_shim::sys::signal_name(s)),
                    Outcome::Detached(_) => "detached".into(),
                };
            }
            Ok(Stop::Attention) => {
                let asks: Vec<Ask> = std::mem::take(&mut *lock(inbox));
                for ask in asks {
                    match ask {
                        Ask::Snapshot { tracer, reply } => {
                            let meta = Outcome::Detached(0).meta(command, pid);
                            let _ = reply.send(Reply::Trace(trace_for(shared, session, tracer, meta)));
                        }
                        Ask::Detach => session.request_detach(),
                        Ask::DetachIfUnfollowed => {
                            if shared.hub().followers(pid).is_empty() {
                                session.request_detach();
                            }
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                (shared.log)(&format!("pid {pid}: tracing failed: {e}"));
                if failed {
                    // Detaching failed too: the thread's exit detaches what is left.
                    return format!("tracing failed: {e}");
                }
                failed = true;
                let followers = shared.hub().followers(pid);
                for t in followers {
                    shared.send(t, Reply::Notice { pid, message: format!("tracing failed: {e}; detaching") });
                }
                session.request_detach();
            }
        }
    }
}

/// Follower `t`'s trace as a `.bts` file; kernel addresses dropped unless
/// it may see them.
fn trace_for(shared: &Shared, session: &mut Session, t: TracerId, meta: Meta) -> Vec<u8> {
    let mut rec = session.recording_for(t);
    let kernel_ok = shared.clients().get(&t).is_some_and(|c| c.peer.may_see_kernel());
    if !kernel_ok {
        hide_kernel(&mut rec);
    }
    TraceFile::from_recording(&rec, meta).to_bytes()
}

pub(crate) fn kernel_branch(r: &ds_alloc::BtsRecord) -> bool {
    r.is_branch() && (ds_alloc::is_kernel_address(r.from) || ds_alloc::is_kernel_address(r.to))
}

/// Drops every branch record with an end in kernel space.
pub(crate) fn hide_kernel(rec: &mut Recording) {
    for th in rec.images.iter_mut().flat_map(|i| i.threads.iter_mut()) {
        let leaks = th.buffer.iter().any(kernel_branch);
        if !leaks {
            continue;
        }
        let kept: Vec<_> = th.buffer.iter().filter(|r| !(kernel_branch(r))).copied().collect();
        th.buffer.clear();
        th.buffer.push_all(&kept);
    }
}
