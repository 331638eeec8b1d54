//! One client: a thread that reads and serves its requests, and a thread
//! that writes its replies and events from a bounded queue. A malformed
//! frame, a frame begun and not finished within the timeout, or a queue
//! the client does not empty ends the connection; then every buffer of
//! the client is freed, its charge refunded, and each process nobody
//! follows any more is detached. Nothing of another client changes.

use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use ds_alloc::alloc::{bts_bytes, pages_for, PAGE_SIZE};
use ds_alloc::{PebsConfig, PebsFormat, PebsHandle, Target, TracerId, BTS_RECORD_SIZE};
use ptrace_shim::hub::Follow;
use ptrace_shim::legacy::{
    BtsError, CONFIG_SIZE, PTRACE_BTS_CLEAR, PTRACE_BTS_DRAIN, PTRACE_BTS_GET, PTRACE_BTS_STATUS,
};
use ptrace_shim::{Backend, Options};

use super::session::{self, Ask, Start};
use super::{ClientEntry, Outgoing, Shared, MAX_CLIENTS, OUTBOX};
use crate::peer::{AccessError, Peer};
use crate::protocol::{self, ErrorKind, Reply, Request, WireBackend, WireTarget, MAX_REQUEST, VERSION};

/// Clients of one uid served at once (root's are not counted).
pub const MAX_CLIENTS_PER_UID: usize = 64;

/// Counts a connection from accept to the end of its threads.
struct Connection(Arc<Shared>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Starts serving a new connection; refuses it at once when the daemon
/// serves as many as it may.
pub(crate) fn spawn(shared: &Arc<Shared>, stream: UnixStream) {
    if shared.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
        shared.connections.fetch_sub(1, Ordering::SeqCst);
        let _ = stream.set_nonblocking(true);
        let msg = format!("the daemon serves {MAX_CLIENTS} clients already: try again later");
        let _ = protocol::write_msg(&mut &stream, &Reply::error(ErrorKind::Limit, msg));
        return;
    }
    let conn = Connection(Arc::clone(shared));
    let sh = Arc::clone(shared);
    let started = std::thread::Builder::new().name("client".into()).spawn(move || {
        let _conn = conn;
        serve(&sh, stream)
    });
    if let Err(e) = started {
        (shared.log)(&format!("cannot start a client thread: {e}"));
    }
}

/// What the reader thread keeps of its client.
struct Conn {
    tracer: TracerId,
    peer: Peer,
    pebs: Vec<(WireTarget, PebsHandle)>,
    cpus: Vec<(u32, ds_alloc::BtsHandle)>,
}

fn refuse(shared: &Shared, stream: &UnixStream, msg: Reply) {
    let _ = stream.set_write_timeout(Some(shared.io_timeout()));
    let _ = protocol::write_msg(&mut &*stream, &msg);
}

/// Reads the Hello; the client's name.
fn hello(shared: &Shared, stream: &UnixStream) -> Result<String, Reply> {
    let _ = stream.set_read_timeout(Some(shared.io_timeout()));
    let first = protocol::read_frame(&mut &*stream, MAX_REQUEST).and_then(|p| protocol::decode_request(&p));
    match first {
        Ok(Request::Hello { version: VERSION, name }) => {
            Ok(name.chars().filter(|c| !c.is_control()).take(64).collect())
        }
        Ok(Request::Hello { version, .. }) => Err(Reply::error(
            ErrorKind::Invalid,
            format!("protocol version {version} is not spoken here: this daemon speaks version {VERSION}"),
        )),
        Ok(_) => Err(Reply::error(ErrorKind::Invalid, "the first request must be Hello")),
        Err(e) => Err(Reply::error(ErrorKind::Invalid, format!("bad Hello: {e}"))),
    }
}

