//! The program's own SIGTRAP, kept as the program set it while recorders trap.
//!
//! Every trap a recorder causes (an int3 it planted, a single step) goes
//! through the kernel's `force_sig`: when SIGTRAP is blocked or ignored at
//! that moment, the kernel resets the program's SIGTRAP action to SIG_DFL and
//! unblocks the signal (`force_sig_info_to_task` in kernel/signal.c). A
//! program recorded inside its own SIGTRAP handler would then die of its next
//! SIGTRAP. This module knows the program's SIGTRAP action and puts it and
//! the thread's mask back after such a trap, by running `rt_sigaction` in the
//! thread itself ([`inject_syscall`]).

use std::io;

use crate::space::Space;
use crate::sys::{self, Pid, Wait};

/// The SIGTRAP bit of a signal mask.
pub const TRAP_BIT: u64 = 1 << (libc::SIGTRAP - 1);
const SIG_DFL: u64 = 0;
const SIG_IGN: u64 = 1;
const SA_RESETHAND: u64 = 0x8000_0000;
/// Bytes of the kernel's `struct sigaction` on x86-64.
const ACTION_BYTES: usize = 32;

/// A signal action as the kernel's `rt_sigaction` takes it on x86-64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Action {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

impl Action {
    /// SIG_IGN as exec leaves it.
    pub fn ignored() -> Action {
        Action { handler: SIG_IGN, ..Action::default() }
    }

    /// The action of a freshly exec'd image: SIG_IGN survives exec, a handler does not.
    pub fn after_exec(ignored: bool) -> Action {
        if ignored {
            Action::ignored()
        } else {
            Action::default()
        }
    }

    pub fn from_bytes(b: &[u8; ACTION_BYTES]) -> Action {
        let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        Action { handler: w(0), flags: w(1), restorer: w(2), mask: w(3) }
    }

    pub fn to_bytes(self) -> [u8; ACTION_BYTES] {
        let mut b = [0u8; ACTION_BYTES];
        for (i, w) in [self.handler, self.flags, self.restorer, self.mask].iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        b
    }

    /// Whether a recorder trap taken with SIGTRAP `blocked` (or not) made
    /// the kernel reset this action to SIG_DFL.
    pub fn reset_by_trap(&self, blocked: bool) -> bool {
        self.handler != SIG_DFL && (blocked || self.handler == SIG_IGN)
    }

    /// The action after the kernel delivered SIGTRAP to it (SA_RESETHAND
    /// makes a handler one-shot).
    pub fn after_delivery(self) -> Action {
        if self.flags & SA_RESETHAND != 0 && self.handler > SIG_IGN {
            Action { handler: SIG_DFL, ..self }
        } else {
            self
        }
    }
}

/// What an `rt_sigaction` system call that just returned (at its exit
/// stop, or after stepping it) set SIGTRAP's action to, if it did.
pub fn action_set_by(regs: &sys::Regs, space: &Space) -> Option<Action> {
    let ok = regs.orig_rax == libc::SYS_rt_sigaction as u64 && regs.rax == 0;
    if !ok || regs.rdi != libc::SIGTRAP as u64 || regs.rsi == 0 {
        return None;
    }
    let mut b = [0u8; ACTION_BYTES];
    space.read_live(regs.rsi, &mut b).ok()?;
    Some(Action::from_bytes(&b))
}

/// True when a system call that just returned may have changed the
/// thread's signal mask. `rt_sigreturn` leaves no number behind: it
/// restores `orig_rax` as -1 from the signal frame.
pub fn changes_mask(regs: &sys::Regs) -> bool {
    let nr = regs.orig_rax as i64;
    nr == libc::SYS_rt_sigprocmask || nr == libc::SYS_rt_sigreturn || nr == -1
}

/// Why an injected system call did not complete.
#[derive(Debug)]
pub enum InjectError {
    /// A ptrace or memory call failed.
    Io(io::Error),
    /// The thread left (exited, was killed, or execed) meanwhile; the wait
    /// result is the session's to handle.
    Gone(Wait),
}

impl From<io::Error> for InjectError {
    fn from(e: io::Error) -> Self {
        InjectError::Io(e)
    }
}

/// A system call run in a stopped thread on the tracer's behalf.
pub struct Injected {
    pub result: i64,
    /// A signal that arrived for the thread meanwhile (the caller queues it again).
    pub signal: Option<i32>,
    /// The scratch bytes as the call left them.
    pub scratch: Vec<u8>,
}

