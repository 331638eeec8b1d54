//! The trace tools that write traces: `bts cut` (a smaller trace), `bts
//! split` (one per thread, process or CPU) and `bts merge` (one of many),
//! each in bounded memory whatever the size of its input.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bts_reader::cut::{cut, Cut};

/// Why `--range` was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a range: write A..B (branch A up to, not including, B)")]
pub struct RangeError(String);

/// Parses `--first N` and `--last N`: a positive number of branches.
pub fn parse_count(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("'{s}' is not a positive number of branches")),
    }
}

/// Parses `A..B` (A at most B): `--time`.
pub fn parse_range(s: &str) -> Result<(u64, u64), RangeError> {
    let bad = || RangeError(s.to_string());
    let (a, b) = s.split_once("..").ok_or_else(bad)?;
    let (a, b): (u64, u64) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
    if a > b {
        return Err(bad());
    }
    Ok((a, b))
}

/// Parses `A..B` with A below B (B is left out, so A..A is no branch):
/// `--range`.
pub fn parse_branch_range(s: &str) -> Result<(u64, u64), RangeError> {
    parse_range(s).and_then(|(a, b)| if a < b { Ok((a, b)) } else { Err(RangeError(s.to_string())) })
}

/// The advice for an error of a trace tool on `file`.
fn advice(e: &bts_reader::Error, file: &Path) -> String {
    match e {
        bts_reader::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists => {
            " (bts does not overwrite a file: remove it, or name another)".into()
        }
        bts_reader::Error::MergeOverlap { .. } => {
            "; nothing was written (merge takes the traces of one run's processes, or the parts `bts split` made, each once)".into()
        }
        bts_reader::Error::NotInTrace { .. } => {
            format!("; nothing was written (`bts info {}` shows what the trace holds)", file.display())
        }
        _ => String::new(),
    }
}

/// `bts cut`.
pub fn run(file: &Path, how: Cut, output: &Path) -> ExitCode {
    match cut(file, output, how) {
        Ok(kept) => {
            crate::errln!("bts: {} written: {kept} branches kept", output.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            crate::errln!("bts: cannot cut {}: {e}{}", file.display(), advice(&e, file));
            ExitCode::FAILURE
        }
    }
}

/// `bts split`.
pub fn split(file: &Path, by: crate::args::SplitBy, dir: &Path) -> ExitCode {
    use bts_reader::split::By;
    let by = match by {
        crate::args::SplitBy::Thread => By::Thread,
        crate::args::SplitBy::Process => By::Process,
        crate::args::SplitBy::Cpu => By::Cpu,
    };
    match bts_reader::split::split(file, by, dir) {
        Ok(parts) => {
            for p in &parts {
                crate::outln!("{}", p.display());
            }
            if parts.is_empty() {
                crate::errln!("bts: {} has no buffer to split that way", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            crate::errln!("bts: cannot split {}: {e}{}", file.display(), advice(&e, file));
            ExitCode::FAILURE
        }
    }
}

/// `bts filter`.
pub fn filter(file: &Path, what: &bts_reader::filter::Filter, output: &Path) -> ExitCode {
    if *what == bts_reader::filter::Filter::Kernel {
        if let Err(e) = crate::load::kernel_allowed(true) {
            crate::errln!("bts: {e}");
            return ExitCode::FAILURE;
        }
    }
    match bts_reader::filter::filter(file, output, what) {
        Ok(kept) => {
            crate::errln!("bts: {} written: {kept} branches kept", output.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            crate::errln!("bts: cannot filter {}: {e}{}", file.display(), advice(&e, file));
            ExitCode::FAILURE
        }
    }
}

/// `bts merge`.
pub fn merge(files: &[PathBuf], output: &Path) -> ExitCode {
    match bts_reader::split::merge(files, output) {
        Ok(()) => {
            crate::errln!("bts: {} written from {} traces", output.display(), files.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            crate::errln!("bts: cannot merge into {}: {e}{}", output.display(), advice(&e, output));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("3..10"), Ok((3, 10)));
        assert!(parse_range("10..3").is_err());
        assert!(parse_range("3-10").is_err());
        assert!(parse_range("a..b").is_err());
        assert_eq!(parse_range("5..5"), Ok((5, 5)));
        assert!(parse_branch_range("5..5").is_err(), "no branch");
        assert_eq!(parse_branch_range("5..6"), Ok((5, 6)));
    }
}
