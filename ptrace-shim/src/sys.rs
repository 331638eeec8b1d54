//! Thin wrappers over the raw ptrace and wait calls. Every `unsafe` block of
//! the crate that talks to the kernel lives here; the numbers are libc's.
//!
//! Raw libc, not nix: nix's `Signal` cannot hold a real-time signal, so
//! `ptrace::cont`, `syscall`, `step` and `detach` could not deliver one the
//! program is due (bts must deliver every signal as the kernel would), and
//! nix has no `PTRACE_GETSIGMASK`/`SETSIGMASK`, `PTRACE_GET_SYSCALL_INFO` or
//! `PTRACE_LISTEN`. The wrappers stay a few lines each.

use std::io;

/// A process or thread id.
pub type Pid = i32;
/// The registers of a stopped thread.
pub type Regs = libc::user_regs_struct;

/// Puts a trace file's registers into the kernel's struct (the inverse of [`registers`]).
pub fn apply_registers(r: &mut Regs, v: &bts_reader::Registers) {
    r.r15 = v.r15;
    r.r14 = v.r14;
    r.r13 = v.r13;
    r.r12 = v.r12;
    r.rbp = v.rbp;
    r.rbx = v.rbx;
    r.r11 = v.r11;
    r.r10 = v.r10;
    r.r9 = v.r9;
    r.r8 = v.r8;
    r.rax = v.rax;
    r.rcx = v.rcx;
    r.rdx = v.rdx;
    r.rsi = v.rsi;
    r.rdi = v.rdi;
    r.orig_rax = v.orig_rax;
    r.rip = v.rip;
    r.cs = v.cs;
    r.eflags = v.eflags;
    r.rsp = v.rsp;
    r.ss = v.ss;
    r.fs_base = v.fs_base;
    r.gs_base = v.gs_base;
    r.ds = v.ds;
    r.es = v.es;
    r.fs = v.fs;
    r.gs = v.gs;
}

/// The registers as a trace file keeps them.
pub fn registers(r: &Regs) -> bts_reader::Registers {
    bts_reader::Registers {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        rbp: r.rbp,
        rbx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        rax: r.rax,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        orig_rax: r.orig_rax,
        rip: r.rip,
        cs: r.cs,
        eflags: r.eflags,
        rsp: r.rsp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
    }
}

/// Syscall stops report SIGTRAP|0x80.
pub const PTRACE_O_TRACESYSGOOD: i32 = libc::PTRACE_O_TRACESYSGOOD;
/// Follow fork.
pub const PTRACE_O_TRACEFORK: i32 = libc::PTRACE_O_TRACEFORK;
/// Follow vfork.
pub const PTRACE_O_TRACEVFORK: i32 = libc::PTRACE_O_TRACEVFORK;
/// Follow clone (threads).
pub const PTRACE_O_TRACECLONE: i32 = libc::PTRACE_O_TRACECLONE;
/// Stop at exec.
pub const PTRACE_O_TRACEEXEC: i32 = libc::PTRACE_O_TRACEEXEC;
/// Stop at exit.
pub const PTRACE_O_TRACEEXIT: i32 = libc::PTRACE_O_TRACEEXIT;
/// The tracee dies with the tracer (launched programs only).
pub const PTRACE_O_EXITKILL: i32 = libc::PTRACE_O_EXITKILL;

/// A fork event.
pub const EVENT_FORK: i32 = libc::PTRACE_EVENT_FORK;
/// A vfork event.
pub const EVENT_VFORK: i32 = libc::PTRACE_EVENT_VFORK;
/// A clone event.
pub const EVENT_CLONE: i32 = libc::PTRACE_EVENT_CLONE;
/// An exec event.
pub const EVENT_EXEC: i32 = libc::PTRACE_EVENT_EXEC;
/// An exit event.
pub const EVENT_EXIT: i32 = libc::PTRACE_EVENT_EXIT;
/// A group-stop or `PTRACE_INTERRUPT` stop of a seized thread
/// (`PTRACE_EVENT_STOP` of linux/ptrace.h; glibc's libc crate lacks it).
pub const EVENT_STOP: i32 = 128;

