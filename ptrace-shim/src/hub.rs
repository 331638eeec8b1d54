//! The tracers of one or many sessions, and the one allocator they share.
//!
//! In-process, a session is the only tracer of its threads. Under a broker
//! (`bts daemon`), many sessions run in one process and the broker's
//! clients are tracers too: each follows whole processes, with a buffer of
//! its own size on every thread of them (threads started later too),
//! configured through the legacy `PTRACE_BTS_*` command set. A session
//! delivers each record once; the allocator copies it into the buffer of
//! every tracer of the thread. A follower pays for its own buffers and
//! never sees another's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use ds_alloc::{Allocator, BtsBuffer, TracerId};

use crate::legacy::{
    BtsError, LegacyBts, PtraceBtsConfig, CONFIG_SIZE, PTRACE_BTS_O_ALLOC, PTRACE_BTS_O_SCHED,
    PTRACE_BTS_O_TRACE,
};
use crate::sys::Pid;

/// A hub shared by the sessions and the broker's client threads.
pub type SharedHub = Arc<Mutex<Hub>>;

/// Locks a shared hub. A thread that panicked while holding it left the
/// buffers consistent (every change is one call), so the lock is taken anyway.
pub fn lock(hub: &SharedHub) -> MutexGuard<'_, Hub> {
    hub.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How a follower follows one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Follow {
    /// Bytes of each thread's buffer (the kernel slack comes on top).
    pub bytes: usize,
    /// Empty the buffers when the process execs: the follower launched it
    /// and wants the program's branches, not its own before the exec.
    pub from_exec: bool,
}

/// Whether a follower may (still) trace a process: asked again at every
/// exec, since an exec can change who may trace it (a set-uid program).
pub type MayFollow = Box<dyn Fn(Pid) -> bool + Send>;

struct Follower {
    legacy: LegacyBts,
    may_follow: MayFollow,
    processes: HashMap<Pid, Follow>,
    /// The process of each thread the follower has a buffer on.
    threads: HashMap<u32, Pid>,
    /// Threads that ended: their buffers are read, never routed again.
    ended: std::collections::HashSet<u32>,
}

/// One buffer of a follower, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferInfo {
    /// The process.
    pub pid: Pid,
    /// The thread.
    pub tid: u32,
    /// Bytes the buffer holds (with the kernel slack).
    pub bytes: usize,
    /// Records in it now.
    pub records: usize,
    /// Records written into it since it was made or last emptied.
    pub written: u64,
    /// It takes no records (its thread ended, or the follower paused it).
    pub suspended: bool,
}

/// The allocator and who follows what.
pub struct Hub {
    alloc: Allocator,
    followers: HashMap<TracerId, Follower>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("followers", &self.followers.len()).finish_non_exhaustive()
    }
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

fn follow_config(bytes: usize) -> Result<PtraceBtsConfig, BtsError> {
    let bts_size =
        u32::try_from(bytes).map_err(|_| BtsError::Alloc(ds_alloc::Error::BufferTooSmall { bytes }))?;
    Ok(PtraceBtsConfig {
        size: CONFIG_SIZE as u32,
        flags: PTRACE_BTS_O_TRACE | PTRACE_BTS_O_ALLOC | PTRACE_BTS_O_SCHED,
        signal: 0,
        bts_size,
    })
}

impl Hub {
    /// A hub with no tracer.
    pub fn new() -> Hub {
        Hub { alloc: Allocator::new(), followers: HashMap::new() }
    }

    /// Wraps the hub for sharing.
    pub fn shared(self) -> SharedHub {
        Arc::new(Mutex::new(self))
    }

    /// The allocator.
    pub fn alloc(&mut self) -> &mut Allocator {
        &mut self.alloc
    }

    /// The allocator, to read.
    pub fn allocator(&self) -> &Allocator {
        &self.alloc
    }

    /// Registers a follower charged against `memlock_bytes`
    /// (`u64::MAX`: not limited), which may trace what `may_follow` allows.
    pub fn add_follower(&mut self, name: &str, memlock_bytes: u64, may_follow: MayFollow) -> TracerId {
        let legacy = LegacyBts::new(&mut self.alloc, name, memlock_bytes);
        let id = legacy.tracer();
        let f = Follower {
            legacy,
            may_follow,
            processes: HashMap::new(),
            threads: HashMap::new(),
            ended: Default::default(),
        };
        self.followers.insert(id, f);
        id
    }

