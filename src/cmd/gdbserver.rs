//! `bts gdbserver`: a saved trace (post-mortem), a running process
//! (`--attach PID`) or a launched program (`-- CMD`) served to stock GDB
//! over the remote protocol, on stdin/stdout (`target remote | bts
//! gdbserver --stdio …`) or on a TCP port (loopback unless another address
//! is named).

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::FromRawFd;
use std::process::ExitCode;

use gdb_remote::{Live, PostMortem};
use ptrace_shim::{Backend, Options, Session};

use crate::args::GdbTarget;

/// Where GDB connects.
pub enum Transport<'a> {
    /// Standard input and output.
    Stdio,
    /// `PORT` (on 127.0.0.1) or `HOST:PORT`.
    Listen(&'a str),
}

/// Why the stub could not start or stopped.
#[derive(Debug, thiserror::Error)]
enum StubError {
    #[error("--listen {0}: not a PORT or HOST:PORT (e.g. 127.0.0.1:2345)")]
    Address(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Load(#[from] crate::load::InspectError),
    #[error("{file}: {source}")]
    Trace { file: String, source: gdb_remote::Error },
    #[error("{0}")]
    Engine(#[from] ptrace_shim::Error),
    #[error("gdbserver: {0}")]
    Serve(#[from] gdb_remote::Error),
    #[error("setting up the connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("{} received before gdb connected: the process is let go", ptrace_shim::sys::signal_name(*.0))]
    Stopped(i32),
}

/// The address `--listen` names: a bare port is loopback's.
fn listen_addr(spec: &str) -> Result<SocketAddr, StubError> {
    if let Ok(port) = spec.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    spec.parse::<SocketAddr>().map_err(|_| StubError::Address(spec.to_string()))
}

/// The connection on stdin/stdout, moved to descriptors of its own; the
/// program bts launches gets /dev/null as input and bts's stderr as its
/// output, so nothing it prints mixes with the protocol (as gdbserver does).
fn stdio_connection() -> Result<(File, File), StubError> {
    // SAFETY: duplicating our own open descriptors (close-on-exec), then
    // pointing 0 and 1 elsewhere; every fd used is checked.
    unsafe {
        let input = libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3);
        let output = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3);
        if input < 0 || output < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        if null < 0 || libc::dup2(null, 0) < 0 || libc::dup2(2, 1) < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        libc::close(null);
        Ok((File::from_raw_fd(input), File::from_raw_fd(output)))
    }
}

/// Where GDB will connect, set up before any process is touched: a bad
/// address or a port in use is an error while nothing is traced yet.
enum Conn {
    Stdio(Option<(File, File)>),
    Listen(TcpListener),
}

fn open_conn(transport: &Transport, live: bool) -> Result<Conn, StubError> {
    match transport {
        Transport::Stdio if live => Ok(Conn::Stdio(Some(stdio_connection()?))),
        Transport::Stdio => Ok(Conn::Stdio(None)),
        Transport::Listen(spec) => {
            let addr = listen_addr(spec)?;
            if !addr.ip().is_loopback() {
                crate::errln!(
                    "bts: warning: listening on {addr}, not loopback: anyone who can reach it can read \
                     this target's memory (and control a live one)"
                );
            }
            Ok(Conn::Listen(TcpListener::bind(addr).map_err(|source| StubError::Listen { addr, source })?))
        }
    }
}

fn serve_on<T: gdb_remote::Target>(target: &mut T, conn: Conn) -> Result<(), StubError> {
    match conn {
        Conn::Stdio(Some((input, output))) => Ok(gdb_remote::serve(target, input, output)?),
        Conn::Stdio(None) => Ok(gdb_remote::serve(target, std::io::stdin(), std::io::stdout().lock())?),
        Conn::Listen(listener) => {
            let bound = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
            crate::errln!("bts: waiting for gdb on {bound}; in gdb: target remote {bound}");
            // Polled, so that a signal asking bts to stop is seen while
            // no GDB comes (the process waits paused meanwhile).
            listener.set_nonblocking(true)?;
            let sock = loop {
                match listener.accept() {
                    Ok((sock, _)) => break sock,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if let Some(sig) = ptrace_shim::stop_requested() {
                            return Err(StubError::Stopped(sig));
                        }
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            };
            sock.set_nonblocking(false)?;
            let _ = sock.set_nodelay(true);
            let input = sock.try_clone()?;
            Ok(gdb_remote::serve(target, input, sock)?)
        }
    }
}

/// What GDB will not see of a trace read with `cap`: none when it sees all.
fn left_out_note(tf: &bts_reader::TraceFile, unread: &[u64], cap: crate::args::BranchCap) -> Option<String> {
    let branches = |s: &bts_reader::Stream| s.records.iter().filter(|r| r.is_branch()).count() as u64;
    // GDB sees threads only: a CPU's buffer cut short is no news to it.
    let threads: Vec<(&bts_reader::Stream, u64)> = tf
        .streams
        .iter()
        .zip(unread.iter().copied())
        .filter(|(s, _)| matches!(s.kind, bts_reader::StreamKind::Thread { .. }))
        .collect();
    let most = threads.iter().map(|&(s, u)| branches(s) + u).max()?;
    threads.iter().any(|&(_, u)| u > 0).then(|| {
        format!(
            "bts: GDB reads the newest {cap} branches of each thread, of up to {most} a thread in the trace \
             (GDB decodes some 8000 a second): --gdb-branches N or all for more; `bts history FILE` shows them all"
        )
    })
}

fn run_inner(target: &GdbTarget, transport: Transport) -> Result<(), StubError> {
    let stdio = matches!(transport, Transport::Stdio);
    let conn = open_conn(&transport, target.file.is_none())?;
    if let Some(file) = &target.file {
        let (tf, unread) = crate::load::load_newest(file, target.gdb_branches.0)?;
        if let Some(note) = left_out_note(&tf, &unread, target.gdb_branches) {
            crate::errln!("{note}");
        }
        let mut t = PostMortem::new(tf, file.display().to_string())
            .map_err(|source| StubError::Trace { file: file.display().to_string(), source })?
            .leaving_out(unread);
        if stdio {
            // GDB sends Ctrl-C as a byte on the pipe; the terminal's SIGINT
            // to the whole process group must not end the stub.
            // SAFETY: setting a signal's disposition to SIG_IGN.
            unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
        }
        return serve_on(&mut t, conn);
    }
    let opts = Options { backend: Backend::Fast, buffer_bytes: target.buffer_size, ..Options::default() };
    let (session, launched) = match target.attach {
        Some(pid) => (Session::attach(pid, opts)?, false),
        None => (Session::launch(&target.command, opts)?, true),
    };
    // From here on, however this ends, dropping `live` lets the process go.
    let mut live = Live::new(session, launched, target.buffer_size)?;
    serve_on(&mut live, conn)
}

/// `bts gdbserver`.
pub fn run(target: &GdbTarget, transport: Transport) -> ExitCode {
    if target.file.is_none() && matches!(transport, Transport::Stdio) {
        // Live on GDB's pipe: the terminal's Ctrl-C is GDB's (it sends it
        // on the connection), so bts and the program leave the terminal's
        // process group (before the split, so that no part of bts gets it).
        // SAFETY: setpgid on ourselves.
        unsafe { libc::setpgid(0, 0) };
    }
    if target.file.is_none() {
        // The tracer survives the SIGKILL of the process GDB started.
        if let Some(code) = crate::record::split_off_tracer() {
            return crate::exit::code(code);
        }
    }
    match run_inner(target, transport) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crate::errln!("bts: {e}");
            ExitCode::FAILURE
        }
    }
}
