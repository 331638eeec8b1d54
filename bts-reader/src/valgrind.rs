//! The Valgrind backend: the `bts` Valgrind tool (built from
//! `valgrind/*.c` with the project) records every taken branch of a
//! launched program in BTS format; this module installs the tool in a
//! private `VALGRIND_LIB` folder, runs the program under it, and reads what
//! it wrote.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

pub mod install;
mod recording;
pub use install::{install, Installed};
pub use recording::recording;

use decode::Mapping;
use ds_alloc::{BtsRecord, BTS_RECORD_SIZE};

#[cfg(bts_valgrind_tool)]
static TOOL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bts-amd64-linux"));
#[cfg(not(bts_valgrind_tool))]
static TOOL: &[u8] = &[];

/// Where Debian and others keep Valgrind's preload library.
const PRELOAD_DIRS: &[&str] =
    &["/usr/libexec/valgrind", "/usr/lib/x86_64-linux-gnu/valgrind", "/usr/lib/valgrind"];
const PRELOAD: &str = "vgpreload_core-amd64-linux.so";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
/// Why the Valgrind backend failed.
pub enum VgError {
    /// No private folder could take the tool.
    #[error("the Valgrind tool cannot be installed in a private folder: {0}")]
    Install(#[from] install::InstallError),
    /// Running Valgrind or reading what it wrote failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The system's error.
        source: std::io::Error,
    },
    /// A trace file of the tool ends early.
    #[error("the Valgrind tool's trace is truncated at byte {at}")]
    Truncated {
        /// Where.
        at: usize,
    },
    /// A count in a trace file of the tool exceeds the file.
    #[error("the Valgrind tool's trace is corrupt: a count of {count} exceeds the file")]
    BadCount {
        /// The count.
        count: u64,
    },
    /// Not a trace file of this tool's version.
    #[error("not a trace of this Valgrind tool (bad magic)")]
    BadMagic,
    /// Records that are not whole BTS records.
    #[error("the Valgrind tool's trace is corrupt: {0}")]
    Records(#[from] ds_alloc::Error),
}

impl VgError {
    fn io(what: impl Into<String>, source: std::io::Error) -> VgError {
        VgError::Io { what: what.into(), source }
    }
}

/// Why the Valgrind backend cannot be used on this machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unavailable {
    /// bts was built without the tool.
    #[error("this bts was built without Valgrind's tool headers and libraries")]
    NotBuilt,
    /// No `valgrind` on PATH.
    #[error("valgrind is not installed")]
    NoValgrind,
    /// Valgrind's preload library is missing.
    #[error("{PRELOAD} is not found in {}", PRELOAD_DIRS.join(", "))]
    NoPreload,
}

/// What stopped Valgrind itself (not the program).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VgProblem {
    /// EVEX-encoded (AVX-512) code, which Valgrind cannot run.
    #[error("Valgrind cannot run EVEX (AVX-512) instructions")]
    Evex,
    /// Another instruction Valgrind cannot run; the log's line.
    #[error("Valgrind met an instruction it cannot run ({0})")]
    Unhandled(String),
}

/// One thread's buffer as the tool wrote it.
#[derive(Debug, Clone)]
pub struct VgThread {
    /// The thread's id in the kernel.
    pub os_tid: i32,
    /// Where it stood last.
    pub last_pc: u64,
    /// Records the buffer holds.
    pub capacity: u64,
    /// Records written in all.
    pub written: u64,
    /// Branch records written in all (context records aside).
    pub branches: u64,
    /// Oldest first.
    pub records: Vec<BtsRecord>,
}

/// One process's trace.
#[derive(Debug, Clone)]
pub struct VgTrace {
    /// The process.
    pub pid: i32,
    /// The thread that ran last (the one a fatal signal struck).
    pub last_tid: i32,
    /// Its threads' buffers.
    pub threads: Vec<VgThread>,
    /// Its executable mappings (kept after munmap).
    pub maps: Vec<Mapping>,
    /// Code pages the client executed, as translated.
    pub pages: Vec<(u64, Vec<u8>)>,
    /// The program's command line (the executable, then its arguments).
    pub command: Vec<String>,
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], VgError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or(VgError::Truncated { at: self.pos })?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u64(&mut self) -> Result<u64, VgError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn count(&mut self, unit: usize) -> Result<usize, VgError> {
        let n = self.u64()?;
        let left = (self.b.len() - self.pos) as u64;
        if n.saturating_mul(unit as u64) > left {
            return Err(VgError::BadCount { count: n });
        }
        Ok(n as usize)
    }
}

