//! A saved trace as a GDB target, long after the process is gone: the
//! threads of the image the trace is about, their registers and stacks at
//! the stop (version 2 files; older ones give the pc only), the code pages
//! the trace kept, and each thread's branch trace. Every other memory read
//! is an error; the process cannot run, so going forward ends the history.

use std::collections::HashSet;

use analysis::report::{Report, Selection};
use bts_reader::{Registers, StreamKind, TraceFile};
use decode::CodeMap;

use crate::btrace::{self, Block};
use crate::command::{Action, BtraceRead};
use crate::elf;
use crate::server::{Library, StopReply, Target, TargetError};

struct ThreadView {
    tid: i32,
    pc: Option<u64>,
    regs: Option<Registers>,
    signal: Option<i32>,
    /// The stream's index in the trace.
    stream: usize,
}

/// A trace file served to GDB.
pub struct PostMortem {
    tf: TraceFile,
    label: String,
    image: (i32, u32),
    threads: Vec<ThreadView>,
    code: CodeMap,
    /// Stacks of the stopped threads: (first address, bytes).
    stacks: Vec<(u64, Vec<u8>)>,
    exec: Option<String>,
    libraries: Vec<Library>,
    auxv: Vec<(u64, u64)>,
    /// Threads whose whole trace GDB has read: it does not change.
    read: HashSet<i32>,
    /// The oldest branches of each stream not read from the file (see
    /// [`PostMortem::leaving_out`]).
    unread: Vec<u64>,
}

const AT_NULL: u64 = 0;
const AT_PAGESZ: u64 = 6;
const AT_ENTRY: u64 = 9;
const AT_SYSINFO_EHDR: u64 = 33;

impl PostMortem {
    /// The target of `tf` (named `label` in messages): the image of the
    /// crashed thread, else of the first process.
    pub fn new(tf: TraceFile, label: String) -> Result<PostMortem, crate::Error> {
        let image = analysis::select::default_image(&tf).ok_or(crate::Error::NoThreads)?;
        let mut threads = Vec::new();
        for (i, s) in tf.streams.iter().enumerate() {
            if let StreamKind::Thread { pid, generation, tid, crashed, last_pc } = s.kind {
                if (pid, generation) != image {
                    continue;
                }
                let state = tf.state(pid, generation, tid);
                let pc = state.map(|s| s.regs.rip).or(if crashed { tf.meta.pc.or(last_pc) } else { last_pc });
                let signal = state.and_then(|s| s.signal).or(if crashed { tf.meta.signal } else { None });
                let view = ThreadView { tid, pc, regs: state.map(|s| s.regs), signal, stream: i };
                // The crashed thread first: GDB selects it.
                if crashed {
                    threads.insert(0, view);
                } else {
                    threads.push(view);
                }
            }
        }
        if threads.is_empty() {
            return Err(crate::Error::NoThreads);
        }
        let mut code = CodeMap::new();
        for c in tf.code.iter().filter(|c| (c.pid, c.generation) == image) {
            code.insert(c.addr, c.bytes.clone());
        }
        let stacks = tf
            .states
            .iter()
            .filter(|s| (s.pid, s.generation) == image)
            .map(|s| (s.stack_addr, s.stack.clone()))
            .collect();
        let maps: Vec<&decode::Mapping> =
            tf.modules.iter().filter(|m| (m.pid, m.generation) == image).map(|m| &m.map).collect();
        let images = elf::images(&maps);
        let exec = images.iter().find(|i| i.is_main).map(|i| i.path.clone());
        let libraries = images
            .iter()
            .filter(|i| !i.is_main)
            .map(|i| Library { name: i.path.clone(), l_addr: i.bias, l_ld: i.dynamic.unwrap_or(0) })
            .collect();
        let mut auxv = vec![(AT_PAGESZ, 4096)];
        if let Some(entry) = images.iter().find(|i| i.is_main).and_then(|i| i.entry) {
            auxv.push((AT_ENTRY, entry));
        }
        if let Some(vdso) = maps.iter().find(|m| m.path == "[vdso]") {
            auxv.push((AT_SYSINFO_EHDR, vdso.start));
        }
        auxv.push((AT_NULL, 0));
        Ok(PostMortem {
            tf,
            label,
            image,
            threads,
            code,
            stacks,
            exec,
            libraries,
            auxv,
            read: HashSet::new(),
            unread: Vec::new(),
        })
    }

    /// The target of a trace read in part: `unread[i]` of stream i's
    /// oldest branches were left out (`bts_reader::newest::read_newest_each`).
    /// GDB reads what is there; `monitor last-branch` counts them as in
    /// the trace, not lost.
    pub fn leaving_out(mut self, unread: Vec<u64>) -> Self {
        self.unread = unread;
        self
    }

