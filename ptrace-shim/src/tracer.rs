//! The event loop: every traced thread's stops, the two recorders, crash
//! capture, following clones/forks/execs, and clean detaching.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::OsString;

use iced_x86::Mnemonic;

use ds_alloc::{Allocator, BtsBuffer, BtsHandle, BtsRecord, ContextKind, Target, TracerId};

use crate::eval::{self, Outcome as Eval};
use crate::maps::Mapping;
use crate::space::{is_syscall, BlockEnd, Space};
use crate::spawn::{exec_errno, resolve_program, spawn_seized};
use crate::sys::{self, Pid, Regs, Wait};
use crate::traps;
use crate::{signals, Backend, Error, HardwareSource, Result};

const SI_KERNEL: i32 = 0x80;
const SI_USER: i32 = 0;
const SI_TKILL: i32 = -6;
/// EFLAGS.TF: the program single-steps itself.
const TRAP_FLAG: u64 = 0x100;

/// How to record.
#[derive(Debug, Clone)]
pub struct Options {
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
        }
    }
}

/// A fatal signal held at delivery.
#[derive(Debug, Clone)]
pub struct Crash {
    pub pid: Pid,
    pub tid: Pid,
    pub signal: i32,
    pub si_code: i32,
    /// The fault address, for the signals that have one.
    pub fault_addr: Option<u64>,
    /// Where the thread stood.
    pub pc: u64,
}

/// How the traced program (the first process) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
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
}

/// The recorded branches of one thread.
#[derive(Debug, Clone)]
pub struct ThreadTrace {
    pub tid: Pid,
    pub buffer: BtsBuffer,
    pub crashed: bool,
    /// The thread's last known instruction pointer.
    pub last_pc: Option<u64>,
    /// Records the source reported lost (besides overwritten ones).
    pub lost: u64,
}

/// Everything recorded for one program image (a pid between two execs).
#[derive(Debug, Clone)]
pub struct ImageTrace {
    pub pid: Pid,
    pub generation: u32,
    pub maps: Vec<Mapping>,
    /// Original bytes of every code page the kept records touch, by address.
    pub code: Vec<(u64, Vec<u8>)>,
    pub threads: Vec<ThreadTrace>,
}

/// A snapshot of everything recorded.
#[derive(Debug, Clone)]
pub struct Recording {
    pub backend: Backend,
    pub root_pid: Pid,
    pub images: Vec<ImageTrace>,
    /// The catch-all buffer of each CPU (with `per_cpu_bytes`).
    pub cpus: Vec<(u32, BtsBuffer)>,
}

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
    /// Every buffer lives in the allocator; bts is one tracer, charged
    /// against its own RLIMIT_MEMLOCK.
    alloc: Allocator,
    tracer: TracerId,
    cpu_buffers: Vec<(u32, BtsHandle)>,
    /// The one CPU everything runs on, when pinned.
    pinned_cpu: Option<u32>,
    /// The branch source of the hardware backend.
    source: Option<Box<dyn HardwareSource>>,
    insn_log: Option<std::io::BufWriter<std::fs::File>>,
    /// Wait results of threads stopped while one thread stepped over a
    /// lifted int3, handled once it is back.
    deferred: std::collections::VecDeque<Wait>,
    /// Threads stopped so that none runs past a lifted int3 (the stepping
    /// thread, and those to resume after).
    world_stopped: Option<(Pid, Vec<Pid>)>,
}

fn trace_options(launched: bool) -> i32 {
    let mut o = sys::PTRACE_O_TRACESYSGOOD
        | sys::PTRACE_O_TRACECLONE
        | sys::PTRACE_O_TRACEFORK
        | sys::PTRACE_O_TRACEVFORK
        | sys::PTRACE_O_TRACEEXEC
        | sys::PTRACE_O_TRACEEXIT;
    if launched {
        o |= sys::PTRACE_O_EXITKILL;
    }
    o
}

fn status_field(tid: Pid, field: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    text.lines().find_map(|l| l.strip_prefix(field).map(|v| v.trim_start_matches(':').trim().to_string()))
}

fn sig_mask(tid: Pid, field: &str) -> u64 {
    status_field(tid, field).and_then(|v| u64::from_str_radix(&v, 16).ok()).unwrap_or(0)
}

fn is_restart(rax: u64) -> bool {
    // -ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND, -ERESTART_RESTARTBLOCK
    matches!(rax as i64, -512 | -513 | -514 | -516)
}

/// Checks the buffers can be had before anything is started: a size too
/// small, or over the locked-memory limit, fails here with the amounts.
fn preflight(opts: &Options) -> Result<()> {
    let mut a = Allocator::new();
    let t = a.register_current("bts");
    a.request_bts(t, Target::Task(0), opts.buffer_bytes).map_err(|e| Error::Alloc(e.to_string()))?;
    if let Some(bytes) = opts.per_cpu_bytes {
        a.request_bts(t, Target::Cpu(0), bytes).map_err(|e| Error::Alloc(e.to_string()))?;
    }
    Ok(())
}

fn clock_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(ts.tv_nsec as u64)
}