impl VgTrace {
    /// Parses a file the tool wrote. Never panics on bad input.
    pub fn parse(b: &[u8]) -> Result<VgTrace, VgError> {
        let mut r = Reader { b, pos: 0 };
        if r.take(8)? != b"BTSVG003" {
            return Err(VgError::BadMagic);
        }
        let pid = r.u64()? as i32;
        let last_tid = r.u64()? as i32;
        let nthreads = r.count(48)?;
        let nmaps = r.count(32)?;
        let npages = r.count(8 + 4096)?;
        let mut threads = Vec::with_capacity(nthreads);
        for _ in 0..nthreads {
            let os_tid = r.u64()? as i32;
            let last_pc = r.u64()?;
            let capacity = r.u64()?;
            let written = r.u64()?;
            let branches = r.u64()?;
            let count = r.count(BTS_RECORD_SIZE)?;
            let records = BtsRecord::parse_all(r.take(count * BTS_RECORD_SIZE)?)?;
            threads.push(VgThread { os_tid, last_pc, capacity, written, branches, records });
        }
        let mut maps = Vec::with_capacity(nmaps);
        for _ in 0..nmaps {
            let (start, end, offset) = (r.u64()?, r.u64()?, r.u64()?);
            let len = r.count(1)?;
            let path = String::from_utf8_lossy(r.take(len)?).into_owned();
            maps.push(Mapping { start, end, offset, path });
        }
        let mut pages = Vec::with_capacity(npages);
        for _ in 0..npages {
            let addr = r.u64()?;
            pages.push((addr, r.take(4096)?.to_vec()));
        }
        let nargs = r.count(8)?;
        let mut command = Vec::with_capacity(nargs);
        for _ in 0..nargs {
            let len = r.count(1)?;
            command.push(String::from_utf8_lossy(r.take(len)?).into_owned());
        }
        Ok(VgTrace { pid, last_tid, threads, maps, pages, command })
    }
}

/// What Valgrind said about the end of the client (from its log).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VgEnd {
    /// The fatal signal.
    pub signal: Option<i32>,
    /// The fault address Valgrind reported.
    pub fault_addr: Option<u64>,
    /// The instruction the signal struck (the first frame of the log's stack).
    pub pc: Option<u64>,
    /// What stopped Valgrind itself.
    pub problem: Option<VgProblem>,
    /// The process that started this one (the log's "Parent PID").
    pub parent: Option<i32>,
    /// The exit code the tool logged at the end (meaningless after a
    /// fatal signal, which `signal` tells).
    pub exit_code: Option<i32>,
    /// The command line Valgrind started with (the log's "Command", words
    /// split at unescaped spaces).
    pub command: Vec<String>,
}

/// Reads Valgrind's log: the fatal signal, its address, unsupported code.
pub fn parse_log(log: &str) -> VgEnd {
    let mut end = VgEnd::default();
    for line in log.lines() {
        let l = line.split_once("== ").map_or(line, |(_, r)| r).trim();
        if let Some(rest) = l.strip_prefix("bts: exit code ") {
            end.exit_code = rest.trim().parse().ok();
        } else if let Some(rest) = l.strip_prefix("Parent PID: ") {
            end.parent = end.parent.or_else(|| rest.trim().parse().ok());
        } else if let Some(rest) = l.strip_prefix("Command: ") {
            if end.command.is_empty() {
                end.command = split_escaped(rest);
            }
        } else if let Some(rest) = l.strip_prefix("Process terminating with default action of signal ") {
            end.signal = rest.split_whitespace().next().and_then(|n| n.parse().ok());
        } else if let Some(pos) = l.find("at address 0x") {
            // The data address of SIGSEGV and SIGBUS. (For SIGFPE Valgrind
            // names a host address here: not the program's.)
            let data = matches!(end.signal, Some(libc::SIGSEGV) | Some(libc::SIGBUS));
            if data && end.fault_addr.is_none() {
                end.fault_addr = hex_after(&l[pos + 11..]);
            }
        } else if let Some(frame) = l.strip_prefix("at 0x") {
            // The first frame of the fatal signal's stack: where it struck.
            if end.signal.is_some() && end.pc.is_none() {
                end.pc = hex_after(&format!("0x{frame}"));
            }
        } else if l.contains("unhandled instruction bytes: 0x62") {
            end.problem = Some(VgProblem::Evex);
        } else if l.contains("unhandled instruction bytes") && end.problem.is_none() {
            end.problem = Some(VgProblem::Unhandled(l.trim().to_string()));
        }
    }
    end
}