/// A syscall-entry stop, for [`get_syscall_info`].
pub const SYSCALL_INFO_ENTRY: u8 = libc::PTRACE_SYSCALL_INFO_ENTRY;
/// A syscall-exit stop.
pub const SYSCALL_INFO_EXIT: u8 = libc::PTRACE_SYSCALL_INFO_EXIT;

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        let e = io::Error::last_os_error();
        if e.raw_os_error().unwrap_or(0) != 0 {
            return Err(e);
        }
    }
    Ok(ret)
}

/// Issues one ptrace request.
fn ptrace(req: libc::c_uint, pid: Pid, addr: usize, data: usize) -> io::Result<libc::c_long> {
    // SAFETY: every caller passes either integers or a pointer to a live,
    // correctly sized buffer for the request, as documented in ptrace(2).
    unsafe {
        *libc::__errno_location() = 0;
        check(libc::ptrace(req, pid, addr as *mut libc::c_void, data as *mut libc::c_void))
    }
}

/// `PTRACE_SEIZE` with `options`.
pub fn seize(pid: Pid, options: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_SEIZE, pid, 0, options as usize).map(drop)
}
/// `PTRACE_INTERRUPT`.
pub fn interrupt(pid: Pid) -> io::Result<()> {
    ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0).map(drop)
}
/// `PTRACE_CONT`, delivering `sig`.
pub fn cont(pid: Pid, sig: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_CONT, pid, 0, sig as usize).map(drop)
}
/// `PTRACE_SYSCALL`, delivering `sig`.
pub fn syscall(pid: Pid, sig: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_SYSCALL, pid, 0, sig as usize).map(drop)
}
/// `PTRACE_SINGLESTEP`, delivering `sig`.
pub fn singlestep(pid: Pid, sig: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_SINGLESTEP, pid, 0, sig as usize).map(drop)
}
/// `PTRACE_LISTEN`.
pub fn listen(pid: Pid) -> io::Result<()> {
    ptrace(libc::PTRACE_LISTEN, pid, 0, 0).map(drop)
}
/// `PTRACE_DETACH`, leaving `sig` to be delivered.
pub fn detach(pid: Pid, sig: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_DETACH, pid, 0, sig as usize).map(drop)
}
/// `PTRACE_SETOPTIONS`.
pub fn set_options(pid: Pid, options: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_SETOPTIONS, pid, 0, options as usize).map(drop)
}

/// `PTRACE_GETEVENTMSG`.
pub fn get_event_msg(pid: Pid) -> io::Result<u64> {
    let mut msg: libc::c_ulong = 0;
    ptrace(libc::PTRACE_GETEVENTMSG, pid, 0, &mut msg as *mut _ as usize)?;
    Ok(msg)
}

/// `PTRACE_GETREGS`.
pub fn get_regs(pid: Pid) -> io::Result<Regs> {
    // SAFETY: user_regs_struct is plain old data; all-zero is a valid value.
    let mut regs: Regs = unsafe { std::mem::zeroed() };
    ptrace(libc::PTRACE_GETREGS, pid, 0, &mut regs as *mut Regs as usize)?;
    Ok(regs)
}

/// `PTRACE_SETREGS`.
pub fn set_regs(pid: Pid, regs: &Regs) -> io::Result<()> {
    ptrace(libc::PTRACE_SETREGS, pid, 0, regs as *const Regs as usize).map(drop)
}

/// The thread's blocked-signal mask (bit `n - 1` for signal `n`).
pub fn get_sigmask(pid: Pid) -> io::Result<u64> {
    let mut mask: u64 = 0;
    ptrace(libc::PTRACE_GETSIGMASK, pid, 8, &mut mask as *mut u64 as usize)?;
    Ok(mask)
}

/// Sets the thread's blocked-signal mask.
pub fn set_sigmask(pid: Pid, mask: u64) -> io::Result<()> {
    ptrace(libc::PTRACE_SETSIGMASK, pid, 8, &mask as *const u64 as usize).map(drop)
}

/// The parts of `siginfo_t` a crash report needs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SigInfo {
    /// The signal.
    pub signo: i32,
    /// `si_code`.
    pub code: i32,
    /// `si_addr` for the fault signals (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP).
    pub addr: u64,
    /// `si_pid` for signals sent by a process.
    pub sender: i32,
}

