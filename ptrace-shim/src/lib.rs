//! ptrace for `bts`: launch or attach, record every taken branch of every
//! thread in software, hold a crashing thread at signal delivery, and leave
//! a detached process exactly as it was.
//!
//! Owns: the session (the ptrace event loop, one module per job under
//! `session/`), the recorders (`recorder`: step, fast, and the hardware
//! through `bts-reader`'s perf events), bts's own signals and the
//! SIGKILL-proof split into a front and a tracer process (`front`), and the
//! legacy `PTRACE_BTS_*` interface. Does not own: the buffers (`ds-alloc`),
//! trace files (`bts-reader`), or any output: errors are typed and
//! non-fatal problems are handed back as [`Notice`]s.
//!
//! Two recorders:
//! - [`Backend::Step`] single-steps every instruction: slow, exact by
//!   construction, the oracle the others are checked against.
//! - [`Backend::Fast`] plants an int3 at each branch site met so far,
//!   evaluates the branch from registers and memory at the stop and
//!   emulates it, so it costs one stop per branch executed; system calls
//!   are seen as syscall stops. It single-steps only what it cannot evaluate.

#![warn(missing_docs)]

mod eval;
pub mod front;
pub mod hub;
pub mod legacy;
pub mod maps;
mod meta;
mod recorder;
mod session;
mod signals;
mod space;
pub mod spawn;
pub mod sys;
mod traps;

pub use bts_reader::recording::{ImageTrace, Recording, ThreadTrace};
pub use maps::Mapping;
pub use session::{
    process_command, status_field, Crash, DebugStop, Options, Outcome, ProcessEnd, ProcessInfo, Session,
    Stop, DEFAULT_STACK_BYTES,
};
pub use signals::{die_of, install_stop_handlers, is_stop_request, stop_requested};

/// Which software recorder to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Single-step every instruction.
    Step,
    /// One stop per branch instruction.
    Fast,
    /// Intel BTS through perf records; ptrace only
    /// follows threads and holds crashes.
    Hardware,
}

impl Backend {
    /// Its name in reports and trace files.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Step => "step",
            Backend::Fast => "fast",
            Backend::Hardware => "perf",
        }
    }
}

/// Errors of the ptrace layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("no process with pid {pid}")]
    /// The process does not exist.
    NoSuchProcess {
        /// The pid asked for.
        pid: i32,
    },
    #[error("not allowed to trace pid {pid}: {cause}")]
    /// The kernel refused to let bts trace it.
    PermissionDenied {
        /// The process.
        pid: i32,
        /// Why, in the user's terms (tracer, uid, capability, Yama).
        cause: String,
    },
    #[error("cannot execute {program}: {source}")]
    /// The program cannot be executed.
    Exec {
        /// The program.
        program: String,
        /// The exec error.
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    /// A system call failed.
    Os {
        /// What was being done.
        what: String,
        /// The system's error.
        source: std::io::Error,
    },
    /// No command was given to launch.
    #[error("no command given")]
    NoCommand,
    /// An argument of the command holds a NUL byte.
    #[error("an argument contains a NUL byte")]
    NulInArgument,
    /// The process exited and waits for its parent to reap it.
    #[error("pid {pid} has already exited (a zombie waiting for its parent)")]
    Zombie {
        /// The process.
        pid: i32,
    },
    /// A thread id was given where a process was wanted.
    #[error("{pid} is a thread, not a process: attach to its process")]
    NotAProcess {
        /// The thread id given.
        pid: i32,
    },
    /// bts must fork its tracer while it has a single thread.
    #[error("bts has {threads} threads: cannot fork its tracer safely")]
    Threaded {
        /// The threads bts has.
        threads: usize,
    },
    /// bts was asked to trace itself.
    #[error("bts cannot trace itself")]
    SelfTrace,
    /// The program's SIGTRAP action must be read or restored and its code
    /// has no system call instruction to do it through.
    #[error("no system call instruction in the program to {what} its SIGTRAP action through")]
    NoSyscallSite {
        /// Read or restore.
        what: &'static str,
    },
    /// The allocator refused a buffer (locked-memory limit, size).
    #[error(transparent)]
    Alloc(#[from] ds_alloc::Error),
    /// The hardware could not trace the first thread.
    #[error(transparent)]
    Hardware(#[from] bts_reader::perf::PerfError),
}

impl Error {
    pub(crate) fn os(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Os { what: what.into(), source }
    }
}

/// Something the session could not do that does not stop it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Notice {
    /// A thread is not recorded: its buffer or its hardware event was refused.
    #[error("thread {tid} is not recorded: {cause}")]
    ThreadNotRecorded {
        /// The thread.
        tid: i32,
        /// Why.
        cause: Error,
    },
    /// A follower (a broker's client) got no buffer on a new thread.
    #[error("thread {tid} is not recorded for you: {cause}")]
    FollowerNotRecorded {
        /// The thread.
        tid: i32,
        /// The follower.
        follower: ds_alloc::TracerId,
        /// Why.
        cause: legacy::BtsError,
    },
}

impl Notice {
    /// True when it ends a follower's tracing of the process (an exec
    /// beyond its rights).
    pub fn ends_following(&self) -> bool {
        matches!(self, Notice::FollowerNotRecorded { cause: legacy::BtsError::ExecDenied(_), .. })
    }

    /// The follower it concerns, when it concerns one alone.
    pub fn follower(&self) -> Option<ds_alloc::TracerId> {
        match self {
            Notice::FollowerNotRecorded { follower, .. } => Some(*follower),
            Notice::ThreadNotRecorded { .. } => None,
        }
    }
}

/// The result of the ptrace layer.
pub type Result<T> = std::result::Result<T, Error>;
