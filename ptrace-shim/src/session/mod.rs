//! The session: the ptrace event loop over every traced thread. What each
//! part of a thread's life needs lives in its own module below; how
//! branches are recorded is the recorder's business (`crate::recorder`).

use std::collections::{HashMap, HashSet};

use bts_reader::recording::ImageTrace;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, MutexGuard};

use ds_alloc::{BtsHandle, TracerId};

use crate::hub::{Hub, SharedHub};

use crate::recorder::Recorder;
use crate::space::Space;
use crate::sys::{self, Pid, Wait};
use crate::traps;
use crate::{signals, Backend, Error, Notice, Result};

mod attach;
mod cpu;
mod debug;
mod delivery;
mod detach;
mod launch;
mod lifecycle;
mod proc;
mod processes;
mod recorders;
mod snapshot;
mod stops;
mod syscalls;

use libc::{SI_KERNEL, SI_TKILL, SI_USER};
/// EFLAGS.TF: the program single-steps itself.
const TRAP_FLAG: u64 = 0x100;

/// The stack kept per stopped thread unless told otherwise.
pub const DEFAULT_STACK_BYTES: usize = 64 * 1024;

/// How to record.
#[derive(Debug, Clone)]
pub struct Options {
    /// The recorder.
    pub backend: Backend,
    /// Bytes of each thread's circular buffer.
    pub buffer_bytes: usize,
    /// Also trace child processes.
    pub follow_fork: bool,
    /// Launch with address-space randomisation off.
    pub no_aslr: bool,
    /// Run the tracer and every traced thread on one CPU. A ptrace stop is
    /// a cross-CPU wake-up otherwise, which costs 3-5x more under a
    /// hypervisor. Attached threads get their own masks back at detach.
    pub pin_cpu: bool,
    /// Catch-all buffers of this many bytes per CPU, for branches of tasks
    /// that are traced but not followed.
    pub per_cpu_bytes: Option<usize>,
    /// With the step recorder: write the address of every instruction the
    /// first thread executes (u64, little-endian) here — ground truth for
    /// checking decoders.
    pub insn_log: Option<std::path::PathBuf>,
    /// Bytes of each stopped thread's stack kept in a snapshot (above the
    /// stack pointer), for a debugger to unwind after the process is gone.
    pub stack_bytes: usize,
    /// Report each followed process's end ([`Stop::ProcessEnded`]) and
    /// keep no trace of a process after that: memory stays bounded over
    /// thousands of processes.
    pub report_process_ends: bool,
    /// The hub to record into, shared with other sessions and tracers (a
    /// broker's); a hub of its own when `None`.
    pub hub: Option<SharedHub>,
    /// Set from another thread to make [`Session::next_stop`] return
    /// [`Stop::Attention`] at its next turn (a blocked `waitpid` returns
    /// once the session's thread is signalled): a broker's requests.
    pub attention: Option<Arc<AtomicBool>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backend: Backend::Fast,
            buffer_bytes: 64 * 1024,
            follow_fork: false,
            no_aslr: false,
            pin_cpu: true,
            per_cpu_bytes: None,
            insn_log: None,
            stack_bytes: DEFAULT_STACK_BYTES,
            report_process_ends: false,
            hub: None,
            attention: None,
        }
    }
}

/// A fatal signal held at delivery.
#[derive(Debug, Clone)]
pub struct Crash {
    /// The process.
    pub pid: Pid,
    /// The thread held at the signal.
    pub tid: Pid,
    /// The signal.
    pub signal: i32,
    /// Its `si_code`.
    pub si_code: i32,
    /// The fault address, for the signals that have one.
    pub fault_addr: Option<u64>,
    /// Where the thread stood.
    pub pc: u64,
}

/// How the traced program (the first process) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It exited with this code.
    Exited(i32),
    /// It was killed by this signal.
    Signaled(i32),
    /// bts detached because it got this signal (SIGINT for
    /// [`Session::request_detach`]); the process runs on.
    Detached(i32),
}

/// What the event loop stopped for.
#[derive(Debug, Clone)]
pub enum Stop {
    /// A thread is held at delivery of a fatal signal; call
    /// [`Session::deliver_crash`] to let it take its course.
    Crash(Crash),
    /// Tracing is over.
    Finished(Outcome),
    /// A stop for the debugger (only after [`Session::start_debugging`]).
    Debug(DebugStop),
    /// A followed process other than the first ended (only with
    /// [`Options::report_process_ends`]). Its trace is there for
    /// [`Session::process_recording`] until the next call of
    /// [`Session::next_stop`], which drops it.
    ProcessEnded(ProcessEnd),
    /// Another thread asked for the session's attention (only with
    /// [`Options::attention`]).
    Attention,
}

