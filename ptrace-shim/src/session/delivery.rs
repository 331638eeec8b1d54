//! Signals: telling the recorder's traps from the program's own, and
//! delivering the program's signals as the kernel would (into a handler,
//! or held when fatal so the crash can be captured).

use crate::sys::{self, Pid, Regs};
use crate::traps;
use crate::{Error, Result};

use super::proc::sig_mask;
use super::syscalls::is_restart;
use super::{Crash, Pending, Session, SI_KERNEL, SI_TKILL, SI_USER};

impl Session {
    pub(super) fn on_signal(&mut self, tid: Pid, sig: i32) -> Result<()> {
        if !self.threads.contains_key(&tid) {
            // A task we do not know yet (or no longer): let it be.
            return match sys::cont(tid, sig) {
                Ok(()) | Err(_) => Ok(()),
            };
        }
        let regs = match sys::get_regs(tid) {
            Ok(r) => r,
            Err(_) => return Ok(()),
        };
        // A thread killed meanwhile (SIGKILL) answers nothing: its exit
        // comes from wait.
        let Ok(info) = sys::get_siginfo(tid) else { return Ok(()) };
        let pending = self.threads.get(&tid).map(|t| t.pending).unwrap_or(Pending::None);
        if sig == libc::SIGTRAP {
            // One of our int3 sites? (The program's own int3 is never planted over.)
            let site = regs.rip.wrapping_sub(1);
            if info.code == SI_KERNEL {
                let (is_bp, released) = match self.space_of(tid) {
                    Some(s) => (s.space.is_breakpoint(site), s.released_sites.contains(&site)),
                    None => (false, false),
                };
                let stepping_it = matches!(pending, Pending::Step { from, .. } if from == site);
                if is_bp && !released && !stepping_it && self.debug_trap(tid, site, &regs)? {
                    return Ok(());
                }
                if is_bp && !released && !stepping_it && self.recorder.plants() {
                    if !self.repair_after_trap(tid)? {
                        return Ok(());
                    }
                    return self.on_breakpoint(tid, site, regs);
                }
                if released {
                    let mut r = regs;
                    r.rip = site;
                    let _ = sys::set_regs(tid, &r);
                    return self.resume(tid, 0);
                }
            }
            let sent = info.code == SI_USER || info.code == SI_TKILL || info.code == libc::SI_QUEUE;
            if !sent && info.code != SI_KERNEL {
                match pending {
                    Pending::Step { from, lifted } => return self.after_step(tid, from, lifted, regs),
                    Pending::Handler { from } => {
                        if let Some(t) = self.threads.get_mut(&tid) {
                            t.pending = Pending::None;
                        }
                        // Entering a handler changed the mask.
                        self.refresh_mask(tid);
                        self.record(tid, from, regs.rip);
                        return self.resume(tid, 0);
                    }
                    Pending::None => {}
                }
            }
        }
        self.program_signal(tid, sig, regs, info)
    }

    /// A signal of the program's own (not a trap of the recorder's):
    /// delivered as the kernel would, or held if it is fatal.
    pub(super) fn program_signal(
        &mut self,
        tid: Pid,
        sig: i32,
        regs: Regs,
        info: sys::SigInfo,
    ) -> Result<()> {
        let pending = self.threads.get(&tid).map(|t| t.pending).unwrap_or(Pending::None);
        // A step in flight was overtaken by it.
        if let Pending::Step { from, lifted: true } = pending {
            if let Some(slot) = self.space_of(tid) {
                let _ = slot.space.relower(from);
            }
            self.restart_the_world(tid)?;
        }
        if let Some(t) = self.threads.get_mut(&tid) {
            t.pending = Pending::None;
            t.last_pc = Some(regs.rip);
        }
        if self.detach_requested {
            if let Some(t) = self.threads.get_mut(&tid) {
                t.held = Some(sig);
            }
            return Ok(());
        }
        let released = self.space_of(tid).is_some_and(|s| s.released);
        if released {
            return match sys::cont(tid, sig) {
                Ok(()) | Err(_) => Ok(()),
            };
        }
        let caught = sig_mask(tid, "SigCgt") & (1u64 << (sig - 1)) != 0;
        let ignored = sig_mask(tid, "SigIgn") & (1u64 << (sig - 1)) != 0;
        if caught && sig == libc::SIGTRAP {
            // A one-shot handler is reset by this delivery.
            if let Some(slot) = self.space_of(tid) {
                slot.trap_action = slot.trap_action.after_delivery();
            }
        }
        if caught && self.recorder.sees_handler_entry() {
            return self.resume(tid, sig);
        }
        if caught {
            // Step into the handler: the trap comes at its first instruction.
            let from = if regs.orig_rax as i64 >= 0 && is_restart(regs.rax) {
                regs.rip.wrapping_sub(2)
            } else {
                regs.rip
            };
            if let Some(t) = self.threads.get_mut(&tid) {
                t.pending = Pending::Handler { from };
                t.syscall_site = None;
            }
            return match sys::singlestep(tid, sig) {
                Ok(()) => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
                Err(e) => Err(Error::os("delivering a signal", e)),
            };
        }
        if ignored || !sys::default_is_fatal(sig) {
            return self.resume(tid, sig);
        }
        // A SIGKILL already pending means the process is being killed: the
        // stop we see is a by-product, not the cause.
        let kill_bit = 1u64 << (libc::SIGKILL - 1);
        if (sig_mask(tid, "ShdPnd") | sig_mask(tid, "SigPnd")) & kill_bit != 0 {
            return self.resume(tid, 0);
        }
        // Fatal: hold the thread here and report.
        let pid = self.spaces[self.threads[&tid].space].space.pid;
        if let Some(t) = self.threads.get_mut(&tid) {
            t.crashed = true;
        }
        let fault = matches!(sig, libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGTRAP)
            && info.code > 0;
        self.crash = Some(Crash {
            pid,
            tid,
            signal: sig,
            si_code: info.code,
            fault_addr: fault.then_some(info.addr),
            pc: regs.rip,
        });
        Ok(())
    }

