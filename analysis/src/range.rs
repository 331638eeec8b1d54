//! GDB's history ranges: `N` (ten from N), `N,M`, `N,+K`, `N,-K`.

/// A range GDB would not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// Not one of GDB's forms, or empty.
    #[error("bad range '{spec}': use N, N,M, N,+K or N,-K")]
    Syntax {
        /// The range as given.
        spec: String,
    },
    /// It starts after the last entry.
    #[error("range starts at {start}, but the history has {count} entries")]
    PastEnd {
        /// The first entry asked for.
        start: u64,
        /// The entries there are.
        count: u64,
    },
}

/// A GDB-style range: `N` (ten from N), `N,M`, `N,+K`, `N,-K`; none: the last ten.
pub fn parse_range(spec: Option<&str>, count: u64, size: u64) -> Result<(u64, u64), RangeError> {
    let last = count.max(1);
    let Some(spec) = spec else {
        return Ok((last.saturating_sub(size - 1).max(1), last));
    };
    let bad = || RangeError::Syntax { spec: spec.to_string() };
    let num = |t: &str| t.trim().parse::<u64>().map_err(|_| bad());
    let (a, b) = match spec.split_once(',') {
        None => {
            let a = num(spec)?;
            (a, a.saturating_add(size - 1))
        }
        Some((a, b)) => {
            let a = num(a)?;
            let b = b.trim();
            if let Some(k) = b.strip_prefix('+') {
                let k = num(k)?.max(1);
                (a, a.saturating_add(k - 1))
            } else if let Some(k) = b.strip_prefix('-') {
                let k = num(k)?.max(1);
                (a.saturating_sub(k - 1).max(1), a)
            } else {
                (a, num(b)?)
            }
        }
    };
    if a == 0 || a > b {
        return Err(bad());
    }
    if a > count {
        return Err(RangeError::PastEnd { start: a, count });
    }
    Ok((a, b.min(count)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_as_gdb_takes_them() {
        assert_eq!(parse_range(None, 100, 10), Ok((91, 100)));
        assert_eq!(parse_range(None, 4, 10), Ok((1, 4)));
        assert_eq!(parse_range(Some("5"), 100, 10), Ok((5, 14)));
        assert_eq!(parse_range(Some("5,8"), 100, 10), Ok((5, 8)));
        assert_eq!(parse_range(Some("5,+3"), 100, 10), Ok((5, 7)));
        assert_eq!(parse_range(Some("5,-3"), 100, 10), Ok((3, 5)));
        assert_eq!(parse_range(Some("2,-5"), 100, 10), Ok((1, 2)));
        assert_eq!(parse_range(Some("95,200"), 100, 10), Ok((95, 100)));
        assert!(parse_range(Some("0"), 100, 10).is_err());
        assert!(parse_range(Some("9,3"), 100, 10).is_err());
        assert!(parse_range(Some("x"), 100, 10).is_err());
        assert!(parse_range(Some("101"), 100, 10).is_err());
    }
}