fn serve(shared: &Arc<Shared>, stream: UnixStream) {
    let peer = match Peer::of(&stream) {
        Ok(p) => p,
        Err(e) => return refuse(shared, &stream, Reply::error(ErrorKind::Denied, e.to_string())),
    };
    let same_uid = shared.clients().values().filter(|c| c.peer.uid == peer.uid).count();
    if peer.uid != 0 && same_uid >= MAX_CLIENTS_PER_UID {
        let msg = format!("uid {} has {MAX_CLIENTS_PER_UID} clients of the daemon already", peer.uid);
        return refuse(shared, &stream, Reply::error(ErrorKind::Limit, msg));
    }
    let name = match hello(shared, &stream) {
        Ok(n) => n,
        Err(reply) => {
            (shared.log)(&format!("client pid {} refused: {reply:?}", peer.pid));
            return refuse(shared, &stream, reply);
        }
    };
    let (Ok(writer_end), Ok(entry_end)) = (stream.try_clone(), stream.try_clone()) else { return };
    let _ = stream.set_write_timeout(Some(shared.io_timeout()));
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let label = format!("{name} (client {id}, pid {}, uid {})", peer.pid, peer.uid);
    let may = peer.clone();
    let tracer =
        shared.hub().add_follower(&label, peer.memlock, Box::new(move |pid| may.may_trace(pid).is_ok()));
    let (tx, rx) = mpsc::sync_channel::<Outgoing>(OUTBOX);
    let _ = tx.try_send(Reply::Hello { version: VERSION, daemon_pid: std::process::id(), id }.into());
    shared.clients().insert(
        tracer,
        ClientEntry {
            id,
            name: name.clone(),
            peer: peer.clone(),
            outbox: tx.clone(),
            stream: entry_end,
            pebs: Vec::new(),
            cpus: Vec::new(),
        },
    );
    (shared.log)(&format!("client connected: {label}"));
    let writer = std::thread::Builder::new().name("client writer".into()).spawn(move || {
        for msg in rx {
            let sent = match &msg {
                Outgoing::Reply(r) => protocol::write_reply(&mut &writer_end, r),
                Outgoing::Records(buf) => {
                    let (older, newer) = buf.as_byte_slices();
                    protocol::write_records(&mut &writer_end, &[older, newer])
                }
            };
            if sent.is_err() {
                let _ = writer_end.shutdown(std::net::Shutdown::Both);
                break;
            }
        }
    });
    let _forget = Forget { shared: Arc::clone(shared), tracer };
    let mut conn = Conn { tracer, peer, pebs: Vec::new(), cpus: Vec::new() };
    let why = loop {
        let req = match protocol::read_request(&stream, shared.io_timeout())
            .and_then(|p| protocol::decode_request(&p))
        {
            Ok(r) => r,
            Err(protocol::ProtocolError::Closed) => break "disconnected".to_string(),
            Err(e) => {
                let _ = tx.try_send(
                    Reply::error(ErrorKind::Invalid, format!("{e}: closing the connection")).into(),
                );
                break format!("dropped: {e}");
            }
        };
        let reply = handle(shared, &mut conn, req);
        match tx.try_send(reply) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => break "dropped: too slow to take its replies".to_string(),
            Err(TrySendError::Disconnected(_)) => break "disconnected".to_string(),
        }
    };
    drop(_forget);
    drop(tx);
    if let Ok(w) = writer {
        // The writer ends once the queue is empty, or at once if the client is gone.
        let _ = stream.shutdown(std::net::Shutdown::Read);
        let _ = w.join();
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    (shared.log)(&format!("client {label}: {why}; its buffers are freed"));
}

/// Forgets a client when its reader ends, however it ends (a panic too):
/// its buffers freed, its charge refunded, and each process nobody
/// follows any more detached.
struct Forget {
    shared: Arc<Shared>,
    tracer: TracerId,
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.shared.clients().remove(&self.tracer);
        let followed = self.shared.hub().remove_follower(self.tracer);
        for pid in followed {
            self.shared.detach_if_unfollowed(pid);
        }
    }
}

fn access_reply(e: AccessError) -> Reply {
    let kind = match e {
        AccessError::NoSuchProcess(_) | AccessError::NotAProcess(_) => ErrorKind::NotFound,
        _ => ErrorKind::Denied,
    };
    Reply::error(kind, e.to_string())
}

