//! `bts attach --daemon` and `bts run --daemon`: the same reports, options
//! and files as in-process, with the daemon doing the tracing. bts is then
//! one tracer of several: its buffers are its own, charged to it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use broker::protocol::{Reply, Request, WireBackend, WireOutcome};
use broker::{Client, ClientError};
use bts_reader::TraceFile;
use ptrace_shim::Outcome;

use crate::args::{BackendArg, RecordArgs, ReportWhen};
use crate::exit::{self, EXIT_BTS_FAILED};
use crate::save::Reporter;

/// Why tracing through the daemon could not start.
#[derive(Debug, thiserror::Error)]
enum ViaError {
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("--backend {0} cannot record through the daemon: use fast, step or perf")]
    Backend(&'static str),
    #[error("--{0} is not offered through the daemon")]
    Option(&'static str),
}

fn wire_backend(rec: &RecordArgs) -> Result<WireBackend, ViaError> {
    if rec.per_cpu_buffer.is_some() {
        return Err(ViaError::Option("per-cpu-buffer"));
    }
    if rec.insn_log.is_some() {
        return Err(ViaError::Option("insn-log"));
    }
    Ok(match rec.backend {
        BackendArg::Fast => WireBackend::Fast,
        BackendArg::Step => WireBackend::Step,
        BackendArg::Perf => WireBackend::Perf,
        BackendArg::Valgrind => return Err(ViaError::Backend("valgrind")),
        // The daemon records in software (its hardware source cannot be shared yet).
        BackendArg::Auto => WireBackend::Fast,
    })
}

fn socket_of(socket: &Path) -> PathBuf {
    if socket.as_os_str().is_empty() {
        broker::default_client_socket()
    } else {
        socket.to_path_buf()
    }
}

fn connect(socket: &Path, name: &str) -> Result<Client, ViaError> {
    Ok(Client::connect(&socket_of(socket), name)?)
}

fn failed(e: impl std::fmt::Display) -> ExitCode {
    crate::errln!("bts: {e}");
    ExitCode::from(EXIT_BTS_FAILED)
}

fn attach_request(rec: &RecordArgs, pid: i32, backend: WireBackend, from_exec: bool) -> Request {
    Request::Attach {
        pid,
        buffer_bytes: rec.buffer_size as u64,
        backend,
        pin_cpu: !rec.no_pin,
        stack_bytes: rec.stack_size as u64,
        from_exec,
    }
}

/// `bts attach --daemon PID`.
pub fn attach(rec: &RecordArgs, pid: i32, socket: &Path) -> ExitCode {
    let started = wire_backend(rec).and_then(|be| {
        let mut c = connect(socket, "bts attach")?;
        let reply = c.call(&attach_request(rec, pid, be, false))?;
        Ok((c, reply))
    });
    let (mut client, reply) = match started {
        Ok(x) => x,
        Err(e) => return failed(e),
    };
    let Reply::Attached { command, joined, .. } = reply else {
        return failed(format!("the daemon answered {reply:?}"));
    };
    let others = if joined { ", beside its other tracers" } else { "" };
    crate::errln!(
        "bts: attached to pid {pid} ({}) through the daemon (pid {}){others}; Ctrl-C detaches",
        command.join(" "),
        client.daemon_pid
    );
    if let Err(e) = ptrace_shim::install_stop_handlers() {
        crate::errln!("bts: signal handlers: {e}");
    }
    follow(&mut client, rec, pid, None)
}

/// `bts run --daemon -- CMD`: bts launches the program itself (as you,
/// in your terminal and environment), held before its exec until the
/// daemon has attached; the trace starts at the exec.
pub fn run(
    rec: &RecordArgs,
    follow_fork: bool,
    no_aslr: bool,
    socket: &Path,
    command: &[OsString],
) -> ExitCode {
    if follow_fork {
        return failed("--follow-fork is not offered through the daemon");
    }
    let backend = match wire_backend(rec) {
        Ok(b) => b,
        Err(e) => return failed(e),
    };
    if let Err(e) = ptrace_shim::spawn::resolve_program(&command[0]) {
        crate::errln!("bts: cannot execute {}: {e}", command[0].to_string_lossy());
        return exit::code(exit::exec_failure_status(&e));
    }
    let mut client = match connect(socket, "bts run") {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    let held = match ptrace_shim::spawn::spawn_held(command, no_aslr) {
        Ok(h) => h,
        Err(e) => return failed(e),
    };
    let pid = held.pid;
    if let Err(e) = client.call(&attach_request(rec, pid, backend, true)) {
        held.kill();
        return failed(e);
    }
    if let Err(e) = ptrace_shim::install_stop_handlers() {
        crate::errln!("bts: signal handlers: {e}");
    }
    let errf = held.release();
    if let Some(errno) = ptrace_shim::spawn::exec_errno(&errf) {
        let e = std::io::Error::from_raw_os_error(errno);
        crate::errln!("bts: cannot execute {}: {e}", command[0].to_string_lossy());
        reap(pid);
        return exit::code(exit::exec_failure_status(&e));
    }
    let shown: Vec<String> = command.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    follow(&mut client, rec, pid, Some((pid, &shown)))
}

fn reap(pid: i32) -> Option<i32> {
    let mut status = 0;
    // SAFETY: waiting for our own child; status is a valid out-pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    (r == pid).then(|| {
        if libc::WIFSIGNALED(status) {
            128 + libc::WTERMSIG(status)
        } else {
            libc::WEXITSTATUS(status)
        }
    })
}