/// The CPU a thread last ran on (field 39 of /proc/TID/stat).
fn thread_cpu(tid: Pid) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{tid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(36)?.parse().ok()
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

fn empty_buffer() -> BtsBuffer {
    BtsBuffer::with_bytes(ds_alloc::BTS_RECORD_SIZE).expect("one record")
}

/// Why the kernel refused to let us trace `pid`, in the user's terms.
fn permission_cause(pid: Pid, e: &std::io::Error) -> String {
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
    fn new(opts: Options, root: Pid, launched: bool) -> Session {
        let mut alloc = Allocator::new();
        let tracer = alloc.register_current("bts");
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
            alloc,
            tracer,
            cpu_buffers: Vec::new(),
            pinned_cpu: None,
            source: None,
            insn_log: None,
            deferred: std::collections::VecDeque::new(),
            world_stopped: None,
        }
    }

    /// Asks for the catch-all buffers of every CPU, if wanted.
    fn request_cpu_buffers(&mut self) -> Result<()> {
        let Some(bytes) = self.opts.per_cpu_bytes else { return Ok(()) };
        // SAFETY: sysconf has no memory arguments.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as u32;
        for cpu in 0..cpus {
            let h = self
                .alloc
                .request_bts(self.tracer, Target::Cpu(cpu), bytes)
                .map_err(|e| Error::Alloc(e.to_string()))?;
            self.cpu_buffers.push((cpu, h));
        }
        Ok(())
    }

    /// The CPU `tid` runs on now.
    fn current_cpu(&self, tid: Pid) -> u32 {
        if let Some(c) = self.pinned_cpu {
            return c;
        }
        thread_cpu(tid).unwrap_or(0)
    }

    /// Pins bts to one CPU the target may use; returns that CPU's mask.
    fn pin_self(target: Pid) -> Option<(u32, libc::cpu_set_t)> {
        let allowed = sys::get_affinity(target).ok()?;
        let cpu = sys::pick_cpu(&allowed)?;
        let one = sys::single_cpu(cpu);
        sys::set_affinity(0, &one).ok()?;
        Some((cpu as u32, one))
    }

    /// Launches `argv` traced from its first instruction.
    pub fn launch(argv: &[OsString], opts: Options) -> Result<Session> {
        Session::launch_with(argv, opts, None)
    }

    /// Launches with a hardware branch source (for [`Backend::Hardware`]).
    pub fn launch_with(
        argv: &[OsString],
        opts: Options,
        source: Option<Box<dyn HardwareSource>>,
    ) -> Result<Session> {
        preflight(&opts)?;
        if let Some(first) = argv.first() {
            resolve_program(first)
                .map_err(|source| Error::Exec { program: first.to_string_lossy().into_owned(), source })?;
        }
        // The child inherits the mask across fork and exec.
        let pinned = if opts.pin_cpu { Session::pin_self(0).map(|p| p.0) } else { None };
        let (pid, errf) = spawn_seized(argv, opts.no_aslr, trace_options(true))?;
        let log = match &opts.insn_log {
            Some(p) if opts.backend == Backend::Step => Some(std::io::BufWriter::new(
                std::fs::File::create(p).map_err(|e| Error::os(p.display().to_string(), e))?,
            )),
            _ => None,
        };
        let mut s = Session::new(opts, pid, true);
        s.insn_log = log;
        s.pinned_cpu = pinned;
        s.source = source;
        s.request_cpu_buffers()?;
        let program = argv[0].to_string_lossy().into_owned();
        // Run to the exec event: that is where recording begins.
        loop {
            match sys::wait(pid).map_err(|e| Error::os("waitpid", e))? {
                None => continue,
                Some(Wait::Event(_, sys::EVENT_EXEC, _)) => break,
                Some(Wait::Event(_, sys::EVENT_EXIT, _))
                | Some(Wait::Exited(..))
                | Some(Wait::Signaled(..)) => {
                    // SAFETY: killing and reaping our own child.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                        libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL);
                    }
                    let source = match exec_errno(&errf) {
                        Some(errno) => std::io::Error::from_raw_os_error(errno),
                        None => std::io::Error::other("it ended before exec"),
                    };
                    return Err(Error::Exec { program, source });
                }
                Some(other) => {
                    let sig = match other {
                        Wait::Signal(_, sig) => sig,
                        _ => 0,
                    };
                    sys::cont(pid, sig).map_err(|e| Error::os("ptrace(PTRACE_CONT)", e))?;
                }
            }
        }
        drop(errf);
        let space = s.new_space(pid, 1)?;
        s.add_thread(pid, space, true)?;
        s.resume(pid, 0)?;
        Ok(s)
    }

    /// Attaches to every thread of the running process `pid`.
    pub fn attach(pid: Pid, opts: Options) -> Result<Session> {
        Session::attach_with(pid, opts, None)
    }

    /// Attaches with a hardware branch source (for [`Backend::Hardware`]).
    pub fn attach_with(pid: Pid, opts: Options, source: Option<Box<dyn HardwareSource>>) -> Result<Session> {
        preflight(&opts)?;
        if pid <= 0 || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return Err(Error::NoSuchProcess { pid });
        }
        if status_field(pid, "State").is_some_and(|s| s.starts_with('Z') || s.starts_with('X')) {
            return Err(Error::Invalid(format!(
                "pid {pid} has already exited (a zombie waiting for its parent)"
            )));
        }
        if status_field(pid, "Tgid").and_then(|t| t.parse::<Pid>().ok()) != Some(pid) {
            return Err(Error::Invalid(format!("{pid} is a thread, not a process: attach to its process")));
        }
        if pid == std::process::id() as Pid {
            return Err(Error::Invalid("bts cannot trace itself".into()));
        }
        let mut s = Session::new(opts, pid, false);
        s.source = source;
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
                other => s.handle(other)?,
            }
        }
        Ok(s)
    }

    fn abandon(&mut self, seized: &[Pid]) {
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

    pub fn root_pid(&self) -> Pid {
        self.root
    }

    fn new_space(&mut self, pid: Pid, generation: u32) -> Result<usize> {
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

    fn add_thread(&mut self, tid: Pid, space: usize, record: bool) -> Result<()> {
        let handle = if record {
            match self.alloc.request_bts(self.tracer, Target::Task(tid as u32), self.opts.buffer_bytes) {
                Ok(h) => Some(h),
                // The first thread: nothing can be recorded; fail up front.
                Err(e) if self.threads.is_empty() && self.finished.is_empty() => {
                    return Err(Error::Alloc(e.to_string()));
                }
                Err(e) => {
                    eprintln!("bts: thread {tid} is not recorded: {e}");
                    None
                }
            }
        } else {
            None
        };
        if record && self.opts.backend == Backend::Hardware {
            if let Some(src) = self.source.as_mut() {
                if let Err(e) = src.start(tid) {
                    if self.threads.is_empty() && self.finished.is_empty() {
                        return Err(Error::Hardware(e));
                    }
                    eprintln!("bts: thread {tid} is not recorded: {e}");
                }
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

    #[inline]
    fn record(&mut self, tid: Pid, from: u64, to: u64) {
        if let Some(t) = self.threads.get(&tid) {
            self.alloc.deliver_bts(t.cpu, tid as u32, BtsRecord::branch(from, to));
        }
    }

    /// Notes the thread's CPU: "task arrives" at its first stop, and a
    /// departs/arrives pair when it moved.
    fn observe_cpu(&mut self, tid: Pid) {
        let Some(t) = self.threads.get(&tid) else { return };
        let (arrived, old) = (t.arrived, t.cpu);
        let cpu = if arrived && self.pinned_cpu.is_none() { self.current_cpu(tid) } else { old };
        if arrived && cpu == old {
            return;
        }
        let now = clock_ns();
        if arrived {
            self.alloc.context(old, tid as u32, ContextKind::TaskDeparts, now);
        }
        self.alloc.context(cpu, tid as u32, ContextKind::TaskArrives, now);
        if let Some(t) = self.threads.get_mut(&tid) {
            t.cpu = cpu;
            t.arrived = true;
        }
    }

    /// Takes a thread out of the session: its "departs" record, its buffer
    /// out of the allocator (refunding the charge).
    fn retire(&mut self, t: Thread) -> ThreadTrace {
        let lost = self.sync_hardware(&t);
        if let Some(src) = self.source.as_mut() {
            src.stop(t.tid);
        }
        if t.arrived {
            self.alloc.context(t.cpu, t.tid as u32, ContextKind::TaskDeparts, clock_ns());
        }
        let buffer = t.handle.and_then(|h| self.alloc.release_bts(self.tracer, h).ok());
        ThreadTrace {
            tid: t.tid,
            buffer: buffer.unwrap_or_else(empty_buffer),
            crashed: t.crashed,
            last_pc: t.last_pc,
            lost,
        }
    }

    /// With a hardware source: moves the thread's records, in hardware
    /// layout, into its allocator buffer. Returns the records it lost.
    fn sync_hardware(&mut self, t: &Thread) -> u64 {
        let Some(src) = self.source.as_mut() else { return 0 };
        let Some((records, lost)) = src.read(t.tid) else { return 0 };
        if let Some(h) = t.handle {
            let _ = self.alloc.reset_bts(self.tracer, h);
        }
        self.alloc.deliver_batch(t.cpu, t.tid as u32, &records);
        lost
    }

    fn buffer_of(&self, t: &Thread) -> BtsBuffer {
        t.handle
            .and_then(|h| self.alloc.bts_buffer(self.tracer, h).ok())
            .cloned()
            .unwrap_or_else(empty_buffer)
    }

    /// Runs until a thread is held at a fatal signal or tracing ends.
    pub fn next_stop(&mut self) -> Result<Stop> {
        loop {
            if let Some(c) = &self.crash {
                return Ok(Stop::Crash(c.clone()));
            }
            if let Some(o) = self.outcome {
                if let Some(mut log) = self.insn_log.take() {
                    use std::io::Write;
                    log.flush().map_err(|e| Error::os("writing the instruction log", e))?;
                }
                return Ok(Stop::Finished(o));
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

    /// Resumes `tid` in the mode its recorder needs.
    fn resume(&mut self, tid: Pid, sig: i32) -> Result<()> {
        self.observe_cpu(tid);
        let Some(t) = self.threads.get(&tid) else {
            return Ok(());
        };
        let slot = &self.spaces[t.space];
        let r = if slot.released {
            sys::cont(tid, sig)
        } else {
            match self.opts.backend {
                Backend::Hardware => {
                    // The hardware records; ptrace only watches events.
                    self.note_pc(tid);
                    sys::cont(tid, sig)
                }
                Backend::Step => {
                    let Some(pc) = self.note_pc(tid) else { return Ok(()) };
                    if let Some(t) = self.threads.get_mut(&tid) {
                        if t.pending == Pending::None {
                            t.pending = Pending::Step { from: pc, lifted: false };
                        }
                    }
                    sys::singlestep(tid, sig)
                }
                // A single step in flight (an int3 lifted, a handler being
                // entered) was interrupted by a stray stop: finish the step.
                Backend::Fast if matches!(t.pending, Pending::Step { .. } | Pending::Handler { .. }) => {
                    sys::singlestep(tid, sig)
                }
                Backend::Fast => {
                    let Some(pc) = self.note_pc(tid) else { return Ok(()) };
                    if self.prepare_fast(tid, pc) {
                        sys::syscall(tid, sig)
                    } else {
                        if let Some(t) = self.threads.get_mut(&tid) {
                            t.pending = Pending::Step { from: pc, lifted: false };
                        }
                        sys::singlestep(tid, sig)
                    }
                }
            }
        };
        match r {
            Ok(()) => Ok(()),
            // The thread vanished (killed); its exit is reported by wait.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            Err(e) => Err(Error::os(format!("resuming thread {tid}"), e)),
        }
    }

    /// Reads the thread's instruction pointer and keeps it as its last pc;
    /// `None` if the thread is gone.
    fn note_pc(&mut self, tid: Pid) -> Option<u64> {
        let pc = sys::get_regs(tid).ok()?.rip;
        if let Some(t) = self.threads.get_mut(&tid) {
            t.last_pc = Some(pc);
        }
        Some(pc)
    }

    /// Makes sure the straight-line run from `pc` ends in a breakpoint.
    /// False if the code there cannot be read: the thread must be stepped.
    fn prepare_fast(&mut self, tid: Pid, pc: u64) -> bool {
        let Some(slot) = self.space_of(tid) else {
            return false;
        };
        match slot.space.block_end(pc) {
            BlockEnd::Branch(site) => slot.space.plant(site).is_ok(),
            BlockEnd::Unreadable => false,
        }
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

    fn thread_gone(&mut self, tid: Pid, how: Outcome) -> Result<()> {
        self.restart_the_world(tid)?;
        if let Some(t) = self.threads.remove(&tid) {
            let idx = t.space;
            let alive = self.threads.values().any(|o| o.space == idx);
            let trace = self.retire(t);
            self.park_thread(idx, trace, !alive);
        }
        if tid == self.root {
            self.outcome = Some(how);
        }
        Ok(())
    }

    /// Keeps a finished thread's trace with its image.
    fn park_thread(&mut self, space: usize, trace: ThreadTrace, image_done: bool) {
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
        if image_done {
            image.maps = slot.space.maps.clone();
            let code = collect_code(&mut slot.space, image.threads.iter());
            image.code = code;
        }
    }

    fn on_event(&mut self, tid: Pid, ev: i32, sig: i32) -> Result<()> {
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

    fn new_task(&mut self, parent: Pid, child: Pid, parent_space: usize, ev: i32) -> Result<()> {
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
                        self.alloc.deliver_batch(cpu, child as u32, &inherited);
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
                    let errs = copy.remove_all_breakpoints();
                    if let Some((a, e)) = errs.first() {
                        return Err(Error::os(
                            format!("restoring code at {a:#x} in child {child}"),
                            std::io::Error::new(e.kind(), e.to_string()),
                        ));
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
    fn release_child(&mut self, child: Pid) -> Result<()> {
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

    fn on_exec(&mut self, tid: Pid) -> Result<()> {
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
        if record {
            self.park_thread(old_space, trace, !others);
        }
        // A vfork child that is not followed is released at its exec.
        if shared && !self.opts.follow_fork {
            return match sys::detach(tid, 0) {
                Ok(()) | Err(_) => Ok(()),
            };
        }
        let gen = if shared { 1 } else { generation + 1 };
        let idx = self.new_space(tid, gen)?;
        self.add_thread(tid, idx, true)?;
        self.resume(tid, 0)
    }

    fn on_syscall(&mut self, tid: Pid) -> Result<()> {
        let info = match sys::get_syscall_info(tid) {
            Ok(i) => i,
            Err(_) => return self.resume(tid, 0),
        };
        match info.op {
            sys::SYSCALL_INFO_ENTRY => {
                let site = info.ip.wrapping_sub(2);
                if let Some(t) = self.threads.get_mut(&tid) {
                    t.syscall_site = Some(site);
                }
                self.note_syscall_site(tid, site);
            }
            sys::SYSCALL_INFO_EXIT => {
                let site = self.threads.get_mut(&tid).and_then(|t| t.syscall_site.take());
                if let Ok(regs) = sys::get_regs(tid) {
                    self.after_syscall(tid, &regs);
                    if let Some(site) = site {
                        self.record(tid, site, regs.rip);
                    }
                }
            }
            _ => {}
        }
        self.resume(tid, 0)
    }

    /// Keeps a `syscall` instruction of the thread's image, for injecting
    /// system calls later.
    fn note_syscall_site(&mut self, tid: Pid, site: u64) {
        if let Some(slot) = self.space_of(tid) {
            if slot.syscall_site.is_none()
                && slot.space.insn(site).is_some_and(|i| i.mnemonic() == Mnemonic::Syscall)
            {
                slot.syscall_site = Some(site);
            }
        }
    }

    /// After a system call returned: drops cached code of ranges a
    /// memory-map call changed, and follows the program's SIGTRAP action
    /// and the thread's signal mask.
    fn after_syscall(&mut self, tid: Pid, regs: &Regs) {
        if traps::changes_mask(regs) {
            self.refresh_mask(tid);
        }
        if let Some(slot) = self.space_of(tid) {
            if let Some(a) = traps::action_set_by(regs, &slot.space) {
                slot.trap_action = a;
            }
        }
        let (lo, len) = (regs.rdi, regs.rsi);
        let nr = regs.orig_rax as i64;
        if !(nr == libc::SYS_munmap || nr == libc::SYS_mmap || nr == libc::SYS_mremap)
            || (regs.rax as i64) < 0 && (regs.rax as i64) > -4096
        {
            return;
        }
        let lo = if nr == libc::SYS_mmap { regs.rax } else { lo };
        if let Some(slot) = self.space_of(tid) {
            slot.space.invalidate(lo, lo.saturating_add(len));
        }
    }

    /// Reads the thread's signal mask (it is stopped).
    fn refresh_mask(&mut self, tid: Pid) {
        if let Ok(mask) = sys::get_sigmask(tid) {
            if let Some(t) = self.threads.get_mut(&tid) {
                t.sigmask = mask;
            }
        }
    }

    /// Learns the program's SIGTRAP action when it may not be the default
    /// (attaching to a process that set one), with an injected call.
    fn learn_trap_action(&mut self, tid: Pid) -> Result<()> {
        let Some(slot) = self.space_of(tid) else { return Ok(()) };
        let bit = traps::TRAP_BIT;
        if (sig_mask(slot.space.pid, "SigCgt") | sig_mask(slot.space.pid, "SigIgn")) & bit == 0 {
            return Ok(());
        }
        let site = slot.syscall_site.or_else(|| traps::find_syscall_site(&mut slot.space));
        let Some(site) = site else {
            return Err(Error::Invalid(
                "the program handles SIGTRAP and no system call instruction was found to read its action"
                    .into(),
            ));
        };
        match traps::query_action(tid, &slot.space, site) {
            Ok((action, sig)) => {
                slot.trap_action = action;
                self.requeue(tid, sig);
                Ok(())
            }
            Err(traps::InjectError::Gone(w)) => {
                self.deferred.push_back(w);
                Ok(())
            }
            Err(traps::InjectError::Io(e)) => Err(Error::os("reading the program's SIGTRAP action", e)),
        }
    }

    /// Queues again a signal that arrived while a system call was injected.
    fn requeue(&self, tid: Pid, sig: Option<i32>) {
        if let (Some(sig), Some(t)) = (sig, self.threads.get(&tid)) {
            let _ = sys::tgkill(self.spaces[t.space].space.pid, tid, sig);
        }
    }

    /// After a trap of the recorder's own (an int3 it planted, a single
    /// step): gives back the SIGTRAP mask and action the kernel reset.
    /// False if the thread left meanwhile.
    fn repair_after_trap(&mut self, tid: Pid) -> Result<bool> {
        let Some(t) = self.threads.get(&tid) else { return Ok(true) };
        let (mask, idx) = (t.sigmask, t.space);
        let blocked = mask & traps::TRAP_BIT != 0;
        if blocked {
            let _ = sys::set_sigmask(tid, mask);
        }
        let slot = &mut self.spaces[idx];
        let action = slot.trap_action;
        if !action.reset_by_trap(blocked) {
            return Ok(true);
        }
        let site = slot.syscall_site.or_else(|| traps::find_syscall_site(&mut slot.space));
        slot.syscall_site = site;
        let Some(site) = site else {
            return Err(Error::Invalid(
                "no system call instruction to restore the program's SIGTRAP action".into(),
            ));
        };
        match traps::install_action(tid, &slot.space, site, action) {
            Ok(sig) => {
                self.requeue(tid, sig);
                Ok(true)
            }
            Err(traps::InjectError::Gone(w)) => {
                self.deferred.push_back(w);
                Ok(false)
            }
            Err(traps::InjectError::Io(e)) => Err(Error::os("restoring the program's SIGTRAP action", e)),
        }
    }

    fn on_signal(&mut self, tid: Pid, sig: i32) -> Result<()> {
        if !self.threads.contains_key(&tid) {
            // A task we do not know yet (or no longer): let it be.
            return match sys::cont(tid, sig) {
                Ok(()) | Err(_) => Ok(()),
            };
        }
        let regs = match sys::get_regs(tid) {
            Ok(r) => r,
            Err(_) => return Ok(()),
        };
        // A thread killed meanwhile (SIGKILL) answers nothing: its exit
        // comes from wait.
        let Ok(info) = sys::get_siginfo(tid) else { return Ok(()) };
        let pending = self.threads.get(&tid).map(|t| t.pending).unwrap_or(Pending::None);
        if sig == libc::SIGTRAP {
            // One of our int3 sites? (The program's own int3 is never planted over.)
            let site = regs.rip.wrapping_sub(1);
            if info.code == SI_KERNEL {
                let (is_bp, released) = match self.space_of(tid) {
                    Some(s) => (s.space.is_breakpoint(site), s.released_sites.contains(&site)),
                    None => (false, false),
                };
                let stepping_it = matches!(pending, Pending::Step { from, .. } if from == site);
                if is_bp && !released && !stepping_it && self.opts.backend == Backend::Fast {
                    if !self.repair_after_trap(tid)? {
                        return Ok(());
                    }
                    return self.on_breakpoint(tid, site, regs);
                }
                if released {
                    let mut r = regs;
                    r.rip = site;
                    let _ = sys::set_regs(tid, &r);
                    return self.resume(tid, 0);
                }
            }
            let sent = info.code == SI_USER || info.code == SI_TKILL || info.code == libc::SI_QUEUE;
            if !sent && info.code != SI_KERNEL {
                match pending {
                    Pending::Step { from, lifted } => return self.after_step(tid, from, lifted, regs),
                    Pending::Handler { from } => {
                        if let Some(t) = self.threads.get_mut(&tid) {
                            t.pending = Pending::None;
                        }
                        // Entering a handler changed the mask.
                        self.refresh_mask(tid);
                        self.record(tid, from, regs.rip);
                        return self.resume(tid, 0);
                    }
                    Pending::None => {}
                }
            }
        }
        self.program_signal(tid, sig, regs, info)
    }

    /// A signal of the program's own (not a trap of the recorder's):
    /// delivered as the kernel would, or held if it is fatal.
    fn program_signal(&mut self, tid: Pid, sig: i32, regs: Regs, info: sys::SigInfo) -> Result<()> {
        let pending = self.threads.get(&tid).map(|t| t.pending).unwrap_or(Pending::None);
        // A step in flight was overtaken by it.
        if let Pending::Step { from, lifted: true } = pending {
            if let Some(slot) = self.space_of(tid) {
                let _ = slot.space.relower(from);
            }
            self.restart_the_world(tid)?;
        }
        if let Some(t) = self.threads.get_mut(&tid) {
            t.pending = Pending::None;
            t.last_pc = Some(regs.rip);
        }
        if self.detach_requested {
            if let Some(t) = self.threads.get_mut(&tid) {
                t.held = Some(sig);
            }
            return Ok(());
        }
        let released = self.space_of(tid).is_some_and(|s| s.released);
        if released {
            return match sys::cont(tid, sig) {
                Ok(()) | Err(_) => Ok(()),
            };
        }
        let caught = sig_mask(tid, "SigCgt") & (1u64 << (sig - 1)) != 0;
        let ignored = sig_mask(tid, "SigIgn") & (1u64 << (sig - 1)) != 0;
        if caught && sig == libc::SIGTRAP {
            // A one-shot handler is reset by this delivery.
            if let Some(slot) = self.space_of(tid) {
                slot.trap_action = slot.trap_action.after_delivery();
            }
        }
        if caught && self.opts.backend == Backend::Hardware {
            return self.resume(tid, sig);
        }
        if caught {
            // Step into the handler: the trap comes at its first instruction.
            let from = if regs.orig_rax as i64 >= 0 && is_restart(regs.rax) {
                regs.rip.wrapping_sub(2)
            } else {
                regs.rip
            };
            if let Some(t) = self.threads.get_mut(&tid) {
                t.pending = Pending::Handler { from };
                t.syscall_site = None;
            }
            return match sys::singlestep(tid, sig) {
                Ok(()) => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
                Err(e) => Err(Error::os("delivering a signal", e)),
            };
        }
        if ignored || !sys::default_is_fatal(sig) {
            return self.resume(tid, sig);
        }
        // A SIGKILL already pending means the process is being killed: the
        // stop we see is a by-product, not the cause.
        let kill_bit = 1u64 << (libc::SIGKILL - 1);
        if (sig_mask(tid, "ShdPnd") | sig_mask(tid, "SigPnd")) & kill_bit != 0 {
            return self.resume(tid, 0);
        }
        // Fatal: hold the thread here and report.
        let pid = self.spaces[self.threads[&tid].space].space.pid;
        if let Some(t) = self.threads.get_mut(&tid) {
            t.crashed = true;
        }
        let fault = matches!(sig, libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGTRAP)
            && info.code > 0;
        self.crash = Some(Crash {
            pid,
            tid,
            signal: sig,
            si_code: info.code,
            fault_addr: fault.then_some(info.addr),
            pc: regs.rip,
        });
        Ok(())
    }

    fn on_breakpoint(&mut self, tid: Pid, site: u64, mut regs: Regs) -> Result<()> {
        regs.rip = site;
        let Some(slot) = self.space_of(tid) else {
            return Ok(());
        };
        let Some(insn) = slot.space.insn(site) else {
            return self.step_over(tid, site, regs);
        };
        let outcome = eval::evaluate(&insn, &regs, &slot.space);
        if outcome == Eval::Unknown || !eval::emulate(&insn, outcome, &mut regs, &slot.space) {
            return self.step_over(tid, site, regs);
        }
        if let Eval::Taken(to) = outcome {
            self.record(tid, site, to);
        }
        sys::set_regs(tid, &regs).map_err(|e| Error::os("PTRACE_SETREGS", e))?;
        self.resume(tid, 0)
    }

    /// Executes the original instruction at a breakpoint site by lifting the
    /// int3 and single-stepping.
    fn step_over(&mut self, tid: Pid, site: u64, regs: Regs) -> Result<()> {
        sys::set_regs(tid, &regs).map_err(|e| Error::os("PTRACE_SETREGS", e))?;
        self.stop_the_world(tid)?;
        if let Some(slot) = self.space_of(tid) {
            slot.space.lift(site).map_err(|e| Error::os("restoring a breakpoint byte", e))?;
        }
        if let Some(t) = self.threads.get_mut(&tid) {
            t.pending = Pending::Step { from: site, lifted: true };
        }
        match sys::singlestep(tid, 0) {
            Ok(()) | Err(_) => Ok(()),
        }
    }

    /// Stops every other thread sharing `tid`'s memory, so none runs past
    /// the int3 lifted for `tid`'s single step; their other events wait.
    fn stop_the_world(&mut self, tid: Pid) -> Result<()> {
        let Some(space) = self.threads.get(&tid).map(|t| t.space) else { return Ok(()) };
        // Threads whose stop waits in `deferred` are stopped already.
        let parked: HashSet<Pid> = self.deferred.iter().map(wait_pid).collect();
        let others: Vec<Pid> = self
            .threads
            .values()
            .filter(|t| t.space == space && t.tid != tid && t.held.is_none() && !t.exiting)
            .filter(|t| !parked.contains(&t.tid))
            .map(|t| t.tid)
            .collect();
        let mut waiting: HashSet<Pid> = HashSet::new();
        for &o in &others {
            if sys::interrupt(o).is_ok() {
                waiting.insert(o);
            }
        }
        let mut stopped = Vec::new();
        while !waiting.is_empty() {
            let w = match sys::wait(-1) {
                Ok(Some(w)) => w,
                Ok(None) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ECHILD) => break,
                Err(e) => return Err(Error::os("waitpid", e)),
            };
            let pid = wait_pid(&w);
            match w {
                Wait::Event(p, sys::EVENT_STOP, _) if waiting.remove(&p) => stopped.push(p),
                other => {
                    waiting.remove(&pid);
                    self.deferred.push_back(other);
                }
            }
        }
        self.world_stopped = Some((tid, stopped));
        Ok(())
    }

    /// The single step over a lifted int3 is over: the others run again.
    fn restart_the_world(&mut self, tid: Pid) -> Result<()> {
        match self.world_stopped.take() {
            Some((t, stopped)) if t == tid => {
                for o in stopped {
                    self.resume(o, 0)?;
                }
                Ok(())
            }
            other => {
                self.world_stopped = other;
                Ok(())
            }
        }
    }

    /// A single step of the instruction at `from` completed.
    fn after_step(&mut self, tid: Pid, from: u64, lifted: bool, regs: Regs) -> Result<()> {
        if let Some(t) = self.threads.get_mut(&tid) {
            t.pending = Pending::None;
        }
        if tid == self.root {
            if let Some(log) = self.insn_log.as_mut() {
                use std::io::Write;
                log.write_all(&from.to_le_bytes())
                    .map_err(|e| Error::os("writing the instruction log", e))?;
            }
        }
        let Some(slot) = self.space_of(tid) else {
            return Ok(());
        };
        if lifted {
            let _ = slot.space.relower(from);
        }
        let insn = slot.space.insn(from);
        let to = regs.rip;
        let syscall = insn.is_some_and(|i| is_syscall(&i));
        let taken = match insn {
            Some(_) if syscall => true,
            Some(i) => eval::stepped_branch_taken(&i, to),
            None => !(to > from && to <= from + 15),
        };
        // The trap is the program's too when the instruction traps by itself
        // (int1, int 3) or the program set the trap flag: deliver it.
        let own_trap = insn.is_some_and(|i| eval::raises_sigtrap(&i)) || regs.eflags & TRAP_FLAG != 0;
        if lifted {
            self.restart_the_world(tid)?;
        }
        if syscall {
            if insn.is_some_and(|i| i.mnemonic() == Mnemonic::Syscall) {
                self.note_syscall_site(tid, from);
            }
            self.after_syscall(tid, &regs);
        }
        if taken {
            self.record(tid, from, to);
        }
        if own_trap {
            let info = sys::get_siginfo(tid).unwrap_or_default();
            return self.program_signal(tid, libc::SIGTRAP, regs, info);
        }
        if !self.repair_after_trap(tid)? {
            return Ok(());
        }
        self.resume(tid, 0)
    }

    /// After a crash was reported: lets the fatal signal take its course.
    /// Recording stops for that process; the int3 bytes are removed first so
    /// a core dump shows the original code.
    pub fn deliver_crash(&mut self) -> Result<()> {
        let Some(c) = self.crash.take() else {
            return Ok(());
        };
        if let Some(idx) = self.threads.get(&c.tid).map(|t| t.space) {
            self.release_space(idx);
        }
        match sys::cont(c.tid, c.signal) {
            Ok(()) | Err(_) => Ok(()),
        }
    }

    fn release_space(&mut self, idx: usize) {
        let slot = &mut self.spaces[idx];
        slot.released = true;
        let sites: Vec<u64> = slot_sites(&slot.space);
        slot.released_sites.extend(sites);
        let _ = slot.space.remove_all_breakpoints();
    }

    /// Stops every thread, removes every int3, and detaches, leaving each
    /// thread where it was and any signal it was about to get still pending.
    fn detach_all(&mut self) -> Result<()> {
        // Threads stopped around a lifted int3 are stopped already.
        if let Some((_, stopped)) = self.world_stopped.take() {
            for t in stopped {
                if let Some(th) = self.threads.get_mut(&t) {
                    th.held = Some(0);
                }
            }
        }
        let tids: Vec<Pid> = self.threads.iter().filter(|(_, t)| t.held.is_none()).map(|(&p, _)| p).collect();
        for &tid in &tids {
            let _ = sys::interrupt(tid);
        }
        // Collect a stop from every live thread: first those already waiting.
        while self.threads.values().any(|t| t.held.is_none()) {
            let w = match self.deferred.pop_front() {
                Some(w) => w,
                None => match sys::wait(-1) {
                    Ok(Some(w)) => w,
                    Ok(None) => continue,
                    Err(e) if e.raw_os_error() == Some(libc::ECHILD) => break,
                    Err(e) => return Err(Error::os("waitpid", e)),
                },
            };
            match w {
                Wait::Event(tid, ev, _) if ev != sys::EVENT_STOP => {
                    // Clone/fork/exec/exit events: handle, and stop the new ones too.
                    let before: HashSet<Pid> = self.threads.keys().copied().collect();
                    self.handle(w)?;
                    for (&t, th) in self.threads.iter_mut() {
                        if !before.contains(&t) {
                            let _ = sys::interrupt(t);
                            th.held = None;
                        }
                    }
                    if let Some(th) = self.threads.get(&tid) {
                        if th.held.is_none() {
                            let _ = sys::interrupt(tid);
                        }
                    }
                }
                Wait::Event(tid, _, _) | Wait::Syscall(tid) => {
                    if let Some(t) = self.threads.get_mut(&tid) {
                        t.held = Some(0);
                    } else if self.to_release.remove(&tid) {
                        self.release_child(tid)?;
                    }
                }
                Wait::Signal(tid, sig) => {
                    let regs = sys::get_regs(tid).ok();
                    let info = sys::get_siginfo(tid).unwrap_or_default();
                    let mut pending_sig = sig;
                    if sig == libc::SIGTRAP && info.code != SI_USER && info.code != SI_TKILL {
                        // Our own trap (int3 site or single step): not the program's.
                        if let (Some(mut r), true) = (regs, info.code == SI_KERNEL) {
                            let site = r.rip.wrapping_sub(1);
                            if self.space_of(tid).is_some_and(|s| s.space.is_breakpoint(site)) {
                                r.rip = site;
                                let _ = sys::set_regs(tid, &r);
                            }
                        }
                        pending_sig = 0;
                    }
                    if let Some(t) = self.threads.get_mut(&tid) {
                        if let Pending::Step { from, lifted: true } = t.pending {
                            let idx = t.space;
                            let _ = self.spaces[idx].space.relower(from);
                        }
                        if let Some(t) = self.threads.get_mut(&tid) {
                            t.pending = Pending::None;
                            t.held = Some(pending_sig);
                        }
                    }
                }
                Wait::Exited(..) | Wait::Signaled(..) => self.handle(w)?,
            }
        }
        for idx in 0..self.spaces.len() {
            self.release_space(idx);
        }
        let mut first_err = None;
        let held: Vec<(Pid, i32)> = self.threads.iter().map(|(&t, th)| (t, th.held.unwrap_or(0))).collect();
        for &(tid, _) in &held {
            if let Some(mask) = self.saved_affinity.get(&tid).or(self.default_affinity.as_ref()) {
                let _ = sys::set_affinity(tid, mask);
            }
        }
        for (tid, sig) in held {
            if let Err(e) = sys::detach(tid, sig) {
                if e.raw_os_error() != Some(libc::ESRCH) {
                    first_err.get_or_insert(Error::os(format!("detaching thread {tid}"), e));
                }
            }
        }
        let tids: Vec<Pid> = self.threads.keys().copied().collect();
        for tid in tids {
            if let Some(t) = self.threads.remove(&tid) {
                let idx = t.space;
                let alive = self.threads.values().any(|o| o.space == idx);
                let trace = self.retire(t);
                self.park_thread(idx, trace, !alive);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// A snapshot of everything recorded so far, finished images first.
    pub fn recording(&mut self) -> Recording {
        let mut hw_lost = HashMap::new();
        if self.source.is_some() {
            let live: Vec<Pid> = self.threads.keys().copied().collect();
            for tid in live {
                if let Some(t) = self.threads.remove(&tid) {
                    hw_lost.insert(tid, self.sync_hardware(&t));
                    self.threads.insert(tid, t);
                }
            }
        }
        let mut images = self.finished.clone();
        let mut live: Vec<(usize, Vec<ThreadTrace>)> = Vec::new();
        let mut tids: Vec<&Thread> = self.threads.values().filter(|t| t.record).collect();
        tids.sort_by_key(|t| t.tid);
        for t in tids {
            let trace = ThreadTrace {
                tid: t.tid,
                buffer: self.buffer_of(t),
                crashed: t.crashed,
                last_pc: t.last_pc,
                lost: hw_lost.get(&t.tid).copied().unwrap_or(0),
            };
            match live.iter_mut().find(|(s, _)| *s == t.space) {
                Some((_, v)) => v.push(trace),
                None => live.push((t.space, vec![trace])),
            }
        }
        for (idx, threads) in live {
            let slot = &mut self.spaces[idx];
            let key = (slot.space.pid, slot.space.generation);
            let pos = images.iter().position(|i| (i.pid, i.generation) == key);
            let image = match pos {
                Some(p) => &mut images[p],
                None => {
                    images.push(ImageTrace {
                        pid: key.0,
                        generation: key.1,
                        maps: vec![],
                        code: vec![],
                        threads: vec![],
                    });
                    images.last_mut().expect("just pushed")
                }
            };
            image.threads.extend(threads);
            image.maps = slot.space.maps.clone();
            image.code = collect_code(&mut slot.space, image.threads.iter());
        }
        let cpus = self
            .cpu_buffers
            .iter()
            .filter_map(|&(c, h)| self.alloc.bts_buffer(self.tracer, h).ok().map(|b| (c, b.clone())))
            .collect();
        Recording { backend: self.opts.backend, root_pid: self.root, images, cpus }
    }
}

fn slot_sites(space: &Space) -> Vec<u64> {
    space.breakpoint_sites()
}

/// The code pages the kept records of `threads` run through, original bytes.
fn collect_code<'a>(
    space: &mut Space,
    threads: impl Iterator<Item = &'a ThreadTrace>,
) -> Vec<(u64, Vec<u8>)> {
    let mut pages = BTreeSet::new();
    // The vDSO has no file to symbolize from: keep all of it.
    for m in space.maps.iter().filter(|m| m.path == "[vdso]") {
        ds_alloc::pages::add_range(&mut pages, m.start, m.end.saturating_sub(1));
    }
    for t in threads {
        ds_alloc::pages::touched_pages(t.buffer.iter(), t.last_pc, &mut pages);
    }
    pages.into_iter().filter_map(|p| space.cached_page(p).map(|b| (p, b))).collect()
}