pub use debug::DebugStop;
pub use proc::status_field;
pub use processes::{process_command, ProcessEnd, ProcessInfo};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    None,
    /// Single-stepping the instruction at this address (fast: site lifted
    /// when `lifted`).
    Step {
        from: u64,
        lifted: bool,
    },
    /// A signal was delivered with a single step: the next trap is at the
    /// handler's first instruction.
    Handler {
        from: u64,
    },
}

struct Thread {
    tid: Pid,
    space: usize,
    /// Records of this thread are kept (false for a vfork child that is not followed).
    record: bool,
    /// The thread's own buffer in the allocator (none for a thread that is
    /// not recorded, or could not be charged: its records go to the CPU's
    /// catch-all buffer, if one was asked for).
    handle: Option<BtsHandle>,
    /// The CPU the thread was last seen on.
    cpu: u32,
    /// A "task arrives" record was written.
    arrived: bool,
    pending: Pending,
    /// The syscall instruction seen at a syscall-entry stop.
    syscall_site: Option<u64>,
    last_pc: Option<u64>,
    crashed: bool,
    /// Stopped by us and not yet resumed (detaching).
    held: Option<i32>,
    /// The thread reported its exit event.
    exiting: bool,
    /// The signal mask as the program set it (kept for the SIGTRAP bit).
    sigmask: u64,
}

struct SpaceSlot {
    space: Space,
    /// The int3 bytes are gone: after a crash, or while detaching.
    released: bool,
    released_sites: HashSet<u64>,
    /// The program's SIGTRAP action, as the program set it.
    trap_action: traps::Action,
    /// A `syscall` instruction of the image, for injected system calls.
    syscall_site: Option<u64>,
}

/// A tracing session over one program and, with `follow_fork`, its children.
pub struct Session {
    opts: Options,
    root: Pid,
    launched: bool,
    threads: HashMap<Pid, Thread>,
    spaces: Vec<SpaceSlot>,
    finished: Vec<ImageTrace>,
    /// New tasks whose first stop came before their parent's event.
    early_stops: HashSet<Pid>,
    /// Fork children that are not followed, waiting for their first stop.
    to_release: HashSet<Pid>,
    crash: Option<Crash>,
    outcome: Option<Outcome>,
    detach_requested: bool,
    /// The signal that asked for the detach.
    detach_signal: i32,
    /// Affinity masks to give back at detach: per thread, and for new threads.
    saved_affinity: HashMap<Pid, libc::cpu_set_t>,
    default_affinity: Option<libc::cpu_set_t>,
    /// Every buffer lives in the hub's allocator; the session is one
    /// tracer, charged against its own RLIMIT_MEMLOCK, and a broker's
    /// clients follow its threads beside it.
    hub: SharedHub,
    tracer: TracerId,
    cpu_buffers: Vec<(u32, BtsHandle)>,
    /// The one CPU everything runs on, when pinned.
    pinned_cpu: Option<u32>,
    /// What went wrong without stopping the session, for the caller to tell.
    notices: Vec<Notice>,
    /// Decides how threads are resumed, and holds what it records
    /// outside the buffers.
    recorder: Box<dyn Recorder>,
    /// Wait results of threads stopped while one thread stepped over a
    /// lifted int3, handled once it is back.
    deferred: std::collections::VecDeque<Wait>,
    /// Threads stopped so that none runs past a lifted int3 (the stepping
    /// thread, and those to resume after).
    world_stopped: Option<(Pid, Vec<Pid>)>,
    /// The debugger's breakpoints, steps and pauses, when one is attached.
    debug: Option<debug::Debug>,
    /// Every process followed, with its parent and command line.
    processes: processes::ProcessTable,
    /// Process ends not yet reported.
    ended: std::collections::VecDeque<ProcessEnd>,
    /// The process whose end was reported last (its trace goes next turn).
    reported_end: Option<Pid>,
}

impl Drop for Session {
    /// The session's own buffers leave the hub with it (a broker's hub
    /// outlives its sessions).
    fn drop(&mut self) {
        let tracer = self.tracer;
        let _ = self.hub().alloc().unregister(tracer);
    }
}

/// The task a wait result is about.
fn wait_pid(w: &Wait) -> Pid {
    match *w {
        Wait::Exited(p, _)
        | Wait::Signaled(p, _)
        | Wait::Signal(p, _)
        | Wait::Syscall(p)
        | Wait::Event(p, _, _) => p,
    }
}

