//! The tool's buffers as a [`Recording`], like every other backend's: each
//! thread's records delivered through the allocator into a buffer of the
//! size `--buffer-size` asks for, so the same size keeps the same records.

use std::collections::{BTreeSet, HashMap};

use ds_alloc::{Allocator, BtsBuffer, Target, TracerId};

use super::VgTrace;
use crate::recording::{ImageTrace, Recording, ThreadTrace};

/// One image (a process between execs) of the tool's traces.
fn image(
    (alloc, me): (&mut Allocator, TracerId),
    t: &VgTrace,
    generation: u32,
    crashed_tid: Option<i32>,
    bytes: usize,
) -> ImageTrace {
    let mut seen = BTreeSet::new();
    let maps = t.maps.iter().filter(|m| seen.insert((m.start, m.end, m.path.clone()))).cloned().collect();
    let mut pages = BTreeSet::new();
    let mut threads = Vec::new();
    for th in &t.threads {
        let tid = th.os_tid;
        let buffer = match alloc.request_bts(me, Target::Task(tid as u32), bytes) {
            Ok(h) => {
                alloc.deliver_batch(0, tid as u32, &th.records);
                alloc.release_bts(me, h).ok()
            }
            // Over the limit now: keep what the tool kept.
            Err(_) => None,
        };
        let buffer = buffer.unwrap_or_else(|| {
            let mut b = BtsBuffer::with_bytes(ds_alloc::alloc::bts_bytes(bytes)).expect("holds a record");
            th.records.iter().for_each(|&r| b.push(r));
            b
        });
        let kept = buffer.snapshot().iter().filter(|r| r.is_branch()).count() as u64;
        ds_alloc::pages::touched_pages(buffer.snapshot().iter(), Some(th.last_pc), &mut pages);
        threads.push(ThreadTrace {
            tid,
            // The tool counts every branch the thread took.
            overwritten: th.branches.saturating_sub(kept),
            buffer,
            crashed: crashed_tid == Some(tid),
            last_pc: Some(th.last_pc),
            lost: 0,
            // The tool reports the pc only.
            state: None,
        });
    }
    let by_addr: HashMap<u64, &Vec<u8>> = t.pages.iter().map(|(a, b)| (*a, b)).collect();
    let code = pages.into_iter().filter_map(|p| by_addr.get(&p).map(|b| (p, b.to_vec()))).collect();
    ImageTrace { pid: t.pid, generation, maps, code, threads }
}

/// The recording of `traces` (images of one or more processes, in order),
/// each thread's buffer `bytes` long. `crash` (pid, tid) marks the thread
/// that crashed, in its process's last image.
pub fn recording(traces: &[&VgTrace], crash: Option<(i32, i32)>, bytes: usize, root_pid: i32) -> Recording {
    let mut alloc = Allocator::new();
    let me = alloc.register_current("bts");
    let mut generation: HashMap<i32, u32> = HashMap::new();
    let mut images = Vec::new();
    for (i, t) in traces.iter().enumerate() {
        let g = generation.entry(t.pid).or_insert(0);
        *g += 1;
        let last_of_pid = !traces[i + 1..].iter().any(|o| o.pid == t.pid);
        let crashed_tid = crash.filter(|&(pid, _)| pid == t.pid && last_of_pid).map(|c| c.1);
        images.push(image((&mut alloc, me), t, *g, crashed_tid, bytes));
    }
    Recording { backend: "valgrind", root_pid, images, cpus: Vec::new() }
}
