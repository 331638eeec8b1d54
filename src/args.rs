//! The command line: every subcommand and option, as clap reads them.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "bts", version, about = "Branch-trace flight recorder: how did the process get here?")]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Launch a program with every thread traced; report if it crashes.
    Run {
        #[command(flatten)]
        rec: RecordArgs,
        /// Also trace child processes.
        #[arg(long)]
        follow_fork: bool,
        /// Disable address-space randomisation for the program.
        #[arg(long)]
        no_aslr: bool,
        /// Record through the bts daemon (`bts daemon`) at this socket
        /// (default: your own daemon's, else /run/bts.sock), beside any
        /// other tracer of the program.
        #[arg(long, value_name = "SOCKET", num_args = 0..=1, require_equals = true, default_missing_value = "")]
        daemon: Option<PathBuf>,
        /// The program and its arguments.
        #[arg(last = true, required = true, num_args = 1..)]
        command: Vec<OsString>,
    },
    /// Run a CI step (a test suite, a build) with every process traced;
    /// report every process that crashed, where CI systems show it.
    Ci(CiArgs),
    /// Trace a running process until it crashes, exits, or bts is interrupted.
    Attach {
        #[command(flatten)]
        rec: RecordArgs,
        /// Record through the bts daemon (`bts daemon`) at this socket
        /// (default: your own daemon's, else /run/bts.sock), beside any
        /// other tracer of the program.
        #[arg(long, value_name = "SOCKET", num_args = 0..=1, require_equals = true, default_missing_value = "")]
        daemon: Option<PathBuf>,
        pid: i32,
    },
    /// Own all branch tracing on this machine: tracers (`bts attach
    /// --daemon`, `bts run --daemon`, legacy PTRACE_BTS_* clients) share
    /// it as clients, each with its own buffers and charges.
    Daemon {
        /// The socket (default: /run/bts.sock for root, else $XDG_RUNTIME_DIR/bts.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Milliseconds a client may take to finish a request it began,
        /// or to take a reply, before it is dropped.
        #[arg(long, default_value_t = 10_000, hide = true)]
        io_timeout_ms: u64,
    },
    /// Ask a running daemon what it traces: its tracers, their buffers, or the traced tasks.
    Ctl {
        /// The daemon's socket (default: your own daemon's, else /run/bts.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// What to show.
        #[arg(value_enum)]
        what: CtlWhat,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// What a trace file holds: processes, threads, CPUs, records, time
    /// span, modules, and the bytes of each kind of section.
    Info {
        file: PathBuf,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Cut a trace to a range of each buffer's branches (any size of
    /// trace, in bounded memory); the code the kept records need is kept.
    Cut {
        file: PathBuf,
        /// The first N branches of each buffer.
        #[arg(long, value_name = "N", group = "how", value_parser = crate::cmd::cut::parse_count)]
        first: Option<u64>,
        /// The last N branches of each buffer.
        #[arg(long, value_name = "N", group = "how", value_parser = crate::cmd::cut::parse_count)]
        last: Option<u64>,
        /// Branches A up to (not including) B of each buffer, counted from 0.
        #[arg(long, value_name = "A..B", group = "how", value_parser = crate::cmd::cut::parse_branch_range)]
        range: Option<(u64, u64)>,
        /// The branches taken between clocks T1 and T2 (ns, as `bts info`
        /// shows them; a branch's time is its thread's last arrival on a CPU).
        #[arg(long, value_name = "T1..T2", group = "how", value_parser = crate::cmd::cut::parse_range)]
        time: Option<(u64, u64)>,
        /// The new trace file (never an existing one).
        #[arg(short = 'o', long, required = true)]
        output: PathBuf,
    },
    /// Keep the records whose ends lie in a module, a function or kernel
    /// space, or the buffers of a thread or process (any size of trace, in
    /// bounded memory); context records are kept.
    Filter {
        file: PathBuf,
        /// A module: its path, or its file name (`libc.so.6`).
        #[arg(long, group = "what")]
        module: Option<String>,
        /// A function, as the report names it.
        #[arg(long, group = "what")]
        function: Option<String>,
        /// One thread's buffers.
        #[arg(long, group = "what")]
        tid: Option<i32>,
        /// One process's buffers.
        #[arg(long, group = "what")]
        pid: Option<i32>,
        /// Records with an end in kernel space (root or perf_event_paranoid <= 1).
        #[arg(long, group = "what")]
        kernel: bool,
        /// The new trace file (never an existing one).
        #[arg(short = 'o', long, required = true)]
        output: PathBuf,
    },
    /// Split a trace into one file per thread, process or CPU buffer (any
    /// size of trace, in bounded memory).
    Split {
        file: PathBuf,
        #[arg(long, value_enum)]
        by: SplitBy,
        /// The folder for the parts (made if needed; no file is overwritten).
        #[arg(short = 'o', long, required = true)]
        output: PathBuf,
    },
    /// Merge traces of one run (its processes, or split parts) into one,
    /// ordered by when each began.
    Merge {
        #[arg(required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// The new trace file (never an existing one).
        #[arg(short = 'o', long, required = true)]
        output: PathBuf,
    },
    /// Print the last branches recorded in a trace file.
    LastBranch {
        #[command(flatten)]
        out: OutputArgs,
        /// Only this thread.
        #[arg(long, conflicts_with = "cpu")]
        thread: Option<i32>,
        /// The catch-all buffer of this CPU (see --per-cpu-buffer).
        #[arg(long)]
        cpu: Option<u32>,
        file: PathBuf,
    },
    /// The recorded instructions or function calls, as GDB's `record
    /// instruction-history` / `record function-call-history` print them.
    History {
        file: PathBuf,
        /// GDB's ranges: N (ten from N), N,M, N,+K, N,-K. Default: the last ten.
        range: Option<String>,
        /// The instruction history (the default).
        #[arg(long, conflicts_with = "calls")]
        insns: bool,
        /// The function-call history.
        #[arg(long)]
        calls: bool,
        #[arg(long)]
        thread: Option<i32>,
        #[arg(long)]
        json: bool,
        /// Show kernel addresses (root or perf_event_paranoid <= 1 only).
        #[arg(long)]
        kernel: bool,
        /// --insns: interleave source lines (GDB /s).
        #[arg(long)]
        source: bool,
        /// --insns: raw instruction bytes (GDB /r).
        #[arg(long)]
        raw: bool,
        /// --insns: no function names (GDB /f).
        #[arg(long)]
        no_fn: bool,
        /// --insns: Intel syntax instead of AT&T.
        #[arg(long)]
        intel: bool,
        /// --calls: source lines of each segment (GDB /l).
        #[arg(long)]
        lines: bool,
        /// --calls: instruction ranges (GDB /i).
        #[arg(long)]
        insn_range: bool,
        /// --calls: indent by call depth (GDB /c).
        #[arg(long)]
        indent: bool,
    },
    /// Export the call timeline: chrome (Perfetto), folded stacks, or JSON.
    Export {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = crate::cmd::export::ExportFormat::Chrome)]
        format: crate::cmd::export::ExportFormat,
        #[arg(long)]
        thread: Option<i32>,
        /// Write here instead of stdout.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
    /// Serve a saved trace, or a process traced live, to GDB over the remote
    /// protocol: GDB's record btrace, instruction and call history,
    /// reverse-stepi and bt work on it.
    Gdbserver {
        /// Talk on stdin/stdout: `target remote | bts gdbserver --stdio FILE`.
        #[arg(long, required_unless_present = "listen", conflicts_with = "listen")]
        stdio: bool,
        /// Wait for GDB on PORT (127.0.0.1) or HOST:PORT (another address
        /// lets anyone who reaches it read and control the target).
        #[arg(long, value_name = "PORT|HOST:PORT")]
        listen: Option<String>,
        #[command(flatten)]
        target: GdbTarget,
    },
    /// Start GDB on a saved trace, or on a process traced live, with bts's
    /// stub and `last-branch` set up.
    Gdb {
        /// The GDB to run.
        #[arg(long, default_value = "gdb")]
        gdb: PathBuf,
        /// One more argument for GDB (repeat it: --gdb-arg=-batch --gdb-arg=-x --gdb-arg=FILE).
        #[arg(long = "gdb-arg", allow_hyphen_values = true)]
        gdb_args: Vec<String>,
        #[command(flatten)]
        target: GdbTarget,
    },
    /// Print the GDB script that defines `last-branch` (source it in GDB).
    Gdbinit,
    /// Trace a built-in crashing program end to end.
    Demo {
        #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
        backend: BackendArg,
        #[arg(long)]
        json: bool,
    },
    /// What this machine offers for branch tracing, and why.
    Doctor {
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    #[command(hide = true, name = "__demo-crash")]
    DemoCrash,
}

/// What `bts ctl` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CtlWhat {
    /// Each tracer: its client, charge and limit, processes and buffers.
    Tracers,
    /// Each buffer: its owner, task, size and records.
    Buffers,
    /// Each traced process and its tracers.
    Tasks,
}

