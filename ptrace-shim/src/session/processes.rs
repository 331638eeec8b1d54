//! The processes of a session: who started whom, with which command line,
//! and each process's end, for a caller that follows a whole tree of them
//! (`bts ci`), which must name a crash by its parent chain and must not
//! keep the trace of every process that came and went.

use std::collections::HashMap;

use crate::sys::Pid;

use super::{Outcome, Session};

/// What the session knows of a process it followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// The process.
    pub pid: Pid,
    /// The process that started it (for the first process, the one that
    /// launched it or its parent when attached).
    pub ppid: Pid,
    /// Its command line: as of its last exec, or its parent's when it
    /// never exec'd.
    pub command: Vec<String>,
}

/// A followed process (not the first) whose last thread is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessEnd {
    /// The process.
    pub pid: Pid,
    /// How its last thread ended.
    pub outcome: Outcome,
}

/// The command line of a live (or held) process, from /proc: as `ps`
/// shows it, its name in brackets when it has none (a zombie).
pub fn process_command(pid: Pid) -> Vec<String> {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(b) if !b.is_empty() => b
            .split(|&c| c == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
        _ => match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
            Ok(c) if !c.trim().is_empty() => vec![format!("[{}]", c.trim_end())],
            _ => vec![format!("pid {pid}")],
        },
    }
}

/// The parent of a live process (field 4 of /proc/PID/stat).
pub(super) fn parent_of(pid: Pid) -> Pid {
    super::proc::stat_field(pid, 4).and_then(|p| p.parse().ok()).unwrap_or(0)
}

/// Bytes of a command line kept per process (a compiler's can be long).
const COMMAND_BYTES: usize = 4096;

/// `command` cut to [`COMMAND_BYTES`], "…" standing for the rest.
fn capped(mut command: Vec<String>) -> Vec<String> {
    let mut total = 0;
    if let Some(cut) = command.iter().position(|a| {
        total += a.len() + 1;
        total > COMMAND_BYTES
    }) {
        command.truncate(cut.max(1));
        command.push("…".into());
    }
    command
}

/// The processes of the session that are alive or have a live
/// descendant (for parent chains), by pid: the ones gone are pruned.
#[derive(Debug, Default)]
pub(super) struct ProcessTable {
    known: HashMap<Pid, ProcessInfo>,
    /// Ended, but kept while a known process names it as its parent.
    gone: std::collections::HashSet<Pid>,
    /// Every process ever seen.
    seen: usize,
}

impl ProcessTable {
    /// A process enters: the first one, or a fork/vfork child, which runs
    /// its parent's program until it execs.
    pub(super) fn started(&mut self, pid: Pid, ppid: Pid, command: Option<Vec<String>>) {
        let command = command
            .or_else(|| self.known.get(&ppid).map(|p| p.command.clone()))
            .unwrap_or_else(|| process_command(pid));
        self.seen += 1;
        self.gone.remove(&pid);
        self.known.insert(pid, ProcessInfo { pid, ppid, command: capped(command) });
    }

    /// A process ended: it goes, with the ended parents only it kept.
    pub(super) fn ended(&mut self, pid: Pid) {
        self.gone.insert(pid);
        let mut at = Some(pid);
        while let Some(p) = at {
            if !self.gone.contains(&p) || self.known.values().any(|k| k.ppid == p) {
                break;
            }
            self.gone.remove(&p);
            at = self.known.remove(&p).map(|k| k.ppid);
        }
    }

    /// A process ran exec: its new command line.
    pub(super) fn exec(&mut self, pid: Pid) {
        let command = capped(process_command(pid));
        match self.known.get_mut(&pid) {
            Some(p) => p.command = command,
            None => {
                self.seen += 1;
                self.known.insert(pid, ProcessInfo { pid, ppid: parent_of(pid), command });
            }
        }
    }

    /// Whether `pid` is a process (not a thread) the session followed.
    pub(super) fn is_process(&self, pid: Pid) -> bool {
        self.known.contains_key(&pid)
    }

