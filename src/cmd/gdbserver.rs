//! `bts gdbserver`: a saved trace served to stock GDB over the remote
//! protocol, on stdin/stdout (`target remote | bts gdbserver --stdio FILE`)
//! or on a TCP port (loopback unless another address is named).

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::ExitCode;

use gdb_remote::PostMortem;

/// Where GDB connects.
pub enum Transport<'a> {
    /// Standard input and output.
    Stdio,
    /// `PORT` (on 127.0.0.1) or `HOST:PORT`.
    Listen(&'a str),
}

/// The address `--listen` names: a bare port is loopback's.
fn listen_addr(spec: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = spec.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    spec.parse::<SocketAddr>()
        .map_err(|_| format!("--listen {spec}: not a PORT or HOST:PORT (e.g. 127.0.0.1:2345)"))
}

/// `bts gdbserver`.
pub fn run(file: &Path, transport: Transport) -> ExitCode {
    let tf = match crate::load::load(file) {
        Ok(t) => t,
        Err(e) => {
            crate::errln!("bts: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut target = match PostMortem::new(tf, file.display().to_string()) {
        Ok(t) => t,
        Err(e) => {
            crate::errln!("bts: {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let served = match transport {
        Transport::Stdio => {
            // GDB sends Ctrl-C as a byte on the pipe; the terminal's SIGINT
            // to the whole process group must not end the stub.
            // SAFETY: setting a signal's disposition to SIG_IGN.
            unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
            gdb_remote::serve(&mut target, std::io::stdin().lock(), std::io::stdout().lock())
        }
        Transport::Listen(spec) => {
            let addr = match listen_addr(spec) {
                Ok(a) => a,
                Err(e) => {
                    crate::errln!("bts: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if !addr.ip().is_loopback() {
                crate::errln!(
                    "bts: warning: listening on {addr}, not loopback: anyone who can reach it can read this \
                     trace's memory and code"
                );
            }
            let listener = match TcpListener::bind(addr) {
                Ok(l) => l,
                Err(e) => {
                    crate::errln!("bts: cannot listen on {addr}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let bound = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| addr.to_string());
            crate::errln!("bts: serving {} on {bound}; in gdb: target remote {bound}", file.display());
            match listener.accept() {
                Ok((sock, _)) => {
                    let _ = sock.set_nodelay(true);
                    match sock.try_clone() {
                        Ok(input) => gdb_remote::serve(&mut target, input, sock),
                        Err(e) => Err(gdb_remote::Error::Io(e)),
                    }
                }
                Err(e) => Err(gdb_remote::Error::Io(e)),
            }
        }
    };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crate::errln!("bts: gdbserver: {e}");
            ExitCode::FAILURE
        }
    }
}
