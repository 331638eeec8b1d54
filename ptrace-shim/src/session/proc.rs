//! Reading /proc: a thread's status fields, signal masks and CPU.

use crate::sys::Pid;

/// The value of `field` (`Uid`, `CapEff`, `TracerPid`…) in `/proc/TID/status`.
pub fn status_field(tid: Pid, field: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    text.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':').map(|v| v.trim().to_string()))
}

pub(super) fn sig_mask(tid: Pid, field: &str) -> u64 {
    status_field(tid, field).and_then(|v| u64::from_str_radix(&v, 16).ok()).unwrap_or(0)
}

/// Field `n` (1-based, as proc(5) numbers them, from 3 on) of /proc/TID/stat.
pub(super) fn stat_field(tid: Pid, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{tid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n.checked_sub(3)?).map(str::to_string)
}

/// The CPU a thread last ran on (field 39 of /proc/TID/stat).
pub(super) fn thread_cpu(tid: Pid) -> Option<u32> {
    stat_field(tid, 39)?.parse().ok()
}

/// A thread's scheduler state (field 3 of /proc/TID/stat: R, S, D, t...).
pub(super) fn task_state(tid: Pid) -> Option<char> {
    stat_field(tid, 3)?.chars().next()
}

/// A SIGTRAP is pending for the thread and not blocked (a trap waiting
/// behind an interrupt stop).
pub(super) fn trap_pending(tid: Pid) -> bool {
    let trap = 1u64 << (libc::SIGTRAP - 1);
    sig_mask(tid, "SigPnd") & !sig_mask(tid, "SigBlk") & trap != 0
}
