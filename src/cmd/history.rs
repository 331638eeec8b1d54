//! `bts history FILE [RANGE]`: GDB's `record instruction-history` and
//! `record function-call-history`, line for line.

use std::io::Write;
use std::process::ExitCode;

use analysis::history::{self, CallOpts, InsnOpts};
use analysis::model::{image_of, images};
use analysis::range::parse_range;
use analysis::select;

use crate::load::{kernel_allowed, progress_printer, InspectError};
use crate::streamed::{thread_of, Source, Streamed};

/// The thread a history shows, ready to read.
struct Thread<'t> {
    /// Kernel records kept (`--kernel`).
    keep_kernel: bool,
    /// Its place in the file.
    ordinal: usize,
    pid: i32,
    tid: i32,
    /// Where it stood.
    last_pc: Option<u64>,
    img: Option<&'t analysis::model::Image>,
    src: Source,
}

/// Opens the file without its records and calls `f` with the thread asked for.
fn with_thread<T>(
    a: &HistoryArgs,
    f: impl FnOnce(&Streamed, Thread<'_>) -> Result<T, InspectError>,
) -> Result<T, InspectError> {
    let keep_kernel = kernel_allowed(a.kernel)?;
    let t = Streamed::open(&a.file)?;
    let chosen = select::one_thread(&t.tf, a.thread)?;
    let ordinal = t.ordinal(chosen);
    let (pid, tid, last_pc) = thread_of(&chosen.kind);
    let imgs = images(&t.tf);
    let img = image_of(&imgs, &chosen.kind);
    let src = t.source(ordinal)?;
    f(&t, Thread { keep_kernel, ordinal, pid, tid, last_pc, img, src })
}

/// The instruction history, for a trace of any size: the file is read
/// without its records, the thread's index is taken from beside the file
/// (or built once and kept there), and only the range is decoded.
fn insns(a: &HistoryArgs) -> Result<(), InspectError> {
    with_thread(a, |t, th| insns_of(a, t, th))
}

fn insns_of(a: &HistoryArgs, t: &Streamed, th: Thread<'_>) -> Result<(), InspectError> {
    use analysis::stream;
    let Thread { keep_kernel, ordinal, pid, tid, last_pc, img, mut src } = th;
    let index = crate::index::index_of(&a.file, ordinal, keep_kernel, || {
        stream::build_index(&mut src, img, keep_kernel, last_pc, &mut progress_printer("indexing"))
    })
    .map_err(t.bad())?;
    if index.entries == 0 {
        return Err(InspectError::NoBranches);
    }
    let (lo, hi) =
        parse_range(a.range.as_deref(), index.entries, HISTORY_SIZE).map_err(analysis::Error::from)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let mut printer = history::InsnPrinter::new(img, a.insn);
    let mut failed: Option<std::io::Error> = None;
    let mut put = |text: &str, out: &mut std::io::BufWriter<std::io::StdoutLock>| {
        if failed.is_none() {
            if let Err(err) = out.write_all(text.as_bytes()) {
                failed = Some(err);
            }
        }
    };
    if a.json {
        // The document, an instruction at a time.
        put(
            &format!("{{\"pid\":{pid},\"tid\":{tid},\"total\":{},\"instructions\":[", index.entries),
            &mut out,
        );
    }
    let mut first = true;
    stream::entries(&mut src, &index, img, last_pc, lo, hi, &mut |e| {
        if a.json {
            let item = history::insn_json_item(e, img, a.insn.intel).to_string();
            put(if first { "\n" } else { ",\n" }, &mut out);
            put(&item, &mut out);
            first = false;
        } else {
            printer.lines(e, &mut |l| {
                put(l, &mut out);
                put("\n", &mut out);
            })
        }
    })
    .map_err(t.bad())?;
    if a.json {
        put("\n]}\n", &mut out);
    }
    if let Some(e) = failed {
        return Err(e.into());
    }
    Ok(out.flush()?)
}

/// The call history, for a trace of any size: the thread's call index is
/// taken from beside the file (or built once and kept there), and the
/// range is decoded from the checkpoint before it.
fn calls(a: &HistoryArgs) -> Result<(), InspectError> {
    with_thread(a, |t, th| calls_of(a, t, th))
}

fn calls_of(a: &HistoryArgs, t: &Streamed, th: Thread<'_>) -> Result<(), InspectError> {
    use analysis::callhistory::{CallJson, CallText};
    use analysis::callstream::{self, CallSink};
    let Thread { keep_kernel, ordinal, pid, tid, last_pc, img, mut src } = th;
    let index = crate::index::index_of(&a.file, ordinal, keep_kernel, || {
        callstream::build_call_index(
            &mut src,
            img,
            keep_kernel,
            last_pc,
            &mut progress_printer("indexing calls"),
        )
    })
    .map_err(t.bad())?;
    if index.segments == 0 {
        return Err(InspectError::NoBranches);
    }
    let range =
        parse_range(a.range.as_deref(), index.segments, HISTORY_SIZE).map_err(analysis::Error::from)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let mut walk = |sink: &mut dyn CallSink| callstream::calls(&mut src, &index, img, last_pc, range.0, sink);
    if a.json {
        let mut sink = CallJson::new(img, range, &index, &mut out);
        walk(&mut sink).map_err(t.bad())?;
        sink.finish(pid, tid, index.segments)?;
    } else {
        let mut sink = CallText::new(img, a.call, range, index.min_level, &mut out);
        walk(&mut sink).map_err(t.bad())?;
        sink.finish()?;
    }
    Ok(())
}

/// How many entries a history shows by default (GDB's history size).
const HISTORY_SIZE: u64 = 10;

/// The options of `bts history`.
pub struct HistoryArgs {
    pub file: std::path::PathBuf,
    pub calls: bool,
    pub range: Option<String>,
    pub thread: Option<i32>,
    pub json: bool,
    pub kernel: bool,
    pub insn: InsnOpts,
    pub call: CallOpts,
}

/// `bts history`.
pub fn run(a: &HistoryArgs) -> ExitCode {
    match history_inner(a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::load::failed(&e),
    }
}

fn history_inner(a: &HistoryArgs) -> Result<(), InspectError> {
    if a.calls {
        calls(a)
    } else {
        insns(a)
    }
}