impl Session {
    fn new(opts: Options, root: Pid, launched: bool, recorder: Box<dyn Recorder>) -> Session {
        let hub = opts.hub.clone().unwrap_or_else(|| Hub::new().shared());
        let tracer = crate::hub::lock(&hub).alloc().register_current("bts");
        Session {
            opts,
            root,
            launched,
            threads: HashMap::new(),
            spaces: Vec::new(),
            finished: Vec::new(),
            early_stops: HashSet::new(),
            to_release: HashSet::new(),
            crash: None,
            outcome: None,
            detach_requested: false,
            detach_signal: libc::SIGINT,
            saved_affinity: HashMap::new(),
            default_affinity: None,
            hub,
            tracer,
            cpu_buffers: Vec::new(),
            pinned_cpu: None,
            recorder,
            notices: Vec::new(),
            deferred: std::collections::VecDeque::new(),
            world_stopped: None,
            debug: None,
            processes: processes::ProcessTable::default(),
            ended: std::collections::VecDeque::new(),
            reported_end: None,
        }
    }

    /// The hub the session records into.
    pub(crate) fn hub(&self) -> MutexGuard<'_, Hub> {
        crate::hub::lock(&self.hub)
    }

    /// The session's own id in the hub's allocator.
    pub fn tracer(&self) -> TracerId {
        self.tracer
    }

    /// The first process.
    pub fn root_pid(&self) -> Pid {
        self.root
    }

    /// What went wrong since the last call without stopping the session.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// Runs until a thread is held at a fatal signal or tracing ends.
    pub fn next_stop(&mut self) -> Result<Stop> {
        loop {
            if let Some(c) = &self.crash {
                return Ok(Stop::Crash(c.clone()));
            }
            if let Some(end) = self.next_end() {
                return Ok(Stop::ProcessEnded(end));
            }
            if let Some(o) = self.outcome {
                self.recorder.finish()?;
                return Ok(Stop::Finished(o));
            }
            // Not while a thread steps over a lifted int3: that finishes first.
            if self.world_stopped.is_none() {
                if let Some(e) = self.debug_event() {
                    return Ok(Stop::Debug(e));
                }
            }
            if let Some(sig) = signals::stop_requested() {
                if self.launched && signals::is_stop_request(sig) {
                    // The program decides what the signal means to it.
                    // SAFETY: signalling our own child.
                    unsafe { libc::kill(self.root, sig) };
                } else {
                    // Any other signal that would end bts: leave the
                    // program as it was first.
                    self.detach_requested = true;
                    self.detach_signal = sig;
                }
            }
            if !self.detach_requested
                && self.world_stopped.is_none()
                && self.opts.attention.as_ref().is_some_and(|f| f.swap(false, Ordering::SeqCst))
            {
                return Ok(Stop::Attention);
            }
            if self.detach_requested {
                let sig = self.detach_signal;
                self.detach_all()?;
                self.outcome = Some(Outcome::Detached(sig));
                continue;
            }
            if self.threads.is_empty() {
                self.outcome = Some(Outcome::Exited(0));
                continue;
            }
            if self.world_stopped.is_none() {
                if let Some(w) = self.deferred.pop_front() {
                    self.handle(w)?;
                    continue;
                }
            }
            let w = match sys::wait(-1) {
                Ok(Some(w)) => w,
                Ok(None) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
                    self.outcome.get_or_insert(Outcome::Exited(0));
                    continue;
                }
                Err(e) => return Err(Error::os("waitpid", e)),
            };
            self.handle(w)?;
        }
    }

    /// Asks the session to detach at its next turn (as SIGINT would).
    pub fn request_detach(&mut self) {
        self.detach_requested = true;
    }

    fn space_of(&mut self, tid: Pid) -> Option<&mut SpaceSlot> {
        let idx = self.threads.get(&tid)?.space;
        self.spaces.get_mut(idx)
    }

    fn handle(&mut self, w: Wait) -> Result<()> {
        match w {
            Wait::Exited(tid, code) => self.thread_gone(tid, Outcome::Exited(code)),
            Wait::Signaled(tid, sig) => self.thread_gone(tid, Outcome::Signaled(sig)),
            Wait::Event(tid, ev, sig) => self.on_event(tid, ev, sig),
            Wait::Syscall(tid) => self.on_syscall(tid),
            Wait::Signal(tid, sig) => self.on_signal(tid, sig),
        }
    }
}
