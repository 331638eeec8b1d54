//! The code pages a run of BTS records executes through: each record's
//! `from` and `to`, and the straight line between one record's `to` and the
//! next record's `from` — what a decoder needs the bytes of.

use std::collections::BTreeSet;

use crate::BtsRecord;

/// The page size code is kept in.
pub const PAGE: u64 = 4096;

/// The longest straight line between two records whose pages are kept whole.
pub const MAX_SPAN: u64 = 64 * 1024;

/// Adds the pages of `[lo, hi]`.
pub fn add_range(pages: &mut BTreeSet<u64>, lo: u64, hi: u64) {
    let mut p = lo & !(PAGE - 1);
    while p <= hi {
        pages.insert(p);
        match p.checked_add(PAGE) {
            Some(n) => p = n,
            None => break,
        }
    }
}

/// Pages touched by `records` (oldest first; context records ignored), and
/// by the run from the last record's target to `last_pc`.
pub fn touched_pages<'a>(
    records: impl IntoIterator<Item = &'a BtsRecord>,
    last_pc: Option<u64>,
    pages: &mut BTreeSet<u64>,
) {
    let mut prev_to: Option<u64> = None;
    for r in records.into_iter().filter(|r| r.is_branch()) {
        add_range(pages, r.from, r.from.saturating_add(15));
        if let Some(to) = prev_to {
            if r.from >= to && r.from - to <= MAX_SPAN {
                add_range(pages, to, r.from);
            }
        }
        add_range(pages, r.to, r.to.saturating_add(15));
        prev_to = Some(r.to);
    }
    if let (Some(to), Some(pc)) = (prev_to, last_pc) {
        if pc >= to && pc - to <= MAX_SPAN {
            add_range(pages, to, pc.saturating_add(15));
        }
    }
    if let Some(pc) = last_pc {
        add_range(pages, pc, pc.saturating_add(15));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_edges() {
        let mut p = BTreeSet::new();
        let recs = [BtsRecord::branch(0x1ff8, 0x5000), BtsRecord::branch(0x7010, 0x9000)];
        touched_pages(&recs, Some(0x9100), &mut p);
        let got: Vec<u64> = p.into_iter().collect();
        assert_eq!(got, vec![0x1000, 0x2000, 0x5000, 0x6000, 0x7000, 0x9000]);
        let mut p = BTreeSet::new();
        touched_pages(&[BtsRecord::context(crate::ContextKind::TaskArrives, 1, 1)], None, &mut p);
        assert!(p.is_empty(), "context records touch no code");
        add_range(&mut p, u64::MAX - 10, u64::MAX);
        assert_eq!(p.len(), 1);
    }
}
