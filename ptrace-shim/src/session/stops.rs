//! Waiting for the stops that `PTRACE_INTERRUPT` asked for, without
//! trusting that each one is reported.
//!
//! An interrupt of a thread that already sits in a ptrace stop, its report
//! taken, is never reported: a blocking `waitpid` for it waits forever.
//! The session keeps track of which threads are stopped, but one slip there
//! hangs the tracer and the traced program with it (it did: a stop of the
//! world begun while another still held its threads, which took about one
//! recording in two hundred of two threads through a single-stepped site).
//! So the wait polls, and a thread that stays silent while stopped is taken
//! as stopped, its stop rebuilt from its siginfo.

use std::collections::HashSet;
use std::io;
use std::time::{Duration, Instant};

use crate::sys::{self, Pid, Wait};

use super::proc::task_state;

/// How long the interrupted threads may stay silent before each one's
/// state is looked at.
const QUIET: Duration = Duration::from_millis(20);

/// The wait for the stops of the threads in `waiting`, one report at a time.
pub(super) struct StopWait {
    quiet_since: Instant,
    polls: u32,
}

impl StopWait {
    pub(super) fn new() -> StopWait {
        StopWait { quiet_since: Instant::now(), polls: 0 }
    }

    /// The next report of any traced task; `Ok(None)` to ask again. A
    /// thread of `waiting` found stopped without a report gives the stop
    /// it is in.
    pub(super) fn next(&mut self, waiting: &HashSet<Pid>) -> io::Result<Option<Wait>> {
        if let Some(w) = sys::try_wait(-1)? {
            self.quiet_since = Instant::now();
            self.polls = 0;
            return Ok(Some(w));
        }
        self.polls += 1;
        if self.quiet_since.elapsed() >= QUIET {
            for &p in waiting {
                if let Some(w) = unreported_stop(p)? {
                    self.quiet_since = Instant::now();
                    return Ok(Some(w));
                }
            }
            // Looked at: give them another while.
            self.quiet_since = Instant::now();
        }
        // Most stops come within microseconds; a loaded machine may take
        // milliseconds to run the thread at all.
        if self.polls < 64 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(100));
        }
        Ok(None)
    }
}

/// The stop `tid` is in when it sits stopped with no report for `wait`.
fn unreported_stop(tid: Pid) -> io::Result<Option<Wait>> {
    // `t`: in a ptrace stop.
    if task_state(tid) != Some('t') {
        return Ok(None);
    }
    // The siginfo can be read only once the thread is fully in its stop,
    // and from then on whether its report is waiting no longer changes:
    // ask only after, so a stop made just now is taken from `wait`, once.
    let Some(rebuilt) = sys::stop_from_siginfo(tid) else { return Ok(None) };
    Ok(Some(sys::try_wait(tid)?.unwrap_or(rebuilt)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_thread_is_not_in_a_trace_stop() {
        assert_ne!(task_state(std::process::id() as Pid), Some('t'));
        assert_eq!(task_state(-1), None);
    }

    /// A thread stopped by an interrupt whose report was already taken
    /// (interrupting it again gives none): the wait still ends, with the
    /// stop it is in, where a blocking `waitpid` would wait forever.
    #[test]
    fn a_stop_wait_never_reports_is_still_found() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as Pid;
        sys::seize(pid, 0).unwrap();
        sys::interrupt(pid).unwrap();
        assert_eq!(sys::wait(pid).unwrap(), Some(Wait::Event(pid, sys::EVENT_STOP, libc::SIGTRAP)));
        sys::interrupt(pid).unwrap();
        assert_eq!(sys::try_wait(pid).unwrap(), None, "the second interrupt is not reported");

        let waiting = HashSet::from([pid]);
        let mut stops = StopWait::new();
        let start = Instant::now();
        let found = loop {
            if let Some(w) = stops.next(&waiting).unwrap() {
                break w;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no stop found");
        };
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found, Wait::Event(pid, sys::EVENT_STOP, libc::SIGTRAP));
    }
}
