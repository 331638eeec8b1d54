//! The multi-tracer Debug Store allocator.
//!
//! - BTS is shared: every tracer of a task has its own circular buffer, and
//!   each of the task's records goes to every one of them. Branches of tasks
//!   no tracer follows go to the catch-all buffers of the CPU they ran on.
//!   Per-task and per-CPU requests coexist.
//! - Every buffer gets [`KERNEL_SLACK`] bytes on top of the requested size.
//! - Each tracer pays for its own buffers in whole pages, against its own
//!   RLIMIT_MEMLOCK, as the kernel accounts `locked_vm`.
//! - PEBS is owned: the first requester of a target owns it until it
//!   releases it or unregisters.
//! - Context records (task arrives / departs) go where the task's branches go.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use crate::pebs::{PebsConfig, PebsFormat, PebsRecord};
use crate::slab::{Key, Slab};
use crate::{BtsBuffer, BtsRecord, ContextKind, Error};

/// Bytes added to every buffer for kernel-mode records (filtered in software).
pub const KERNEL_SLACK: usize = 10 * 1024;
/// The page size buffers are charged in.
pub const PAGE_SIZE: u64 = 4096;

/// What a request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// One task (thread), by tid.
    Task(u32),
    /// Every task on one CPU that no task buffer takes (the catch-all).
    Cpu(u32),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Task(t) => write!(f, "task {t}"),
            Target::Cpu(c) => write!(f, "cpu {c}"),
        }
    }
}

/// A registered tracer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TracerId(Key);
/// A tracer's BTS buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BtsHandle(Key);
/// A tracer's PEBS configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PebsHandle(Key);

/// Hashes small integer ids with one multiplication (routing is per record).
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (u64::from(n) ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

struct Tracer {
    name: String,
    limit_pages: u64,
    charged_pages: u64,
    bts: Vec<BtsHandle>,
    pebs: Vec<PebsHandle>,
}

struct BtsUser {
    tracer: TracerId,
    target: Target,
    buffer: BtsBuffer,
    pages: u64,
    suspended: bool,
}

struct PebsUser {
    tracer: TracerId,
    target: Target,
    config: PebsConfig,
    records: VecDeque<PebsRecord>,
    pages: u64,
    suspended: bool,
}

/// The allocator.
#[derive(Default)]
pub struct Allocator {
    tracers: Slab<Tracer>,
    bts: Slab<BtsUser>,
    pebs: Slab<PebsUser>,
    task_bts: IdMap<u32, Vec<Key>>,
    cpu_bts: IdMap<u32, Vec<Key>>,
    pebs_owner: HashMap<Target, PebsHandle>,
}

/// The bytes a BTS buffer requested as `requested` really has: the request
/// plus the kernel slack. The one rule every backend sizes its buffers by.
pub fn bts_bytes(requested: usize) -> usize {
    requested.saturating_add(KERNEL_SLACK)
}

/// The records a BTS buffer requested as `requested` bytes holds.
pub fn bts_records(requested: usize) -> usize {
    bts_bytes(requested) / crate::BTS_RECORD_SIZE
}

/// Pages charged for a buffer of `bytes` (whole pages, rounded up).
pub fn pages_for(bytes: u64) -> u64 {
    bytes.div_ceil(PAGE_SIZE)
}

/// This process's RLIMIT_MEMLOCK in bytes (`u64::MAX` if unlimited).
pub fn current_memlock_limit() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0 || r.rlim_cur == libc::RLIM_INFINITY {
        return u64::MAX;
    }
    r.rlim_cur
}

/// True if the calling process has CAP_IPC_LOCK in its effective set: the
/// kernel then lets it lock memory beyond RLIMIT_MEMLOCK (perf does too).
pub fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14; // linux/capability.h
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return false };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

fn pebs_record_bytes(format: PebsFormat) -> u64 {
    // Adaptive records vary; charge the basic and GPR groups.
    format.legacy_size().unwrap_or(32 + 144) as u64
}

impl Allocator {
    /// An allocator with no tracer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a tracer with its RLIMIT_MEMLOCK in bytes.
    pub fn register(&mut self, name: impl Into<String>, memlock_bytes: u64) -> TracerId {
        TracerId(self.tracers.insert(Tracer {
            name: name.into(),
            limit_pages: memlock_bytes / PAGE_SIZE,
            charged_pages: 0,
            bts: Vec::new(),
            pebs: Vec::new(),
        }))
    }

