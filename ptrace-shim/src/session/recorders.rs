//! Running threads for the recorder: resuming in the mode it asks for,
//! evaluating and emulating a branch at an int3, single-stepping what
//! cannot be evaluated (the other threads stopped meanwhile).

use std::collections::HashSet;

use iced_x86::Mnemonic;

use ds_alloc::{BtsBuffer, BtsRecord};

use crate::eval::{self, Outcome as Eval};
use crate::recorder::Resume;
use crate::space::is_syscall;
use crate::sys::{self, Pid, Regs, Wait};
use crate::{Error, Result};

use super::lifecycle::empty_buffer;
use super::proc::trap_pending;
use super::stops::StopWait;
use super::{wait_pid, Pending, Session, Thread, TRAP_FLAG};

/// Sets a thread's registers; false if it vanished meanwhile (killed: its
/// exit comes from wait).
fn set_regs_unless_gone(tid: Pid, regs: &Regs) -> Result<bool> {
    match sys::set_regs(tid, regs) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
        Err(e) => Err(Error::os("PTRACE_SETREGS", e)),
    }
}

impl Session {
    #[inline]
    pub(super) fn record(&mut self, tid: Pid, from: u64, to: u64) {
        if let Some(t) = self.threads.get(&tid) {
            self.hub().alloc().deliver_bts(t.cpu, tid as u32, BtsRecord::branch(from, to));
        }
    }

    /// Resumes `tid` in the mode its recorder needs.
    pub(super) fn resume(&mut self, tid: Pid, sig: i32) -> Result<()> {
        // The single step a debugger asked for is done: stop here.
        if sig == 0 && self.debug_hold(tid) {
            return Ok(());
        }
        self.observe_cpu(tid);
        let Some(t) = self.threads.get(&tid) else {
            return Ok(());
        };
        let slot = &self.spaces[t.space];
        let stepping = matches!(t.pending, Pending::Step { .. } | Pending::Handler { .. });
        let r = if slot.released {
            sys::cont(tid, sig)
        } else if stepping {
            // A single step in flight (an int3 lifted, a handler being
            // entered) was interrupted by a stray stop: finish the step.
            sys::singlestep(tid, sig)
        } else {
            let Some(pc) = self.note_pc(tid) else { return Ok(()) };
            let Some(idx) = self.threads.get(&tid).map(|t| t.space) else { return Ok(()) };
            let space = &mut self.spaces[idx].space;
            if space.is_breakpoint(pc.wrapping_sub(1)) && trap_pending(tid) {
                // The thread ran one of our int3s and an interrupt stopped it
                // before it took the SIGTRAP (the kernel reports the
                // interrupt first): pc is one byte into the site's
                // instruction, no place to plant from. Run it on to that
                // trap, which stops it at once and is handled as any other.
                sys::syscall(tid, sig)
            } else {
                match self.recorder.resume(space, pc) {
                    Resume::Continue => sys::cont(tid, sig),
                    Resume::ToNextStop => sys::syscall(tid, sig),
                    Resume::SingleStep => {
                        if let Some(t) = self.threads.get_mut(&tid) {
                            t.pending = Pending::Step { from: pc, lifted: false };
                        }
                        sys::singlestep(tid, sig)
                    }
                }
            }
        };
        match r {
            Ok(()) => Ok(()),
            // The thread vanished (killed); its exit is reported by wait.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            Err(e) => Err(Error::os(format!("resuming thread {tid}"), e)),
        }
    }

    /// Reads the thread's instruction pointer and keeps it as its last pc;
    /// `None` if the thread is gone.
    pub(super) fn note_pc(&mut self, tid: Pid) -> Option<u64> {
        let pc = sys::get_regs(tid).ok()?.rip;
        if let Some(t) = self.threads.get_mut(&tid) {
            t.last_pc = Some(pc);
        }
        Some(pc)
    }

    pub(super) fn on_breakpoint(&mut self, tid: Pid, site: u64, mut regs: Regs) -> Result<()> {
        regs.rip = site;
        let Some(slot) = self.space_of(tid) else {
            return Ok(());
        };
        let Some(insn) = slot.space.insn(site) else {
            return self.step_over(tid, site, regs);
        };
        let outcome = eval::evaluate(&insn, &regs, &slot.space);
        if outcome == Eval::Unknown || !eval::emulate(&insn, outcome, &mut regs, &slot.space) {
            return self.step_over(tid, site, regs);
        }
        if let Eval::Taken(to) = outcome {
            self.record(tid, site, to);
        }
        if !set_regs_unless_gone(tid, &regs)? {
            return Ok(());
        }
        self.resume(tid, 0)
    }

    /// Executes the original instruction at a breakpoint site by lifting the
    /// int3 and single-stepping.
    pub(super) fn step_over(&mut self, tid: Pid, site: u64, regs: Regs) -> Result<()> {
        if !set_regs_unless_gone(tid, &regs)? {
            return Ok(());
        }
        self.stop_the_world(tid)?;
        if let Some(slot) = self.space_of(tid) {
            slot.space.lift(site).map_err(|e| Error::os("restoring a breakpoint byte", e))?;
        }
        if let Some(t) = self.threads.get_mut(&tid) {
            t.pending = Pending::Step { from: site, lifted: true };
        }
        match sys::singlestep(tid, 0) {
            Ok(()) | Err(_) => Ok(()),
        }
    }

