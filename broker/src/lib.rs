//! The broker: `bts daemon` owns all branch tracing on a machine, and
//! tracers are its clients over a Unix socket.
//!
//! ptrace admits one tracer per task, and so does the kernel's BTS; the
//! multi-tracer model of `ds-alloc` becomes real here. The daemon runs one
//! recording session per traced process (each on its own thread, with
//! `ptrace-shim`'s engine) into one shared hub (`ptrace_shim::hub`): every
//! client is a tracer there, with buffers of its own size on every thread
//! of the processes it follows, charged against its own RLIMIT_MEMLOCK.
//!
//! - `protocol`: the wire format (versioned, length-prefixed postcard).
//! - `peer`: who a client is, and what the kernel would let it do.
//! - `server`: the daemon (accepting, one thread pair per client, one
//!   session thread per traced process).
//! - `client`: the client side, as `bts attach --daemon` uses it.
//!
//! Nothing here prints: the daemon hands its log lines to its caller.

#![warn(missing_docs)]

pub mod client;
pub mod peer;
pub mod protocol;
pub mod server;

pub use client::{default_client_socket, Client, ClientError};
pub use peer::{AccessError, Peer};
pub use protocol::{ProtocolError, Reply, Request};
pub use server::{Daemon, DaemonError};

/// The socket a daemon listens on by default: `/run/bts.sock` for root,
/// `$XDG_RUNTIME_DIR/bts.sock` otherwise. `None` for a user without
/// `XDG_RUNTIME_DIR`: a shared folder such as /tmp would let another user
/// take the name first.
pub fn default_socket() -> Option<std::path::PathBuf> {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return Some("/run/bts.sock".into());
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => Some(std::path::Path::new(&dir).join("bts.sock")),
        _ => None,
    }
}