/// Valgrind's "Command:" line as words: it escapes spaces in a word with
/// a backslash.
fn split_escaped(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            ' ' => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// The hex number at the start of `s` (`0x` prefixed).
fn hex_after(s: &str) -> Option<u64> {
    let hex: String = s.strip_prefix("0x")?.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    u64::from_str_radix(&hex, 16).ok()
}

/// The Valgrind launcher, if installed.
fn valgrind_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("valgrind")).find(|p| p.is_file())
}

fn preload_lib() -> Option<PathBuf> {
    PRELOAD_DIRS.iter().map(|d| Path::new(d).join(PRELOAD)).find(|p| p.exists())
}

/// Why the backend cannot run here, if it cannot.
pub fn unavailable() -> Option<Unavailable> {
    if TOOL.is_empty() {
        return Some(Unavailable::NotBuilt);
    }
    if valgrind_binary().is_none() {
        return Some(Unavailable::NoValgrind);
    }
    if preload_lib().is_none() {
        return Some(Unavailable::NoPreload);
    }
    None
}

/// How to run the program.
#[derive(Debug, Clone)]
pub struct VgOptions {
    /// Records per thread buffer (what ds-alloc asked for).
    pub records: u64,
    /// Child processes are traced too.
    pub follow_children: bool,
    /// Address-space randomisation off.
    pub no_aslr: bool,
}

impl VgOptions {
    /// Keeps the traces of processes other than the first.
    pub fn keeps(&self, pid: i32, root: i32) -> bool {
        self.follow_children || pid == root
    }
}

/// The outcome of a run: the exit status, what Valgrind's log says, and
/// every trace file the tool wrote (one per process, and per exec), read
/// when asked for ([`VgRun::load_all`], or one process's with
/// [`VgRun::load`]: a step of thousands of processes need not hold them all).
pub struct VgRun {
    /// How Valgrind ended.
    pub status: ExitStatus,
    /// Valgrind's pid (the program's).
    pub pid: i32,
    /// What its log says of the end.
    pub end: VgEnd,
    /// What each process's Valgrind log says, by pid (the first process's is `end`).
    pub ends: std::collections::HashMap<i32, VgEnd>,
    /// The tool's traces, one per process image (after [`VgRun::load_all`]).
    pub traces: Vec<VgTrace>,
    /// Files that could not be read, with why.
    pub bad: Vec<(PathBuf, VgError)>,
    /// The trace files, by pid, in (pid, image) order.
    files: Vec<(i32, PathBuf)>,
    /// Processes by the time their log was last written (their end).
    end_order: Vec<i32>,
    /// Processes still running under Valgrind when the first one ended.
    left_running: Vec<i32>,
    /// The private folder they are in, removed with the run; kept when
    /// processes run on (Valgrind reopens their logs there at each fork
    /// and exec, and ends them if it cannot).
    work: Result<tempfile::TempDir, PathBuf>,
}

impl VgRun {
    /// Reads every trace file into `traces` (unreadable ones into `bad`).
    pub fn load_all(&mut self) {
        for (_, p) in &self.files {
            match read_trace(p) {
                Ok(t) => self.traces.push(t),
                Err(e) => self.bad.push((p.clone(), e)),
            }
        }
    }

