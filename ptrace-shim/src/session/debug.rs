//! A debugger on top of the recording session (what `bts gdbserver`
//! serves live): every thread of the program paused and resumed together,
//! the debugger's own breakpoints beside the recorder's int3 bytes,
//! single steps, and an interrupt from outside. Recording goes on all the
//! while; the debugger never sees the recorder's int3 bytes.
//!
//! A paused thread is `held` (as for a detach), so detaching from a pause
//! is an ordinary detach. A debugger breakpoint at a branch the recorder
//! also stops at is one int3 for both: when the thread goes on, the
//! recorder evaluates the branch as always; at any other instruction the
//! int3 is lifted for one single step, the other threads stopped meanwhile.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::space::ends_block;
use crate::sys::{self, Pid, Regs, Wait};
use crate::{Error, Result};

use super::{Crash, Outcome, Pending, Session, Stop};

/// Why a debugged program stopped.
#[derive(Debug, Clone)]
pub enum DebugStop {
    /// A thread reached a debugger breakpoint (its pc is the breakpoint's address).
    Breakpoint(Pid),
    /// A thread executed the one instruction it was asked to step.
    Stepped(Pid),
    /// The debugger asked for a stop; this thread is the one to show.
    Interrupted(Pid),
    /// A thread is held at a fatal signal (let it go with the next resume).
    Crash(Crash),
    /// The program is gone (or was detached).
    Finished(Outcome),
}

/// The debugger's side of a session.
#[derive(Default)]
pub(super) struct Debug {
    /// Debugger breakpoints, in the first process's memory.
    breakpoints: HashSet<u64>,
    /// Threads stopped at a debugger breakpoint (pc rewound to it), the
    /// ones not yet reported first.
    at_breakpoint: Vec<Pid>,
    unreported: VecDeque<Pid>,
    /// Stop this thread the next time the recorder would resume it.
    stepping: Option<Pid>,
    /// A stop to report.
    event: Option<DebugStop>,
    /// Set from outside (another thread) to ask for a stop.
    interrupt: Option<Arc<AtomicBool>>,
}

impl Session {
    /// Turns the session into a debugger's: every thread is paused now.
    /// `interrupt`, set from another thread, asks a running program to stop.
    pub fn start_debugging(&mut self, interrupt: Arc<AtomicBool>) -> Result<()> {
        self.debug = Some(Debug { interrupt: Some(interrupt), ..Debug::default() });
        self.pause_all()
    }

    /// The threads of the first process, the root first.
    pub fn debug_threads(&self) -> Vec<Pid> {
        let Some(root_space) = self.threads.get(&self.root).map(|t| t.space) else {
            let mut v: Vec<Pid> = self.threads.keys().copied().collect();
            v.sort();
            return v;
        };
        let mut v: Vec<Pid> =
            self.threads.values().filter(|t| t.space == root_space).map(|t| t.tid).collect();
        v.sort_by_key(|&t| (t != self.root, t));
        v
    }