fn bts_reply(e: BtsError) -> Reply {
    let kind = match e.errno() {
        libc::ENOMEM => ErrorKind::Limit,
        libc::ESRCH | libc::ENXIO => ErrorKind::NotFound,
        _ => ErrorKind::Invalid,
    };
    Reply::error(kind, e.to_string())
}

fn not_traced(pid: i32) -> Reply {
    Reply::error(ErrorKind::NotFound, format!("you do not trace pid {pid}: attach to it first"))
}

fn handle(shared: &Arc<Shared>, conn: &mut Conn, req: Request) -> Outgoing {
    if let Request::DrainCpu { cpu } = req {
        let Some(&(_, h)) = conn.cpus.iter().find(|(c, _)| *c == cpu) else {
            return Reply::error(ErrorKind::NotFound, format!("you have no catch-all buffer on cpu {cpu}"))
                .into();
        };
        let taken = shared.hub().alloc().take_bts(conn.tracer, h);
        return match taken {
            // A CPU's records may be anyone's: only a client that may watch the CPU has the buffer.
            Ok(buf) => Outgoing::Records(buf),
            Err(e) => Reply::error(ErrorKind::Failed, e.to_string()).into(),
        };
    }
    if let Request::Drain { tid } = req {
        let Ok(task) = u32::try_from(tid) else { return bts_reply(BtsError::NotTraced(0)).into() };
        return match drain(shared, conn, task) {
            Ok(Drained::Whole(buf)) => Outgoing::Records(buf),
            Ok(Drained::Bytes(data)) => Reply::Records(data).into(),
            Err(e) => bts_reply(e).into(),
        };
    }
    answer(shared, conn, req).into()
}

fn answer(shared: &Arc<Shared>, conn: &mut Conn, req: Request) -> Reply {
    let t = conn.tracer;
    match req {
        Request::Hello { .. } => Reply::error(ErrorKind::Invalid, "Hello was said already"),
        Request::Attach { pid, buffer_bytes, backend, pin_cpu, stack_bytes, from_exec } => {
            let Ok(bytes) = usize::try_from(buffer_bytes) else {
                return Reply::error(
                    ErrorKind::Limit,
                    format!("a buffer of {buffer_bytes} bytes is too large"),
                );
            };
            let opts =
                Options {
                    backend: match backend {
                        WireBackend::Fast => Backend::Fast,
                        WireBackend::Step => Backend::Step,
                        // The hardware source hands over its whole ring at each
                        // read: shared among tracers, it would repeat records in
                        // every follower's buffer.
                        WireBackend::Perf => return Reply::error(
                            ErrorKind::Invalid,
                            "the hardware recorder is not offered through the daemon yet: use --backend fast",
                        ),
                    },
                    buffer_bytes: bytes,
                    pin_cpu,
                    stack_bytes: usize::try_from(stack_bytes).unwrap_or(usize::MAX).min(16 << 20),
                    ..Options::default()
                };
            attach(shared, conn, pid, opts, Follow { bytes, from_exec })
        }
        Request::Detach { pid } => {
            if !shared.hub().followed_by(t).contains(&pid) {
                return not_traced(pid);
            }
            let trace = snapshot(shared, t, pid);
            shared.hub().unfollow(t, pid);
            shared.detach_if_unfollowed(pid);
            trace
        }
        Request::Snapshot { pid } => {
            if !shared.hub().followed_by(t).contains(&pid) {
                return not_traced(pid);
            }
            snapshot(shared, t, pid)
        }
        Request::Clear { pid } => {
            let mut hub = shared.hub();
            if !hub.followed_by(t).contains(&pid) {
                return not_traced(pid);
            }
            for b in hub.buffers(t).into_iter().filter(|b| b.pid == pid) {
                if let Err(e) = hub.legacy(t, PTRACE_BTS_CLEAR, b.tid, 0, &mut []) {
                    return bts_reply(e);
                }
            }
            Reply::Ok
        }
        Request::Drain { .. } | Request::DrainCpu { .. } => unreachable!("handled above"),
        Request::CpuBuffer { cpu, bytes } => cpu_buffer(shared, conn, cpu, bytes),
        Request::Legacy { request, task, addr, data } => legacy(shared, conn, request, task, addr, data),
        Request::RequestPebs { target, format, reset, records } => {
            let target = match pebs_target(conn, target) {
                Ok(t) => t,
                Err(r) => return r,
            };
            let config =
                PebsConfig { format: PebsFormat::from_caps(format), reset, records: records as usize };
            let got = shared.hub().alloc().request_pebs(t, target.1, config);
            match got {
                Ok(h) => {
                    conn.pebs.push((target.0, h));
                    set_listing(shared, conn);
                    Reply::Ok
                }
                Err(ds_alloc::Error::PebsBusy { target, owner }) => {
                    Reply::error(ErrorKind::Busy, format!("PEBS on {target} is busy: owned by {owner}"))
                }
                Err(e) => Reply::error(ErrorKind::Limit, e.to_string()),
            }
        }
        Request::ReleasePebs { target } => {
            let Some(i) = conn.pebs.iter().position(|(w, _)| *w == target) else {
                return Reply::error(ErrorKind::NotFound, "you do not own PEBS there");
            };
            let (_, h) = conn.pebs.remove(i);
            let _ = shared.hub().alloc().release_pebs(t, h);
            set_listing(shared, conn);
            Reply::Ok
        }
        Request::List => Reply::List(super::list::listing(shared, &conn.peer)),
    }
}