    fn get(&self, pid: Pid) -> Option<&ProcessInfo> {
        self.known.get(&pid)
    }
}

impl Session {
    /// What the session knows of process `pid` (a process that ended is
    /// forgotten once its end was reported and no process it started is
    /// known).
    pub fn process(&self, pid: Pid) -> Option<&ProcessInfo> {
        self.processes.get(pid)
    }

    /// The parents of process `pid` that the session followed, nearest
    /// first, up to the first process.
    pub fn parent_chain(&self, pid: Pid) -> Vec<ProcessInfo> {
        let mut chain: Vec<ProcessInfo> = Vec::new();
        let mut at = self.processes.get(pid);
        while let Some(p) = at {
            if p.pid == self.root || chain.len() > self.processes.known.len() {
                break;
            }
            at = self.processes.get(p.ppid);
            if let Some(parent) = at {
                chain.push(parent.clone());
            }
        }
        chain
    }

    /// How many processes the session has followed (the first included).
    pub fn processes_seen(&self) -> usize {
        self.processes.seen
    }

    /// The first process ended with followed processes still running
    /// (daemons it left behind): detaches them as `attach` would at Ctrl-C,
    /// every int3 gone, and returns them, each once. Launched, they would
    /// otherwise be killed when bts exits.
    pub fn detach_remaining(&mut self) -> crate::Result<Vec<ProcessInfo>> {
        let mut left: Vec<Pid> = self.threads.values().map(|t| self.spaces[t.space].space.pid).collect();
        left.sort_unstable();
        left.dedup();
        if left.is_empty() {
            return Ok(Vec::new());
        }
        let outcome = self.outcome;
        self.detach_all()?;
        self.outcome = outcome;
        Ok(left
            .into_iter()
            .map(|pid| {
                self.processes.get(pid).cloned().unwrap_or_else(|| ProcessInfo {
                    pid,
                    ppid: parent_of(pid),
                    command: process_command(pid),
                })
            })
            .collect())
    }

    /// Notes that the last thread of `pid`'s image is gone; with
    /// `report_process_ends`, the caller hears of it (once the session
    /// drops its trace at the next turn).
    pub(super) fn process_ended(&mut self, pid: Pid, outcome: Outcome) {
        if self.opts.report_process_ends && pid != self.root {
            self.ended.push_back(ProcessEnd { pid, outcome });
        }
    }

    /// The end to report now, if any; the trace of the one reported
    /// before is dropped (the caller had its turn to save it).
    pub(super) fn next_end(&mut self) -> Option<ProcessEnd> {
        if let Some(done) = self.reported_end.take() {
            self.finished.retain(|i| i.pid != done);
            self.processes.ended(done);
        }
        let end = self.ended.pop_front()?;
        self.reported_end = Some(end.pid);
        Some(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(words: &[&str]) -> Option<Vec<String>> {
        Some(words.iter().map(|w| w.to_string()).collect())
    }

    #[test]
    fn ended_processes_go_once_no_known_process_descends_from_them() {
        let mut t = ProcessTable::default();
        t.started(1, 0, cmd(&["sh"]));
        t.started(2, 1, None);
        t.started(3, 2, cmd(&["cc"]));
        assert_eq!(t.get(2).unwrap().command, ["sh"], "a fork child runs its parent's program");
        // The parent ends first: kept for its child's chain.
        t.ended(2);
        assert!(t.get(2).is_some());
        // The child ends: both go; the first process stays.
        t.ended(3);
        assert!(t.get(3).is_none() && t.get(2).is_none());
        assert!(t.get(1).is_some());
        assert_eq!(t.seen, 3);
    }

    #[test]
    fn long_command_lines_are_cut() {
        let long = vec!["x".repeat(3000), "y".repeat(3000), "z".into()];
        assert_eq!(capped(long.clone()), vec!["x".repeat(3000), "…".into()]);
        assert_eq!(capped(vec!["a".into()]), vec!["a".to_string()]);
        assert_eq!(capped(vec!["q".repeat(9000)]).len(), 2, "the program's name stays");
    }
}