/// `PTRACE_GETSIGINFO`.
pub fn get_siginfo(pid: Pid) -> io::Result<SigInfo> {
    // SAFETY: siginfo_t is plain old data; all-zero is a valid value.
    let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
    ptrace(libc::PTRACE_GETSIGINFO, pid, 0, &mut si as *mut _ as usize)?;
    let fault =
        matches!(si.si_signo, libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGTRAP);
    // SAFETY: the union member read matches the signal class just checked.
    let (addr, sender) = unsafe {
        if fault {
            (si.si_addr() as u64, 0)
        } else {
            (0, si.si_pid())
        }
    };
    Ok(SigInfo { signo: si.si_signo, code: si.si_code, addr, sender })
}

/// What `PTRACE_GET_SYSCALL_INFO` says about a syscall stop.
#[derive(Debug, Clone, Copy)]
pub struct SyscallInfo {
    /// Entry or exit.
    pub op: u8,
    /// Address after the syscall instruction.
    pub ip: u64,
}

/// `PTRACE_GET_SYSCALL_INFO`.
pub fn get_syscall_info(pid: Pid) -> io::Result<SyscallInfo> {
    // SAFETY: ptrace_syscall_info is plain old data; all-zero is valid.
    let mut info: libc::ptrace_syscall_info = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of_val(&info);
    ptrace(libc::PTRACE_GET_SYSCALL_INFO, pid, size, &mut info as *mut _ as usize)?;
    Ok(SyscallInfo { op: info.op, ip: info.instruction_pointer })
}

/// A decoded wait status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The task exited with this code.
    Exited(Pid, i32),
    /// The task was killed by this signal.
    Signaled(Pid, i32),
    /// A signal-delivery-stop (or the stop of a not-yet-seized child).
    Signal(Pid, i32),
    /// A syscall-stop (SIGTRAP|0x80).
    Syscall(Pid),
    /// A PTRACE_EVENT stop: the event and the stopping signal.
    Event(Pid, i32, i32),
}

/// `waitpid(pid, __WALL)`; `Ok(None)` when interrupted by a signal.
pub fn wait(pid: Pid) -> io::Result<Option<Wait>> {
    waitpid(pid, 0)
}

/// `waitpid(pid, __WALL | WNOHANG)`: `Ok(None)` when no task has a
/// report waiting (or the call was interrupted).
pub fn try_wait(pid: Pid) -> io::Result<Option<Wait>> {
    waitpid(pid, libc::WNOHANG)
}

fn waitpid(pid: Pid, flags: i32) -> io::Result<Option<Wait>> {
    let mut status = 0;
    // __WNOTHREAD: only this thread's tracees and children, so that
    // sessions on several threads (a broker's) never take each other's.
    // SAFETY: status is a valid out-pointer for the call's duration.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL | libc::__WNOTHREAD | flags) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(None);
        }
        return Err(e);
    }
    // 0: WNOHANG and nothing to report.
    Ok((r > 0).then(|| decode_status(r, status)))
}

/// The stop a thread sits in, rebuilt from `PTRACE_GETSIGINFO`, for a
/// stop whose report `wait` will not give: what `waitpid` would have
/// said. `None` if the thread is not in a ptrace stop that has siginfo
/// (running, or in a group-stop).
pub fn stop_from_siginfo(tid: Pid) -> Option<Wait> {
    let info = get_siginfo(tid).ok()?;
    Some(decode_siginfo(tid, info.signo, info.code))
}

/// A ptrace stop's siginfo as a wait status: the kernel reports a
/// syscall stop as `SIGTRAP | 0x80` and an event stop as
/// `SIGTRAP | event << 8` in `si_code`; anything else is a signal.
fn decode_siginfo(tid: Pid, signo: i32, code: i32) -> Wait {
    if signo == libc::SIGTRAP && code == libc::SIGTRAP | 0x80 {
        Wait::Syscall(tid)
    } else if signo == libc::SIGTRAP && code & 0xff == libc::SIGTRAP && code >> 8 != 0 {
        Wait::Event(tid, code >> 8, libc::SIGTRAP)
    } else {
        Wait::Signal(tid, signo)
    }
}

