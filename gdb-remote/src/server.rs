//! The stub's loop: reads packets, asks a [`Target`], answers. What a
//! target is (a saved trace, a live process) is the target's business;
//! the protocol's rules (acknowledgements, `qXfer` chunking, thread
//! selection, error forms) live here once.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use bts_reader::Registers;

use crate::btrace::{self, Block};
use crate::command::{btrace_read, Action, BtraceRead, Command, ThreadId};
use crate::packet::{frame, Decoder, Event, MAX_PACKET};
use crate::{tdesc, Error};

/// Why the target stopped, as a stop reply tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReply {
    /// Thread `tid` stopped with `signal`.
    Signal {
        /// The thread.
        tid: i32,
        /// The signal (5 for a trap).
        signal: u8,
    },
    /// The process exited with this code.
    Exited(u8),
    /// The process was killed by this signal.
    Terminated(u8),
    /// Execution cannot go forward: the recorded history ends here.
    ReplayEnd {
        /// The thread.
        tid: i32,
    },
    /// Thread `tid` reached a software breakpoint (its pc is the breakpoint's).
    Breakpoint {
        /// The thread.
        tid: i32,
    },
}

/// GDB's number of a Linux signal: the remote protocol speaks GDB's own
/// numbering (`gdb/signals.def`), which differs from Linux's for SIGBUS,
/// SIGUSR1/2, SIGCHLD, SIGSTOP, SIGSYS, the real-time signals and others.
pub fn gdb_signal(sig: u8) -> u8 {
    match sig {
        7 => 10,  // SIGBUS
        10 => 30, // SIGUSR1
        12 => 31, // SIGUSR2
        16 => 0,  // SIGSTKFLT: GDB has none
        17 => 20, // SIGCHLD
        18 => 19, // SIGCONT
        19 => 17, // SIGSTOP
        20 => 18, // SIGTSTP
        23 => 16, // SIGURG
        29 => 23, // SIGIO
        30 => 32, // SIGPWR
        31 => 12, // SIGSYS
        32 => 77, // SIGRTMIN (glibc's own)
        33..=63 => 45 + (sig - 33),
        64 => 78,
        s => s,
    }
}

impl StopReply {
    fn packet(self) -> String {
        match self {
            StopReply::Signal { tid, signal } => format!("T{:02x}thread:{tid:x};", gdb_signal(signal)),
            StopReply::Exited(c) => format!("W{c:02x}"),
            StopReply::Terminated(s) => format!("X{:02x}", gdb_signal(s)),
            StopReply::ReplayEnd { tid } => format!("T05replaylog:end;thread:{tid:x};"),
            StopReply::Breakpoint { tid } => format!("T05swbreak:;thread:{tid:x};"),
        }
    }
}

/// A shared library as `qXfer:libraries-svr4:read` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Library {
    /// Its path.
    pub name: String,
    /// Its load bias.
    pub l_addr: u64,
    /// The address of its dynamic section.
    pub l_ld: u64,
}

/// Why a target refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// The target cannot do this (a saved trace cannot run or be written).
    #[error("not supported by this target")]
    Unsupported,
    /// Nothing is known at that address.
    #[error("memory unavailable")]
    NoMemory,
    /// No such thread.
    #[error("no such thread")]
    NoThread,
    /// Anything else, said in words GDB shows the user.
    #[error("{0}")]
    Message(String),
}

