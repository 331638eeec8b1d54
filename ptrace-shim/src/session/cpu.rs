//! CPU placement: pinning bts and the traced threads to one CPU (a ptrace
//! stop is otherwise a cross-CPU wake-up), the per-CPU catch-all buffers,
//! and the context records of a thread moving between CPUs.

use ds_alloc::{ContextKind, Target};

use crate::sys::{self, Pid};
use crate::Result;

use super::proc::thread_cpu;
use super::Session;

pub(super) fn clock_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(ts.tv_nsec as u64)
}

impl Session {
    /// Asks for the catch-all buffers of every CPU, if wanted.
    pub(super) fn request_cpu_buffers(&mut self) -> Result<()> {
        let Some(bytes) = self.opts.per_cpu_bytes else { return Ok(()) };
        // SAFETY: sysconf has no memory arguments.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as u32;
        for cpu in 0..cpus {
            let h = self.hub().alloc().request_bts(self.tracer, Target::Cpu(cpu), bytes)?;
            self.cpu_buffers.push((cpu, h));
        }
        Ok(())
    }

    /// The CPU `tid` runs on now.
    pub(super) fn current_cpu(&self, tid: Pid) -> u32 {
        if let Some(c) = self.pinned_cpu {
            return c;
        }
        thread_cpu(tid).unwrap_or(0)
    }

    /// Pins bts to one CPU the target may use; returns that CPU's mask.
    pub(super) fn pin_self(target: Pid) -> Option<(u32, libc::cpu_set_t)> {
        let allowed = sys::get_affinity(target).ok()?;
        let cpu = sys::pick_cpu(&allowed)?;
        let one = sys::single_cpu(cpu);
        sys::set_affinity(0, &one).ok()?;
        Some((cpu as u32, one))
    }

    /// Notes the thread's CPU: "task arrives" at its first stop, and a
    /// departs/arrives pair when it moved.
    pub(super) fn observe_cpu(&mut self, tid: Pid) {
        let Some(t) = self.threads.get(&tid) else { return };
        let (arrived, old) = (t.arrived, t.cpu);
        let cpu = if arrived && self.pinned_cpu.is_none() { self.current_cpu(tid) } else { old };
        if arrived && cpu == old {
            return;
        }
        let now = clock_ns();
        if arrived {
            self.hub().alloc().context(old, tid as u32, ContextKind::TaskDeparts, now);
        }
        self.hub().alloc().context(cpu, tid as u32, ContextKind::TaskArrives, now);
        if let Some(t) = self.threads.get_mut(&tid) {
            t.cpu = cpu;
            t.arrived = true;
        }
    }
}