    /// The images of process `pid`, in order, and the files of it that
    /// could not be read.
    pub fn load(&self, pid: i32) -> (Vec<VgTrace>, Vec<(PathBuf, VgError)>) {
        let mut traces = Vec::new();
        let mut bad = Vec::new();
        for (_, p) in self.files.iter().filter(|(p, _)| *p == pid) {
            match read_trace(p) {
                Ok(t) => traces.push(t),
                Err(e) => bad.push((p.clone(), e)),
            }
        }
        (traces, bad)
    }

    /// Processes in the order they ended (the time of their log's last
    /// write), those still running last.
    pub fn end_order(&self) -> &[i32] {
        &self.end_order
    }

    /// Processes other than the first that were still running under
    /// Valgrind when the first one ended (daemons it left behind).
    pub fn left_running(&self) -> &[i32] {
        &self.left_running
    }

    /// The folder kept for the processes left running, if any.
    pub fn kept_folder(&self) -> Option<&Path> {
        self.work.as_ref().err().map(PathBuf::as_path)
    }

    /// Whether the tool wrote a trace for `pid`.
    pub fn has_trace(&self, pid: i32) -> bool {
        self.files.iter().any(|(p, _)| *p == pid)
    }
}

fn read_trace(p: &Path) -> Result<VgTrace, VgError> {
    std::fs::read(p).map_err(|e| VgError::io(p.display().to_string(), e)).and_then(|b| VgTrace::parse(&b))
}