/// What a stub serves: a saved trace or a live process.
pub trait Target {
    /// Every thread, the one that stopped first.
    fn threads(&self) -> Vec<i32>;
    /// Why the target is stopped now.
    fn stop_reply(&self) -> StopReply;
    /// A thread's registers (all, when known) and its pc.
    fn registers(&mut self, tid: i32) -> Result<(Option<Registers>, Option<u64>), TargetError>;
    /// Up to `len` bytes at `addr` (fewer when the rest is unknown; an
    /// error when none is).
    fn read_memory(&mut self, addr: u64, len: usize) -> Result<Vec<u8>, TargetError>;
    /// Starts recording `tid` with the bts recorder.
    fn btrace_enable(&mut self, tid: i32) -> Result<(), TargetError>;
    /// Stops recording `tid`.
    fn btrace_disable(&mut self, tid: i32) -> Result<(), TargetError>;
    /// The buffer size of `tid`'s recording, if it is recorded.
    fn btrace_size(&self, tid: i32) -> Option<u64>;
    /// `tid`'s branch trace as blocks, newest first: the whole trace, or
    /// (for [`BtraceRead::Delta`]) only what is new; None for `New`/`Delta`
    /// when nothing changed.
    fn btrace(&mut self, tid: i32, read: BtraceRead) -> Result<Option<Vec<Block>>, TargetError>;
    /// The executable's path.
    fn exec_file(&self) -> Option<String>;
    /// The shared libraries.
    fn libraries(&self) -> Vec<Library>;
    /// The auxiliary vector (pairs of u64).
    fn auxv(&self) -> Vec<(u64, u64)>;
    /// Sets register `n` (GDB's number) of `tid` from its bytes.
    fn write_register(&mut self, _tid: i32, _n: usize, _bytes: &[u8]) -> Result<(), TargetError> {
        Err(TargetError::Unsupported)
    }
    /// Writes memory.
    fn write_memory(&mut self, _addr: u64, _data: &[u8]) -> Result<(), TargetError> {
        Err(TargetError::Unsupported)
    }
    /// Resumes (or, for a trace, says why it cannot go on): every thread,
    /// or with [`Action::Step`] thread `tid` for one instruction, the
    /// others running meanwhile when `others_run`.
    fn resume(&mut self, tid: i32, action: Action, others_run: bool) -> Result<StopReply, TargetError>;
    /// The flag the stub sets when GDB asks a running target to stop
    /// (Ctrl-C); a target that runs watches it.
    fn interrupt_flag(&self) -> Option<Arc<AtomicBool>> {
        None
    }
    /// Inserts (or removes) a breakpoint of `kind` (0 software, 1
    /// hardware, 2-4 watchpoints) at `addr`.
    fn breakpoint(&mut self, insert: bool, kind: u8, addr: u64) -> Result<(), TargetError>;
    /// A `monitor` command's output.
    fn monitor(&mut self, cmd: &str) -> String;
    /// GDB leaves: let the process go (a trace has nothing to do).
    fn detach(&mut self);
    /// GDB says `kill`.
    fn kill(&mut self) {
        self.detach();
    }
}

const SUPPORTED: &str = "QStartNoAckMode+;qXfer:features:read+;qXfer:exec-file:read+;\
qXfer:libraries-svr4:read+;qXfer:auxv:read+;Qbtrace:bts+;Qbtrace-conf:bts:size+;Qbtrace:off+;\
qXfer:btrace:read+;qXfer:btrace-conf:read+;vContSupported+;swbreak+";

/// The connection's state.
struct Conn<W: Write> {
    out: W,
    no_ack: bool,
    general: Option<i32>,
    /// The thread `Hc` named for resuming.
    cont: Option<i32>,
    /// Documents served in pieces: built at offset 0, later offsets from this copy.
    xfer: HashMap<(String, String), Vec<u8>>,
}