/// A drained buffer: whole, as it lies, or as bytes filtered for the client.
enum Drained {
    Whole(ds_alloc::BtsBuffer),
    Bytes(Vec<u8>),
}

/// DRAIN: the buffer is taken out under the lock and copied nowhere,
/// unless the client's records must be filtered (no O_SCHED: no context
/// records; kernel ends it may not see).
fn drain(shared: &Shared, conn: &Conn, task: u32) -> Result<Drained, BtsError> {
    let taken = shared.hub().drain_buffer(conn.tracer, task);
    let (buf, sched) = taken?;
    let hide = !conn.peer.may_see_kernel() && buf.iter().any(session::kernel_branch);
    if sched && !hide {
        return Ok(Drained::Whole(buf));
    }
    let mut data = Vec::with_capacity(buf.len() * BTS_RECORD_SIZE);
    for r in buf.iter().filter(|r| sched || r.is_branch()) {
        data.extend_from_slice(&r.to_bytes());
    }
    if hide {
        mask_kernel(&mut data);
    }
    Ok(Drained::Bytes(data))
}

fn set_listing(shared: &Shared, conn: &Conn) {
    if let Some(c) = shared.clients().get_mut(&conn.tracer) {
        c.pebs = conn.pebs.iter().map(|(w, _)| *w).collect();
        c.cpus = conn.cpus.clone();
    }
}

/// A per-CPU catch-all buffer: it coexists with every per-task buffer (a
/// task some tracer follows never reaches it).
fn cpu_buffer(shared: &Shared, conn: &mut Conn, cpu: u32, bytes: u64) -> Reply {
    if !conn.peer.may_watch_cpus() {
        return Reply::error(
            ErrorKind::Denied,
            "a CPU's catch-all buffer holds any task's branches: it needs CAP_PERFMON or kernel.perf_event_paranoid <= 0",
        );
    }
    // SAFETY: sysconf has no memory arguments.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as u32;
    if cpu >= cpus {
        return Reply::error(ErrorKind::NotFound, format!("no cpu {cpu}: this machine has {cpus}"));
    }
    if conn.cpus.iter().any(|(c, _)| *c == cpu) {
        return Reply::error(ErrorKind::Invalid, format!("you have a catch-all buffer on cpu {cpu} already"));
    }
    let Some(bytes) = usize::try_from(bytes).ok().filter(|&b| b as u64 <= protocol::MAX_BUFFER) else {
        return Reply::error(ErrorKind::Limit, format!("a buffer of {bytes} bytes is over the limit"));
    };
    let got = shared.hub().alloc().request_bts(conn.tracer, Target::Cpu(cpu), bytes);
    match got {
        Ok(h) => {
            conn.cpus.push((cpu, h));
            set_listing(shared, conn);
            Reply::Ok
        }
        Err(e) => Reply::error(ErrorKind::Limit, e.to_string()),
    }
}