    fn thread(&self, tid: i32) -> Result<&ThreadView, TargetError> {
        self.threads.iter().find(|t| t.tid == tid).ok_or(TargetError::NoThread)
    }

    /// `tid`'s blocks, newest first.
    pub fn blocks(&self, tid: i32) -> Result<Vec<Block>, TargetError> {
        let t = self.thread(tid)?;
        Ok(btrace::blocks_of(&self.tf.streams[t.stream].records, &self.code, t.pc))
    }

    fn last_branch(&self, args: &str) -> String {
        let mut words = args.split_whitespace();
        let n = match words.next() {
            None => 16,
            Some(w) => match w.parse::<usize>() {
                Ok(n) => n,
                Err(_) => return format!("last-branch: '{w}' is not a number of branches"),
            },
        };
        let sel = Selection { branches: n, insns: 0, thread: Some(self.threads[0].tid), cpu: None };
        Report::build_partial(&self.tf, Some(self.label.clone()), &sel, &self.unread).to_text(true)
    }
}

impl Target for PostMortem {
    fn threads(&self) -> Vec<i32> {
        self.threads.iter().map(|t| t.tid).collect()
    }

    fn stop_reply(&self) -> StopReply {
        let t = &self.threads[0];
        // A thread that was not stopped by a signal (the trace was taken at
        // a detach) is just stopped: signal 0.
        let signal = t.signal.and_then(|s| u8::try_from(s).ok()).unwrap_or(0);
        StopReply::Signal { tid: t.tid, signal }
    }

    fn registers(&mut self, tid: i32) -> Result<(Option<Registers>, Option<u64>), TargetError> {
        let t = self.thread(tid)?;
        Ok((t.regs, t.pc))
    }

    fn read_memory(&mut self, addr: u64, len: usize) -> Result<Vec<u8>, TargetError> {
        for (start, bytes) in &self.stacks {
            if addr >= *start && addr - start < bytes.len() as u64 {
                let off = (addr - start) as usize;
                return Ok(bytes[off..bytes.len().min(off.saturating_add(len))].to_vec());
            }
        }
        let mut buf = vec![0u8; len];
        let n = self.code.read(addr, &mut buf);
        if n == 0 {
            return Err(TargetError::NoMemory);
        }
        buf.truncate(n);
        Ok(buf)
    }

    fn btrace_enable(&mut self, tid: i32) -> Result<(), TargetError> {
        // The trace is already there; GDB reopens it by itself.
        self.thread(tid).map(|_| ())
    }

    fn btrace_disable(&mut self, _tid: i32) -> Result<(), TargetError> {
        Ok(())
    }

    fn btrace_size(&self, tid: i32) -> Option<u64> {
        let t = self.thread(tid).ok()?;
        Some(self.tf.streams[t.stream].capacity * ds_alloc::BTS_RECORD_SIZE as u64)
    }

    fn btrace(&mut self, tid: i32, read: BtraceRead) -> Result<Option<Vec<Block>>, TargetError> {
        let first = self.read.insert(tid);
        match read {
            BtraceRead::All => self.blocks(tid).map(Some),
            // A saved trace never changes: nothing is new after the first read.
            BtraceRead::New | BtraceRead::Delta if !first => Ok(None),
            BtraceRead::New => self.blocks(tid).map(Some),
            BtraceRead::Delta => Err(TargetError::Message("no trace read yet".into())),
        }
    }

    fn exec_file(&self) -> Option<String> {
        self.exec.clone()
    }

    fn libraries(&self) -> Vec<Library> {
        self.libraries.clone()
    }

    fn auxv(&self) -> Vec<(u64, u64)> {
        self.auxv.clone()
    }

    fn resume(&mut self, tid: i32, _action: Action, _others_run: bool) -> Result<StopReply, TargetError> {
        // The process is gone: history ends at the stop.
        self.thread(tid)?;
        Ok(StopReply::ReplayEnd { tid })
    }

    fn breakpoint(&mut self, _insert: bool, kind: u8, _addr: u64) -> Result<(), TargetError> {
        // Nothing runs: a breakpoint only matters to GDB's own replay, which
        // checks its breakpoints itself. Watchpoints are not offered.
        match kind {
            0 | 1 => Ok(()),
            _ => Err(TargetError::Unsupported),
        }
    }

    fn monitor(&mut self, cmd: &str) -> String {
        let (word, rest) = cmd.split_once(' ').unwrap_or((cmd, ""));
        match word {
            "last-branch" => self.last_branch(rest),
            "info" => format!(
                "{}: {} of pid {} ({} recorder), {} threads; image {}:{}\n",
                self.label,
                self.tf.meta.outcome,
                self.tf.meta.pid,
                self.tf.meta.backend,
                self.threads.len(),
                self.image.0,
                self.image.1
            ),
            _ => "bts monitor commands: last-branch [N], info\n".into(),
        }
    }

    fn detach(&mut self) {}
}