/// `bts ci`: the options of a traced CI step.
#[derive(Args, Clone)]
pub struct CiArgs {
    /// Recorder to use (`auto`: hardware BTS, else Valgrind, else fast).
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
    /// Size of each thread's circular buffer (bytes; K, M, G suffixes).
    #[arg(long, default_value = "64K", value_parser = parse_size)]
    pub buffer_size: usize,
    /// Where each crashing process's trace file goes (created if needed).
    #[arg(long, default_value = "bts-artifacts")]
    pub artifacts: PathBuf,
    /// Which processes leave a trace file: those that crashed, or all.
    #[arg(long, value_enum, default_value_t = Keep::Crash)]
    pub keep: Keep,
    /// At most this many trace files: the oldest are removed first, and
    /// the report says so.
    #[arg(long, value_name = "N")]
    pub max_artifacts: Option<usize>,
    /// Write one JSON document of the step's crashes here, at the end.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write a JUnit XML report here: one test case per crashed process.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Branches shown per crash.
    #[arg(short = 'n', long = "branches", default_value_t = 8)]
    pub branches: usize,
    /// Run bts and every traced process on one CPU (ptrace recorders:
    /// faster stops under a hypervisor, but the step sees one CPU, and
    /// `make -j$(nproc)` runs one job at a time).
    #[arg(long)]
    pub pin: bool,
    /// The step: a command and its arguments.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<OsString>,
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum SplitBy {
    /// One file per thread buffer.
    Thread,
    /// One file per process.
    Process,
    /// One file per CPU catch-all buffer.
    Cpu,
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Keep {
    /// Only processes that died of a signal leave a trace file.
    Crash,
    /// Every process leaves one (mind --max-artifacts).
    Always,
}

impl CiArgs {
    /// The recording options `run` would take for the same choices.
    pub fn record_args(&self) -> RecordArgs {
        RecordArgs {
            out: OutputArgs { branches: self.branches, insns: 12, json: false, all_threads: false },
            backend: self.backend,
            buffer_size: self.buffer_size,
            output: None,
            json_file: None,
            report: ReportWhen::Never,
            per_cpu_buffer: None,
            insn_log: None,
            no_pin: !self.pin,
            stack_size: ptrace_shim::DEFAULT_STACK_BYTES,
        }
    }
}

/// What a GDB stub serves: a saved trace, a running process, or a program
/// it launches.
#[derive(Args, Clone)]
pub struct GdbTarget {
    /// Trace this running process live.
    #[arg(long, value_name = "PID", conflicts_with = "file")]
    pub attach: Option<i32>,
    /// Each thread's circular buffer when tracing live (K, M, G suffixes).
    #[arg(long, default_value = "64K", value_parser = parse_size)]
    pub buffer_size: usize,
    /// The trace file (post-mortem).
    #[arg(required_unless_present_any = ["attach", "command"], conflicts_with = "command")]
    pub file: Option<PathBuf>,
    /// From a trace file, GDB reads each thread's newest N branches (`all`:
    /// every one). GDB decodes some 8000 branches a second and holds every
    /// instruction, so a whole large trace would keep it busy for minutes;
    /// `bts history FILE` shows all of them.
    #[arg(
        long,
        value_name = "N|all",
        default_value = "32768",
        value_parser = parse_branch_cap,
        conflicts_with_all = ["attach", "command"]
    )]
    pub gdb_branches: BranchCap,
    /// Launch this program traced live.
    #[arg(last = true, num_args = 1..)]
    pub command: Vec<OsString>,
}

