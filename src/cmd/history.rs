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
    let tf = load(&a.file)?;
    let keep_kernel = kernel_allowed(a.kernel)?;
    let stream = select::one_thread(&tf, a.thread)?;
    let imgs = images(&tf);
    let img = image_of(&imgs, &stream.kind);
    let an = analyze(stream, img, keep_kernel, &mut progress_printer("decoding"));
    let count = if a.calls { an.segments.len() } else { an.entries.len() } as u64;
    if count == 0 {
        return Err(InspectError::NoBranches);
    }
    let (lo, hi) = parse_range(a.range.as_deref(), count, HISTORY_SIZE).map_err(analysis::Error::from)?;
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
    Ok(out.write_all(text.as_bytes())?)
}