impl<W: Write> Conn<W> {
    fn send(&mut self, payload: &[u8]) -> Result<(), Error> {
        self.out.write_all(&frame(payload)).map_err(Error::Io)?;
        self.out.flush().map_err(Error::Io)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn error_text(e: &TargetError) -> String {
    format!("E.{e}")
}

/// What the reader thread passes on.
enum Input {
    Event(Event),
    /// The connection ended (or failed).
    Closed(Option<std::io::Error>),
}

/// Reads the connection on a thread of its own, so that a Ctrl-C from GDB
/// reaches a running target (through its interrupt flag) at once.
fn reader<R: Read + Send + 'static>(
    mut input: R,
    tx: mpsc::Sender<Input>,
    interrupt: Option<Arc<AtomicBool>>,
) {
    // Signals meant for the tracer (its timer, the user's) must not land
    // on this thread.
    // SAFETY: a full signal set, initialised by sigfillset, blocked for
    // this thread only.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
    let mut decoder = Decoder::new();
    let mut events = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let closed = match input.read(&mut buf) {
            Ok(0) => None,
            Ok(n) => {
                decoder.feed(&buf[..n], &mut events);
                Some(n)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // GDB is gone: a running target stops, so that it can be let go.
                if let Some(f) = &interrupt {
                    f.store(true, Ordering::SeqCst);
                }
                let _ = tx.send(Input::Closed(Some(e)));
                return;
            }
        };
        if closed.is_none() {
            if let Some(f) = &interrupt {
                f.store(true, Ordering::SeqCst);
            }
            let _ = tx.send(Input::Closed(None));
            return;
        }
        for ev in events.drain(..) {
            if ev == Event::Interrupt {
                if let Some(f) = &interrupt {
                    f.store(true, Ordering::SeqCst);
                }
            }
            if tx.send(Input::Event(ev)).is_err() {
                return;
            }
        }
    }
}

/// Serves `target` on a connection until GDB detaches, kills or goes.
/// However it ends (GDB gone, a write failed), the target is let go:
/// detached, or killed when GDB said `kill`.
pub fn serve<T: Target, R: Read + Send + 'static, W: Write>(
    target: &mut T,
    input: R,
    out: W,
) -> Result<(), Error> {
    let r = serve_until_done(target, input, out);
    target.detach();
    r
}

fn serve_until_done<T: Target, R: Read + Send + 'static, W: Write>(
    target: &mut T,
    input: R,
    out: W,
) -> Result<(), Error> {
    let mut conn = Conn { out, no_ack: false, general: None, cont: None, xfer: HashMap::new() };
    let interrupt = target.interrupt_flag();
    let (tx, rx) = mpsc::channel();
    let flag = interrupt.clone();
    std::thread::Builder::new()
        .name("gdb-reader".into())
        .spawn(move || reader(input, tx, flag))
        .map_err(Error::Io)?;
    loop {
        let ev = match rx.recv() {
            Ok(Input::Event(ev)) => ev,
            Ok(Input::Closed(None)) | Err(_) => return Ok(()),
            Ok(Input::Closed(Some(e))) => return Err(Error::Io(e)),
        };
        match ev {
            Event::Packet(p) => {
                if !conn.no_ack {
                    conn.out.write_all(b"+").map_err(Error::Io)?;
                }
                let cmd = Command::parse(&p);
                let end = match cmd {
                    Command::Detach => Some(false),
                    Command::Kill => Some(true),
                    _ => None,
                };
                let reply = answer(target, &mut conn, cmd);
                conn.send(&reply)?;
                match end {
                    Some(true) => {
                        target.kill();
                        return Ok(());
                    }
                    Some(false) => return Ok(()),
                    None => {}
                }
            }
            Event::BadChecksum if !conn.no_ack => conn.out.write_all(b"-").map_err(Error::Io)?,
            Event::TooLong => conn.send(b"E.packet too long")?,
            // A Ctrl-C while the target is stopped means nothing.
            Event::Interrupt => {
                if let Some(f) = &interrupt {
                    f.store(false, Ordering::SeqCst);
                }
            }
            Event::BadChecksum | Event::Ack | Event::Nack => {}
        }
    }
}

