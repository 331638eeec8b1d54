//! The legacy ptrace BTS command set (2.6.2x kernels) on top of the
//! multi-tracer allocator: CONFIG, STATUS, SIZE, GET, CLEAR, DRAIN, with
//! per-tracer semantics — CLEAR and DRAIN touch only the caller's buffer.

use std::collections::HashMap;

use ds_alloc::{Allocator, BtsHandle, BtsRecord, Target, TracerId, BTS_RECORD_SIZE};

/// Configure a task's buffer.
pub const PTRACE_BTS_CONFIG: u32 = 40;
/// Read a task's configuration.
pub const PTRACE_BTS_STATUS: u32 = 41;
/// The number of records held.
pub const PTRACE_BTS_SIZE: u32 = 42;
/// Read one record (0 the newest).
pub const PTRACE_BTS_GET: u32 = 43;
/// Empty the buffer.
pub const PTRACE_BTS_CLEAR: u32 = 44;
/// Read every record and empty the buffer.
pub const PTRACE_BTS_DRAIN: u32 = 45;

/// Trace branches.
pub const PTRACE_BTS_O_TRACE: u32 = 0x1;
/// Add task arrives/departs records.
pub const PTRACE_BTS_O_SCHED: u32 = 0x2;
/// Signal the tracer when the buffer overflows (not supported, as before).
pub const PTRACE_BTS_O_SIGNAL: u32 = 0x4;
/// (Re)allocate the buffer with `bts_size` bytes.
pub const PTRACE_BTS_O_ALLOC: u32 = 0x8;

/// `struct ptrace_bts_config`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PtraceBtsConfig {
    /// Size of this struct, for versioning.
    pub size: u32,
    /// `PTRACE_BTS_O_*` flags.
    pub flags: u32,
    /// The signal on overflow (not supported: 0).
    pub signal: u32,
    /// The buffer's size in bytes.
    pub bts_size: u32,
}

/// The size of the config struct.
pub const CONFIG_SIZE: usize = std::mem::size_of::<PtraceBtsConfig>();

impl PtraceBtsConfig {
    /// The struct as the kernel read it.
    pub fn to_bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut b = [0u8; CONFIG_SIZE];
        for (i, w) in [self.size, self.flags, self.signal, self.bts_size].iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        b
    }

    /// Reads the struct (`None` if too short).
    pub fn from_bytes(b: &[u8]) -> Option<PtraceBtsConfig> {
        let w = |i: usize| Some(u32::from_le_bytes(b.get(i * 4..i * 4 + 4)?.try_into().ok()?));
        Some(PtraceBtsConfig { size: w(0)?, flags: w(1)?, signal: w(2)?, bts_size: w(3)? })
    }
}

/// Errors of the legacy command set, as errno-like values with a message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BtsError {
    #[error("PTRACE_BTS_O_SIGNAL is not supported: overflow signals were never implemented (EINVAL)")]
    /// A signal on overflow was asked for.
    SignalNotSupported,
    #[error("task {0} has no BTS buffer: configure it with PTRACE_BTS_O_ALLOC first (ENXIO)")]
    /// The task has no buffer.
    NoBuffer(u32),
    #[error("index {index} is beyond the {len} records in the buffer (EINVAL)")]
    /// An index past the records.
    BadIndex {
        /// The index asked for.
        index: usize,
        /// The records there are.
        len: usize,
    },
    #[error("the config struct is {0} bytes; at least {CONFIG_SIZE} are needed (EINVAL)")]
    /// The config struct is too small.
    BadConfigSize(usize),
    #[error("the output buffer holds {have} bytes but {need} are needed (EINVAL)")]
    /// The caller's buffer is too small.
    ShortBuffer {
        /// The buffer's size.
        have: usize,
        /// The size needed.
        need: usize,
    },
    #[error("task {0} is not a thread of a process you trace: attach to it first (ESRCH)")]
    /// The task is not traced by the caller.
    NotTraced(u32),
    #[error("pid {0} exec'd a program you may not trace (set-uid or file capabilities): you trace it no more (EPERM)")]
    /// The traced process exec'd beyond the caller's rights.
    ExecDenied(i32),
    #[error("thread {0} has ended: its buffer can be read, not configured (ESRCH)")]
    /// The task ended.
    Ended(u32),
    #[error("unknown request {0} (EIO)")]
    /// Not a `PTRACE_BTS_*` request.
    UnknownRequest(u32),
    #[error(transparent)]
    /// The allocator refused.
    Alloc(#[from] ds_alloc::Error),
}