    /// Registers the calling process, charged against its real
    /// RLIMIT_MEMLOCK, or without a limit when it has CAP_IPC_LOCK (as the
    /// kernel treats it). Its buffers are charged either way.
    pub fn register_current(&mut self, name: impl Into<String>) -> TracerId {
        let limit = if has_cap_ipc_lock() { u64::MAX } else { current_memlock_limit() };
        self.register(name, limit)
    }

    fn tracer(&self, t: TracerId) -> Result<&Tracer, Error> {
        self.tracers.get(t.0).ok_or(Error::UnknownTracer)
    }

    /// Pages charged to a tracer now.
    pub fn charged_pages(&self, t: TracerId) -> Result<u64, Error> {
        Ok(self.tracer(t)?.charged_pages)
    }

    /// A tracer's limit in pages.
    pub fn limit_pages(&self, t: TracerId) -> Result<u64, Error> {
        Ok(self.tracer(t)?.limit_pages)
    }

    fn charge(&mut self, t: TracerId, pages: u64) -> Result<(), Error> {
        let tr = self.tracers.get_mut(t.0).ok_or(Error::UnknownTracer)?;
        let total = tr.charged_pages.checked_add(pages).filter(|&n| n <= tr.limit_pages);
        match total {
            Some(n) => {
                tr.charged_pages = n;
                Ok(())
            }
            None => Err(Error::MemlockExceeded {
                tracer: tr.name.clone(),
                limit_bytes: tr.limit_pages.saturating_mul(PAGE_SIZE),
                charged_bytes: tr.charged_pages * PAGE_SIZE,
                requested_bytes: pages.saturating_mul(PAGE_SIZE),
            }),
        }
    }

    fn refund(&mut self, t: TracerId, pages: u64) {
        if let Some(tr) = self.tracers.get_mut(t.0) {
            tr.charged_pages -= pages;
        }
    }

    /// Asks for a BTS buffer of `bytes` (plus the kernel slack) on `target`.
    pub fn request_bts(&mut self, t: TracerId, target: Target, bytes: usize) -> Result<BtsHandle, Error> {
        self.tracer(t)?;
        let total = bts_bytes(bytes);
        if bytes < crate::BTS_RECORD_SIZE {
            return Err(Error::BufferTooSmall { bytes });
        }
        let buffer = BtsBuffer::with_bytes(total)?;
        let pages = pages_for(total as u64);
        self.charge(t, pages)?;
        let key = self.bts.insert(BtsUser { tracer: t, target, buffer, pages, suspended: false });
        match target {
            Target::Task(task) => self.task_bts.entry(task).or_default().push(key),
            Target::Cpu(cpu) => self.cpu_bts.entry(cpu).or_default().push(key),
        }
        let h = BtsHandle(key);
        self.tracers.get_mut(t.0).expect("checked above").bts.push(h);
        Ok(h)
    }

    fn bts_of(&self, t: TracerId, h: BtsHandle) -> Result<&BtsUser, Error> {
        let u = self.bts.get(h.0).ok_or(Error::UnknownHandle)?;
        if u.tracer != t {
            return Err(Error::NotYours);
        }
        Ok(u)
    }

    fn bts_of_mut(&mut self, t: TracerId, h: BtsHandle) -> Result<&mut BtsUser, Error> {
        let u = self.bts.get_mut(h.0).ok_or(Error::UnknownHandle)?;
        if u.tracer != t {
            return Err(Error::NotYours);
        }
        Ok(u)
    }

    /// Stops delivery into this buffer (for this tracer alone).
    pub fn suspend_bts(&mut self, t: TracerId, h: BtsHandle) -> Result<(), Error> {
        self.bts_of_mut(t, h)?.suspended = true;
        Ok(())
    }

    /// Lets a suspended buffer take records again.
    pub fn resume_bts(&mut self, t: TracerId, h: BtsHandle) -> Result<(), Error> {
        self.bts_of_mut(t, h)?.suspended = false;
        Ok(())
    }

    /// The buffer takes no records for now.
    pub fn is_suspended(&self, t: TracerId, h: BtsHandle) -> Result<bool, Error> {
        Ok(self.bts_of(t, h)?.suspended)
    }

    /// The tracer's own buffer.
    pub fn bts_buffer(&self, t: TracerId, h: BtsHandle) -> Result<&BtsBuffer, Error> {
        Ok(&self.bts_of(t, h)?.buffer)
    }

    /// What the buffer records.
    pub fn bts_target(&self, t: TracerId, h: BtsHandle) -> Result<Target, Error> {
        Ok(self.bts_of(t, h)?.target)
    }