fn pebs_target(conn: &Conn, target: WireTarget) -> Result<(WireTarget, Target), Reply> {
    match target {
        WireTarget::Task(pid) => {
            conn.peer.may_trace(pid).map_err(access_reply)?;
            Ok((target, Target::Task(pid as u32)))
        }
        WireTarget::Cpu(cpu) => {
            if !conn.peer.may_watch_cpus() {
                return Err(Reply::error(
                    ErrorKind::Denied,
                    "sampling a whole CPU needs CAP_PERFMON or kernel.perf_event_paranoid <= 0",
                ));
            }
            Ok((target, Target::Cpu(cpu)))
        }
    }
}

fn attach(shared: &Arc<Shared>, conn: &Conn, pid: i32, opts: Options, follow: Follow) -> Reply {
    // The process checked must be the process traced: a pid that dies and
    // is reused meanwhile is told apart by its pidfd.
    let target = crate::peer::pidfd_open(pid);
    let reply = attach_checked(shared, conn, pid, opts, follow);
    let same = target.as_ref().is_some_and(crate::peer::pidfd_alive);
    if matches!(reply, Reply::Attached { .. }) && !same {
        shared.hub().unfollow(conn.tracer, pid);
        shared.detach_if_unfollowed(pid);
        return Reply::error(ErrorKind::NotFound, format!("pid {pid} ended while it was being attached"));
    }
    reply
}

fn attach_checked(shared: &Arc<Shared>, conn: &Conn, pid: i32, opts: Options, follow: Follow) -> Reply {
    let t = conn.tracer;
    if let Err(e) = conn.peer.may_trace(pid) {
        return access_reply(e);
    }
    if shared.hub().followed_by(t).contains(&pid) {
        return Reply::error(ErrorKind::Invalid, format!("you trace pid {pid} already"));
    }
    if follow.bytes < BTS_RECORD_SIZE {
        return Reply::error(ErrorKind::Limit, format!("a buffer of {} bytes holds no record", follow.bytes));
    }
    // Checked before a session is started for it.
    let threads = session::threads_of(pid).len().max(1) as u64;
    let need = pages_for(bts_bytes(follow.bytes) as u64).saturating_mul(threads).saturating_mul(PAGE_SIZE);
    if let Some((charged, limit)) = shared.hub().charge(t) {
        if charged.saturating_add(need) > limit {
            return Reply::error(
                ErrorKind::Limit,
                format!(
                    "locked-memory limit exceeded: your RLIMIT_MEMLOCK is {limit} bytes, {charged} are in use, \
                     and {threads} thread(s) of pid {pid} need {need} more (raise it with `ulimit -l`, or ask \
                     for smaller buffers)"
                ),
            );
        }
    }
    // Join the process's session, or start one. A session being started
    // (by another client) is waited for; the lock is never held while a
    // process is attached, so one slow attach stalls nothing else.
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let mut sessions = shared.sessions();
        if shared.stopping.load(Ordering::SeqCst) {
            return Reply::error(ErrorKind::Failed, "the daemon is stopping");
        }
        match sessions.get(&pid) {
            Some(s) if s.thread != 0 => {
                let (command, backend) = (s.command.clone(), s.backend.to_string());
                let mut hub = shared.hub();
                return match hub.follow(t, pid, &session::threads_of(pid), follow) {
                    Ok(()) => Reply::Attached { pid, command, backend, joined: true },
                    Err(e) => bts_reply(e),
                };
            }
            Some(_) => {
                drop(sessions);
                if std::time::Instant::now() > deadline {
                    return Reply::error(ErrorKind::Failed, format!("pid {pid} is still being attached"));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            None => {
                let inbox = Arc::new(std::sync::Mutex::new(Vec::new()));
                let attention = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let backend = opts.backend.name();
                let placeholder = super::SessionEntry {
                    command: Vec::new(),
                    backend,
                    inbox: Arc::clone(&inbox),
                    attention: Arc::clone(&attention),
                    thread: 0,
                };
                sessions.insert(pid, placeholder);
                drop(sessions);
                let start = Start { pid, opts, first: t, follow, inbox: Arc::clone(&inbox), attention };
                let started = session::start(shared, start);
                let mut sessions = shared.sessions();
                let ours = sessions.get_mut(&pid).filter(|e| Arc::ptr_eq(&e.inbox, &inbox));
                return match (started, ours) {
                    (Ok((command, thread)), Some(entry)) => {
                        entry.command = command.clone();
                        entry.thread = thread;
                        Reply::Attached { pid, command, backend: backend.to_string(), joined: false }
                    }
                    (Ok(_), None) => {
                        Reply::error(ErrorKind::Failed, format!("tracing pid {pid} ended at once"))
                    }
                    (Err(reply), _) => {
                        if sessions.get(&pid).is_some_and(|e| Arc::ptr_eq(&e.inbox, &inbox)) {
                            sessions.remove(&pid);
                        }
                        reply
                    }
                };
            }
        }
    }
}

/// Follower `t`'s trace of `pid`, from the session thread.
fn snapshot(shared: &Shared, t: TracerId, pid: i32) -> Reply {
    let (tx, rx) = mpsc::channel();
    if !shared.ask(pid, Ask::Snapshot { tracer: t, reply: tx }) {
        return Reply::error(ErrorKind::NotFound, format!("pid {pid} is not traced any more"));
    }
    rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
        Reply::error(ErrorKind::Failed, format!("the session of pid {pid} did not answer"))
    })
}