#[derive(Args, Clone)]
pub struct OutputArgs {
    /// How many branches to show.
    #[arg(short = 'n', long = "branches", default_value_t = 16)]
    pub branches: usize,
    /// How many instructions before the stop to show.
    #[arg(long = "insns", default_value_t = 12)]
    pub insns: usize,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// Show every thread, not only the crashed one.
    #[arg(long)]
    pub all_threads: bool,
}

#[derive(Args, Clone)]
pub struct RecordArgs {
    #[command(flatten)]
    pub out: OutputArgs,
    /// Recorder to use.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
    /// Size of each thread's circular buffer (bytes; K, M, G suffixes).
    #[arg(long, default_value = "64K", value_parser = parse_size)]
    pub buffer_size: usize,
    /// Trace file to write (default bts-<pid>.bts).
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Also write the JSON report to this file, once, at the end (stdout is
    /// shared with the program; this file is not).
    #[arg(long)]
    pub json_file: Option<PathBuf>,
    /// When to print the report.
    #[arg(long, value_enum, default_value_t = ReportWhen::Crash)]
    pub report: ReportWhen,
    /// Also keep a catch-all buffer of this size per CPU, for branches of
    /// traced tasks that no buffer follows (kept as streams of their own).
    #[arg(long, value_parser = parse_size)]
    pub per_cpu_buffer: Option<usize>,
    /// With --backend step: log every instruction address of the first
    /// thread (u64 little-endian) to this file, as ground truth.
    #[arg(long, hide = true)]
    pub insn_log: Option<PathBuf>,
    /// Do not run bts and the traced threads on one CPU (slower under a
    /// hypervisor, but the program keeps its own CPU affinity).
    #[arg(long)]
    pub no_pin: bool,
    /// Stack bytes kept (above the stack pointer) of each thread stopped
    /// when the trace is saved, so that `bts gdb` can unwind after the
    /// process is gone.
    #[arg(long, default_value = "64K", value_parser = parse_size)]
    pub stack_size: usize,
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum BackendArg {
    /// The best recorder this machine offers.
    Auto,
    /// ptrace, one stop per branch.
    Fast,
    /// ptrace single-step of every instruction (slow, exact).
    Step,
    /// Intel BTS through perf_event_open (hardware).
    Perf,
    /// The bts Valgrind tool (launched programs only).
    Valgrind,
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReportWhen {
    /// Only when the program dies of a signal.
    Crash,
    /// Also on a normal exit.
    Always,
    /// Never (the trace file is still written on a crash).
    Never,
}

/// Why a size given on the command line was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// A suffix other than K, M or G.
    #[error("unknown size suffix '{0}' (use K, M or G)")]
    Suffix(char),
    /// Not a number before the suffix.
    #[error("'{0}' is not a size")]
    NotANumber(String),
    /// More bytes than this machine can address.
    #[error("{0} is too large")]
    TooLarge(String),
}

/// How many of each thread's newest branches GDB reads: `None`, all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BranchCap(pub Option<u64>);

impl std::fmt::Display for BranchCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("all"),
        }
    }
}

/// Parses `--gdb-branches`: a positive count, or `all`.
pub fn parse_branch_cap(s: &str) -> Result<BranchCap, String> {
    if s == "all" {
        return Ok(BranchCap(None));
    }
    crate::cmd::cut::parse_count(s).map(|n| BranchCap(Some(n))).map_err(|e| format!("{e}, nor `all`"))
}

/// Parses `4096`, `64K`, `1M`, `1G` (binary units).
pub fn parse_size(s: &str) -> Result<usize, SizeError> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: usize = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(SizeError::Suffix(c)),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: usize = num.trim().parse().map_err(|_| SizeError::NotANumber(s.into()))?;
    n.checked_mul(mult).ok_or_else(|| SizeError::TooLarge(s.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("12Q"), Err(SizeError::Suffix('Q')));
        assert_eq!(parse_size("K"), Err(SizeError::NotANumber("K".into())));
        assert!(parse_size("99999999999999999999G").is_err());
        assert_eq!(parse_size("17179869184G"), Err(SizeError::TooLarge("17179869184G".into())));
    }
}
