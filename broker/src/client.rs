//! The client side: connect, say Hello, ask, and take the events (crash
//! and end traces) that arrive between replies.

use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::protocol::{self, ErrorKind, ProtocolError, Reply, Request, MAX_REPLY, VERSION};

/// Why a call through the daemon failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nobody listens on the socket.
    #[error("cannot reach the bts daemon at {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The connection failed or the daemon sent garbage.
    #[error("talking to the bts daemon: {0}")]
    Protocol(#[from] ProtocolError),
    /// The socket is served by another user's process.
    #[error("{path} is served by uid {uid}, neither root nor you: not talking to it")]
    Impostor {
        /// The socket.
        path: PathBuf,
        /// Who serves it.
        uid: u32,
    },
    /// The daemon refused the request.
    #[error("{message}")]
    Refused {
        /// Why, for programs.
        kind: ErrorKind,
        /// Why, for people.
        message: String,
    },
    /// The daemon answered something else than the request calls for.
    #[error("the bts daemon answered {0} to that request")]
    Unexpected(String),
}

/// The socket a client tries when none is named: the user's own daemon
/// (`$XDG_RUNTIME_DIR/bts.sock`) if one runs, else the system's (`/run/bts.sock`).
pub fn default_client_socket() -> PathBuf {
    match crate::default_socket() {
        Some(own) if own.exists() => own,
        _ => "/run/bts.sock".into(),
    }
}

/// A connection to the daemon.
pub struct Client {
    stream: UnixStream,
    /// Memory for the next bulk reply (see [`Client::drain_into`]).
    spare: Vec<u8>,
    /// A read failed midway or a call went unanswered: the next bytes
    /// cannot be trusted to start a message.
    broken: bool,
    events: VecDeque<Reply>,
    /// The daemon's number for this client (in `bts ctl`).
    pub id: u64,
    /// The daemon's pid.
    pub daemon_pid: u32,
}

fn unexpected(r: &Reply) -> ClientError {
    let name = format!("{r:?}");
    ClientError::Unexpected(name.chars().take(60).collect())
}

impl Client {
    /// Connects to the daemon at `path` and says Hello as `name`.
    pub fn connect(path: &Path, name: &str) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path)
            .map_err(|source| ClientError::Connect { path: path.to_path_buf(), source })?;
        let mut c = Client {
            stream,
            spare: Vec::new(),
            broken: false,
            events: VecDeque::new(),
            id: 0,
            daemon_pid: 0,
        };
        match c.call(&Request::Hello { version: VERSION, name: name.to_string() })? {
            Reply::Hello { version: VERSION, daemon_pid, id } => {
                c.id = id;
                c.daemon_pid = daemon_pid;
                Ok(c)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Reads the next message. `timeout` bounds the wait for its first
    /// byte; a message once begun is read whole (within a minute).
    fn read(&mut self, timeout: Option<Duration>) -> Result<Reply, ClientError> {
        if let Some(t) = timeout {
            use std::os::fd::AsRawFd;
            let mut pfd = libc::pollfd { fd: self.stream.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let ms = t.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd for the call's duration.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            // Nothing yet, or a signal (bts's own interval timer): the caller looks again.
            if n <= 0 {
                return Err(ProtocolError::Io(std::io::ErrorKind::TimedOut.into()).into());
            }
        }
        if self.broken {
            return Err(ProtocolError::Io(std::io::Error::other("the connection broke earlier")).into());
        }
        self.stream.set_read_timeout(Some(Duration::from_secs(120))).map_err(ProtocolError::from)?;
        let r = protocol::read_reply_reusing(&mut &self.stream, MAX_REPLY, &mut self.spare);
        // Past the first byte, a failure leaves the stream mid-message.
        self.broken |= r.is_err();
        Ok(r?)
    }

    /// Sends `req` and returns its reply (events that come first are kept
    /// for [`Client::next_event`]). An error reply is [`ClientError::Refused`].
    pub fn call(&mut self, req: &Request) -> Result<Reply, ClientError> {
        protocol::write_msg(&mut &self.stream, req)?;
        loop {
            let r = self.read(None)?;
            if r.is_event() {
                self.events.push_back(r);
                continue;
            }
            return match r {
                Reply::Error { kind, message } => Err(ClientError::Refused { kind, message }),
                r => Ok(r),
            };
        }
    }

    /// The next event, waiting up to `timeout` (`None`: for ever).
    /// `Ok(None)` when the time is up.
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Option<Reply>, ClientError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        match self.read(timeout) {
            Ok(r) if r.is_event() => Ok(Some(r)),
            Ok(Reply::Error { kind, message }) => Err(ClientError::Refused { kind, message }),
            Ok(r) => Err(unexpected(&r)),
            Err(ClientError::Protocol(ProtocolError::Io(e)))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// A call whose answer is `Ok`.
    pub fn call_ok(&mut self, req: &Request) -> Result<(), ClientError> {
        match self.call(req)? {
            Reply::Ok => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// A call whose answer is a trace file.
    pub fn call_trace(&mut self, req: &Request) -> Result<Vec<u8>, ClientError> {
        match self.call(req)? {
            Reply::Trace(bytes) => Ok(bytes),
            other => Err(unexpected(&other)),
        }
    }

    /// Drains the client's buffer of thread `tid`: raw 24-byte records, oldest first.
    pub fn drain(&mut self, tid: i32) -> Result<Vec<u8>, ClientError> {
        match self.call(&Request::Drain { tid })? {
            Reply::Records(bytes) => Ok(bytes),
            other => Err(unexpected(&other)),
        }
    }

    /// Drains into `out`, reusing its memory: a client that drains a large
    /// buffer again and again pays for the memory once.
    pub fn drain_into(&mut self, tid: i32, out: &mut Vec<u8>) -> Result<(), ClientError> {
        self.spare = std::mem::take(out);
        let result = self.call(&Request::Drain { tid });
        match result {
            Ok(Reply::Records(bytes)) => {
                *out = bytes;
                Ok(())
            }
            Ok(other) => Err(unexpected(&other)),
            Err(e) => Err(e),
        }
    }

    /// A legacy request: what `ptrace` returned, and the bytes it wrote.
    pub fn legacy(
        &mut self,
        request: u32,
        task: u32,
        addr: u64,
        data: &[u8],
    ) -> Result<(i64, Vec<u8>), ClientError> {
        match self.call(&Request::Legacy { request, task, addr, data: data.to_vec() })? {
            Reply::Legacy { value, data } => Ok((value, data)),
            other => Err(unexpected(&other)),
        }
    }

    /// The listing.
    pub fn list(&mut self) -> Result<protocol::Listing, ClientError> {
        match self.call(&Request::List)? {
            Reply::List(l) => Ok(l),
            other => Err(unexpected(&other)),
        }
    }
}
