//! Snapshots: everything recorded so far, with the code bytes the records
//! run through.

use std::collections::{BTreeSet, HashMap};

use crate::space::Space;
use crate::sys::Pid;

use bts_reader::recording::{ImageTrace, Recording, ThreadTrace};

use super::{Session, Thread};

pub(super) fn slot_sites(space: &Space) -> Vec<u64> {
    space.breakpoint_sites()
}

/// The code pages the kept records of `threads` run through, original bytes.
pub(super) fn collect_code<'a>(
    space: &mut Space,
    threads: impl Iterator<Item = &'a ThreadTrace>,
) -> Vec<(u64, Vec<u8>)> {
    let mut pages = BTreeSet::new();
    // The vDSO has no file to symbolize from: keep all of it.
    for m in space.maps.iter().filter(|m| m.path == "[vdso]") {
        ds_alloc::pages::add_range(&mut pages, m.start, m.end.saturating_sub(1));
    }
    for t in threads {
        ds_alloc::pages::touched_pages(t.buffer.iter(), t.last_pc, &mut pages);
    }
    pages.into_iter().filter_map(|p| space.cached_page(p).map(|b| (p, b))).collect()
}

impl Session {
    /// A snapshot of everything recorded so far, finished images first.
    pub fn recording(&mut self) -> Recording {
        let mut hw_lost = HashMap::new();
        let live: Vec<Pid> = self.threads.keys().copied().collect();
        for tid in live {
            if let Some(t) = self.threads.remove(&tid) {
                hw_lost.insert(tid, self.sync_hardware(&t));
                self.threads.insert(tid, t);
            }
        }
        let mut images = self.finished.clone();
        let mut live: Vec<(usize, Vec<ThreadTrace>)> = Vec::new();
        let mut tids: Vec<&Thread> = self.threads.values().filter(|t| t.record).collect();
        tids.sort_by_key(|t| t.tid);
        for t in tids {
            let buffer = self.buffer_of(t);
            let trace = ThreadTrace {
                tid: t.tid,
                overwritten: buffer.branches_overwritten(),
                buffer,
                crashed: t.crashed,
                last_pc: t.last_pc,
                lost: hw_lost.get(&t.tid).copied().unwrap_or(0),
            };
            match live.iter_mut().find(|(s, _)| *s == t.space) {
                Some((_, v)) => v.push(trace),
                None => live.push((t.space, vec![trace])),
            }
        }
        for (idx, threads) in live {
            let slot = &mut self.spaces[idx];
            let key = (slot.space.pid, slot.space.generation);
            let pos = images.iter().position(|i| (i.pid, i.generation) == key);
            let image = match pos {
                Some(p) => &mut images[p],
                None => {
                    images.push(ImageTrace {
                        pid: key.0,
                        generation: key.1,
                        maps: vec![],
                        code: vec![],
                        threads: vec![],
                    });
                    images.last_mut().expect("just pushed")
                }
            };
            image.threads.extend(threads);
            image.maps = slot.space.maps.clone();
            image.code = collect_code(&mut slot.space, image.threads.iter());
        }
        let cpus = self
            .cpu_buffers
            .iter()
            .filter_map(|&(c, h)| self.alloc.bts_buffer(self.tracer, h).ok().map(|b| (c, b.clone())))
            .collect();
        Recording { backend: self.recorder.backend().name(), root_pid: self.root, images, cpus }
    }
}