/// Runs `argv` under the tool; the program's stdio is bts's. `signal_to_pass`
/// is polled while the program runs: a signal it returns is sent on to the
/// program (bts itself stays to read the trace).
pub fn run(
    tool: &Installed,
    argv: &[std::ffi::OsString],
    o: &VgOptions,
    signal_to_pass: &mut dyn FnMut() -> Option<i32>,
) -> Result<VgRun, VgError> {
    let lib = tool.dir();
    // A private (0700, random name) folder for what the tool and Valgrind write.
    let tmp = std::env::temp_dir();
    let work_dir = tempfile::Builder::new()
        .prefix("bts-vg-")
        .tempdir_in(&tmp)
        .map_err(|e| VgError::io(tmp.display().to_string(), e))?;
    let work = work_dir.path().to_path_buf();
    let mut cmd = if o.no_aslr {
        let mut c = Command::new("setarch");
        c.args(["-R", "valgrind"]);
        c
    } else {
        Command::new("valgrind")
    };
    cmd.env("VALGRIND_LIB", lib)
        .arg("--tool=bts")
        // Chased branches leave no exit behind (a call to the next
        // instruction, for one, leaves no trace at all): every branch ends
        // a superblock.
        .arg("--vex-guest-chase=no")
        .arg(format!("--bts-out={}", work.join("t").display()))
        .arg(format!("--bts-records={}", o.records.max(1)))
        .arg(format!("--log-file={}", work.join("vg.%p.log").display()));
    // An exec keeps the process: follow it (as the ptrace recorders do).
    // Valgrind cannot tell an exec of the program from one of its children,
    // so children run under the tool too; their traces are kept only when
    // they are followed.
    cmd.arg("--trace-children=yes");
    cmd.arg("--").args(argv);
    let mut child = cmd.spawn().map_err(|e| VgError::io("cannot run valgrind", e))?;
    let pid = child.id() as i32;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(VgError::io("waiting for valgrind", e)),
        }
        if let Some(sig) = signal_to_pass() {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(pid, sig) };
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let mut files = Vec::new();
    let mut ends = std::collections::HashMap::new();
    let mut written = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&work)
        .map_err(|e| VgError::io(work.display().to_string(), e))?
        .flatten()
        .map(|e| e.path())
        .collect();
    // PREFIX.PID.N: in (pid, n) order, so a process's execs come in order.
    let key = |p: &PathBuf| -> (u64, u64, String) {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut parts = name.split('.').skip(1);
        let num = |s: Option<&str>| s.and_then(|x| x.parse().ok()).unwrap_or(u64::MAX);
        (num(parts.next()), num(parts.next()), name)
    };
    entries.sort_by_key(key);
    for p in entries {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(p_pid) = name.strip_prefix("vg.").and_then(|r| r.strip_suffix(".log")) {
            if let Ok(p_pid) = p_pid.parse::<i32>() {
                let when = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
                written.push((when, p_pid));
                ends.insert(p_pid, parse_log(&std::fs::read_to_string(&p).unwrap_or_default()));
            }
        } else if let Some(rest) = name.strip_prefix("t.") {
            let owner = rest.split('.').next().and_then(|n| n.parse::<i32>().ok());
            files.push((owner.unwrap_or(-1), p));
        }
    }
    let end = ends.get(&pid).cloned().unwrap_or_default();
    // No end in the log (the tool logs the exit status, Valgrind a fatal
    // signal) and still there: left running.
    let mut left_running: Vec<i32> = ends
        .iter()
        .filter(|(&p, e)| p != pid && e.exit_code.is_none() && e.signal.is_none())
        // SAFETY: signal 0 only checks that the process exists.
        .filter(|(&p, _)| unsafe { libc::kill(p, 0) } == 0)
        .map(|(&p, _)| p)
        .collect();
    left_running.sort_unstable();
    written.sort();
    let mut end_order: Vec<i32> =
        written.into_iter().map(|(_, p)| p).filter(|p| !left_running.contains(p)).collect();
    end_order.extend(&left_running);
    let work = if left_running.is_empty() { Ok(work_dir) } else { Err(work_dir.keep()) };
    Ok(VgRun {
        status,
        pid,
        end,
        ends,
        traces: Vec::new(),
        bad: Vec::new(),
        files,
        end_order,
        left_running,
        work,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Vec<u8> {
        let mut b = b"BTSVG003".to_vec();
        for v in [42u64, 42, 1, 1, 1] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for v in [42u64, 0x401000, 10, 12, 11, 2] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&BtsRecord::branch(1, 2).to_bytes());
        b.extend_from_slice(&BtsRecord::branch(3, 4).to_bytes());
        for v in [0x400000u64, 0x401000, 0, 4] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(b"/bin");
        b.extend_from_slice(&0x401000u64.to_le_bytes());
        b.extend_from_slice(&[0x90; 4096]);
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&4u64.to_le_bytes());
        b.extend_from_slice(b"prog");
        b
    }

    #[test]
    fn parses_and_rejects() {
        let t = VgTrace::parse(&file()).unwrap();
        assert_eq!((t.pid, t.last_tid), (42, 42));
        assert_eq!(t.threads[0].records, vec![BtsRecord::branch(1, 2), BtsRecord::branch(3, 4)]);
        assert_eq!((t.threads[0].written, t.threads[0].branches, t.threads[0].capacity), (12, 11, 10));
        assert_eq!(t.maps[0].path, "/bin");
        assert_eq!(t.pages[0].0, 0x401000);
        assert_eq!(t.command, vec!["prog".to_string()]);
        let good = file();
        for n in 0..good.len() {
            assert!(VgTrace::parse(&good[..n]).is_err(), "prefix {n}");
        }
        let mut huge = good.clone();
        huge[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(VgTrace::parse(&huge).is_err());
    }

    #[test]
    fn reads_valgrinds_log() {
        let log = "==9== Process terminating with default action of signal 11 (SIGSEGV)\n\
                   ==9==  Access not within mapped region at address 0x41414141\n==9==    at 0x41414141: ???\n";
        let e = parse_log(log);
        assert_eq!((e.signal, e.fault_addr, e.pc), (Some(11), Some(0x41414141), Some(0x41414141)));
        let fpe = "==9== Process terminating with default action of signal 8 (SIGFPE)\n\
                   ==9==  Integer divide by zero at address 0x10028EDED6\n\
                   ==9==    at 0x40131E: main (faults.c:36)\n";
        let e = parse_log(fpe);
        assert_eq!((e.signal, e.fault_addr, e.pc), (Some(8), None, Some(0x40131e)));
        let head =
            "==7== Command: sh -c /bin/true;\\ exit\\ 0\n==7== Parent PID: 6\n==7== bts: exit code 3\n";
        let e = parse_log(head);
        assert_eq!((e.parent, e.exit_code), (Some(6), Some(3)));
        assert_eq!(e.command, vec!["sh", "-c", "/bin/true; exit 0"]);
        let e = parse_log("vex amd64->IR: unhandled instruction bytes: 0x62 0xF1 0x7D 0x48\n");
        assert_eq!(e.problem, Some(VgProblem::Evex));
    }
}
