//! A live process as a GDB target: bts's recording session (the `fast`
//! recorder) with a debugger on top. GDB reads and writes the real
//! process (never seeing the recorder's int3 bytes), sets breakpoints
//! beside the recorder's, continues, steps and interrupts; its
//! `record btrace` reads what the session has recorded so far. When GDB
//! detaches, disconnects or dies, the process is detached unharmed; a
//! launched one is killed only when GDB says `kill`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use analysis::report::{Report, Selection};
use bts_reader::{Meta, Registers, TraceFile};
use decode::CodeMap;
use ptrace_shim::{DebugStop, Outcome, Session};

use crate::btrace::{self, Block};
use crate::command::{Action, BtraceRead};
use crate::elf;
use crate::server::{Library, StopReply, Target, TargetError};

/// Tells whether a thread's trace changed: (records, overwritten, newest record).
type TraceMark = (usize, u64, Option<(u64, u64)>);

const SIGTRAP: u8 = 5;
const SIGINT: u8 = 2;

/// A process bts traces, served to GDB.
pub struct Live {
    session: Option<Session>,
    pid: i32,
    launched: bool,
    buffer_bytes: u64,
    last: StopReply,
    interrupt: Arc<AtomicBool>,
    exec: Option<String>,
    /// What GDB last read of each thread's trace.
    seen: HashMap<i32, TraceMark>,
    /// Threads GDB recorded (`record btrace bts`): bts records every
    /// thread from the start, but GDB is told only of those it asked for,
    /// so that it enables new threads itself as they come.
    enabled: HashSet<i32>,
}

fn os(e: std::io::Error) -> TargetError {
    TargetError::Message(e.to_string())
}

fn engine(e: ptrace_shim::Error) -> TargetError {
    TargetError::Message(e.to_string())
}

impl Live {
    /// Pauses every thread of `session` and serves it. `launched`: bts
    /// started the program (GDB's `kill` ends it; otherwise it is detached).
    pub fn new(
        mut session: Session,
        launched: bool,
        buffer_bytes: usize,
    ) -> Result<Live, ptrace_shim::Error> {
        let interrupt = Arc::new(AtomicBool::new(false));
        if let Err(e) = session.start_debugging(interrupt.clone()) {
            // Let the process go before saying why.
            let _ = session.debug_detach();
            return Err(e);
        }
        let pid = session.root_pid();
        let exec = std::fs::read_link(format!("/proc/{pid}/exe")).ok().map(|p| p.display().to_string());
        Ok(Live {
            session: Some(session),
            pid,
            launched,
            buffer_bytes: buffer_bytes as u64,
            last: StopReply::Signal { tid: pid, signal: SIGTRAP },
            interrupt,
            exec,
            seen: HashMap::new(),
            enabled: HashSet::new(),
        })
    }

    fn session(&mut self) -> Result<&mut Session, TargetError> {
        self.session.as_mut().ok_or_else(|| TargetError::Message("the process is gone".into()))
    }

    /// The trace of the session so far, as a file would hold it.
    fn snapshot(&mut self) -> Result<TraceFile, TargetError> {
        let s = self.session()?;
        let rec = s.recording();
        let meta = Meta { pid: rec.root_pid, outcome: "running".into(), ..Meta::default() };
        Ok(TraceFile::from_recording(&rec, meta))
    }

    fn reply(&mut self, stop: DebugStop) -> StopReply {
        let r = match stop {
            DebugStop::Breakpoint(tid) => StopReply::Breakpoint { tid },
            DebugStop::Stepped(tid) => StopReply::Signal { tid, signal: SIGTRAP },
            DebugStop::Interrupted(tid) => StopReply::Signal { tid, signal: SIGINT },
            DebugStop::Crash(c) => {
                StopReply::Signal { tid: c.tid, signal: u8::try_from(c.signal).unwrap_or(0) }
            }
            DebugStop::Finished(o) => {
                self.session = None;
                match o {
                    Outcome::Exited(c) => StopReply::Exited(c as u8),
                    Outcome::Signaled(s) => StopReply::Terminated(u8::try_from(s).unwrap_or(0)),
                    Outcome::Detached(_) => StopReply::Exited(0),
                }
            }
        };
        self.last = r;
        r
    }
}

impl Drop for Live {
    /// However the stub ends (an error before GDB came, a panic), the
    /// process is let go unharmed: every int3 removed, detached.
    fn drop(&mut self) {
        self.detach();
    }
}

impl Target for Live {
    fn threads(&self) -> Vec<i32> {
        self.session.as_ref().map(|s| s.debug_threads()).unwrap_or_default()
    }

    fn stop_reply(&self) -> StopReply {
        self.last
    }

    fn registers(&mut self, tid: i32) -> Result<(Option<Registers>, Option<u64>), TargetError> {
        let r = self.session()?.debug_regs(tid).map_err(|_| TargetError::NoThread)?;
        Ok((Some(ptrace_shim::sys::registers(&r)), Some(r.rip)))
    }

    fn read_memory(&mut self, addr: u64, len: usize) -> Result<Vec<u8>, TargetError> {
        let b = self.session()?.debug_read(addr, len);
        if b.is_empty() {
            return Err(TargetError::NoMemory);
        }
        Ok(b)
    }

    fn write_register(&mut self, tid: i32, n: usize, bytes: &[u8]) -> Result<(), TargetError> {
        let s = self.session()?;
        let mut raw = s.debug_regs(tid).map_err(|_| TargetError::NoThread)?;
        let mut regs = ptrace_shim::sys::registers(&raw);
        if !crate::tdesc::set_value(&mut regs, n, bytes) {
            return Err(TargetError::Message(format!("register {n} cannot be written here")));
        }
        ptrace_shim::sys::apply_registers(&mut raw, &regs);
        s.debug_set_regs(tid, &raw).map_err(os)
    }

