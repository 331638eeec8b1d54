//! bts's own signal handling while it traces: SIGINT, SIGTERM and SIGHUP
//! set a flag the event loop reads, and a 100 ms interval timer interrupts
//! `waitpid` so the flag is seen even while every tracee sleeps.

use std::sync::atomic::{AtomicI32, Ordering};

static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(sig: libc::c_int) {
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
}

extern "C" fn on_tick(_sig: libc::c_int) {}

fn set_handler(sig: i32, handler: extern "C" fn(libc::c_int)) -> std::io::Result<()> {
    // SAFETY: the sigaction struct is fully initialised; the handlers only
    // store to an atomic (async-signal-safe). No SA_RESTART, so a blocked
    // waitpid returns EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = 0;
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Installs the handlers and the interval timer. The handlers are reset to
/// their defaults in a launched child by exec.
pub fn install_stop_handlers() -> std::io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        set_handler(sig, on_stop_signal)?;
    }
    set_handler(libc::SIGALRM, on_tick)?;
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