impl BtsError {
    /// The errno the original interface returned for this error.
    pub fn errno(&self) -> i32 {
        match self {
            BtsError::NoBuffer(_) => libc::ENXIO,
            BtsError::UnknownRequest(_) => libc::EIO,
            BtsError::NotTraced(_) | BtsError::Ended(_) => libc::ESRCH,
            BtsError::ExecDenied(_) => libc::EPERM,
            BtsError::Alloc(ds_alloc::Error::MemlockExceeded { .. }) => libc::ENOMEM,
            _ => libc::EINVAL,
        }
    }
}

#[derive(Debug, Default)]
struct TaskBts {
    handle: Option<BtsHandle>,
    config: PtraceBtsConfig,
}

/// One tracer's view of the legacy interface.
pub struct LegacyBts {
    tracer: TracerId,
    tasks: HashMap<u32, TaskBts>,
}

impl LegacyBts {
    /// Registers `name` with the allocator, charged against `memlock_bytes`.
    pub fn new(alloc: &mut Allocator, name: &str, memlock_bytes: u64) -> LegacyBts {
        LegacyBts { tracer: alloc.register(name, memlock_bytes), tasks: HashMap::new() }
    }

    /// This tracer's id in the allocator.
    pub fn tracer(&self) -> TracerId {
        self.tracer
    }

    /// PTRACE_BTS_CONFIG.
    pub fn config(
        &mut self,
        alloc: &mut Allocator,
        task: u32,
        cfg: &PtraceBtsConfig,
    ) -> Result<(), BtsError> {
        if (cfg.size as usize) < CONFIG_SIZE {
            return Err(BtsError::BadConfigSize(cfg.size as usize));
        }
        if cfg.flags & PTRACE_BTS_O_SIGNAL != 0 {
            return Err(BtsError::SignalNotSupported);
        }
        let st = self.tasks.entry(task).or_default();
        if cfg.flags & PTRACE_BTS_O_ALLOC != 0 {
            let h = alloc.request_bts(self.tracer, Target::Task(task), cfg.bts_size as usize)?;
            if let Some(old) = st.handle.replace(h) {
                alloc.release_bts(self.tracer, old)?;
            }
        }
        let h = st.handle.ok_or(BtsError::NoBuffer(task))?;
        if cfg.flags & PTRACE_BTS_O_TRACE != 0 {
            alloc.resume_bts(self.tracer, h)?;
        } else {
            alloc.suspend_bts(self.tracer, h)?;
        }
        let bts_size = if cfg.flags & PTRACE_BTS_O_ALLOC != 0 { cfg.bts_size } else { st.config.bts_size };
        st.config = PtraceBtsConfig { size: CONFIG_SIZE as u32, bts_size, ..*cfg };
        Ok(())
    }

    /// The caller's buffer of `task`, if it configured one.
    pub fn handle(&self, task: u32) -> Option<BtsHandle> {
        self.tasks.get(&task).and_then(|t| t.handle)
    }