    /// Forgets a follower: every buffer released, its charge refunded.
    /// Returns the processes it followed.
    pub fn remove_follower(&mut self, t: TracerId) -> Vec<Pid> {
        let Some(f) = self.followers.remove(&t) else { return Vec::new() };
        f.legacy.detach(&mut self.alloc);
        f.processes.into_keys().collect()
    }

    /// `t` follows process `pid` from now on: a buffer on each of `tids`,
    /// and on every thread that starts later. All or nothing: if one buffer
    /// is refused (the locked-memory limit), none is kept.
    pub fn follow(&mut self, t: TracerId, pid: Pid, tids: &[Pid], how: Follow) -> Result<(), BtsError> {
        let cfg = follow_config(how.bytes)?;
        let f = self.followers.get_mut(&t).ok_or(BtsError::Alloc(ds_alloc::Error::UnknownTracer))?;
        let mut made = Vec::new();
        for &tid in tids {
            let task = tid as u32;
            if let Err(e) = f.legacy.config(&mut self.alloc, task, &cfg) {
                for task in made {
                    f.legacy.release(&mut self.alloc, task);
                    f.threads.remove(&task);
                }
                return Err(e);
            }
            f.threads.insert(task, pid);
            made.push(task);
        }
        f.processes.insert(pid, how);
        Ok(())
    }

    /// `t` stops following `pid`: its buffers there are released.
    pub fn unfollow(&mut self, t: TracerId, pid: Pid) {
        let Some(f) = self.followers.get_mut(&t) else { return };
        f.processes.remove(&pid);
        let tasks: Vec<u32> = f.threads.iter().filter(|(_, &p)| p == pid).map(|(&task, _)| task).collect();
        for task in tasks {
            f.legacy.release(&mut self.alloc, task);
            f.threads.remove(&task);
            f.ended.remove(&task);
        }
    }

    /// The followers of process `pid`.
    pub fn followers(&self, pid: Pid) -> Vec<TracerId> {
        let mut v: Vec<TracerId> =
            self.followers.iter().filter(|(_, f)| f.processes.contains_key(&pid)).map(|(&t, _)| t).collect();
        v.sort_by_key(|t| format!("{t:?}"));
        v
    }