    /// A paused thread's registers.
    pub fn debug_regs(&self, tid: Pid) -> std::io::Result<Regs> {
        if !self.threads.contains_key(&tid) {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        sys::get_regs(tid)
    }

    /// Sets a paused thread's registers.
    pub fn debug_set_regs(&mut self, tid: Pid, regs: &Regs) -> std::io::Result<()> {
        let crashed = self.crash.as_ref().is_some_and(|c| c.tid == tid);
        match self.threads.get(&tid) {
            Some(t) if t.held.is_some() || crashed => sys::set_regs(tid, regs),
            _ => Err(std::io::Error::from_raw_os_error(libc::ESRCH)),
        }
    }

    /// Reads the first process's memory as the program wrote it (the int3
    /// bytes of the recorder and the debugger are not shown). Returns the
    /// bytes read, up to the first unreadable one.
    pub fn debug_read(&mut self, addr: u64, len: usize) -> Vec<u8> {
        let Some(slot) = self.root_slot() else { return Vec::new() };
        let mut out = slot.space.read_live_upto(addr, len);
        slot.space.hide_breakpoints(addr, &mut out);
        out
    }

    /// Writes the first process's memory; a planted site keeps its int3 and
    /// gets the new byte as its original.
    pub fn debug_write(&mut self, addr: u64, data: &[u8]) -> std::io::Result<()> {
        let Some(slot) = self.root_slot() else { return Err(std::io::Error::from_raw_os_error(libc::ESRCH)) };
        slot.space.write_keeping_breakpoints(addr, data)
    }

    /// Inserts a debugger breakpoint at `addr` in the first process.
    pub fn insert_breakpoint(&mut self, addr: u64) -> Result<()> {
        let root = self.root;
        let slot = self.root_slot().ok_or(Error::NoSuchProcess { pid: root })?;
        slot.space.plant(addr).map_err(|e| Error::os(format!("a breakpoint at {addr:#x}"), e))?;
        if let Some(d) = self.debug.as_mut() {
            d.breakpoints.insert(addr);
        }
        Ok(())
    }

    /// Removes a debugger breakpoint. A branch the recorder stops at keeps
    /// its int3 (it is the recorder's too); any other instruction gets its byte back.
    pub fn remove_breakpoint(&mut self, addr: u64) -> Result<()> {
        if let Some(d) = self.debug.as_mut() {
            d.breakpoints.remove(&addr);
        }
        let Some(slot) = self.root_slot() else { return Ok(()) };
        let branch = slot.space.insn(addr).is_some_and(|i| ends_block(&i));
        if !branch {
            slot.space
                .unplant(addr)
                .map_err(|e| Error::os(format!("removing the breakpoint at {addr:#x}"), e))?;
        }
        Ok(())
    }

    /// Resumes every paused thread (or single-steps `step` alone) and runs
    /// until the next stop worth telling the debugger.
    pub fn debug_resume(&mut self, step: Option<Pid>) -> Result<DebugStop> {
        self.debug_resume_with(step, false)
    }

    /// As [`Session::debug_resume`]; with `others_run`, the threads other
    /// than `step`'s go on while it steps (GDB's `vCont;s:T;c`).
    pub fn debug_resume_with(&mut self, step: Option<Pid>, others_run: bool) -> Result<DebugStop> {
        // Breakpoint hits seen while pausing come first.
        if let Some(tid) = self.debug.as_mut().and_then(|d| d.unreported.pop_front()) {
            return Ok(DebugStop::Breakpoint(tid));
        }
        if self.crash.is_some() {
            // The debugger saw the crash; now it takes its course.
            self.deliver_crash()?;
        }
        match step {
            Some(tid) if self.threads.contains_key(&tid) => {
                if others_run {
                    self.release_all(Some(tid))?;
                }
                self.step_one(tid)?
            }
            Some(tid) => return Err(Error::NoSuchProcess { pid: tid }),
            None => self.release_all(None)?,
        }
        self.run_to_debug_stop()
    }

    /// Asks the session to stop tracing and detach (after `debug_resume`
    /// or right away): every int3 removed, every thread left where it was.
    pub fn debug_detach(&mut self) -> Result<Outcome> {
        self.debug = None;
        self.request_detach();
        loop {
            match self.next_stop()? {
                Stop::Crash(_) => self.deliver_crash()?,
                Stop::Finished(o) => return Ok(o),
                Stop::Debug(_) | Stop::ProcessEnded(_) | Stop::Attention => {}
            }
        }
    }

    fn root_slot(&mut self) -> Option<&mut super::SpaceSlot> {
        let idx = self.threads.get(&self.root).map(|t| t.space)?;
        self.spaces.get_mut(idx)
    }

    fn run_to_debug_stop(&mut self) -> Result<DebugStop> {
        let out = loop {
            match self.next_stop()? {
                Stop::Crash(c) => break DebugStop::Crash(c),
                Stop::Finished(o) => return Ok(DebugStop::Finished(o)),
                Stop::Debug(d) => break d,
                // Not asked for by a debugging session.
                Stop::ProcessEnded(_) | Stop::Attention => {}
            }
        };
        self.pause_all()?;
        // What happened while pausing waits for the next resume: another
        // thread's breakpoint is reported then; a step asked for is over.
        if let Some(d) = self.debug.as_mut() {
            d.stepping = None;
            if let Some(DebugStop::Breakpoint(t)) = d.event.take() {
                d.unreported.push_back(t);
            }
            if let Some(f) = &d.interrupt {
                f.store(false, Ordering::SeqCst);
            }
        }
        Ok(out)
    }

    /// The stop `next_stop` should report to the debugger, if any.
    pub(super) fn debug_event(&mut self) -> Option<DebugStop> {
        let d = self.debug.as_mut()?;
        if let Some(e) = d.event.take() {
            return Some(e);
        }
        if d.interrupt.as_ref().is_some_and(|f| f.swap(false, Ordering::SeqCst)) {
            return Some(DebugStop::Interrupted(self.root));
        }
        None
    }

    /// A SIGTRAP at `site`: true when it is a debugger breakpoint, now
    /// reported (the thread held with its pc at the site).
    pub(super) fn debug_trap(&mut self, tid: Pid, site: u64, regs: &Regs) -> Result<bool> {
        let in_root =
            self.threads.get(&tid).map(|t| t.space) == self.threads.get(&self.root).map(|t| t.space);
        let Some(d) = self.debug.as_mut() else { return Ok(false) };
        if !in_root || !d.breakpoints.contains(&site) {
            return Ok(false);
        }
        if !self.repair_after_trap(tid)? {
            return Ok(true);
        }
        let mut r = *regs;
        r.rip = site;
        if sys::set_regs(tid, &r).is_err() {
            return Ok(true);
        }
        if let Some(t) = self.threads.get_mut(&tid) {
            t.held = Some(0);
            t.last_pc = Some(site);
        }
        let Some(d) = self.debug.as_mut() else { return Ok(true) };
        d.at_breakpoint.push(tid);
        if d.event.is_none() {
            d.event = Some(DebugStop::Breakpoint(tid));
        } else {
            d.unreported.push_back(tid);
        }
        Ok(true)
    }

    /// True when `tid` is to stop here rather than go on: the single step
    /// the debugger asked for is done.
    pub(super) fn debug_hold(&mut self, tid: Pid) -> bool {
        let Some(d) = self.debug.as_mut() else { return false };
        if d.stepping != Some(tid) {
            return false;
        }
        d.stepping = None;
        if d.event.is_none() {
            d.event = Some(DebugStop::Stepped(tid));
        }
        self.note_pc(tid);
        if let Some(t) = self.threads.get_mut(&tid) {
            t.held = Some(0);
        }
        true
    }

    /// Stops every thread that runs; each is held until released.
    fn pause_all(&mut self) -> Result<()> {
        let crashed = self.crash.as_ref().map(|c| c.tid);
        let mut asked: HashSet<Pid> = HashSet::new();
        // Threads in an uninterruptible wait (a vfork parent waiting for its
        // child, which is paused too) cannot stop now: they stay in the
        // kernel, and stop when they come out.
        let mut asleep: HashSet<Pid> = HashSet::new();
        loop {
            // Threads that run and were not asked yet (new ones too).
            let run: Vec<Pid> = self
                .threads
                .values()
                .filter(|t| {
                    t.held.is_none() && !t.exiting && Some(t.tid) != crashed && !asleep.contains(&t.tid)
                })
                .map(|t| t.tid)
                .collect();
            for &t in &run {
                if asked.insert(t) {
                    let _ = sys::interrupt(t);
                }
            }
            if run.is_empty() && self.world_stopped.is_none() && self.deferred.is_empty() {
                return Ok(());
            }
            let next = match (self.world_stopped.is_none(), self.deferred.pop_front()) {
                (true, Some(w)) => Some(w),
                (false, Some(w)) => {
                    self.deferred.push_front(w);
                    sys::wait(-1).map_err(|e| Error::os("waitpid", e))?
                }
                (_, None) => sys::wait(-1).map_err(|e| Error::os("waitpid", e))?,
            };
            let Some(w) = next else {
                // A timer tick: who cannot stop now?
                asleep.extend(run.iter().copied().filter(|&t| super::proc::task_state(t) == Some('D')));
                continue;
            };
            let ours = |w: &Wait| matches!(*w, Wait::Event(t, sys::EVENT_STOP, _) if asked.contains(&t));
            match w {
                // The interrupt is reported before a signal already queued:
                // a thread that has just hit an int3 stops here with its
                // SIGTRAP pending. Let it take the trap first (handled as
                // any trap), and ask again.
                Wait::Event(tid, ..) if ours(&w) && super::proc::trap_pending(tid) => {
                    let _ = sys::cont(tid, 0);
                    asked.remove(&tid);
                }
                Wait::Event(tid, ..) if ours(&w) && self.threads.contains_key(&tid) => {
                    if let Some(t) = self.threads.get_mut(&tid) {
                        t.held = Some(0);
                    }
                }
                Wait::Exited(..) | Wait::Signaled(..) if self.threads.len() <= 1 => {
                    self.handle(w)?;
                    return Ok(());
                }
                other => {
                    // Any other stop of a thread clears the interrupt asked
                    // of it (the kernel's rule): handle it, and ask again
                    // if it runs on.
                    let pid = super::wait_pid(&other);
                    self.handle(other)?;
                    asked.remove(&pid);
                }
            }
        }
    }

    /// Runs the session until no thread steps over a lifted int3.
    fn finish_step(&mut self) -> Result<()> {
        while self.world_stopped.is_some() {
            match sys::wait(-1) {
                Ok(Some(w)) => self.handle(w)?,
                Ok(None) => {}
                Err(e) if e.raw_os_error() == Some(libc::ECHILD) => return Ok(()),
                Err(e) => return Err(Error::os("waitpid", e)),
            }
        }
        Ok(())
    }

    /// Lets every paused thread go on (but `except`); one at a debugger
    /// breakpoint first executes the instruction there.
    fn release_all(&mut self, except: Option<Pid>) -> Result<()> {
        let at_bp: Vec<Pid> =
            self.debug.as_mut().map(|d| std::mem::take(&mut d.at_breakpoint)).unwrap_or_default();
        // First those at a breakpoint, one at a time, the others still
        // paused: none may run past an int3 lifted for a step.
        for &tid in &at_bp {
            if Some(tid) == except {
                continue;
            }
            if let Some(t) = self.threads.get_mut(&tid) {
                t.held = None;
            }
            self.go_over_breakpoint(tid)?;
            self.finish_step()?;
        }
        let held: Vec<Pid> = self
            .threads
            .values()
            .filter(|t| t.held == Some(0) && Some(t.tid) != except && !at_bp.contains(&t.tid))
            .map(|t| t.tid)
            .collect();
        for tid in held {
            if let Some(t) = self.threads.get_mut(&tid) {
                t.held = None;
            }
            self.resume(tid, 0)?;
        }
        Ok(())
    }

    /// Executes the instruction at `tid`'s pc, an int3 site: a branch as
    /// the recorder does at its own sites, anything else by a single step
    /// with the int3 lifted.
    fn go_over_breakpoint(&mut self, tid: Pid) -> Result<()> {
        let Ok(regs) = sys::get_regs(tid) else { return Ok(()) };
        let site = regs.rip;
        let Some(slot) = self.space_of(tid) else { return Ok(()) };
        if !slot.space.is_breakpoint(site) {
            return self.resume(tid, 0);
        }
        let branch = slot.space.insn(site).is_some_and(|i| ends_block(&i));
        if branch && self.recorder.plants() {
            self.on_breakpoint(tid, site, regs)
        } else {
            self.step_over(tid, site, regs)
        }
    }

    /// Single-steps `tid` alone; the others stay paused.
    fn step_one(&mut self, tid: Pid) -> Result<()> {
        if let Some(d) = self.debug.as_mut() {
            d.stepping = Some(tid);
            d.at_breakpoint.retain(|&t| t != tid);
        }
        if let Some(t) = self.threads.get_mut(&tid) {
            t.held = None;
        }
        let Ok(regs) = sys::get_regs(tid) else { return Ok(()) };
        let pc = regs.rip;
        let planted = self.space_of(tid).is_some_and(|s| s.space.is_breakpoint(pc));
        if planted {
            return self.step_over(tid, pc, regs);
        }
        if let Some(t) = self.threads.get_mut(&tid) {
            t.pending = Pending::Step { from: pc, lifted: false };
        }
        match sys::singlestep(tid, 0) {
            Ok(()) | Err(_) => Ok(()),
        }
    }
}
