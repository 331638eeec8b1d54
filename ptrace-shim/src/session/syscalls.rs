//! System call stops: the branch into the kernel and back, and what the
//! program's own system calls change (signal masks and actions).

use iced_x86::Mnemonic;

use crate::sys::{self, Pid, Regs};
use crate::traps;
use crate::Result;

use super::Session;

pub(super) fn is_restart(rax: u64) -> bool {
    // -ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND, -ERESTART_RESTARTBLOCK
    matches!(rax as i64, -512 | -513 | -514 | -516)
}

impl Session {
    pub(super) fn on_syscall(&mut self, tid: Pid) -> Result<()> {
        let info = match sys::get_syscall_info(tid) {
            Ok(i) => i,
            Err(_) => return self.resume(tid, 0),
        };
        match info.op {
            sys::SYSCALL_INFO_ENTRY => {
                let site = info.ip.wrapping_sub(2);
                if let Some(t) = self.threads.get_mut(&tid) {
                    t.syscall_site = Some(site);
                }
                self.note_syscall_site(tid, site);
            }
            sys::SYSCALL_INFO_EXIT => {
                let site = self.threads.get_mut(&tid).and_then(|t| t.syscall_site.take());
                if let Ok(regs) = sys::get_regs(tid) {
                    self.after_syscall(tid, &regs);
                    if let Some(site) = site {
                        self.record(tid, site, regs.rip);
                    }
                }
            }
            _ => {}
        }
        self.resume(tid, 0)
    }

    /// Keeps a `syscall` instruction of the thread's image, for injecting
    /// system calls later.
    pub(super) fn note_syscall_site(&mut self, tid: Pid, site: u64) {
        if let Some(slot) = self.space_of(tid) {
            if slot.syscall_site.is_none()
                && slot.space.insn(site).is_some_and(|i| i.mnemonic() == Mnemonic::Syscall)
            {
                slot.syscall_site = Some(site);
            }
        }
    }

    /// After a system call returned: drops cached code of ranges a
    /// memory-map call changed, and follows the program's SIGTRAP action
    /// and the thread's signal mask.
    pub(super) fn after_syscall(&mut self, tid: Pid, regs: &Regs) {
        if traps::changes_mask(regs) {
            self.refresh_mask(tid);
        }
        if let Some(slot) = self.space_of(tid) {
            if let Some(a) = traps::action_set_by(regs, &slot.space) {
                slot.trap_action = a;
            }
        }
        let (lo, len) = (regs.rdi, regs.rsi);
        let nr = regs.orig_rax as i64;
        if !(nr == libc::SYS_munmap || nr == libc::SYS_mmap || nr == libc::SYS_mremap)
            || (regs.rax as i64) < 0 && (regs.rax as i64) > -4096
        {
            return;
        }
        let lo = if nr == libc::SYS_mmap { regs.rax } else { lo };
        if let Some(slot) = self.space_of(tid) {
            slot.space.invalidate(lo, lo.saturating_add(len));
        }
    }
}