    fn write_memory(&mut self, addr: u64, data: &[u8]) -> Result<(), TargetError> {
        self.session()?.debug_write(addr, data).map_err(os)
    }

    fn btrace_enable(&mut self, tid: i32) -> Result<(), TargetError> {
        // Every thread is recorded from its start already.
        if !self.threads().contains(&tid) {
            return Err(TargetError::NoThread);
        }
        self.enabled.insert(tid);
        Ok(())
    }

    fn btrace_disable(&mut self, tid: i32) -> Result<(), TargetError> {
        self.enabled.remove(&tid);
        self.seen.remove(&tid);
        Ok(())
    }

    fn btrace_size(&self, tid: i32) -> Option<u64> {
        self.enabled.contains(&tid).then_some(self.buffer_bytes)
    }

    fn btrace(&mut self, tid: i32, read: BtraceRead) -> Result<Option<Vec<Block>>, TargetError> {
        if !self.enabled.contains(&tid) {
            return Err(TargetError::Message("branch tracing is not enabled for this thread".into()));
        }
        if read == BtraceRead::Delta {
            // GDB then asks for `new`: the whole trace when it changed.
            return Err(TargetError::Message("no delta trace; read new".into()));
        }
        let s = self.session()?;
        let pc = s.debug_regs(tid).map(|r| r.rip).ok();
        // The session's recording as it stands, not a trace file: that
        // would read every module's ELF file for its build-id at each stop.
        let rec = s.recording();
        let (image, thread) = rec
            .images
            .iter()
            .rev()
            .find_map(|img| img.threads.iter().find(|t| t.tid == tid).map(|t| (img, t)))
            .ok_or(TargetError::NoThread)?;
        let records = thread.buffer.snapshot();
        let mark = (records.len(), thread.overwritten, records.last().map(|r| (r.from, r.to)));
        if read == BtraceRead::New && self.seen.get(&tid) == Some(&mark) {
            return Ok(None);
        }
        let mut code = CodeMap::new();
        for (addr, bytes) in &image.code {
            code.insert(*addr, bytes.clone());
        }
        self.seen.insert(tid, mark);
        Ok(Some(btrace::blocks_of(&records, &code, pc)))
    }

    fn exec_file(&self) -> Option<String> {
        self.exec.clone()
    }

    fn libraries(&self) -> Vec<Library> {
        let Ok(maps) = ptrace_shim::maps::read_exec_maps(self.pid) else { return Vec::new() };
        let refs: Vec<&decode::Mapping> = maps.iter().collect();
        elf::images(&refs)
            .into_iter()
            .filter(|i| !i.is_main)
            .map(|i| Library { name: i.path, l_addr: i.bias, l_ld: i.dynamic.unwrap_or(0) })
            .collect()
    }

    fn auxv(&self) -> Vec<(u64, u64)> {
        let raw = std::fs::read(format!("/proc/{}/auxv", self.pid)).unwrap_or_default();
        raw.chunks_exact(16)
            .map(|c| {
                let mut k = [0u8; 8];
                let mut v = [0u8; 8];
                k.copy_from_slice(&c[..8]);
                v.copy_from_slice(&c[8..]);
                (u64::from_le_bytes(k), u64::from_le_bytes(v))
            })
            .collect()
    }

    fn resume(&mut self, tid: i32, action: Action, others_run: bool) -> Result<StopReply, TargetError> {
        let step = match action {
            Action::Step(_) => Some(tid),
            Action::Continue(_) => None,
            // Every thread is stopped already.
            Action::Stop => return Ok(self.last),
        };
        let stop = self.session()?.debug_resume_with(step, others_run).map_err(engine)?;
        Ok(self.reply(stop))
    }

    fn interrupt_flag(&self) -> Option<Arc<AtomicBool>> {
        Some(self.interrupt.clone())
    }

    fn breakpoint(&mut self, insert: bool, kind: u8, addr: u64) -> Result<(), TargetError> {
        if kind != 0 {
            return Err(TargetError::Unsupported);
        }
        let s = self.session()?;
        if insert {
            s.insert_breakpoint(addr).map_err(engine)
        } else {
            s.remove_breakpoint(addr).map_err(engine)
        }
    }

    fn monitor(&mut self, cmd: &str) -> String {
        let (word, rest) = cmd.split_once(' ').unwrap_or((cmd, ""));
        match word {
            "last-branch" => {
                let n = rest.trim().parse::<usize>().unwrap_or(16);
                let thread = match self.last {
                    StopReply::Signal { tid, .. } | StopReply::Breakpoint { tid } => Some(tid),
                    _ => None,
                };
                match self.snapshot() {
                    Ok(tf) => {
                        let sel =
                            Selection { branches: n, insns: 0, thread: thread.or(Some(self.pid)), cpu: None };
                        Report::build(&tf, None, &sel).to_text(true)
                    }
                    Err(e) => format!("last-branch: {e}\n"),
                }
            }
            _ => "bts monitor commands: last-branch [N]\n".into(),
        }
    }

    fn detach(&mut self) {
        if let Some(mut s) = self.session.take() {
            let _ = s.debug_detach();
        }
    }

    fn kill(&mut self) {
        if !self.launched {
            // Not ours to end: an attached process is let go.
            return self.detach();
        }
        if let Some(mut s) = self.session.take() {
            // SAFETY: killing the process bts launched.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            while let Ok(stop) = s.debug_resume(None) {
                if matches!(stop, DebugStop::Finished(_)) {
                    break;
                }
            }
        }
    }
}
