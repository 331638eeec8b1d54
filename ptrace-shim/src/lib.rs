//! ptrace for `bts`: launch or attach, record every taken branch of every
//! thread in software, hold a crashing thread at signal delivery, and leave
//! a detached process exactly as it was.
//!
//! Two recorders:
//! - [`Backend::Step`] single-steps every instruction: slow, exact by
//!   construction, the oracle the others are checked against.
//! - [`Backend::Fast`] plants an int3 at each branch site met so far,
//!   evaluates the branch from registers and memory at the stop and
//!   emulates it, so it costs one stop per branch executed; system calls
//!   are seen as syscall stops. It single-steps only what it cannot evaluate.

mod eval;
pub mod front;
pub mod legacy;
pub mod maps;
mod recorder;
mod session;
mod signals;
mod space;
pub mod spawn;
pub mod sys;
mod traps;

pub use maps::Mapping;
pub use session::{Crash, ImageTrace, Options, Outcome, Recording, Session, Stop, ThreadTrace};
pub use signals::{die_of, install_stop_handlers, is_stop_request, stop_requested};

/// Which software recorder to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Single-step every instruction.
    Step,
    /// One stop per branch instruction.
    Fast,
    /// A [`HardwareSource`] records (Intel BTS through perf); ptrace only
    /// follows threads and holds crashes.
    Hardware,
}

/// Why a [`HardwareSource`] cannot record a thread.
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// A branch source that records by itself (hardware BTS): the session
/// tells it which threads to trace and reads it when a trace is taken.
pub trait HardwareSource {
    /// Starts recording a new thread. The error says why it cannot.
    fn start(&mut self, tid: i32) -> std::result::Result<(), SourceError>;
    /// The thread's records so far, oldest first, and how many it lost.
    fn read(&mut self, tid: i32) -> Option<(Vec<ds_alloc::BtsRecord>, u64)>;
    /// The thread is gone.
    fn stop(&mut self, tid: i32);
}

impl Backend {
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
    NoSuchProcess { pid: i32 },
    #[error("not allowed to trace pid {pid}: {cause}")]
    PermissionDenied { pid: i32, cause: String },
    #[error("cannot execute {program}: {source}")]
    Exec { program: String, source: std::io::Error },
    #[error("{what}: {source}")]
    Os { what: String, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
    /// The allocator refused a buffer (locked-memory limit, size).
    #[error("{0}")]
    Alloc(String),
    /// The hardware source could not trace the first thread.
    #[error(transparent)]
    Hardware(SourceError),
}

impl Error {
    pub(crate) fn os(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Os { what: what.into(), source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