fn xfer_document<T: Target>(
    target: &mut T,
    conn: &Conn<impl Write>,
    object: &str,
    annex: &str,
) -> Result<Vec<u8>, String> {
    let tid = conn.general.or_else(|| target.threads().first().copied());
    Ok(match object {
        "features" if annex == "target.xml" => tdesc::target_xml().into_bytes(),
        "features" => return Err("E00".into()),
        "exec-file" => target.exec_file().ok_or("E00")?.into_bytes(),
        "libraries-svr4" => {
            let mut x = String::from("<library-list-svr4 version=\"1.0\">");
            for (i, l) in target.libraries().iter().enumerate() {
                // GDB 13.1 requires lmid; lm only has to tell libraries apart.
                x.push_str(&format!(
                    "<library name=\"{}\" lm=\"{:#x}\" l_addr=\"{:#x}\" l_ld=\"{:#x}\" lmid=\"0x0\"/>",
                    xml_escape(&l.name),
                    i + 1,
                    l.l_addr,
                    l.l_ld
                ));
            }
            x.push_str("</library-list-svr4>");
            x.into_bytes()
        }
        "auxv" => {
            target.auxv().iter().flat_map(|&(k, v)| [k.to_le_bytes(), v.to_le_bytes()]).flatten().collect()
        }
        "btrace-conf" => {
            let tid = tid.ok_or("E.Must select a single thread.")?;
            btrace::conf_document(target.btrace_size(tid)).into_bytes()
        }
        "btrace" => {
            let Some(tid) = conn.general else { return Err("E.Must select a single thread.".into()) };
            let read = btrace_read(annex).ok_or("E.Bad annex.")?;
            match target.btrace(tid, read) {
                Ok(Some(blocks)) => btrace::document(&blocks).into_bytes(),
                Ok(None) => btrace::document(&[]).into_bytes(),
                Err(e) => return Err(error_text(&e)),
            }
        }
        _ => return Err(String::new()),
    })
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn answer<T: Target>(target: &mut T, conn: &mut Conn<impl Write>, cmd: Command) -> Vec<u8> {
    if let Command::XferRead { object, annex, offset, len } = cmd {
        return xfer_read(target, conn, object, annex, offset, len);
    }
    answer_text(target, conn, cmd).into_bytes()
}

/// A piece of a `qXfer` document: `m` and more to come, or `l` and the last.
/// The data is bytes (auxv is binary), escaped by the framing.
fn xfer_read<T: Target>(
    target: &mut T,
    conn: &mut Conn<impl Write>,
    object: String,
    annex: String,
    offset: usize,
    len: usize,
) -> Vec<u8> {
    let key = (object, annex);
    if offset == 0 || !conn.xfer.contains_key(&key) {
        match xfer_document(target, conn, &key.0, &key.1) {
            Ok(doc) => {
                conn.xfer.insert(key.clone(), doc);
            }
            Err(e) => return e.into_bytes(),
        }
    }
    let doc = &conn.xfer[&key];
    let len = len.min(MAX_PACKET);
    let start = offset.min(doc.len());
    let end = start.saturating_add(len).min(doc.len());
    let mut reply = Vec::with_capacity(end - start + 1);
    reply.push(if end < doc.len() { b'm' } else { b'l' });
    reply.extend_from_slice(&doc[start..end]);
    reply
}

fn answer_text<T: Target>(target: &mut T, conn: &mut Conn<impl Write>, cmd: Command) -> String {
    match cmd {
        Command::Supported => format!("PacketSize={MAX_PACKET:x};{SUPPORTED}"),
        Command::StartNoAckMode => {
            conn.no_ack = true;
            "OK".into()
        }
        Command::StopReason => target.stop_reply().packet(),
        Command::SetThread { general, thread } => {
            let t = match thread {
                ThreadId::Id(t) => Some(t),
                ThreadId::Any => target.threads().first().copied(),
                ThreadId::All => None,
            };
            if general {
                conn.general = t;
            } else {
                conn.cont = t;
            }
            "OK".into()
        }
        Command::CurrentThread => match target.threads().first() {
            Some(t) => format!("QC{t:x}"),
            None => "E01".into(),
        },
        Command::ThreadsFirst => {
            let ts: Vec<String> = target.threads().iter().map(|t| format!("{t:x}")).collect();
            if ts.is_empty() {
                "l".into()
            } else {
                format!("m{}", ts.join(","))
            }
        }
        Command::ThreadsNext => "l".into(),
        Command::ThreadAlive(ThreadId::Id(t)) if target.threads().contains(&t) => "OK".into(),
        Command::ThreadAlive(_) => "E01".into(),
        Command::ReadRegisters | Command::ReadRegister(_) => {
            let tid = conn.general.or_else(|| target.threads().first().copied());
            let Some(tid) = tid else { return "E01".into() };
            match target.registers(tid) {
                Ok((regs, pc)) => match cmd {
                    Command::ReadRegister(n) => {
                        tdesc::hex_register(regs.as_ref(), pc, n).unwrap_or_else(|| "E45".into())
                    }
                    _ => tdesc::hex_registers(regs.as_ref(), pc),
                },
                Err(_) => "E01".into(),
            }
        }
        Command::ReadMemory { addr, len } => match target.read_memory(addr, len.min(MAX_PACKET / 2 - 8)) {
            Ok(b) if !b.is_empty() => hex(&b),
            _ => "E14".into(),
        },
        // GDB falls back to P for one register at a time.
        Command::WriteRegisters => String::new(),
        Command::WriteRegister { n, bytes } => {
            let tid = conn.general.or_else(|| target.threads().first().copied()).unwrap_or(0);
            match target.write_register(tid, n, &bytes) {
                Ok(()) => "OK".into(),
                Err(TargetError::Unsupported) => "E.This target cannot be written.".into(),
                Err(e) => error_text(&e),
            }
        }
        Command::WriteMemory { addr, data } => match target.write_memory(addr, &data) {
            Ok(()) => "OK".into(),
            Err(TargetError::Unsupported) => "E.This target cannot be written.".into(),
            Err(e) => error_text(&e),
        },
        // Answered as bytes by `xfer_read`, before this match.
        Command::XferRead { .. } => String::new(),
        Command::Btrace(kind) => {
            let Some(tid) = conn.general else { return "E.Must select a single thread.".into() };
            let r = match kind.as_str() {
                "bts" => target.btrace_enable(tid),
                "off" => target.btrace_disable(tid),
                other => {
                    Err(TargetError::Message(format!("Bad Qbtrace operation: {other}. Use bts or off.")))
                }
            };
            match r {
                Ok(()) => "OK".into(),
                Err(e) => error_text(&e),
            }
        }
        // Sizes are the recorder's, fixed when it started.
        Command::BtraceConfSize(_) => "OK".into(),
        Command::VContQuery => "vCont;c;C;s;S;t".into(),
        Command::Resume(action, thread, others_run) => {
            let named = match thread {
                Some(ThreadId::Id(t)) => Some(t),
                _ => None,
            };
            let tid = named
                .or(conn.cont)
                .or(conn.general)
                .or_else(|| target.threads().first().copied())
                .unwrap_or(0);
            match target.resume(tid, action, others_run) {
                Ok(stop) => stop.packet(),
                Err(e) => error_text(&e),
            }
        }
        Command::Monitor(cmd) => {
            let mut text = target.monitor(cmd.trim());
            if !text.ends_with('\n') {
                text.push('\n');
            }
            // One O packet of output, then OK.
            let _ = conn.send(format!("O{}", hex(text.as_bytes())).as_bytes());
            "OK".into()
        }
        Command::Breakpoint { insert, kind, addr } => match target.breakpoint(insert, kind, addr) {
            Ok(()) => "OK".into(),
            // An empty answer: GDB falls back (to memory writes, or says so).
            Err(TargetError::Unsupported) => String::new(),
            Err(e) => error_text(&e),
        },
        Command::Detach | Command::Kill => "OK".into(),
        Command::Malformed(what) => format!("E.malformed {what} packet"),
        Command::Extended | Command::Unknown => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_numbered_as_gdb_numbers_them() {
        // SIGSEGV, SIGTRAP, SIGABRT are the same; SIGBUS, SIGUSR1, SIGSYS are not.
        assert_eq!((gdb_signal(11), gdb_signal(5), gdb_signal(6)), (11, 5, 6));
        assert_eq!((gdb_signal(7), gdb_signal(10), gdb_signal(31)), (10, 30, 12));
        assert_eq!(StopReply::Signal { tid: 0x10, signal: 7 }.packet(), "T0athread:10;");
        assert_eq!(StopReply::Terminated(10).packet(), "X1e");
        assert_eq!(gdb_signal(34), 46);
    }
}
