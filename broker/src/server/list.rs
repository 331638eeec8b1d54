//! What `bts ctl` shows: the tracers, their buffers and charges, and the
//! traced processes. Root (CAP_SYS_PTRACE) sees everything; anyone else
//! sees the tracers of its own uid and the processes it may trace itself.

use std::collections::HashMap;

use super::Shared;
use crate::peer::Peer;
use crate::protocol::{BufferRow, Listing, TaskRow, TracerRow};

pub(crate) fn listing(shared: &Shared, viewer: &Peer) -> Listing {
    let clients: Vec<_> = shared
        .clients()
        .iter()
        .map(|(&t, c)| (t, c.id, c.name.clone(), c.peer.clone(), c.pebs.clone(), c.cpus.clone()))
        .collect();
    let sessions: Vec<(i32, Vec<String>, &'static str)> =
        shared.sessions().iter().map(|(&pid, s)| (pid, s.command.clone(), s.backend)).collect();
    // Read again, outside every lock: a program its client launched has exec'd since.
    let sessions: Vec<_> = sessions
        .into_iter()
        .map(|(pid, command, backend)| {
            let now = ptrace_shim::process_command(pid);
            (pid, if now.is_empty() { command } else { now }, backend)
        })
        .collect();
    let ids: HashMap<_, u64> = clients.iter().map(|c| (c.0, c.1)).collect();
    let hub = shared.hub();
    let mut tracers: Vec<TracerRow> = clients
        .into_iter()
        .filter(|c| viewer.sees_everyone() || c.3.uid == viewer.uid)
        .map(|(t, id, name, peer, pebs, cpus)| {
            let (charged_bytes, limit_bytes) = hub.charge(t).unwrap_or((0, 0));
            TracerRow {
                id,
                name,
                client_pid: peer.pid,
                uid: peer.uid,
                charged_bytes,
                limit_bytes,
                processes: hub.followed_by(t),
                buffers: hub
                    .buffers(t)
                    .into_iter()
                    .map(|b| BufferRow {
                        pid: b.pid,
                        tid: b.tid,
                        bytes: b.bytes as u64,
                        records: b.records as u64,
                        written: b.written,
                        suspended: b.suspended,
                    })
                    .collect(),
                pebs,
                cpus: cpus
                    .iter()
                    .filter_map(|&(cpu, h)| {
                        let a = hub.allocator();
                        let b = a.bts_buffer(t, h).ok()?;
                        Some(BufferRow {
                            pid: -1,
                            tid: cpu,
                            bytes: b.size_bytes() as u64,
                            records: b.len() as u64,
                            written: b.written(),
                            suspended: a.is_suspended(t, h).unwrap_or(false),
                        })
                    })
                    .collect(),
            }
        })
        .collect();
    let mut tasks: Vec<TaskRow> = sessions
        .into_iter()
        .map(|(pid, command, backend)| {
            let mut tracers: Vec<u64> =
                hub.followers(pid).iter().filter_map(|t| ids.get(t).copied()).collect();
            tracers.sort_unstable();
            TaskRow { pid, command, backend: backend.to_string(), tracers }
        })
        .collect();
    drop(hub);
    tasks.retain(|t| viewer.sees_everyone() || viewer.may_trace(t.pid).is_ok());
    tracers.sort_by_key(|t| t.id);
    tasks.sort_by_key(|t| t.pid);
    Listing { daemon_pid: std::process::id(), tracers, tasks }
}
