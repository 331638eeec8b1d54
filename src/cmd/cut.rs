//! `bts cut FILE (--first N | --last N | --range A..B) -o OUT`: a smaller
//! trace, made in bounded memory from a trace of any size.

use std::path::Path;
use std::process::ExitCode;

use bts_reader::cut::{cut, Cut};

/// Why `--range` was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a range: write A..B (branch A up to, not including, B)")]
pub struct RangeError(String);

/// Parses `A..B`.
pub fn parse_range(s: &str) -> Result<(u64, u64), RangeError> {
    let bad = || RangeError(s.to_string());
    let (a, b) = s.split_once("..").ok_or_else(bad)?;
    let (a, b): (u64, u64) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
    if a > b {
        return Err(bad());
    }
    Ok((a, b))
}

/// `bts cut`.
pub fn run(file: &Path, how: Cut, output: &Path) -> ExitCode {
    match cut(file, output, how) {
        Ok(kept) => {
            crate::errln!("bts: {} written: {kept} branches kept", output.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            let advice = match &e {
                bts_reader::Error::Io { source, .. }
                    if source.kind() == std::io::ErrorKind::AlreadyExists =>
                {
                    " (bts cut does not overwrite a file: remove it, or name another)"
                }
                _ => "",
            };
            crate::errln!("bts: cannot cut {}: {e}{advice}", file.display());
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
    }
}