/// Runs system call `nr` in the stopped thread `tid` through the `syscall`
/// instruction at `site`, with `scratch` copied below the stack's red zone
/// (its address is given to `args`), then puts the registers and the stack
/// bytes back. Syscall stops, unlike traps, never touch signal actions.
pub fn inject_syscall(
    tid: Pid,
    space: &Space,
    site: u64,
    nr: i64,
    scratch: &[u8],
    args: impl Fn(u64) -> [u64; 4],
) -> Result<Injected, InjectError> {
    let saved = sys::get_regs(tid)?;
    let addr = saved.rsp.wrapping_sub(128 + 512) & !15;
    let mut old = vec![0u8; scratch.len()];
    space.read_live(addr, &mut old)?;
    space.write_live(addr, scratch)?;
    let [a0, a1, a2, a3] = args(addr);
    let mut r = saved;
    (r.rip, r.rax, r.orig_rax) = (site, nr as u64, u64::MAX);
    (r.rdi, r.rsi, r.rdx, r.r10) = (a0, a1, a2, a3);
    sys::set_regs(tid, &r)?;
    let mut signal = None;
    let mut stops = 0;
    // Entry stop, then exit stop.
    while stops < 2 {
        sys::syscall(tid, 0)?;
        match sys::wait(tid)? {
            None => continue,
            Some(Wait::Syscall(_)) => stops += 1,
            Some(Wait::Signal(_, sig)) => signal = Some(sig),
            Some(other) => return Err(InjectError::Gone(other)),
        }
    }
    let result = sys::get_regs(tid)?.rax as i64;
    let mut after = vec![0u8; scratch.len()];
    space.read_live(addr, &mut after)?;
    space.write_live(addr, &old)?;
    sys::set_regs(tid, &saved)?;
    Ok(Injected { result, signal, scratch: after })
}

/// Reads the thread's current SIGTRAP action with an injected `rt_sigaction`.
pub fn query_action(tid: Pid, space: &Space, site: u64) -> Result<(Action, Option<i32>), InjectError> {
    let done = inject_syscall(tid, space, site, libc::SYS_rt_sigaction, &[0u8; ACTION_BYTES], |a| {
        [libc::SIGTRAP as u64, 0, a, 8]
    })?;
    let b: [u8; ACTION_BYTES] = done.scratch[..].try_into().expect("scratch size");
    Ok((Action::from_bytes(&b), done.signal))
}

/// Installs `action` for SIGTRAP with an injected `rt_sigaction`.
pub fn install_action(
    tid: Pid,
    space: &Space,
    site: u64,
    action: Action,
) -> Result<Option<i32>, InjectError> {
    let done = inject_syscall(tid, space, site, libc::SYS_rt_sigaction, &action.to_bytes(), |a| {
        [libc::SIGTRAP as u64, a, 0, 8]
    })?;
    if done.result != 0 {
        return Err(InjectError::Io(io::Error::from_raw_os_error(-done.result as i32)));
    }
    Ok(done.signal)
}

/// A `syscall` instruction in the vDSO or another executable mapping
/// (`mov eax, imm32; syscall`, so it is an instruction boundary), for
/// threads that made no system call since bts met them.
pub fn find_syscall_site(space: &mut Space) -> Option<u64> {
    let maps: Vec<(u64, u64)> = space.maps.iter().map(|m| (m.start, m.end)).collect();
    let mut order: Vec<usize> = (0..maps.len()).collect();
    order.sort_by_key(|&i| space.maps[i].path != "[vdso]");
    for i in order {
        let (start, end) = maps[i];
        let mut buf = vec![0u8; (end - start).min(4 << 20) as usize];
        let n = space.read_code(start, &mut buf);
        let hit = buf[..n].windows(7).position(|w| w[0] == 0xb8 && w[5] == 0x0f && w[6] == 0x05);
        if let Some(p) = hit {
            let site = start + p as u64 + 5;
            if !space.is_breakpoint(site) && !space.is_breakpoint(site + 1) {
                return Some(site);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_bytes_round_trip() {
        let a = Action { handler: 0x401136, flags: 0x0400_0000, restorer: 0x7f00_0000_1000, mask: 1 << 4 };
        assert_eq!(Action::from_bytes(&a.to_bytes()), a);
        assert_eq!(&a.to_bytes()[..8], &0x401136u64.to_le_bytes());
    }

    #[test]
    fn which_traps_reset_the_action() {
        let handler = Action { handler: 0x401136, ..Action::default() };
        assert!(!Action::default().reset_by_trap(true));
        assert!(!handler.reset_by_trap(false));
        assert!(handler.reset_by_trap(true));
        assert!(Action::ignored().reset_by_trap(false));
        let oneshot = Action { flags: SA_RESETHAND, ..handler };
        assert_eq!(oneshot.after_delivery().handler, SIG_DFL);
        assert_eq!(handler.after_delivery(), handler);
        assert_eq!(Action::ignored().after_delivery(), Action::ignored());
    }
}
