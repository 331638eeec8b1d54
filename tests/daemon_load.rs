//! The daemon under load: 16 clients each trace the same 8 programs at
//! once. Every client receives exactly the branches a single in-process
//! tracer records of the same deterministic work, the daemon's memory
//! stays within the sum of the buffers plus a stated bound, and the
//! charges balance to zero when everyone leaves.

mod common;
use common::daemon::{attach_req, settled, wait_for, Daemon, Target};
use common::*;

use std::process::Command;
use std::time::Duration;

use broker::protocol::{Reply, Request};
use bts_reader::TraceFile;

const CLIENTS: usize = 16;
const TASKS: usize = 8;
const BUFFER: u64 = 128 * 1024;
/// What the daemon may hold beyond the buffers: its code, heap, threads'
/// stacks in use, the traces in flight to clients.
const DAEMON_OVERHEAD: u64 = 48 << 20;

/// `work`'s file address and size in the fixture, from `nm -S`.
fn work_symbol() -> (u64, u64) {
    let out = Command::new("nm").arg("-S").arg(fixture("daemon_target")).output().unwrap();
    let line =
        text(&out.stdout).lines().find(|l| l.ends_with(" T work")).expect("work in nm's output").to_string();
    let f: Vec<u64> = line.split_whitespace().take(2).map(|v| u64::from_str_radix(v, 16).unwrap()).collect();
    (f[0], f[1])
}

/// The branches `work` took in this trace, as offsets from the executable's
/// load address (the same in every process whatever ASLR did).
fn work_branches(tf: &TraceFile) -> Vec<(u64, u64)> {
    let (addr, len) = work_symbol();
    let exe = tf
        .modules
        .iter()
        .filter(|m| m.map.path.ends_with("/daemon_target"))
        .min_by_key(|m| m.map.start)
        .expect("the executable's mapping");
    let base = exe.map.start - exe.map.offset;
    let stream = tf.thread_streams().next().expect("a thread");
    stream
        .records
        .iter()
        .filter(|r| r.is_branch() && (base + addr..base + addr + len).contains(&r.from))
        .map(|r| (r.from - base, r.to.wrapping_sub(base)))
        .collect()
}

#[test]
fn sixteen_clients_times_eight_programs_each_get_every_branch() {
    let d = Daemon::start("load");
    // The reference: one in-process tracer, the work run at once.
    let go = d.dir.join("ref.go");
    std::fs::write(&go, b"").unwrap();
    let bin = fixture("daemon_target");
    let out = bts(
        &d.dir,
        &[
            "run",
            "--backend",
            "fast",
            "--buffer-size",
            "1M",
            "-o",
            "ref.bts",
            "--",
            bin.to_str().unwrap(),
            go.to_str().unwrap(),
            "block",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let reference = work_branches(&TraceFile::read(&d.dir.join("ref.bts")).unwrap());
    assert!(reference.len() > 600, "work's branches: {}", reference.len());

    let mut targets: Vec<Target> =
        (0..TASKS).map(|i| Target::start(&d.dir, &format!("load{i}"), "block")).collect();
    let pids: Vec<i32> = targets.iter().map(|t| t.pid()).collect();
    let mut clients: Vec<broker::Client> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (d, pids) = (&d, &pids);
                s.spawn(move || {
                    let mut c = d.client(&format!("load {i}"));
                    for &pid in pids {
                        assert!(matches!(c.call(&attach_req(pid, BUFFER)).unwrap(), Reply::Attached { .. }));
                    }
                    c
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let listing = d.list();
    assert_eq!(listing.tasks.len(), TASKS);
    assert!(listing.tasks.iter().all(|t| t.tracers.len() == CLIENTS), "{:?}", listing.tasks);
    let buffers: u64 = listing.tracers.iter().flat_map(|t| &t.buffers).map(|b| b.bytes).sum();
    let charged: u64 = listing.tracers.iter().map(|t| t.charged_bytes).sum();
    assert_eq!(listing.tracers.iter().map(|t| t.buffers.len()).sum::<usize>(), CLIENTS * TASKS);
    assert!(charged >= buffers, "every buffer is charged: {charged} < {buffers}");

    for t in &targets {
        t.go();
    }
    for t in targets.iter_mut() {
        t.wait_done();
    }
    for &pid in &pids {
        settled(&mut clients[0], pid);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        for &pid in &pids {
            let bytes = c.call_trace(&Request::Snapshot { pid }).unwrap();
            let tf = TraceFile::from_bytes(&bytes).unwrap();
            let stream = tf.thread_streams().next().unwrap();
            assert_eq!(stream.lost, 0, "client {i}, pid {pid}");
            assert_eq!(work_branches(&tf), reference, "client {i}, pid {pid}: not what one tracer records");
        }
    }
    // The session buffers are the daemon's own: one per thread, the first client's size.
    let own = TASKS as u64 * ds_alloc::alloc::bts_bytes(BUFFER as usize) as u64;
    let (peak, _) = d.memory();
    eprintln!("daemon peak RSS {peak} B; client buffers {buffers} B; session buffers {own} B");
    assert!(
        peak <= buffers + own + DAEMON_OVERHEAD,
        "daemon peak {peak} B > buffers {buffers} B + session buffers {own} B + {DAEMON_OVERHEAD} B"
    );
    drop(clients);
    wait_for(Duration::from_secs(20), "every program detached", || {
        targets.iter().all(|t| t.tracer_pid() == 0)
    });
    let after = d.list();
    assert!(after.tasks.is_empty() && after.tracers.iter().all(|t| t.charged_bytes == 0), "{after:?}");
    for t in targets {
        assert!(t.finish().success());
    }
}