    /// A snapshot of one's own buffer, oldest to newest.
    pub fn read_bts(&self, t: TracerId, h: BtsHandle) -> Result<Vec<BtsRecord>, Error> {
        Ok(self.bts_of(t, h)?.buffer.snapshot())
    }

    /// Empties one's own buffer; nobody else's changes.
    pub fn reset_bts(&mut self, t: TracerId, h: BtsHandle) -> Result<(), Error> {
        self.bts_of_mut(t, h)?.buffer.clear();
        Ok(())
    }

    /// Takes the buffer off its target's route for good: it keeps what it
    /// holds (readable, charged) and takes nothing more, even if another
    /// task gets the same number.
    pub fn unroute_bts(&mut self, t: TracerId, h: BtsHandle) -> Result<(), Error> {
        let target = self.bts_of(t, h)?.target;
        let list = match target {
            Target::Task(task) => self.task_bts.get_mut(&task),
            Target::Cpu(cpu) => self.cpu_bts.get_mut(&cpu),
        };
        if let Some(list) = list {
            list.retain(|k| *k != h.0);
            if list.is_empty() {
                match target {
                    Target::Task(task) => self.task_bts.remove(&task),
                    Target::Cpu(cpu) => self.cpu_bts.remove(&cpu),
                };
            }
        }
        Ok(())
    }

    /// Puts an unrouted buffer back on its target's route (the same task
    /// going on, as after an exec).
    pub fn reroute_bts(&mut self, t: TracerId, h: BtsHandle) -> Result<(), Error> {
        let target = self.bts_of(t, h)?.target;
        let list = match target {
            Target::Task(task) => self.task_bts.entry(task).or_default(),
            Target::Cpu(cpu) => self.cpu_bts.entry(cpu).or_default(),
        };
        if !list.contains(&h.0) {
            list.push(h.0);
        }
        Ok(())
    }

    /// Takes one's own buffer out whole (a DRAIN that copies nothing),
    /// leaving an empty one of the same size in its place.
    pub fn take_bts(&mut self, t: TracerId, h: BtsHandle) -> Result<BtsBuffer, Error> {
        let u = self.bts_of_mut(t, h)?;
        let fresh = BtsBuffer::with_bytes(u.buffer.size_bytes())?;
        Ok(std::mem::replace(&mut u.buffer, fresh))
    }

    /// Releases a buffer and refunds its pages.
    pub fn release_bts(&mut self, t: TracerId, h: BtsHandle) -> Result<BtsBuffer, Error> {
        self.unroute_bts(t, h)?;
        let u = self.bts.remove(h.0).expect("checked by unroute_bts");
        self.refund(t, u.pages);
        if let Some(tr) = self.tracers.get_mut(t.0) {
            tr.bts.retain(|x| *x != h);
        }
        Ok(u.buffer)
    }

    /// True if some tracer follows `task`.
    pub fn is_followed(&self, task: u32) -> bool {
        self.task_bts.contains_key(&task)
    }

    /// Routes one record of `task`, seen on `cpu`. Returns how many buffers took it.
    #[inline]
    pub fn deliver_bts(&mut self, cpu: u32, task: u32, rec: BtsRecord) -> usize {
        self.deliver_batch(cpu, task, std::slice::from_ref(&rec))
    }

    /// Routes a run of records of one task on one CPU.
    pub fn deliver_batch(&mut self, cpu: u32, task: u32, recs: &[BtsRecord]) -> usize {
        let list = match self.task_bts.get(&task) {
            Some(l) => l,
            None => match self.cpu_bts.get(&cpu) {
                Some(l) => l,
                None => return 0,
            },
        };
        let mut n = 0;
        for &k in list {
            if let Some(u) = self.bts.get_mut(k) {
                if !u.suspended {
                    u.buffer.push_all(recs);
                    n += 1;
                }
            }
        }
        n
    }

    /// A context record: `task` arrives on or departs from `cpu` at `clock`.
    pub fn context(&mut self, cpu: u32, task: u32, kind: ContextKind, clock: u64) -> usize {
        self.deliver_bts(cpu, task, BtsRecord::context(kind, clock, u64::from(task)))
    }