fn decode_status(pid: Pid, status: i32) -> Wait {
    if libc::WIFEXITED(status) {
        Wait::Exited(pid, libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Wait::Signaled(pid, libc::WTERMSIG(status))
    } else {
        let sig = libc::WSTOPSIG(status);
        let event = status >> 16;
        if event != 0 {
            Wait::Event(pid, event, sig)
        } else if sig == libc::SIGTRAP | 0x80 {
            Wait::Syscall(pid)
        } else {
            Wait::Signal(pid, sig)
        }
    }
}

/// Sends `sig` to one thread.
pub fn tgkill(tgid: Pid, tid: Pid, sig: i32) -> io::Result<()> {
    // SAFETY: a plain syscall with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid, sig) };
    check(r).map(drop)
}

/// Name of a signal, `SIGSEGV` style.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSTKFLT => "SIGSTKFLT",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGTTIN => "SIGTTIN",
        libc::SIGTTOU => "SIGTTOU",
        libc::SIGURG => "SIGURG",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGVTALRM => "SIGVTALRM",
        libc::SIGPROF => "SIGPROF",
        libc::SIGWINCH => "SIGWINCH",
        libc::SIGIO => "SIGIO",
        libc::SIGPWR => "SIGPWR",
        libc::SIGSYS => "SIGSYS",
        s if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&s) => {
            return format!("SIGRT{}", s - libc::SIGRTMIN());
        }
        s => return format!("signal {s}"),
    };
    name.to_string()
}

/// True if the default action of `sig` ends the process.
pub fn default_is_fatal(sig: i32) -> bool {
    !matches!(
        sig,
        libc::SIGCHLD
            | libc::SIGCONT
            | libc::SIGURG
            | libc::SIGWINCH
            | libc::SIGSTOP
            | libc::SIGTSTP
            | libc::SIGTTIN
            | libc::SIGTTOU
    )
}

/// A thread's CPU affinity mask.
pub fn get_affinity(tid: Pid) -> io::Result<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain old data; the kernel fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(set)
    }
}

/// Sets a thread's CPU affinity.
pub fn set_affinity(tid: Pid, set: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A mask of one CPU.
pub fn single_cpu(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: all-zero is an empty set; CPU_SET stays within the set's size
    // for any cpu below CPU_SETSIZE, which the caller's cpu number is.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    }
}

/// The CPU this thread runs on, and the first CPU of `allowed` if it is not in it.
pub fn pick_cpu(allowed: &libc::cpu_set_t) -> Option<usize> {
    // SAFETY: sched_getcpu has no arguments.
    let here = unsafe { libc::sched_getcpu() };
    // SAFETY: CPU_ISSET reads within the set for cpu < CPU_SETSIZE.
    let in_set = |c: usize| c < libc::CPU_SETSIZE as usize && unsafe { libc::CPU_ISSET(c, allowed) };
    if here >= 0 && in_set(here as usize) {
        return Some(here as usize);
    }
    (0..libc::CPU_SETSIZE as usize).find(|&c| in_set(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_status_decoding() {
        assert_eq!(decode_status(5, 3 << 8), Wait::Exited(5, 3));
        assert_eq!(decode_status(5, libc::SIGSEGV), Wait::Signaled(5, libc::SIGSEGV));
        assert_eq!(decode_status(5, 0x7f | (libc::SIGSEGV << 8)), Wait::Signal(5, libc::SIGSEGV));
        assert_eq!(decode_status(5, 0x7f | ((libc::SIGTRAP | 0x80) << 8)), Wait::Syscall(5));
        assert_eq!(
            decode_status(5, 0x7f | (libc::SIGTRAP << 8) | (EVENT_EXEC << 16)),
            Wait::Event(5, EVENT_EXEC, libc::SIGTRAP)
        );
    }

    #[test]
    fn siginfo_decoding() {
        assert_eq!(decode_siginfo(5, libc::SIGTRAP, 0x85), Wait::Syscall(5));
        assert_eq!(decode_siginfo(5, libc::SIGTRAP, EVENT_STOP << 8 | 5), Wait::Event(5, EVENT_STOP, 5));
        // An int3 (SI_KERNEL) and a single step (TRAP_TRACE) are signals.
        assert_eq!(decode_siginfo(5, libc::SIGTRAP, 0x80), Wait::Signal(5, libc::SIGTRAP));
        assert_eq!(decode_siginfo(5, libc::SIGTRAP, 2), Wait::Signal(5, libc::SIGTRAP));
        assert_eq!(decode_siginfo(5, libc::SIGSEGV, 1), Wait::Signal(5, libc::SIGSEGV));
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(libc::SIGSEGV), "SIGSEGV");
        assert_eq!(signal_name(libc::SIGRTMIN() + 1), "SIGRT1");
        assert!(default_is_fatal(libc::SIGABRT));
        assert!(!default_is_fatal(libc::SIGCHLD));
    }
}
