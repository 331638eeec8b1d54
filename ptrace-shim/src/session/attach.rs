//! Attaching to a running process: seizing every thread (new ones too)
//! without stopping the program for longer than needed, and the reason in
//! the user's terms when the kernel refuses.

use std::collections::HashSet;

use crate::recorder;
use crate::sys::{self, Pid, Wait};
use crate::{Error, Result};

use super::launch::{preflight, trace_options};
use super::proc::status_field;
use super::{Options, Session};

/// Why the kernel refused to let us trace `pid`, in the user's terms.
pub(super) fn permission_cause(pid: Pid, e: &std::io::Error) -> String {
    if let Some(t) = status_field(pid, "TracerPid") {
        if t != "0" {
            return format!("it is already traced by pid {t}");
        }
    }
    let their_uid = status_field(pid, "Uid").and_then(|u| u.split_whitespace().next().map(str::to_string));
    // SAFETY: geteuid has no arguments and cannot fail.
    let me = unsafe { libc::geteuid() };
    let has_cap = status_field(std::process::id() as Pid, "CapEff")
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .is_some_and(|c| c & (1 << 19) != 0); // CAP_SYS_PTRACE
    if !has_cap {
        if let Some(uid) = their_uid.filter(|u| *u != me.to_string()) {
            return format!(
                "{e}: it belongs to uid {uid} and you are uid {me}; tracing another user's process \
                 needs CAP_SYS_PTRACE (run bts as root)"
            );
        }
    }
    if let Ok(scope) = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope") {
        let scope = scope.trim();
        if scope != "0" {
            return format!("{e}; kernel.yama.ptrace_scope is {scope} (run bts as root, or set it to 0)");
        }
    }
    if !has_cap {
        return format!(
            "{e}: it is more privileged than you (set-uid, file capabilities, or not dumpable); \
             tracing it needs CAP_SYS_PTRACE (run bts as root)"
        );
    }
    format!("{e}")
}

impl Session {
    /// Attaches to every thread of the running process `pid`.
    pub fn attach(pid: Pid, opts: Options) -> Result<Session> {
        preflight(&opts)?;
        if pid <= 0 || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return Err(Error::NoSuchProcess { pid });
        }
        if status_field(pid, "State").is_some_and(|s| s.starts_with('Z') || s.starts_with('X')) {
            return Err(Error::Zombie { pid });
        }
        if status_field(pid, "Tgid").and_then(|t| t.parse::<Pid>().ok()) != Some(pid) {
            return Err(Error::NotAProcess { pid });
        }
        if pid == std::process::id() as Pid {
            return Err(Error::SelfTrace);
        }
        let recorder = recorder::for_backend(opts.backend, opts.buffer_bytes, None)?;
        let mut s = Session::new(opts, pid, false, recorder);
        let mut seized: Vec<Pid> = Vec::new();
        // Threads may be created while we seize: list until nothing is new.
        loop {
            let mut new = 0;
            let dir =
                std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|_| Error::NoSuchProcess { pid })?;
            for entry in dir.flatten() {
                let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse::<Pid>().ok()) else {
                    continue;
                };
                if seized.contains(&tid) {
                    continue;
                }
                match sys::seize(tid, trace_options(false)) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                        s.abandon(&seized);
                        return Err(Error::PermissionDenied { pid, cause: permission_cause(pid, &e) });
                    }
                    Err(e) => {
                        s.abandon(&seized);
                        return Err(Error::os(format!("ptrace(PTRACE_SEIZE, {tid})"), e));
                    }
                }
                seized.push(tid);
                new += 1;
            }
            if new == 0 {
                break;
            }
        }
        if seized.is_empty() {
            return Err(Error::NoSuchProcess { pid });
        }
        s.processes.started(pid, super::processes::parent_of(pid), None);
        let space = match s.new_space(pid, 0) {
            Ok(space) => space,
            Err(e) => {
                s.abandon(&seized);
                return Err(e);
            }
        };
        let pin = if s.opts.pin_cpu { Session::pin_self(pid) } else { None };
        s.pinned_cpu = pin.map(|p| p.0);
        s.request_cpu_buffers()?;
        for &tid in &seized {
            let _ = sys::interrupt(tid);
            s.add_thread(tid, space, true)?;
            if let Some((_, one)) = &pin {
                if let Ok(old) = sys::get_affinity(tid) {
                    if sys::set_affinity(tid, one).is_ok() {
                        s.saved_affinity.insert(tid, old);
                        s.default_affinity.get_or_insert(old);
                    }
                }
            }
        }
        // Collect each thread's interrupt stop, then start recording it.
        let mut waiting: HashSet<Pid> = seized.iter().copied().collect();
        let mut action_known = false;
        while !waiting.is_empty() {
            let Some(w) = sys::wait(-1).map_err(|e| Error::os("waitpid", e))? else {
                continue;
            };
            match w {
                Wait::Event(tid, sys::EVENT_STOP, _) if waiting.remove(&tid) => {
                    s.refresh_mask(tid);
                    // Stopped in a system call: that is a `syscall` instruction.
                    if let Ok(r) = sys::get_regs(tid) {
                        if r.orig_rax as i64 >= 0 {
                            s.note_syscall_site(tid, r.rip.wrapping_sub(2));
                        }
                    }
                    if !action_known {
                        s.learn_trap_action(tid)?;
                        action_known = true;
                    }
                    s.resume(tid, 0)?
                }
                Wait::Exited(tid, _) | Wait::Signaled(tid, _) => {
                    waiting.remove(&tid);
                    s.handle(w)?;
                }
                other => {
                    // Any other stop of a thread clears the interrupt asked
                    // of it (the kernel's rule): one that stopped for, say,
                    // the SIGCHLD of a vfork child it waited for would never
                    // report the interrupt. Handle the stop; if the thread
                    // runs on, ask again; if it is held, it is collected.
                    let tid = super::wait_pid(&other);
                    s.handle(other)?;
                    if waiting.contains(&tid) {
                        match s.threads.get(&tid) {
                            Some(t) if t.held.is_some() => {
                                waiting.remove(&tid);
                            }
                            Some(_) => {
                                let _ = sys::interrupt(tid);
                            }
                            None => {
                                waiting.remove(&tid);
                            }
                        }
                    }
                }
            }
        }
        Ok(s)
    }

    pub(super) fn abandon(&mut self, seized: &[Pid]) {
        for &t in seized {
            let _ = sys::interrupt(t);
        }
        for &t in seized {
            // A seized thread detaches cleanly once stopped.
            loop {
                match sys::wait(t) {
                    Ok(Some(Wait::Event(..))) | Ok(Some(Wait::Syscall(_))) => break,
                    Ok(Some(Wait::Signal(_, sig))) => {
                        let _ = sys::detach(t, sig);
                        break;
                    }
                    Ok(None) => continue,
                    _ => break,
                }
            }
            let _ = sys::detach(t, 0);
        }
    }
}