    /// Asks for PEBS on `target`; the first requester owns it.
    pub fn request_pebs(
        &mut self,
        t: TracerId,
        target: Target,
        config: PebsConfig,
    ) -> Result<PebsHandle, Error> {
        self.tracer(t)?;
        if let Some(owner) = self.pebs_owner.get(&target) {
            let owner_name = self
                .pebs
                .get(owner.0)
                .and_then(|u| self.tracers.get(u.tracer.0))
                .map(|tr| tr.name.clone())
                .unwrap_or_default();
            return Err(Error::PebsBusy { target: target.to_string(), owner: owner_name });
        }
        if config.records == 0 {
            return Err(Error::BufferTooSmall { bytes: 0 });
        }
        let bytes = (config.records as u64).saturating_mul(pebs_record_bytes(config.format));
        let pages = pages_for(bytes.saturating_add(KERNEL_SLACK as u64));
        self.charge(t, pages)?;
        let key = self.pebs.insert(PebsUser {
            tracer: t,
            target,
            config,
            records: VecDeque::new(),
            pages,
            suspended: false,
        });
        let h = PebsHandle(key);
        self.pebs_owner.insert(target, h);
        self.tracers.get_mut(t.0).expect("checked above").pebs.push(h);
        Ok(h)
    }

    fn pebs_of_mut(&mut self, t: TracerId, h: PebsHandle) -> Result<&mut PebsUser, Error> {
        let u = self.pebs.get_mut(h.0).ok_or(Error::UnknownHandle)?;
        if u.tracer != t {
            return Err(Error::NotYours);
        }
        Ok(u)
    }

    /// The owner of PEBS on `target`, by name.
    pub fn pebs_owner(&self, target: Target) -> Option<&str> {
        let h = self.pebs_owner.get(&target)?;
        let u = self.pebs.get(h.0)?;
        self.tracers.get(u.tracer.0).map(|t| t.name.as_str())
    }

    /// Stops a PEBS buffer taking records for now.
    pub fn suspend_pebs(&mut self, t: TracerId, h: PebsHandle) -> Result<(), Error> {
        self.pebs_of_mut(t, h)?.suspended = true;
        Ok(())
    }

    /// Lets a suspended PEBS buffer take records again.
    pub fn resume_pebs(&mut self, t: TracerId, h: PebsHandle) -> Result<(), Error> {
        self.pebs_of_mut(t, h)?.suspended = false;
        Ok(())
    }

    /// Routes a PEBS record to the owner of `target` (task first, then CPU).
    pub fn deliver_pebs(&mut self, cpu: u32, task: u32, rec: PebsRecord) -> bool {
        let h = match self.pebs_owner.get(&Target::Task(task)).or(self.pebs_owner.get(&Target::Cpu(cpu))) {
            Some(h) => *h,
            None => return false,
        };
        let Some(u) = self.pebs.get_mut(h.0) else { return false };
        if u.suspended {
            return false;
        }
        if u.records.len() == u.config.records {
            u.records.pop_front();
        }
        u.records.push_back(rec);
        true
    }

    /// One's own PEBS records, oldest first.
    pub fn read_pebs(&mut self, t: TracerId, h: PebsHandle) -> Result<Vec<PebsRecord>, Error> {
        Ok(self.pebs_of_mut(t, h)?.records.iter().cloned().collect())
    }

    /// Gives PEBS up and refunds its buffer.
    pub fn release_pebs(&mut self, t: TracerId, h: PebsHandle) -> Result<(), Error> {
        self.pebs_of_mut(t, h)?;
        let u = self.pebs.remove(h.0).expect("checked above");
        if self.pebs_owner.get(&u.target) == Some(&h) {
            self.pebs_owner.remove(&u.target);
        }
        self.refund(t, u.pages);
        if let Some(tr) = self.tracers.get_mut(t.0) {
            tr.pebs.retain(|x| *x != h);
        }
        Ok(())
    }

    /// Releases everything the tracer holds and forgets it.
    pub fn unregister(&mut self, t: TracerId) -> Result<(), Error> {
        let (bts, pebs) = {
            let tr = self.tracer(t)?;
            (tr.bts.clone(), tr.pebs.clone())
        };
        for h in bts {
            self.release_bts(t, h)?;
        }
        for h in pebs {
            self.release_pebs(t, h)?;
        }
        let tr = self.tracers.remove(t.0).expect("checked above");
        debug_assert_eq!(tr.charged_pages, 0);
        Ok(())
    }

    /// Sum of the pages of the tracer's live buffers (for invariant checks).
    pub fn live_pages(&self, t: TracerId) -> u64 {
        let b: u64 = self.bts.iter().filter(|(_, u)| u.tracer == t).map(|(_, u)| u.pages).sum();
        let p: u64 = self.pebs.iter().filter(|(_, u)| u.tracer == t).map(|(_, u)| u.pages).sum();
        b + p
    }