    /// Reads the thread's signal mask (it is stopped).
    pub(super) fn refresh_mask(&mut self, tid: Pid) {
        if let Ok(mask) = sys::get_sigmask(tid) {
            if let Some(t) = self.threads.get_mut(&tid) {
                t.sigmask = mask;
            }
        }
    }

    /// Learns the program's SIGTRAP action when it may not be the default
    /// (attaching to a process that set one), with an injected call.
    pub(super) fn learn_trap_action(&mut self, tid: Pid) -> Result<()> {
        let Some(slot) = self.space_of(tid) else { return Ok(()) };
        let bit = traps::TRAP_BIT;
        if (sig_mask(slot.space.pid, "SigCgt") | sig_mask(slot.space.pid, "SigIgn")) & bit == 0 {
            return Ok(());
        }
        let site = slot.syscall_site.or_else(|| traps::find_syscall_site(&mut slot.space));
        let Some(site) = site else {
            return Err(Error::NoSyscallSite { what: "read" });
        };
        match traps::query_action(tid, &slot.space, site) {
            Ok((action, sig)) => {
                slot.trap_action = action;
                self.requeue(tid, sig);
                Ok(())
            }
            Err(traps::InjectError::Gone(w)) => {
                self.deferred.push_back(w);
                Ok(())
            }
            Err(traps::InjectError::Io(e)) => Err(Error::os("reading the program's SIGTRAP action", e)),
        }
    }

    /// Queues again a signal that arrived while a system call was injected.
    pub(super) fn requeue(&self, tid: Pid, sig: Option<i32>) {
        if let (Some(sig), Some(t)) = (sig, self.threads.get(&tid)) {
            let _ = sys::tgkill(self.spaces[t.space].space.pid, tid, sig);
        }
    }

    /// After a trap of the recorder's own (an int3 it planted, a single
    /// step): gives back the SIGTRAP mask and action the kernel reset.
    /// False if the thread left meanwhile.
    pub(super) fn repair_after_trap(&mut self, tid: Pid) -> Result<bool> {
        let Some(t) = self.threads.get(&tid) else { return Ok(true) };
        let (mask, idx) = (t.sigmask, t.space);
        let blocked = mask & traps::TRAP_BIT != 0;
        if blocked {
            let _ = sys::set_sigmask(tid, mask);
        }
        let slot = &mut self.spaces[idx];
        let action = slot.trap_action;
        if !action.reset_by_trap(blocked) {
            return Ok(true);
        }
        let site = slot.syscall_site.or_else(|| traps::find_syscall_site(&mut slot.space));
        slot.syscall_site = site;
        let Some(site) = site else {
            return Err(Error::NoSyscallSite { what: "restore" });
        };
        match traps::install_action(tid, &slot.space, site, action) {
            Ok(sig) => {
                self.requeue(tid, sig);
                Ok(true)
            }
            Err(traps::InjectError::Gone(w)) => {
                self.deferred.push_back(w);
                Ok(false)
            }
            Err(traps::InjectError::Io(e)) => Err(Error::os("restoring the program's SIGTRAP action", e)),
        }
    }

    /// After a crash was reported: lets the fatal signal take its course.
    /// Recording stops for that process; the int3 bytes are removed first so
    /// a core dump shows the original code.
    pub fn deliver_crash(&mut self) -> Result<()> {
        let Some(c) = self.crash.take() else {
            return Ok(());
        };
        if let Some(idx) = self.threads.get(&c.tid).map(|t| t.space) {
            self.release_space(idx);
        }
        match sys::cont(c.tid, c.signal) {
            Ok(()) | Err(_) => Ok(()),
        }
    }
}