    /// Stops every other thread sharing `tid`'s memory, so none runs past
    /// the int3 lifted for `tid`'s single step; their other events wait.
    pub(super) fn stop_the_world(&mut self, tid: Pid) -> Result<()> {
        let Some(space) = self.threads.get(&tid).map(|t| t.space) else { return Ok(()) };
        // Threads whose stop waits in `deferred` are stopped already, and so
        // are those a stop of the world still holds: an interrupt of a
        // thread already stopped is never reported.
        let held = self.world_stopped.take().map(|(_, held)| held).unwrap_or_default();
        let mut parked: HashSet<Pid> = self.deferred.iter().map(wait_pid).collect();
        parked.extend(&held);
        let others: Vec<Pid> = self
            .threads
            .values()
            .filter(|t| t.space == space && t.tid != tid && t.held.is_none() && !t.exiting)
            .filter(|t| !parked.contains(&t.tid))
            .map(|t| t.tid)
            .collect();
        let mut waiting: HashSet<Pid> = HashSet::new();
        for &o in &others {
            if sys::interrupt(o).is_ok() {
                waiting.insert(o);
            }
        }
        let mut stopped = held;
        let mut stops = StopWait::new();
        while !waiting.is_empty() {
            let w = match stops.next(&waiting) {
                Ok(Some(w)) => w,
                Ok(None) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ECHILD) => break,
                Err(e) => return Err(Error::os("waitpid", e)),
            };
            let pid = wait_pid(&w);
            match w {
                Wait::Event(p, sys::EVENT_STOP, _) if waiting.remove(&p) => stopped.push(p),
                other => {
                    waiting.remove(&pid);
                    self.deferred.push_back(other);
                }
            }
        }
        self.world_stopped = Some((tid, stopped));
        Ok(())
    }

    /// The single step over a lifted int3 is over: the others run again.
    pub(super) fn restart_the_world(&mut self, tid: Pid) -> Result<()> {
        match self.world_stopped.take() {
            Some((t, stopped)) if t == tid => {
                for o in stopped {
                    self.resume(o, 0)?;
                }
                Ok(())
            }
            other => {
                self.world_stopped = other;
                Ok(())
            }
        }
    }

    /// A single step of the instruction at `from` completed.
    pub(super) fn after_step(&mut self, tid: Pid, from: u64, lifted: bool, regs: Regs) -> Result<()> {
        if let Some(t) = self.threads.get_mut(&tid) {
            t.pending = Pending::None;
        }
        if tid == self.root {
            self.recorder.stepped(from)?;
        }
        let Some(slot) = self.space_of(tid) else {
            return Ok(());
        };
        if lifted {
            let _ = slot.space.relower(from);
        }
        let insn = slot.space.insn(from);
        let to = regs.rip;
        let syscall = insn.is_some_and(|i| is_syscall(&i));
        let taken = match insn {
            Some(_) if syscall => true,
            Some(i) => eval::stepped_branch_taken(&i, to, &regs),
            None => !(to > from && to <= from + 15),
        };
        // The trap is the program's too when the instruction traps by itself
        // (int1, int 3) or the program set the trap flag: deliver it.
        let own_trap = insn.is_some_and(|i| eval::raises_sigtrap(&i)) || regs.eflags & TRAP_FLAG != 0;
        if lifted {
            self.restart_the_world(tid)?;
        }
        if syscall {
            if insn.is_some_and(|i| i.mnemonic() == Mnemonic::Syscall) {
                self.note_syscall_site(tid, from);
            }
            self.after_syscall(tid, &regs);
        }
        if taken {
            self.record(tid, from, to);
        }
        if own_trap {
            let info = sys::get_siginfo(tid).unwrap_or_default();
            return self.program_signal(tid, libc::SIGTRAP, regs, info);
        }
        if !self.repair_after_trap(tid)? {
            return Ok(());
        }
        self.resume(tid, 0)
    }

    /// Moves the records the recorder holds for the thread (the hardware's,
    /// in hardware layout) into its allocator buffer. Returns the records it lost.
    pub(super) fn sync_hardware(&mut self, t: &Thread) -> u64 {
        let Some((records, lost)) = self.recorder.take_records(t.tid) else { return 0 };
        if let Some(h) = t.handle {
            let _ = self.hub().alloc().reset_bts(self.tracer, h);
        }
        self.hub().alloc().deliver_batch(t.cpu, t.tid as u32, &records);
        lost
    }

    pub(super) fn buffer_of(&self, t: &Thread) -> BtsBuffer {
        let hub = self.hub();
        let buffer = t.handle.and_then(|h| hub.allocator().bts_buffer(self.tracer, h).ok()).cloned();
        buffer.unwrap_or_else(empty_buffer)
    }
}
