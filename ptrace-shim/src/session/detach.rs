//! Detaching: every thread stopped, every int3 byte and rip restored,
//! pending signals left pending, CPU masks given back.

use std::collections::HashSet;

use crate::sys::{self, Pid, Wait};
use crate::{Error, Result};

use super::proc::sig_mask;
use super::{Pending, Session, SI_KERNEL, SI_TKILL, SI_USER};

/// SIGTRAP's bit in a /proc signal mask.
const TRAP_BIT: u64 = 1 << (libc::SIGTRAP - 1);

impl Session {
    /// Stops every thread, removes every int3, and detaches, leaving each
    /// thread where it was and any signal it was about to get still pending.
    pub(super) fn detach_all(&mut self) -> Result<()> {
        // Threads stopped around a lifted int3 are stopped already.
        if let Some((_, stopped)) = self.world_stopped.take() {
            for t in stopped {
                if let Some(th) = self.threads.get_mut(&t) {
                    th.held = Some(0);
                }
            }
        }
        let tids: Vec<Pid> = self.threads.iter().filter(|(_, t)| t.held.is_none()).map(|(&p, _)| p).collect();
        for &tid in &tids {
            let _ = sys::interrupt(tid);
        }
        // Threads in an uninterruptible wait cannot stop now: a vfork
        // parent waits for its child, which stops here and could never exec.
        // They are detached once the others are (below).
        let mut asleep: Vec<Pid> = Vec::new();
        let mut ticks = 0u32;
        // Collect a stop from every live thread: first those already waiting.
        while self.threads.values().any(|t| t.held.is_none()) {
            let w = match self.deferred.pop_front() {
                Some(w) => w,
                None => match sys::wait(-1) {
                    Ok(Some(w)) => w,
                    Ok(None) => {
                        // A timer tick: who cannot stop, or stopped unseen?
                        ticks += 1;
                        let mut unseen = Vec::new();
                        for (&tid, th) in self.threads.iter_mut() {
                            match (th.held, super::proc::task_state(tid)) {
                                (None, Some('D')) => {
                                    th.held = Some(0);
                                    asleep.push(tid);
                                }
                                // Stopped, with no stop left to collect (a new
                                // task whose first stop came before its
                                // parent's event): take it as it stands.
                                (None, Some('t')) if ticks >= 3 => unseen.push(tid),
                                _ => {}
                            }
                        }
                        for tid in unseen {
                            self.adopt_stopped(tid);
                        }
                        continue;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ECHILD) => break,
                    Err(e) => return Err(Error::os("waitpid", e)),
                },
            };
            match w {
                Wait::Event(tid, ev, _) if ev != sys::EVENT_STOP => {
                    // Clone/fork/exec/exit events: handle, and stop the new ones too.
                    let before: HashSet<Pid> = self.threads.keys().copied().collect();
                    self.handle(w)?;
                    for (&t, th) in self.threads.iter_mut() {
                        if !before.contains(&t) {
                            let _ = sys::interrupt(t);
                            th.held = None;
                        }
                    }
                    if let Some(th) = self.threads.get(&tid) {
                        if th.held.is_none() {
                            let _ = sys::interrupt(tid);
                        }
                    }
                }
                // The interrupt is reported before a signal already queued:
                // a thread that has just hit one of our int3 stops here
                // with its SIGTRAP pending, which would kill it once
                // detached. Let it take the signal to us (the next branch
                // suppresses it and rewinds rip). Our traps' SIGTRAP is
                // never blocked (the kernel unblocks it).
                Wait::Event(tid, sys::EVENT_STOP, _)
                    if self.threads.contains_key(&tid)
                        && sig_mask(tid, "SigPnd") & !sig_mask(tid, "SigBlk") & TRAP_BIT != 0 =>
                {
                    let _ = sys::cont(tid, 0);
                }
                Wait::Event(tid, _, _) | Wait::Syscall(tid) => {
                    if let Some(t) = self.threads.get_mut(&tid) {
                        t.held = Some(0);
                    } else if self.to_release.remove(&tid) {
                        self.release_child(tid)?;
                    }
                }
                Wait::Signal(tid, sig) => {
                    let regs = sys::get_regs(tid).ok();
                    let info = sys::get_siginfo(tid).unwrap_or_default();
                    let mut pending_sig = sig;
                    if sig == libc::SIGTRAP && info.code != SI_USER && info.code != SI_TKILL {
                        // Our own trap (int3 site or single step): not the program's.
                        if let (Some(mut r), true) = (regs, info.code == SI_KERNEL) {
                            let site = r.rip.wrapping_sub(1);
                            if self.space_of(tid).is_some_and(|s| s.space.is_breakpoint(site)) {
                                r.rip = site;
                                let _ = sys::set_regs(tid, &r);
                            }
                        }
                        pending_sig = 0;
                    }
                    if let Some(t) = self.threads.get_mut(&tid) {
                        if let Pending::Step { from, lifted: true } = t.pending {
                            let idx = t.space;
                            let _ = self.spaces[idx].space.relower(from);
                        }
                        if let Some(t) = self.threads.get_mut(&tid) {
                            t.pending = Pending::None;
                            t.held = Some(pending_sig);
                        }
                    }
                }
                Wait::Exited(..) | Wait::Signaled(..) => self.handle(w)?,
            }
        }
        for idx in 0..self.spaces.len() {
            self.release_space(idx);
        }
        let mut first_err = None;
        let held: Vec<(Pid, i32)> = self.threads.iter().map(|(&t, th)| (t, th.held.unwrap_or(0))).collect();
        for &(tid, _) in &held {
            if let Some(mask) = self.saved_affinity.get(&tid).or(self.default_affinity.as_ref()) {
                let _ = sys::set_affinity(tid, mask);
            }
        }
        for (tid, sig) in held {
            if asleep.contains(&tid) {
                continue;
            }
            if let Err(e) = sys::detach(tid, sig) {
                if e.raw_os_error() != Some(libc::ESRCH) {
                    first_err.get_or_insert(Error::os(format!("detaching thread {tid}"), e));
                }
            }
        }
        self.detach_when_awake(&asleep);
        let tids: Vec<Pid> = self.threads.keys().copied().collect();
        for tid in tids {
            if let Some(t) = self.threads.remove(&tid) {
                let idx = t.space;
                let alive = self.threads.values().any(|o| o.space == idx);
                let trace = self.retire(t);
                self.park_thread(idx, trace, !alive);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Detaches threads that were in an uninterruptible wait: each stops
    /// (for the interrupt asked of it) once its wait is over, e.g. when the
    /// vfork child, detached now, execs. One that does not within a second
    /// is left to the kernel, which lets it go when bts exits (no int3 byte
    /// is left in its memory by then).
    fn detach_when_awake(&mut self, asleep: &[Pid]) {
        for &tid in asleep {
            let t0 = std::time::Instant::now();
            while t0.elapsed() < std::time::Duration::from_secs(1) {
                match sys::wait(tid) {
                    Ok(Some(Wait::Exited(..) | Wait::Signaled(..))) | Err(_) => break,
                    // A signal that stopped it is passed on, not lost.
                    Ok(Some(Wait::Signal(_, sig))) => {
                        let _ = sys::detach(tid, sig);
                        break;
                    }
                    Ok(Some(_)) => {
                        let _ = sys::detach(tid, 0);
                        break;
                    }
                    Ok(None) => {}
                }
            }
        }
    }

    /// Holds a thread found stopped without an event to collect: at one of
    /// our traps, its pc goes back to the site (the int3 is about to go);
    /// a signal of the program's own stays pending for it.
    fn adopt_stopped(&mut self, tid: Pid) {
        let mut held = 0;
        if let (Ok(info), Ok(mut regs)) = (sys::get_siginfo(tid), sys::get_regs(tid)) {
            let ours = info.signo == libc::SIGTRAP && info.code != SI_USER && info.code != SI_TKILL;
            if ours && info.code == SI_KERNEL {
                let site = regs.rip.wrapping_sub(1);
                if self.space_of(tid).is_some_and(|s| s.space.is_breakpoint(site)) {
                    regs.rip = site;
                    let _ = sys::set_regs(tid, &regs);
                }
            } else if !ours {
                held = info.signo;
            }
        }
        if let Some(t) = self.threads.get_mut(&tid) {
            t.held = Some(held);
        }
    }
}
