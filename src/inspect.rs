//! `bts history` and `bts export`: decoding saved traces.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bts_reader::{StreamKind, TraceFile};

use crate::analyze::{analyze, parse_range, Analysis};
use crate::history::{self, CallOpts, InsnOpts};
use crate::trace::{images, pick_thread, Image};

/// How many entries a history shows by default (GDB's history size).
const HISTORY_SIZE: u64 = 10;

fn load(file: &Path) -> Result<TraceFile, String> {
    TraceFile::read(file).map_err(|e| match e {
        bts_reader::Error::Io { .. } => e.to_string(),
        e => format!("{}: {e}", file.display()),
    })
}

/// `--kernel` only for a caller allowed to see kernel addresses.
fn kernel_allowed(kernel: bool) -> Result<bool, String> {
    if kernel && !decode::kernel::may_see_kernel() {
        return Err("--kernel needs root or kernel.perf_event_paranoid <= 1".into());
    }
    Ok(kernel)
}

/// A progress line on stderr, for long work, when stderr is a terminal.
fn progress_printer(what: &'static str) -> impl FnMut(usize, usize) {
    let tty = std::io::stderr().is_terminal();
    move |done, total| {
        if tty && total > 200_000 {
            crate::out::err(&format!("\r{what}: {:>3}%", done * 100 / total.max(1)));
            if done >= total {
                crate::out::err(&format!("\r{:width$}\r", "", width = what.len() + 6));
            }
            let _ = std::io::stderr().flush();
        }
    }
}

fn image_of<'a>(
    imgs: &'a std::collections::HashMap<(i32, u32), Image>,
    kind: &StreamKind,
) -> Option<&'a Image> {
    match *kind {
        StreamKind::Thread { pid, generation, .. } => imgs.get(&(pid, generation)),
        StreamKind::Cpu { .. } => None,
    }
}

pub struct HistoryArgs {
    pub file: PathBuf,
    pub calls: bool,
    pub range: Option<String>,
    pub thread: Option<i32>,
    pub json: bool,
    pub kernel: bool,
    pub insn: InsnOpts,
    pub call: CallOpts,
}

pub fn history(a: &HistoryArgs) -> ExitCode {
    match history_inner(a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crate::errln!("bts: {e}");
            ExitCode::FAILURE
        }
    }
}

fn history_inner(a: &HistoryArgs) -> Result<(), String> {
    let tf = load(&a.file)?;
    let keep_kernel = kernel_allowed(a.kernel)?;
    let stream = pick_thread(&tf, a.thread)?;
    let imgs = images(&tf);
    let img = image_of(&imgs, &stream.kind);
    let an = analyze(stream, img, keep_kernel, &mut progress_printer("decoding"));
    let count = if a.calls { an.segments.len() } else { an.entries.len() } as u64;
    if count == 0 {
        return Err("the trace of this thread holds no branches".into());
    }
    let (lo, hi) = parse_range(a.range.as_deref(), count, HISTORY_SIZE)?;
    let mut out = std::io::stdout().lock();
    let text = if a.json {
        let v = if a.calls {
            history::call_json(&an, img, lo, hi)
        } else {
            history::insn_json(&an, img, lo, hi, a.insn.intel)
        };
        serde_json::to_string_pretty(&v).expect("serializes") + "\n"
    } else {
        let lines = if a.calls {
            history::call_history(&an, img, lo, hi, a.call)
        } else {
            history::insn_history(&an, img, lo, hi, a.insn)
        };
        lines.into_iter().map(|l| l + "\n").collect()
    };
    out.write_all(text.as_bytes()).map_err(|e| format!("writing: {e}"))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum ExportFormat {
    /// Chrome Trace Event JSON (Perfetto, chrome://tracing).
    Chrome,
    /// Folded stacks weighted by instructions (flamegraph.pl, inferno).
    Folded,
    /// Function segments as JSON.
    Json,
}

pub fn export(file: &Path, format: ExportFormat, thread: Option<i32>, output: Option<&Path>) -> ExitCode {
    let run = || -> Result<(), String> {
        let tf = load(file)?;
        let imgs = images(&tf);
        let streams: Vec<_> = match thread {
            Some(_) => vec![pick_thread(&tf, thread)?],
            None => tf.thread_streams().collect(),
        };
        let mut progress = progress_printer("decoding");
        let analyses: Vec<Analysis> =
            streams.iter().map(|s| analyze(s, image_of(&imgs, &s.kind), false, &mut progress)).collect();
        let text = match format {
            ExportFormat::Chrome => serde_json::to_string(&crate::export::chrome(&analyses)).expect("json"),
            ExportFormat::Folded => crate::export::folded(&analyses),
            ExportFormat::Json => {
                serde_json::to_string_pretty(&crate::export::plain(&analyses)).expect("json")
            }
        };
        match output {
            Some(p) => bts_reader::outfile::write(p, text.as_bytes()).map_err(|e| e.to_string()),
            None => std::io::stdout().lock().write_all(text.as_bytes()).map_err(|e| format!("writing: {e}")),
        }
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crate::errln!("bts: {e}");
            ExitCode::FAILURE
        }
    }
}