/// Reads a trace the daemon sent. The daemon read the command line of a
/// program bts launched before its exec: bts knows it better.
fn load(bytes: &[u8], launched: Option<&[String]>) -> Option<TraceFile> {
    match TraceFile::from_bytes(bytes) {
        Ok(mut tf) => {
            if let Some(cmd) = launched {
                tf.meta.command = cmd.to_vec();
            }
            Some(tf)
        }
        Err(e) => {
            crate::errln!("bts: the daemon sent a trace that does not read: {e}");
            None
        }
    }
}

/// Takes the daemon's events for `pid` until its end (or until a stop
/// signal detaches bts); reports and saves as the in-process path does.
/// `child`: the program bts launched (its own child, to reap).
fn follow(client: &mut Client, rec: &RecordArgs, pid: i32, child: Option<(i32, &[String])>) -> ExitCode {
    let launched = child.map(|c| c.1);
    let child = child.map(|c| c.0);
    let mut reporter = Reporter::new(rec, pid);
    let mut crashed = false;
    let outcome = loop {
        if let Some(sig) = ptrace_shim::stop_requested() {
            if let (Some(c), true) = (child, ptrace_shim::is_stop_request(sig)) {
                // The program decides what the signal means to it.
                // SAFETY: signalling our own child.
                unsafe { libc::kill(c, sig) };
            } else {
                match client.call_trace(&Request::Detach { pid }) {
                    Ok(bytes) => {
                        if let Some(tf) = load(&bytes, launched) {
                            reporter.save(&tf, pid, rec.report != ReportWhen::Never);
                        }
                    }
                    Err(e) => crate::errln!("bts: detaching through the daemon: {e}"),
                }
                reporter.finish();
                crate::record::end_by_signal(Outcome::Detached(sig), pid);
                return exit::code(exit::status(Outcome::Detached(sig)));
            }
        }
        match client.next_event(Some(Duration::from_millis(200))) {
            Ok(None) => {}
            Ok(Some(Reply::Notice { message, .. })) => crate::errln!("bts: {message}"),
            Ok(Some(Reply::Crash { pid: p, trace })) => {
                crashed |= p == pid;
                if let Some(tf) = load(&trace, launched) {
                    reporter.save(&tf, p, rec.report != ReportWhen::Never);
                }
            }
            Ok(Some(Reply::Ended { outcome, trace, .. })) => {
                let o = match outcome {
                    WireOutcome::Exited(c) => Outcome::Exited(c),
                    WireOutcome::Signaled(s) => Outcome::Signaled(s),
                    WireOutcome::Detached => Outcome::Detached(0),
                };
                // An empty trace: tracing was taken away (an exec beyond
                // your rights), nothing to save.
                if let (false, Some(print)) = (trace.is_empty(), crate::record::end_trace(rec, o, crashed)) {
                    if let Some(tf) = load(&trace, launched) {
                        reporter.save(&tf, pid, print);
                    }
                }
                if matches!(o, Outcome::Detached(_)) && child.is_none() {
                    crate::errln!("bts: the daemon stopped tracing pid {pid}, which runs on");
                }
                break o;
            }
            Ok(Some(other)) => crate::errln!("bts: unexpected message from the daemon: {other:?}"),
            Err(e) => {
                crate::errln!("bts: lost the daemon: {e}");
                reporter.finish();
                if let Some(c) = child {
                    return exit::code(reap(c).unwrap_or(i32::from(EXIT_BTS_FAILED)));
                }
                return ExitCode::from(EXIT_BTS_FAILED);
            }
        }
    };
    reporter.finish();
    if let Outcome::Exited(code) = outcome {
        if child.is_none() {
            crate::errln!("bts: pid {pid} exited with code {code}");
        }
    }
    // The program is bts's own child: its status is bts's.
    let status = match child {
        Some(c) => reap(c).unwrap_or_else(|| exit::status(outcome)),
        None => exit::status(outcome),
    };
    exit::code(status)
}