    /// Number of PEBS owners of `target` (0 or 1).
    pub fn pebs_owner_count(&self, target: Target) -> usize {
        self.pebs
            .iter()
            .filter(|(k, u)| u.target == target && self.pebs_owner.get(&u.target).map(|h| h.0) == Some(*k))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    #[test]
    fn each_tracer_of_a_task_gets_every_record() {
        let mut a = Allocator::new();
        let t1 = a.register("gdb", 8 * MB);
        let t2 = a.register("bts", 8 * MB);
        let h1 = a.request_bts(t1, Target::Task(100), 4096).unwrap();
        let h2 = a.request_bts(t2, Target::Task(100), 4096).unwrap();
        assert_eq!(a.deliver_bts(0, 100, BtsRecord::branch(1, 2)), 2);
        a.reset_bts(t1, h1).unwrap();
        assert!(a.read_bts(t1, h1).unwrap().is_empty());
        assert_eq!(
            a.read_bts(t2, h2).unwrap(),
            vec![BtsRecord::branch(1, 2)],
            "a reset touches only one's own"
        );
        assert!(matches!(a.read_bts(t1, h2), Err(Error::NotYours)));
    }

    #[test]
    fn a_taken_buffer_holds_the_records_as_hardware_bytes() {
        let mut a = Allocator::new();
        let t = a.register("gdb", 8 * MB);
        let h = a.request_bts(t, Target::Task(1), 48).unwrap();
        let cap = a.bts_buffer(t, h).unwrap().capacity();
        for i in 0..cap as u64 + 3 {
            a.deliver_bts(0, 1, BtsRecord::branch(i, i + 1));
        }
        let taken = a.take_bts(t, h).unwrap();
        assert!(a.read_bts(t, h).unwrap().is_empty(), "an empty buffer is left");
        assert_eq!(a.bts_buffer(t, h).unwrap().capacity(), cap);
        let (older, newer) = taken.as_byte_slices();
        let bytes: Vec<u8> = taken.iter().flat_map(|r| r.to_bytes()).collect();
        assert_eq!([older, newer].concat(), bytes, "oldest first, wrapped");
        assert!(!older.is_empty() && !newer.is_empty());
    }

    #[test]
    fn unfollowed_tasks_go_to_the_cpu_catch_all() {
        let mut a = Allocator::new();
        let t = a.register("sys", 8 * MB);
        let task = a.request_bts(t, Target::Task(7), 4096).unwrap();
        let cpu = a.request_bts(t, Target::Cpu(1), 4096).unwrap();
        a.deliver_bts(1, 7, BtsRecord::branch(1, 2));
        a.deliver_bts(1, 8, BtsRecord::branch(3, 4));
        a.deliver_bts(0, 8, BtsRecord::branch(5, 6));
        assert_eq!(a.read_bts(t, task).unwrap(), vec![BtsRecord::branch(1, 2)]);
        assert_eq!(a.read_bts(t, cpu).unwrap(), vec![BtsRecord::branch(3, 4)]);
    }

    #[test]
    fn charges_are_pages_with_slack_and_refunded() {
        let mut a = Allocator::new();
        let t = a.register("bts", 100 * PAGE_SIZE);
        let h = a.request_bts(t, Target::Task(1), 64 * 1024).unwrap();
        assert_eq!(a.charged_pages(t).unwrap(), pages_for(64 * 1024 + KERNEL_SLACK as u64));
        assert_eq!(a.charged_pages(t).unwrap(), 19);
        let err = a.request_bts(t, Target::Task(2), 320 * 1024).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("RLIMIT_MEMLOCK") && msg.contains("409600"), "{msg}");
        a.release_bts(t, h).unwrap();
        assert_eq!(a.charged_pages(t).unwrap(), 0);
    }

    #[test]
    fn pebs_has_one_owner() {
        let mut a = Allocator::new();
        let t1 = a.register("perf", 8 * MB);
        let t2 = a.register("vtune", 8 * MB);
        let cfg = PebsConfig { format: PebsFormat::Fmt3, reset: 1000, records: 64 };
        let h = a.request_pebs(t1, Target::Cpu(0), cfg.clone()).unwrap();
        let e = a.request_pebs(t2, Target::Cpu(0), cfg.clone()).unwrap_err();
        assert!(e.to_string().contains("owned by perf"), "{e}");
        a.unregister(t1).unwrap();
        assert!(a.request_pebs(t2, Target::Cpu(0), cfg).is_ok());
        assert!(a.read_pebs(t1, h).is_err());
    }
}
