//! Snapshots: everything recorded so far, with the code bytes the records
//! run through.

use std::collections::{BTreeSet, HashMap, HashSet};

use ds_alloc::TracerId;

use crate::space::Space;
use crate::sys::{self, Pid, Wait};

use bts_reader::recording::{ImageTrace, Recording, ThreadTrace};
use bts_reader::ThreadState;

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

/// Bytes kept below the stack pointer: the x86-64 red zone, where leaf
/// functions keep their locals.
const RED_ZONE: u64 = 128;

/// The stack from just below `rsp` up to `limit` bytes, stopping at the
/// first page that cannot be read (the top of the stack mapping).
fn read_stack(space: &Space, rsp: u64, limit: usize) -> (u64, Vec<u8>) {
    let start = rsp.saturating_sub(RED_ZONE);
    let end = rsp.saturating_add(limit as u64);
    (start, space.read_live_upto(start, (end - start) as usize))
}

impl Session {
    /// Registers and stack of thread `tid` if it is stopped (a running
    /// thread cannot be read, and is left alone).
    fn thread_state(&self, t: &Thread) -> Option<ThreadState> {
        let mut regs = sys::get_regs(t.tid).ok()?;
        // Stopped just after one of our int3 (its trap waits to be
        // handled): the program stands at the site, not one past it.
        let trapped =
            self.deferred.iter().any(|w| matches!(*w, Wait::Signal(p, libc::SIGTRAP) if p == t.tid));
        let at_site =
            self.spaces.get(t.space).is_some_and(|s| s.space.is_breakpoint(regs.rip.wrapping_sub(1)));
        if trapped && at_site {
            regs.rip -= 1;
        }
        let slot = self.spaces.get(t.space)?;
        let (stack_addr, stack) = read_stack(&slot.space, regs.rsp, self.opts.stack_bytes);
        let signal = match (&self.crash, t.held) {
            (Some(c), _) if c.tid == t.tid => Some(c.signal),
            (_, Some(sig)) if sig != 0 => Some(sig),
            _ => None,
        };
        Some(ThreadState {
            pid: slot.space.pid,
            generation: slot.space.generation,
            tid: t.tid,
            signal,
            regs: sys::registers(&regs),
            stack_addr,
            stack,
        })
    }

    /// A snapshot of everything recorded so far, finished images first.
    /// At a crash, the crashed process's other threads are stopped for the
    /// moment of the snapshot, so that their registers and stacks are kept
    /// too (a debugger unwinds every thread after the process is gone).
    pub fn recording(&mut self) -> Recording {
        self.recording_where(None, None)
    }

    /// A snapshot of process `pid` alone (every image it ran, the CPU
    /// buffers too): the trace of one process of many.
    pub fn process_recording(&mut self, pid: Pid) -> Recording {
        self.recording_where(Some(pid), None)
    }

    /// What follower `t` (a broker's client) holds of the first process:
    /// the same snapshot, each thread's records taken from `t`'s own
    /// buffer, threads it has no buffer on left out, no CPU buffers.
    pub fn recording_for(&mut self, t: TracerId) -> Recording {
        let mut r = self.recording_where(Some(self.root), Some(t));
        r.images.retain(|i| !i.threads.is_empty());
        r
    }

    /// A snapshot of process `only` (else of all), with the session's own
    /// buffers, or with those of follower `whose`.
    fn recording_where(&mut self, only: Option<Pid>, whose: Option<TracerId>) -> Recording {
        let hold = match (&self.crash, &self.world_stopped) {
            (Some(c), None) => Some(c.tid),
            _ => None,
        };
        if let Some(tid) = hold {
            // Threads that cannot be stopped keep no state; the trace is
            // taken all the same.
            let _ = self.stop_the_world(tid);
        }
        let r = self.snapshot(only, whose);
        if let Some(tid) = hold {
            let _ = self.restart_the_world(tid);
        }
        r
    }

    /// With `whose`, each thread's records are that follower's buffer (a
    /// thread it has none on is left out, and so are the CPU buffers); a
    /// thread number's buffer goes to its newest image (an exec keeps the
    /// thread).
    fn snapshot(&mut self, only: Option<Pid>, whose: Option<TracerId>) -> Recording {
        let wanted = |pid: Pid| only.is_none_or(|o| o == pid);
        let mut hw_lost = HashMap::new();
        let spaces = &self.spaces;
        let live: Vec<Pid> =
            self.threads.values().filter(|t| wanted(spaces[t.space].space.pid)).map(|t| t.tid).collect();
        for tid in live {
            if let Some(t) = self.threads.remove(&tid) {
                hw_lost.insert(tid, self.sync_hardware(&t));
                self.threads.insert(tid, t);
            }
        }
        let mut live: Vec<(usize, Vec<ThreadTrace>)> = Vec::new();
        let mut tids: Vec<&Thread> =
            self.threads.values().filter(|t| t.record && wanted(self.spaces[t.space].space.pid)).collect();
        tids.sort_by_key(|t| t.tid);
        let mut taken = HashSet::new();
        for t in tids {
            let buffer = match whose {
                None => self.buffer_of(t),
                Some(f) => match self.hub().buffer(f, t.tid) {
                    Some(b) => b.clone(),
                    None => continue,
                },
            };
            taken.insert(t.tid);
            let trace = ThreadTrace {
                tid: t.tid,
                overwritten: buffer.branches_overwritten(),
                buffer,
                crashed: t.crashed,
                last_pc: t.last_pc,
                lost: hw_lost.get(&t.tid).copied().unwrap_or(0),
                state: self.thread_state(t),
            };
            match live.iter_mut().find(|(s, _)| *s == t.space) {
                Some((_, v)) => v.push(trace),
                None => live.push((t.space, vec![trace])),
            }
        }
        let mut images: Vec<ImageTrace> = match whose {
            None => self.finished.iter().filter(|i| wanted(i.pid)).cloned().collect(),
            Some(f) => {
                let hub = self.hub();
                let mut images: Vec<ImageTrace> = Vec::new();
                for i in self.finished.iter().rev().filter(|i| wanted(i.pid)) {
                    let threads = i
                        .threads
                        .iter()
                        .filter_map(|th| {
                            let b = hub.buffer(f, th.tid).filter(|_| taken.insert(th.tid))?;
                            Some(ThreadTrace {
                                tid: th.tid,
                                overwritten: b.branches_overwritten(),
                                buffer: b.clone(),
                                crashed: th.crashed,
                                last_pc: th.last_pc,
                                lost: th.lost,
                                state: th.state.clone(),
                            })
                        })
                        .collect();
                    images.push(ImageTrace {
                        pid: i.pid,
                        generation: i.generation,
                        maps: i.maps.clone(),
                        code: i.code.clone(),
                        threads,
                    });
                }
                images.reverse();
                images
            }
        };
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
        let cpus = match whose {
            Some(_) => Vec::new(),
            None => self
                .cpu_buffers
                .iter()
                .filter_map(|&(c, h)| {
                    self.hub().allocator().bts_buffer(self.tracer, h).ok().map(|b| (c, b.clone()))
                })
                .collect(),
        };
        Recording {
            backend: self.recorder.backend().name(),
            root_pid: only.unwrap_or(self.root),
            images,
            cpus,
        }
    }
}
