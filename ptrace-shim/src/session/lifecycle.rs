//! The task lifecycle: address spaces and threads entering and leaving the
//! session (clone, fork, vfork, exec, exit), each thread's buffer charged
//! and refunded.

use std::collections::HashSet;

use ds_alloc::{BtsBuffer, ContextKind, Target};

use crate::space::Space;
use crate::sys::{self, Pid};
use crate::traps;
use crate::{Error, Notice, Result};

use super::attach::permission_cause;
use super::cpu::clock_ns;
use super::proc::sig_mask;
use super::snapshot::{collect_code, slot_sites};
use bts_reader::recording::{ImageTrace, ThreadTrace};

use super::{Outcome, Pending, Session, SpaceSlot, Thread};

pub(super) fn empty_buffer() -> BtsBuffer {
    BtsBuffer::with_bytes(ds_alloc::BTS_RECORD_SIZE).expect("one record")
}

impl Session {
    pub(super) fn new_space(&mut self, pid: Pid, generation: u32) -> Result<usize> {
        let mut space = Space::new(pid, generation).map_err(|e| match e.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EPERM) => {
                Error::PermissionDenied { pid, cause: permission_cause(pid, &e) }
            }
            _ => Error::os(format!("/proc/{pid}/mem"), e),
        })?;
        space.refresh_maps();
        let trap_action = traps::Action::after_exec(sig_mask(pid, "SigIgn") & traps::TRAP_BIT != 0);
        self.spaces.push(SpaceSlot {
            space,
            released: false,
            released_sites: HashSet::new(),
            trap_action,
            syscall_site: None,
        });
        Ok(self.spaces.len() - 1)
    }

    pub(super) fn add_thread(&mut self, tid: Pid, space: usize, record: bool) -> Result<()> {
        self.add_thread_as(tid, space, record, false)
    }

    /// Adds a thread; `exec` when it is a thread that just exec'd.
    pub(super) fn add_thread_as(&mut self, tid: Pid, space: usize, record: bool, exec: bool) -> Result<()> {
        let handle = if record {
            let requested =
                self.hub().alloc().request_bts(self.tracer, Target::Task(tid as u32), self.opts.buffer_bytes);
            match requested {
                Ok(h) => Some(h),
                // The first thread: nothing can be recorded; fail up front.
                Err(e) if self.threads.is_empty() && self.finished.is_empty() => {
                    return Err(Error::Alloc(e));
                }
                Err(e) => {
                    self.notices.push(Notice::ThreadNotRecorded { tid, cause: Error::Alloc(e) });
                    None
                }
            }
        } else {
            None
        };
        if record {
            if let Err(e) = self.recorder.start_thread(tid) {
                if self.threads.is_empty() && self.finished.is_empty() {
                    return Err(Error::Hardware(e));
                }
                self.notices.push(Notice::ThreadNotRecorded { tid, cause: Error::Hardware(e) });
            }
        }
        if record {
            let pid = self.spaces[space].space.pid;
            let refused = self.hub().thread_started(pid, tid, exec);
            for (follower, cause) in refused {
                self.notices.push(Notice::FollowerNotRecorded { tid, follower, cause });
            }
        }
        let cpu = self.current_cpu(tid);
        // A new thread that has not stopped yet inherits its parent's mask (set by the caller).
        let sigmask = sys::get_sigmask(tid).unwrap_or(0);
        self.threads.insert(
            tid,
            Thread {
                tid,
                space,
                record,
                handle,
                cpu,
                arrived: false,
                pending: Pending::None,
                syscall_site: None,
                last_pc: None,
                crashed: false,
                held: None,
                exiting: false,
                sigmask,
            },
        );
        Ok(())
    }

    /// Takes a thread out of the session: its "departs" record, its buffer
    /// out of the allocator (refunding the charge).
    pub(super) fn retire(&mut self, t: Thread) -> ThreadTrace {
        let lost = self.sync_hardware(&t);
        self.recorder.stop_thread(t.tid);
        if t.arrived {
            self.hub().alloc().context(t.cpu, t.tid as u32, ContextKind::TaskDeparts, clock_ns());
        }
        self.hub().thread_ended(t.tid);
        let buffer = t.handle.and_then(|h| self.hub().alloc().release_bts(self.tracer, h).ok());
        let buffer = buffer.unwrap_or_else(empty_buffer);
        ThreadTrace {
            tid: t.tid,
            overwritten: buffer.branches_overwritten(),
            buffer,
            crashed: t.crashed,
            last_pc: t.last_pc,
            lost,
            // The thread is gone: nothing to read.
            state: None,
        }
    }

    pub(super) fn thread_gone(&mut self, tid: Pid, how: Outcome) -> Result<()> {
        self.restart_the_world(tid)?;
        if let Some(t) = self.threads.remove(&tid) {
            let idx = t.space;
            let alive = self.threads.values().any(|o| o.space == idx);
            let trace = self.retire(t);
            let was_open = !self.spaces[idx].space.is_closed();
            let pid = self.spaces[idx].space.pid;
            // A vfork child that ends before exec (a program not found):
            // a process of its own in its parent's memory.
            if pid != tid && self.processes.is_process(tid) {
                if !self.opts.report_process_ends {
                    self.park_thread(idx, trace, !alive);
                }
                self.process_ended(tid, how);
                return Ok(());
            }
            self.park_thread(idx, trace, !alive);
            // The process lives on in another image (a thread of the old one
            // reaped after exec) while one of its threads is here.
            let spaces = &self.spaces;
            let lives_on = self.threads.values().any(|o| spaces[o.space].space.pid == pid);
            if !alive && was_open && !lives_on {
                self.process_ended(pid, how);
            }
        }
        if tid == self.root {
            self.outcome = Some(how);
        }
        Ok(())
    }

    /// Keeps a finished thread's trace with its image.
    pub(super) fn park_thread(&mut self, space: usize, trace: ThreadTrace, image_done: bool) {
        let slot = &mut self.spaces[space];
        let key = (slot.space.pid, slot.space.generation);
        let pos = self.finished.iter().position(|i| (i.pid, i.generation) == key);
        let image = match pos {
            Some(p) => &mut self.finished[p],
            None => {
                self.finished.push(ImageTrace {
                    pid: key.0,
                    generation: key.1,
                    maps: Vec::new(),
                    code: Vec::new(),
                    threads: Vec::new(),
                });
                self.finished.last_mut().expect("just pushed")
            }
        };
        image.threads.push(trace);
        // Done before (a straggler of an image left by exec): keep what it had.
        if image_done && !slot.space.is_closed() {
            image.maps = slot.space.maps.clone();
            let code = collect_code(&mut slot.space, image.threads.iter());
            image.code = code;
            // Nothing runs in it any more: its descriptor and caches go.
            slot.space.close();
        }
    }

    pub(super) fn on_event(&mut self, tid: Pid, ev: i32, sig: i32) -> Result<()> {
        match ev {
            sys::EVENT_STOP => {
                if !self.threads.contains_key(&tid) {
                    if self.to_release.remove(&tid) {
                        return self.release_child(tid);
                    }
                    // Its parent's event has not been seen yet.
                    self.early_stops.insert(tid);
                    return Ok(());
                }
                if let Some(t) = self.threads.get_mut(&tid) {
                    if self.detach_requested || t.held.is_some() {
                        t.held = Some(0);
                        return Ok(());
                    }
                }
                if matches!(sig, libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU) {
                    // Group-stop: stay stopped until SIGCONT, still traced.
                    return match sys::listen(tid) {
                        Ok(()) | Err(_) => Ok(()),
                    };
                }
                self.resume(tid, 0)
            }
            sys::EVENT_CLONE | sys::EVENT_FORK | sys::EVENT_VFORK => {
                let child = sys::get_event_msg(tid).map_err(|e| Error::os("PTRACE_GETEVENTMSG", e))? as Pid;
                let parent_space = self.threads.get(&tid).map(|t| t.space);
                if let (Some(ps), true) = (parent_space, ev != sys::EVENT_CLONE && self.opts.follow_fork) {
                    let parent = self.spaces[ps].space.pid;
                    self.processes.started(child, parent, None);
                }
                if let Some(ps) = parent_space {
                    self.new_task(tid, child, ps, ev)?;
                }
                self.resume(tid, 0)
            }
            sys::EVENT_EXEC => self.on_exec(tid),
            sys::EVENT_EXIT => {
                if let Some(t) = self.threads.get_mut(&tid) {
                    t.exiting = true;
                }
                // The address space is still there: keep its maps fresh.
                if let Some(slot) = self.space_of(tid) {
                    slot.space.refresh_maps();
                }
                match sys::cont(tid, 0) {
                    Ok(()) | Err(_) => Ok(()),
                }
            }
            _ => self.resume(tid, 0),
        }
    }

    pub(super) fn new_task(&mut self, parent: Pid, child: Pid, parent_space: usize, ev: i32) -> Result<()> {
        let follow = self.opts.follow_fork;
        match ev {
            sys::EVENT_CLONE => {
                let record = self.threads.get(&parent).is_some_and(|t| t.record);
                let mask = self.threads.get(&parent).map(|t| t.sigmask).unwrap_or(0);
                self.add_thread(child, parent_space, record)?;
                if let Some(t) = self.threads.get_mut(&child) {
                    t.sigmask = mask;
                }
            }
            sys::EVENT_VFORK => {
                // The child shares our memory, int3 bytes included, until it
                // execs: trace it until then, recording only if followed.
                self.add_thread(child, parent_space, follow)?;
            }
            _ => {
                if follow {
                    let copy = self.spaces[parent_space]
                        .space
                        .fork_copy(child)
                        .map_err(|e| Error::os(format!("/proc/{child}/mem"), e))?;
                    let from = &self.spaces[parent_space];
                    let slot = SpaceSlot {
                        space: copy,
                        released: from.released,
                        released_sites: HashSet::new(),
                        trap_action: from.trap_action,
                        syscall_site: from.syscall_site,
                    };
                    self.spaces.push(slot);
                    let idx = self.spaces.len() - 1;
                    self.add_thread(child, idx, true)?;
                    // The child's history starts with its parent's.
                    if let Some(p) = self.threads.get(&parent) {
                        let inherited = self.buffer_of(p).snapshot();
                        let cpu = p.cpu;
                        self.hub().alloc().deliver_batch(cpu, child as u32, &inherited);
                    }
                } else {
                    // Remove the inherited int3 bytes, then let it go.
                    let mut copy = self.spaces[parent_space]
                        .space
                        .fork_copy(child)
                        .map_err(|e| Error::os(format!("/proc/{child}/mem"), e))?;
                    if self.spaces[parent_space].released {
                        copy.forget_breakpoints();
                    }
                    if let Some((a, e)) = copy.remove_all_breakpoints().into_iter().next() {
                        return Err(Error::os(format!("restoring code at {a:#x} in child {child}"), e));
                    }
                    if self.early_stops.remove(&child) {
                        return self.release_child(child);
                    }
                    self.to_release.insert(child);
                    return Ok(());
                }
            }
        }
        if self.early_stops.remove(&child) {
            self.resume(child, 0)?;
        }
        Ok(())
    }

    /// Detaches a fork child that is not followed, at its first stop.
    pub(super) fn release_child(&mut self, child: Pid) -> Result<()> {
        if let Ok(mut regs) = sys::get_regs(child) {
            if regs.eflags & 0x100 != 0 {
                regs.eflags &= !0x100;
                let _ = sys::set_regs(child, &regs);
            }
        }
        match sys::detach(child, 0) {
            Ok(()) | Err(_) => Ok(()),
        }
    }

    pub(super) fn on_exec(&mut self, tid: Pid) -> Result<()> {
        let former = sys::get_event_msg(tid).map(|m| m as Pid).unwrap_or(tid);
        if former != tid {
            if let Some(mut t) = self.threads.remove(&former) {
                t.tid = tid;
                if let Some(old) = self.threads.insert(tid, t) {
                    let idx = old.space;
                    let trace = self.retire(old);
                    self.park_thread(idx, trace, false);
                }
            }
        }
        let Some(t) = self.threads.remove(&tid) else {
            return self.resume(tid, 0);
        };
        let old_space = t.space;
        let generation = self.spaces[old_space].space.generation;
        let shared = self.spaces[old_space].space.pid != tid;
        let record = t.record;
        let trace = self.retire(t);
        let others = self.threads.values().any(|o| o.space == old_space);
        // A vfork child's few branches before exec would go to its parent's
        // image: not kept when process ends are reported (a long-lived
        // parent spawning thousands would keep a buffer for each).
        if record && !(shared && self.opts.report_process_ends) {
            self.park_thread(old_space, trace, !others);
        }
        // A vfork child that is not followed is released at its exec.
        if shared && !self.opts.follow_fork {
            return match sys::detach(tid, 0) {
                Ok(()) | Err(_) => Ok(()),
            };
        }
        self.processes.exec(tid);
        let gen = if shared { 1 } else { generation + 1 };
        let idx = self.new_space(tid, gen)?;
        self.add_thread_as(tid, idx, true, true)?;
        self.resume(tid, 0)
    }

    pub(super) fn release_space(&mut self, idx: usize) {
        let slot = &mut self.spaces[idx];
        slot.released = true;
        let sites: Vec<u64> = slot_sites(&slot.space);
        slot.released_sites.extend(sites);
        let _ = slot.space.remove_all_breakpoints();
    }
}