    /// The processes `t` follows.
    pub fn followed_by(&self, t: TracerId) -> Vec<Pid> {
        let mut v: Vec<Pid> =
            self.followers.get(&t).map(|f| f.processes.keys().copied().collect()).unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// A thread of `pid` started (or exec'd, when `exec`): each follower of
    /// `pid` gets its buffer there. At an exec, a follower that may not
    /// trace the new program stops following the process. Returns the
    /// followers refused.
    pub(crate) fn thread_started(&mut self, pid: Pid, tid: Pid, exec: bool) -> Vec<(TracerId, BtsError)> {
        let task = tid as u32;
        let mut refused = Vec::new();
        let mut denied = Vec::new();
        for (&t, f) in self.followers.iter_mut() {
            let Some(how) = f.processes.get(&pid).copied() else { continue };
            if exec && !(f.may_follow)(pid) {
                denied.push(t);
                refused.push((t, BtsError::ExecDenied(pid)));
                continue;
            }
            let result = match f.legacy.handle(task) {
                // The same thread going on after its exec: its history goes on.
                Some(h) if exec && !how.from_exec => self
                    .alloc
                    .reroute_bts(t, h)
                    .and_then(|()| self.alloc.resume_bts(t, h))
                    .map_err(BtsError::from),
                // A new thread (or a fresh start at the exec): a new buffer.
                _ => follow_config(how.bytes).and_then(|cfg| f.legacy.config(&mut self.alloc, task, &cfg)),
            };
            f.ended.remove(&task);
            match result {
                Ok(()) => {
                    f.threads.insert(task, pid);
                }
                Err(e) => refused.push((t, e)),
            }
        }
        for t in denied {
            self.unfollow(t, pid);
        }
        refused
    }

    /// A thread ended: its followers' buffers keep what they hold and are
    /// taken off the route for good (a new thread may get its number).
    pub(crate) fn thread_ended(&mut self, tid: Pid) {
        let task = tid as u32;
        for (&t, f) in self.followers.iter_mut() {
            if let Some(h) = f.legacy.handle(task) {
                let _ = self.alloc.unroute_bts(t, h);
                f.ended.insert(task);
            }
        }
    }

    /// `t`'s buffer on thread `tid`.
    pub fn buffer(&self, t: TracerId, tid: Pid) -> Option<&BtsBuffer> {
        let h = self.followers.get(&t)?.legacy.handle(tid as u32)?;
        self.alloc.bts_buffer(t, h).ok()
    }

    /// `t`'s buffers, by process and thread.
    pub fn buffers(&self, t: TracerId) -> Vec<BufferInfo> {
        let Some(f) = self.followers.get(&t) else { return Vec::new() };
        let mut v: Vec<BufferInfo> = f
            .threads
            .iter()
            .filter_map(|(&task, &pid)| {
                let h = f.legacy.handle(task)?;
                let b = self.alloc.bts_buffer(t, h).ok()?;
                Some(BufferInfo {
                    pid,
                    tid: task,
                    bytes: b.size_bytes(),
                    records: b.len(),
                    written: b.written(),
                    suspended: self.alloc.is_suspended(t, h).unwrap_or(true),
                })
            })
            .collect();
        v.sort_by_key(|b| (b.pid, b.tid));
        v
    }

    /// Bytes charged to `t`, and its limit.
    pub fn charge(&self, t: TracerId) -> Option<(u64, u64)> {
        let page = ds_alloc::alloc::PAGE_SIZE;
        let charged = self.alloc.charged_pages(t).ok()?;
        let limit = self.alloc.limit_pages(t).ok()?;
        // An unlimited tracer (CAP_IPC_LOCK) stays unlimited, not rounded to pages.
        let limit = if limit >= u64::MAX / page { u64::MAX } else { limit * page };
        Some((charged * page, limit))
    }

    /// Follower `t`, if `task` is a thread of a process it follows (a field
    /// borrow, so that the allocator stays usable beside it).
    fn follower_of(
        followers: &mut HashMap<TracerId, Follower>,
        t: TracerId,
        task: u32,
    ) -> Result<&mut Follower, BtsError> {
        let f = followers.get_mut(&t).ok_or(BtsError::Alloc(ds_alloc::Error::UnknownTracer))?;
        if !f.threads.contains_key(&task) {
            return Err(BtsError::NotTraced(task));
        }
        Ok(f)
    }

    /// PTRACE_BTS_DRAIN of `t`'s buffer of `task` without a copy: the
    /// buffer itself, taken out (an empty one of the same size takes its
    /// place), and whether the follower wants context records (O_SCHED).
    pub fn drain_buffer(&mut self, t: TracerId, task: u32) -> Result<(BtsBuffer, bool), BtsError> {
        let f = Self::follower_of(&mut self.followers, t, task)?;
        let h = f.legacy.handle(task).ok_or(BtsError::NoBuffer(task))?;
        let sched = f.legacy.status(task)?.flags & PTRACE_BTS_O_SCHED != 0;
        Ok((self.alloc.take_bts(t, h)?, sched))
    }

    /// A raw legacy request of `t` on `task`, which must be a thread of a
    /// process `t` follows.
    pub fn legacy(
        &mut self,
        t: TracerId,
        request: u32,
        task: u32,
        addr: usize,
        data: &mut [u8],
    ) -> Result<i64, BtsError> {
        let f = Self::follower_of(&mut self.followers, t, task)?;
        // Configuring would route records of whatever task gets the number next.
        if request == crate::legacy::PTRACE_BTS_CONFIG && f.ended.contains(&task) {
            return Err(BtsError::Ended(task));
        }
        f.legacy.request(&mut self.alloc, request, task, addr, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ds_alloc::BtsRecord;

    const MB: u64 = 1 << 20;

    fn anyone() -> MayFollow {
        Box::new(|_| true)
    }

    #[test]
    fn followers_get_their_own_buffers_on_new_threads_and_leave_cleanly() {
        let mut hub = Hub::new();
        let a = hub.add_follower("a", 8 * MB, anyone());
        let b = hub.add_follower("b", 8 * MB, anyone());
        hub.follow(a, 10, &[10], Follow { bytes: 4096, from_exec: false }).unwrap();
        hub.follow(b, 10, &[10], Follow { bytes: 64 * 1024, from_exec: false }).unwrap();
        assert!(hub.thread_started(10, 11, false).is_empty());
        hub.alloc().deliver_bts(0, 11, BtsRecord::branch(1, 2));
        assert_eq!(hub.buffer(a, 11).unwrap().len(), 1);
        assert_eq!(hub.buffer(b, 11).unwrap().len(), 1);
        assert!(hub.buffer(a, 11).unwrap().capacity() < hub.buffer(b, 11).unwrap().capacity());
        hub.thread_ended(11);
        hub.alloc().deliver_bts(0, 11, BtsRecord::branch(3, 4));
        assert_eq!(hub.buffer(a, 11).unwrap().len(), 1, "an ended thread's buffer takes nothing more");
        let mut cfg = follow_config(4096).unwrap().to_bytes();
        assert_eq!(
            hub.legacy(a, crate::legacy::PTRACE_BTS_CONFIG, 11, 0, &mut cfg),
            Err(BtsError::Ended(11))
        );
        assert_eq!(
            hub.legacy(a, crate::legacy::PTRACE_BTS_CONFIG, 11, 0, &mut cfg).unwrap_err().errno(),
            libc::ESRCH
        );
        assert!(!hub.allocator().is_followed(11), "nothing routes the number any more");
        assert_eq!(hub.followers(10).len(), 2);
        assert_eq!(hub.remove_follower(a), vec![10]);
        assert_eq!(hub.charge(a), None);
        assert_eq!(hub.buffer(b, 11).unwrap().len(), 1, "b keeps its records");
        hub.unfollow(b, 10);
        assert_eq!(hub.charge(b).unwrap().0, 0, "every page refunded");
    }

    #[test]
    fn a_refused_follow_keeps_nothing() {
        let mut hub = Hub::new();
        let a = hub.add_follower("a", 64 * 1024, anyone());
        let e = hub.follow(a, 10, &[10, 11, 12], Follow { bytes: 32 * 1024, from_exec: false }).unwrap_err();
        assert_eq!(e.errno(), libc::ENOMEM);
        assert_eq!(hub.charge(a).unwrap().0, 0);
        assert!(hub.followed_by(a).is_empty());
        let mut buf = [0u8; 24];
        assert_eq!(
            hub.legacy(a, crate::legacy::PTRACE_BTS_SIZE, 10, 0, &mut buf),
            Err(BtsError::NotTraced(10))
        );
    }

    #[test]
    fn an_exec_beyond_a_followers_rights_ends_its_following() {
        let mut hub = Hub::new();
        let a = hub.add_follower("a", 8 * MB, Box::new(|_| false));
        let b = hub.add_follower("b", 8 * MB, anyone());
        for t in [a, b] {
            hub.follow(t, 10, &[10], Follow { bytes: 4096, from_exec: false }).unwrap();
        }
        hub.thread_ended(10);
        let refused = hub.thread_started(10, 10, true);
        assert_eq!(refused, vec![(a, BtsError::ExecDenied(10))]);
        assert!(hub.followed_by(a).is_empty() && hub.buffer(a, 10).is_none());
        assert_eq!(hub.charge(a).unwrap().0, 0);
        hub.alloc().deliver_bts(0, 10, BtsRecord::branch(1, 2));
        assert_eq!(hub.buffer(b, 10).unwrap().len(), 1, "b goes on");
    }

    #[test]
    fn an_exec_empties_the_buffers_of_who_launched_it() {
        let mut hub = Hub::new();
        let a = hub.add_follower("a", 8 * MB, anyone());
        let b = hub.add_follower("b", 8 * MB, anyone());
        hub.follow(a, 10, &[10], Follow { bytes: 4096, from_exec: true }).unwrap();
        hub.follow(b, 10, &[10], Follow { bytes: 4096, from_exec: false }).unwrap();
        hub.alloc().deliver_bts(0, 10, BtsRecord::branch(1, 2));
        hub.thread_ended(10);
        assert!(hub.thread_started(10, 10, true).is_empty());
        assert_eq!(hub.buffer(a, 10).unwrap().len(), 0);
        assert_eq!(hub.buffer(b, 10).unwrap().len(), 1);
        hub.alloc().deliver_bts(0, 10, BtsRecord::branch(3, 4));
        assert_eq!(hub.buffer(b, 10).unwrap().len(), 2, "resumed after the exec");
    }
}