fn legacy(shared: &Shared, conn: &Conn, request: u32, task: u32, addr: u64, mut data: Vec<u8>) -> Reply {
    let t = conn.tracer;
    let result = if request == PTRACE_BTS_DRAIN {
        drain(shared, conn, task).map(|d| {
            data = match d {
                Drained::Whole(buf) => buf.iter().flat_map(|r| r.to_bytes()).collect(),
                Drained::Bytes(b) => b,
            };
            (data.len() / BTS_RECORD_SIZE) as i64
        })
    } else {
        let out_len = match request {
            PTRACE_BTS_STATUS => CONFIG_SIZE,
            PTRACE_BTS_GET => BTS_RECORD_SIZE,
            _ => 0,
        };
        data.resize(out_len.max(data.len()), 0);
        let addr = usize::try_from(addr).unwrap_or(usize::MAX);
        let value = shared.hub().legacy(t, request, task, addr, &mut data);
        value.inspect(|_| match request {
            PTRACE_BTS_GET => data.truncate(BTS_RECORD_SIZE),
            PTRACE_BTS_STATUS => data.truncate(CONFIG_SIZE),
            _ => data.clear(),
        })
    };
    match result {
        Ok(value) => {
            if !conn.peer.may_see_kernel() {
                mask_kernel(&mut data);
            }
            Reply::Legacy { value, data }
        }
        Err(e) => bts_reply(e),
    }
}

/// Zeroes the kernel ends of raw branch records (the count stays what the
/// legacy interface returned).
fn mask_kernel(data: &mut [u8]) {
    for rec in data.chunks_exact_mut(BTS_RECORD_SIZE) {
        let bytes: &[u8; BTS_RECORD_SIZE] = (&*rec).try_into().expect("exact chunk");
        let r = ds_alloc::BtsRecord::from_bytes(bytes);
        if !r.is_branch() {
            continue;
        }
        for (i, v) in [r.from, r.to].into_iter().enumerate() {
            if ds_alloc::is_kernel_address(v) {
                rec[i * 8..i * 8 + 8].fill(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ds_alloc::BtsRecord;

    #[test]
    fn kernel_ends_are_zeroed_and_context_records_kept() {
        let recs = [
            BtsRecord::branch(0xffff_ffff_8100_0000, 0x401000),
            BtsRecord::branch(0x401000, 0x401010),
            BtsRecord::context(ds_alloc::ContextKind::TaskArrives, 5, 7),
        ];
        let mut data: Vec<u8> = recs.iter().flat_map(|r| r.to_bytes()).collect();
        mask_kernel(&mut data);
        let back = BtsRecord::parse_all(&data).unwrap();
        assert_eq!(back[0], BtsRecord::branch(0, 0x401000));
        assert_eq!(back[1..], recs[1..]);
    }
}
