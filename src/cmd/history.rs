//! `bts history FILE [RANGE]`: GDB's `record instruction-history` and
//! `record function-call-history`, line for line.

use std::io::Write;
use std::process::ExitCode;

use analysis::history::{self, CallOpts, InsnOpts};
use analysis::model::{image_of, images};
use analysis::range::parse_range;
use analysis::select;
use analysis::timeline::analyze;

use crate::load::{kernel_allowed, load, progress_printer, InspectError};

/// The instruction history, for a trace of any size: the file is read
/// without its records, the thread's index is taken from beside the file
/// (or built once and kept there), and only the range is decoded.
fn streamed(a: &HistoryArgs) -> Result<(), InspectError> {
    use analysis::stream;
    use bts_reader::tracestream::{self, StreamAt};
    let keep_kernel = kernel_allowed(a.kernel)?;
    let bad = |e: bts_reader::Error| match e {
        bts_reader::Error::Io { .. } => InspectError::Io(e),
        e => InspectError::Bad { path: a.file.clone(), source: e },
    };
    // Checked once, when the index is made; later runs pass over the records.
    let (tf, offsets) = tracestream::scan(&a.file, !crate::index::is_current(&a.file)).map_err(bad)?;
    let chosen = select::one_thread(&tf, a.thread)?;
    let ordinal = tf.streams.iter().position(|s| std::ptr::eq(s, chosen)).unwrap_or(0);
    let last_pc = match chosen.kind {
        bts_reader::StreamKind::Thread { last_pc, .. } => last_pc,
        bts_reader::StreamKind::Cpu { .. } => None,
    };
    let imgs = images(&tf);
    let img = image_of(&imgs, &chosen.kind);
    let file = std::fs::File::open(&a.file).map_err(|source| {
        InspectError::Io(bts_reader::Error::Io { path: a.file.display().to_string(), source })
    })?;
    let extent = offsets[ordinal];
    let mut src = StreamAt::new(std::io::BufReader::with_capacity(1 << 20, file), extent.data, extent.count);
    let index = crate::index::index_of(&a.file, ordinal, keep_kernel, || {
        stream::build_index(&mut src, img, keep_kernel, last_pc)
    })
    .map_err(bad)?;
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
    let (pid, tid) = match chosen.kind {
        bts_reader::StreamKind::Thread { pid, tid, .. } => (pid, tid),
        bts_reader::StreamKind::Cpu { .. } => (0, -1),
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
    .map_err(bad)?;
    if a.json {
        put("\n]}\n", &mut out);
    }
    if let Some(e) = failed {
        return Err(e.into());
    }
    Ok(out.flush()?)
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
        Err(e) => {
            crate::errln!("bts: {e}");
            ExitCode::FAILURE
        }
    }
}

fn history_inner(a: &HistoryArgs) -> Result<(), InspectError> {
    if !a.calls {
        return streamed(a);
    }
    // The call history decodes the thread whole: segments link to their
    // callers from the start of the trace.
    let tf = load(&a.file)?;
    let keep_kernel = kernel_allowed(a.kernel)?;
    let stream = select::one_thread(&tf, a.thread)?;
    let imgs = images(&tf);
    let img = image_of(&imgs, &stream.kind);
    let an = analyze(stream, img, keep_kernel, &mut progress_printer("decoding"));
    let count = an.segments.len() as u64;
    if count == 0 {
        return Err(InspectError::NoBranches);
    }
    let (lo, hi) = parse_range(a.range.as_deref(), count, HISTORY_SIZE).map_err(analysis::Error::from)?;
    let mut out = std::io::stdout().lock();
    let text = if a.json {
        let v = history::call_json(&an, img, lo, hi);
        serde_json::to_string_pretty(&v).expect("serializes") + "\n"
    } else {
        let lines = history::call_history(&an, img, lo, hi, a.call);
        lines.into_iter().map(|l| l + "\n").collect()
    };
    Ok(out.write_all(text.as_bytes())?)
}
