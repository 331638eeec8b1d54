//! bts's own signal handling while it traces. Every signal that would end
//! bts and can be caught sets a flag the event loop reads, so bts always
//! detaches cleanly (int3 bytes removed) before it goes; a 100 ms interval
//! timer interrupts `waitpid` so the flag is seen even while every tracee
//! sleeps. SIGKILL cannot be caught: the front process covers it (see
//! `front`). Faults of bts itself (SIGSEGV, SIGBUS, SIGILL, SIGFPE) cannot
//! be caught usefully.

use std::sync::atomic::{AtomicI32, Ordering};

static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// The classic signals that end a process by default and can be caught.
const CLASSIC: &[i32] = &[
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTRAP,
    libc::SIGABRT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGPIPE,
    libc::SIGALRM,
    libc::SIGTERM,
    libc::SIGSTKFLT,
    libc::SIGXCPU,
    libc::SIGXFSZ,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGIO,
    libc::SIGPWR,
    libc::SIGSYS,
];

/// Every signal that ends a process by default and can be caught: the
/// classic ones and the real-time ones (glibc keeps the two below
/// SIGRTMIN for itself).
pub fn caught() -> impl Iterator<Item = i32> {
    CLASSIC.iter().copied().chain(libc::SIGRTMIN()..=libc::SIGRTMAX())
}

/// The signals that ask bts to stop in the ordinary way: a launched
/// program gets them (it decides what they mean), an attach detaches and
/// bts exits normally.
pub fn is_stop_request(sig: i32) -> bool {
    matches!(sig, libc::SIGINT | libc::SIGTERM | libc::SIGHUP)
}

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let (code, sender) = unsafe { ((*info).si_code, (*info).si_pid()) };
    // SAFETY: getpid is async-signal-safe.
    let me = unsafe { libc::getpid() };
    // Our own interval timer, and the SIGPIPE of our own write to a closed
    // pipe (the write itself fails with EPIPE and is handled there).
    if sig == libc::SIGALRM && code == libc::SI_KERNEL || sig == libc::SIGPIPE && sender == me {
        return;
    }
    note_signal(sig);
}

/// Records `sig` as received, as the handler does.
pub(crate) fn note_signal(sig: i32) {
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
}

/// The type of an SA_SIGINFO handler.
pub(crate) type Handler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

/// Installs `handler` for `sig`, without SA_RESTART.
pub(crate) fn set_handler(sig: i32, handler: Handler) -> std::io::Result<()> {
    // SAFETY: the sigaction struct is fully initialised; the handler only
    // reads its siginfo and stores to an atomic (async-signal-safe). No
    // SA_RESTART, so a blocked waitpid returns EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = libc::SA_SIGINFO;
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Installs the handlers and the interval timer. The handlers are reset to
/// their defaults in a launched child by exec.
pub fn install_stop_handlers() -> std::io::Result<()> {
    for sig in caught() {
        set_handler(sig, on_signal)?;
    }
    let tick = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
    let it = libc::itimerval { it_interval: tick, it_value: tick };
    // SAFETY: `it` is a valid itimerval; the old value is not wanted.
    if unsafe { libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The stop signal bts received, if any (and forgets it).
pub fn stop_requested() -> Option<i32> {
    match STOP_SIGNAL.swap(0, Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Ends bts by `sig` as if it had not been caught, once bts has detached
/// and saved what it recorded: the caller's parent sees the real cause.
pub fn die_of(sig: i32) -> ! {
    // SAFETY: restoring the default action, unblocking and raising are
    // plain calls; if the signal does not end the process, exit does.
    unsafe {
        let stop = libc::itimerval {
            it_interval: libc::timeval { tv_sec: 0, tv_usec: 0 },
            it_value: libc::timeval { tv_sec: 0, tv_usec: 0 },
        };
        libc::setitimer(libc::ITIMER_REAL, &stop, std::ptr::null_mut());
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
        libc::_exit(128 + sig)
    }
}
