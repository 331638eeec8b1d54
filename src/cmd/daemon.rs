//! `bts daemon`: serve branch tracing to clients until SIGTERM or SIGINT;
//! `bts ctl`: ask a running daemon what it traces.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use broker::protocol::Listing;
use broker::{Client, Daemon};

use crate::args::CtlWhat;
use crate::exit::EXIT_BTS_FAILED;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn catch_stop_signals() -> std::io::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// `bts daemon [--socket PATH]`.
pub fn run(socket: Option<PathBuf>, io_timeout_ms: u64) -> ExitCode {
    let Some(path) = socket.or_else(broker::default_socket) else {
        crate::errln!(
            "bts daemon: XDG_RUNTIME_DIR is not set: name a socket in a folder of your own with --socket"
        );
        return ExitCode::from(EXIT_BTS_FAILED);
    };
    if let Err(e) = catch_stop_signals() {
        crate::errln!("bts daemon: signal handlers: {e}");
        return ExitCode::from(EXIT_BTS_FAILED);
    }
    let log = Box::new(|line: &str| crate::errln!("bts daemon: {line}"));
    let daemon = match Daemon::bind(&path, log) {
        Ok(d) => d,
        Err(e) => {
            crate::errln!("bts daemon: {e}");
            return ExitCode::from(EXIT_BTS_FAILED);
        }
    };
    daemon.set_io_timeout(std::time::Duration::from_millis(io_timeout_ms));
    crate::errln!("bts daemon: listening on {} (pid {})", path.display(), std::process::id());
    match daemon.run(&STOP) {
        Ok(()) => {
            crate::errln!("bts daemon: stopped; every traced process was detached");
            ExitCode::SUCCESS
        }
        Err(e) => {
            crate::errln!("bts daemon: {e}");
            ExitCode::from(EXIT_BTS_FAILED)
        }
    }
}

fn limit_text(bytes: u64) -> String {
    if bytes == u64::MAX {
        "unlimited".into()
    } else {
        bytes.to_string()
    }
}

fn print(l: &Listing, what: CtlWhat) {
    match what {
        CtlWhat::Tracers => {
            crate::outln!(
                "{:>4} {:>8} {:>6} {:>12} {:>12} {:>7}  {:<16} NAME",
                "ID",
                "CLIENT",
                "UID",
                "CHARGED",
                "LIMIT",
                "BUFFERS",
                "PROCESSES"
            );
            for t in &l.tracers {
                let procs: Vec<String> = t.processes.iter().map(|p| p.to_string()).collect();
                crate::outln!(
                    "{:>4} {:>8} {:>6} {:>12} {:>12} {:>7}  {:<16} {}",
                    t.id,
                    t.client_pid,
                    t.uid,
                    t.charged_bytes,
                    limit_text(t.limit_bytes),
                    t.buffers.len(),
                    if procs.is_empty() { "-".into() } else { procs.join(",") },
                    t.name
                );
            }
        }
        CtlWhat::Buffers => {
            crate::outln!(
                "{:>4} {:>8} {:>8} {:>10} {:>9} {:>12}  STATE",
                "ID",
                "PID",
                "TID",
                "BYTES",
                "RECORDS",
                "WRITTEN"
            );
            for t in &l.tracers {
                for b in &t.buffers {
                    crate::outln!(
                        "{:>4} {:>8} {:>8} {:>10} {:>9} {:>12}  {}",
                        t.id,
                        b.pid,
                        b.tid,
                        b.bytes,
                        b.records,
                        b.written,
                        if b.suspended { "ended" } else { "recording" }
                    );
                }
                for b in &t.cpus {
                    crate::outln!(
                        "{:>4} {:>8} {:>8} {:>10} {:>9} {:>12}  catch-all",
                        t.id,
                        "cpu",
                        b.tid,
                        b.bytes,
                        b.records,
                        b.written
                    );
                }
                for p in &t.pebs {
                    crate::outln!("{:>4} PEBS owner of {p:?}", t.id);
                }
            }
        }
        CtlWhat::Tasks => {
            crate::outln!("{:>8} {:<8} {:<12} COMMAND", "PID", "BACKEND", "TRACERS");
            for t in &l.tasks {
                let ids: Vec<String> = t.tracers.iter().map(|i| i.to_string()).collect();
                crate::outln!("{:>8} {:<8} {:<12} {}", t.pid, t.backend, ids.join(","), t.command.join(" "));
            }
        }
    }
}

/// `bts ctl [--socket PATH] tracers|buffers|tasks [--json]`.
pub fn ctl(socket: Option<PathBuf>, what: CtlWhat, json: bool) -> ExitCode {
    let path = socket.unwrap_or_else(broker::default_client_socket);
    let listing = Client::connect(&path, "bts ctl").and_then(|mut c| c.list());
    match listing {
        Ok(l) if json => {
            crate::outln!("{}", serde_json::to_string_pretty(&l).expect("a listing serializes"));
            ExitCode::SUCCESS
        }
        Ok(l) => {
            print(&l, what);
            ExitCode::SUCCESS
        }
        Err(e) => {
            crate::errln!("bts ctl: {e}");
            if matches!(e, broker::ClientError::Connect { .. }) {
                crate::errln!("bts ctl: is `bts daemon` running? (--socket names another socket)");
            }
            ExitCode::from(EXIT_BTS_FAILED)
        }
    }
}