    /// The tasks the caller configured, in no order.
    pub fn tasks(&self) -> impl Iterator<Item = u32> + '_ {
        self.tasks.iter().filter(|(_, t)| t.handle.is_some()).map(|(&task, _)| task)
    }

    /// Releases the caller's buffer of `task` and refunds it.
    pub fn release(&mut self, alloc: &mut Allocator, task: u32) {
        if let Some(h) = self.tasks.remove(&task).and_then(|t| t.handle) {
            let _ = alloc.release_bts(self.tracer, h);
        }
    }

    /// PTRACE_BTS_STATUS.
    pub fn status(&self, task: u32) -> Result<PtraceBtsConfig, BtsError> {
        self.tasks.get(&task).filter(|t| t.handle.is_some()).map(|t| t.config).ok_or(BtsError::NoBuffer(task))
    }

    /// The caller's records of `task`, oldest first; context records only with O_SCHED.
    fn records(&self, alloc: &Allocator, task: u32) -> Result<Vec<BtsRecord>, BtsError> {
        let (buf, sched) = self.buffer(alloc, task)?;
        Ok(buf.iter().filter(|r| sched || r.is_branch()).copied().collect())
    }

    /// The caller's buffer of `task` and whether it shows context records.
    fn buffer<'a>(
        &self,
        alloc: &'a Allocator,
        task: u32,
    ) -> Result<(&'a ds_alloc::BtsBuffer, bool), BtsError> {
        let st = self.tasks.get(&task).ok_or(BtsError::NoBuffer(task))?;
        let h = st.handle.ok_or(BtsError::NoBuffer(task))?;
        Ok((alloc.bts_buffer(self.tracer, h)?, st.config.flags & PTRACE_BTS_O_SCHED != 0))
    }

    /// PTRACE_BTS_SIZE: records in the caller's buffer.
    pub fn size(&self, alloc: &Allocator, task: u32) -> Result<usize, BtsError> {
        let (buf, sched) = self.buffer(alloc, task)?;
        Ok(if sched { buf.len() } else { buf.iter().filter(|r| r.is_branch()).count() })
    }

    /// PTRACE_BTS_GET: record `index`, 0 being the newest.
    pub fn get(&self, alloc: &Allocator, task: u32, index: usize) -> Result<BtsRecord, BtsError> {
        let (buf, sched) = self.buffer(alloc, task)?;
        let found = buf.iter().rev().filter(|r| sched || r.is_branch()).nth(index).copied();
        found.ok_or_else(|| BtsError::BadIndex { index, len: self.size(alloc, task).unwrap_or(0) })
    }

    /// PTRACE_BTS_CLEAR: empties the caller's buffer only.
    pub fn clear(&mut self, alloc: &mut Allocator, task: u32) -> Result<(), BtsError> {
        let h = self.tasks.get(&task).and_then(|t| t.handle).ok_or(BtsError::NoBuffer(task))?;
        alloc.reset_bts(self.tracer, h).map_err(BtsError::from)
    }

    /// PTRACE_BTS_DRAIN: the whole buffer, oldest to newest, then cleared.
    pub fn drain(&mut self, alloc: &mut Allocator, task: u32) -> Result<Vec<BtsRecord>, BtsError> {
        let recs = self.records(alloc, task)?;
        self.clear(alloc, task)?;
        Ok(recs)
    }

    /// The raw request, as `ptrace(request, task, addr, data)` took it: `data`
    /// is the user buffer. Returns the call's value.
    pub fn request(
        &mut self,
        alloc: &mut Allocator,
        request: u32,
        task: u32,
        addr: usize,
        data: &mut [u8],
    ) -> Result<i64, BtsError> {
        match request {
            PTRACE_BTS_CONFIG => {
                let cfg = PtraceBtsConfig::from_bytes(data).ok_or(BtsError::BadConfigSize(data.len()))?;
                self.config(alloc, task, &cfg)?;
                Ok(0)
            }
            PTRACE_BTS_STATUS => {
                let cfg = self.status(task)?;
                let have = data.len();
                let out =
                    data.get_mut(..CONFIG_SIZE).ok_or(BtsError::ShortBuffer { have, need: CONFIG_SIZE })?;
                out.copy_from_slice(&cfg.to_bytes());
                Ok(CONFIG_SIZE as i64)
            }
            PTRACE_BTS_SIZE => Ok(self.size(alloc, task)? as i64),
            PTRACE_BTS_GET => {
                let r = self.get(alloc, task, addr)?;
                let have = data.len();
                let out = data
                    .get_mut(..BTS_RECORD_SIZE)
                    .ok_or(BtsError::ShortBuffer { have, need: BTS_RECORD_SIZE })?;
                out.copy_from_slice(&r.to_bytes());
                Ok(BTS_RECORD_SIZE as i64)
            }
            PTRACE_BTS_CLEAR => {
                self.clear(alloc, task)?;
                Ok(0)
            }
            PTRACE_BTS_DRAIN => {
                let need = self.size(alloc, task)? * BTS_RECORD_SIZE;
                if data.len() < need {
                    return Err(BtsError::ShortBuffer { have: data.len(), need });
                }
                let recs = self.drain(alloc, task)?;
                for (i, r) in recs.iter().enumerate() {
                    data[i * BTS_RECORD_SIZE..(i + 1) * BTS_RECORD_SIZE].copy_from_slice(&r.to_bytes());
                }
                Ok(recs.len() as i64)
            }
            other => Err(BtsError::UnknownRequest(other)),
        }
    }

    /// Stops tracing: releases every buffer and the tracer's charge.
    pub fn detach(self, alloc: &mut Allocator) {
        let _ = alloc.unregister(self.tracer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ds_alloc::ContextKind;
    use std::mem::offset_of;

    const MB: u64 = 1 << 20;

    fn cfg(flags: u32, bts_size: u32) -> PtraceBtsConfig {
        PtraceBtsConfig { size: CONFIG_SIZE as u32, flags, signal: 0, bts_size }
    }

    #[test]
    fn config_struct_layout() {
        assert_eq!(CONFIG_SIZE, 16);
        assert_eq!(offset_of!(PtraceBtsConfig, flags), 4);
        assert_eq!(offset_of!(PtraceBtsConfig, signal), 8);
        assert_eq!(offset_of!(PtraceBtsConfig, bts_size), 12);
        let c = cfg(PTRACE_BTS_O_TRACE | PTRACE_BTS_O_ALLOC, 4096);
        assert_eq!(PtraceBtsConfig::from_bytes(&c.to_bytes()), Some(c));
    }

    #[test]
    fn two_tracers_of_one_task_do_not_disturb_each_other() {
        let mut a = Allocator::new();
        let mut gdb = LegacyBts::new(&mut a, "gdb", 8 * MB);
        let mut other = LegacyBts::new(&mut a, "other", 8 * MB);
        gdb.config(&mut a, 42, &cfg(PTRACE_BTS_O_TRACE | PTRACE_BTS_O_ALLOC, 4800)).unwrap();
        other.config(&mut a, 42, &cfg(PTRACE_BTS_O_TRACE | PTRACE_BTS_O_ALLOC, 4800)).unwrap();
        for i in 0..10 {
            a.deliver_bts(0, 42, BtsRecord::branch(i, i + 100));
        }
        assert_eq!(gdb.size(&a, 42).unwrap(), 10);
        assert_eq!(gdb.get(&a, 42, 0).unwrap(), BtsRecord::branch(9, 109), "index 0 is the newest");
        assert_eq!(gdb.get(&a, 42, 9).unwrap(), BtsRecord::branch(0, 100));
        assert!(matches!(gdb.get(&a, 42, 10), Err(BtsError::BadIndex { index: 10, len: 10 })));
        gdb.clear(&mut a, 42).unwrap();
        assert_eq!(gdb.size(&a, 42).unwrap(), 0);
        assert_eq!(other.size(&a, 42).unwrap(), 10, "CLEAR touched only the caller's buffer");
        let mut out = vec![0u8; 10 * BTS_RECORD_SIZE];
        let n = other.request(&mut a, PTRACE_BTS_DRAIN, 42, 0, &mut out).unwrap();
        assert_eq!(n, 10);
        assert_eq!(&out[..8], &0u64.to_le_bytes(), "drain is oldest first");
        assert_eq!(other.size(&a, 42).unwrap(), 0);
    }

    #[test]
    fn sched_records_only_with_o_sched_and_no_signal() {
        let mut a = Allocator::new();
        let mut t = LegacyBts::new(&mut a, "t", 8 * MB);
        assert_eq!(
            t.config(&mut a, 1, &cfg(PTRACE_BTS_O_SIGNAL | PTRACE_BTS_O_ALLOC, 4096)),
            Err(BtsError::SignalNotSupported)
        );
        assert_eq!(BtsError::SignalNotSupported.errno(), libc::EINVAL);
        t.config(&mut a, 1, &cfg(PTRACE_BTS_O_TRACE | PTRACE_BTS_O_ALLOC, 4096)).unwrap();
        a.context(0, 1, ContextKind::TaskArrives, 5);
        a.deliver_bts(0, 1, BtsRecord::branch(1, 2));
        assert_eq!(t.size(&a, 1).unwrap(), 1);
        t.config(&mut a, 1, &cfg(PTRACE_BTS_O_TRACE | PTRACE_BTS_O_SCHED, 0)).unwrap();
        assert_eq!(t.size(&a, 1).unwrap(), 2);
        assert_eq!(t.status(1).unwrap().flags, PTRACE_BTS_O_TRACE | PTRACE_BTS_O_SCHED);
        assert_eq!(t.status(1).unwrap().bts_size, 4096);
        // Without O_TRACE, nothing more is recorded.
        t.config(&mut a, 1, &cfg(PTRACE_BTS_O_SCHED, 0)).unwrap();
        a.deliver_bts(0, 1, BtsRecord::branch(3, 4));
        assert_eq!(t.size(&a, 1).unwrap(), 2);
    }

    #[test]
    fn errors_of_the_raw_interface() {
        let mut a = Allocator::new();
        let mut t = LegacyBts::new(&mut a, "t", 64 * 1024);
        let mut buf = [0u8; 24];
        assert_eq!(t.request(&mut a, PTRACE_BTS_SIZE, 9, 0, &mut buf), Err(BtsError::NoBuffer(9)));
        assert_eq!(t.request(&mut a, 99, 9, 0, &mut buf), Err(BtsError::UnknownRequest(99)));
        let e = t.config(&mut a, 9, &cfg(PTRACE_BTS_O_ALLOC, 1 << 20)).unwrap_err();
        assert_eq!(e.errno(), libc::ENOMEM);
        assert!(e.to_string().contains("RLIMIT_MEMLOCK is 65536 bytes"), "{e}");
        let mut small = cfg(PTRACE_BTS_O_ALLOC, 4096);
        small.size = 8;
        assert_eq!(t.config(&mut a, 9, &small), Err(BtsError::BadConfigSize(8)));
        t.config(&mut a, 9, &cfg(PTRACE_BTS_O_TRACE | PTRACE_BTS_O_ALLOC, 4096)).unwrap();
        a.deliver_bts(0, 9, BtsRecord::branch(1, 2));
        let mut tiny = [0u8; 10];
        assert!(matches!(
            t.request(&mut a, PTRACE_BTS_DRAIN, 9, 0, &mut tiny),
            Err(BtsError::ShortBuffer { need: 24, .. })
        ));
        let mut st = [0u8; 16];
        t.request(&mut a, PTRACE_BTS_STATUS, 9, 0, &mut st).unwrap();
        assert_eq!(PtraceBtsConfig::from_bytes(&st).unwrap().flags, PTRACE_BTS_O_TRACE | PTRACE_BTS_O_ALLOC);
        t.detach(&mut a);
        assert!(!a.is_followed(9));
    }
}
