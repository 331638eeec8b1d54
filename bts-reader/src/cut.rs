//! `bts cut`: a trace cut to a range of each buffer's branches, in bounded
//! memory whatever the size of the input. Two passes through the input:
//! the first counts each buffer's branches and notes where its (few)
//! context records sit; the second writes the kept records, the context
//! record just before them (which says where the task ran, and when), and
//! the code pages the kept records run through.

use std::collections::HashMap;
use std::path::Path;

use ds_alloc::BtsRecord;

use crate::newtrace::NewTrace;
use crate::tracestream::{open, Section};
use crate::{Error, Result, StreamKind};

/// Which branches of each buffer to keep (0-based, oldest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The first N.
    First(u64),
    /// The last N.
    Last(u64),
    /// Branches A (included) to B (excluded).
    Range(u64, u64),
    /// Branches taken between clocks T1 and T2 (ns, the recorder's
    /// monotonic clock, as `bts info` shows it): a branch's time is that
    /// of the context record before it (the task's arrival on a CPU).
    Time(u64, u64),
}

impl Cut {
    /// The kept branch indices of a buffer.
    fn span(self, s: &Survey) -> (u64, u64) {
        let n = s.branches;
        match self {
            Cut::First(k) => (0, k.min(n)),
            Cut::Last(k) => (n.saturating_sub(k), n),
            Cut::Range(a, b) => (a.min(n), b.min(n).max(a.min(n))),
            Cut::Time(t1, t2) => {
                // Context record i starts the run of records timed by its
                // clock; branches before it: its position less i.
                let branch_at = |i: usize| s.context.get(i).map_or(n, |&p| p - i as u64);
                let i0 = s.clocks.iter().position(|&c| c >= t1).unwrap_or(s.clocks.len());
                let i1 = s.clocks.iter().position(|&c| c > t2).unwrap_or(s.clocks.len()).max(i0);
                (branch_at(i0), branch_at(i1))
            }
        }
    }
}

/// The error of a cut that keeps no branch of a trace that has some: what
/// the trace has instead.
fn nothing_kept(cut: Cut, surveys: &[Survey]) -> Error {
    let most = surveys.iter().map(|s| s.branches).max().unwrap_or(0);
    let (what, known) = match cut {
        Cut::First(n) => (format!("branch among the first {n}"), format!("buffers of up to {most} branches")),
        Cut::Last(n) => (format!("branch among the last {n}"), format!("buffers of up to {most} branches")),
        Cut::Range(a, b) => {
            (format!("branch {a}..{b} in any buffer"), format!("buffers of up to {most} branches"))
        }
        Cut::Time(t1, t2) => {
            // A branch's time is that of the context record before it:
            // the times that some branch has.
            let clocks: Vec<u64> = surveys.iter().flat_map(Survey::branch_times).collect();
            let before = clocks.iter().copied().filter(|&c| c < t1).max();
            let after = clocks.iter().copied().filter(|&c| c > t2).min();
            let known = match (clocks.iter().min().zip(clocks.iter().max()), before, after) {
                (None, ..) => "no branch after a context record, so no times".to_string(),
                (Some((lo, hi)), b, a) => {
                    let near = |c: Option<u64>, side: &str| c.map(|c| format!(", the nearest {side} at {c}"));
                    let near =
                        [near(b, "before"), near(a, "after")].into_iter().flatten().collect::<String>();
                    format!("branches timed from {lo} to {hi} ns{near}")
                }
            };
            let what = format!(
                "branch timed between {t1} and {t2} ns (a branch's time is its thread's last arrival on a CPU)"
            );
            (what, known)
        }
    };
    Error::NotInTrace { what, known: vec![known] }
}

/// What the first pass learns of one buffer.
#[derive(Debug, Default, Clone)]
pub(crate) struct Survey {
    pub(crate) branches: u64,
    /// Record positions of the context records, ascending.
    pub(crate) context: Vec<u64>,
    /// Their clocks.
    clocks: Vec<u64>,
}

impl Survey {
    /// The clocks of the context records that time a branch (one follows
    /// them before the next context record).
    fn branch_times(&self) -> impl Iterator<Item = u64> + '_ {
        let branch_at = |i: usize| self.context.get(i).map_or(self.branches, |&p| p - i as u64);
        (0..self.context.len()).filter(move |&i| branch_at(i + 1) > branch_at(i)).map(|i| self.clocks[i])
    }

    /// The record position of branch `k`.
    fn position_of(&self, k: u64) -> u64 {
        let mut p = k;
        for &c in &self.context {
            if c <= p {
                p += 1;
            } else {
                break;
            }
        }
        p
    }
}

/// The records of one buffer to keep: positions `lo..=hi`, and the one
/// context record before `lo`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keep {
    pub(crate) lo: u64,
    pub(crate) hi: u64,
    pub(crate) before: Option<u64>,
    pub(crate) branches_dropped_before: u64,
    keeps_end: bool,
}

impl Keep {
    pub(crate) fn of(s: &Survey, cut: Cut) -> Option<Keep> {
        let (a, b) = cut.span(s);
        if a >= b {
            return None;
        }
        let (lo, hi) = (s.position_of(a), s.position_of(b - 1));
        let before = s.context.iter().copied().rfind(|&c| c < lo);
        Some(Keep { lo, hi, before, branches_dropped_before: a, keeps_end: b == s.branches })
    }

    fn wants(&self, pos: u64) -> bool {
        (self.lo..=self.hi).contains(&pos) || Some(pos) == self.before
    }

    /// Records kept.
    fn count(&self) -> u64 {
        self.hi - self.lo + 1 + u64::from(self.before.is_some())
    }
}

/// Records read at a time.
const CHUNK: usize = 1 << 16;

/// Each buffer's branches and context records, in file order, reading
/// (and checking) every record once.
pub(crate) fn surveys(input: &Path) -> Result<Vec<Survey>> {
    let mut surveys = Vec::new();
    let mut r = open(input)?;
    let mut recs = Vec::with_capacity(CHUNK);
    while let Some(s) = r.next_section()? {
        if let Section::Stream(_) = s {
            let mut sv = Survey::default();
            let mut pos = 0u64;
            while r.records(&mut recs, CHUNK)? > 0 {
                for rec in &recs {
                    if rec.is_branch() {
                        sv.branches += 1;
                    } else {
                        sv.context.push(pos);
                        sv.clocks.push(rec.to);
                    }
                    pos += 1;
                }
                recs.clear();
            }
            surveys.push(sv);
        }
    }
    Ok(surveys)
}

/// Writes `input` cut by `cut` to `output` (a new file: an existing one is
/// refused). Returns the branches kept.
pub fn cut(input: &Path, output: &Path, cut: Cut) -> Result<u64> {
    // Pass 1: each buffer's branches and context positions.
    let surveys = surveys(input)?;
    let kept: u64 = surveys.iter().map(|s| cut.span(s)).map(|(a, b)| b - a).sum();
    if kept == 0 && surveys.iter().any(|s| s.branches > 0) {
        return Err(nothing_kept(cut, &surveys));
    }
    // Pass 2: write.
    let mut r = open(input)?;
    let mut recs = Vec::with_capacity(CHUNK);
    let mut out = None;
    let mut meta = None;
    let mut ends_kept: HashMap<(i32, u32, i32), bool> = HashMap::new();
    let mut index = 0;
    let mut kept_branches = 0;
    let missing = |what: &str| Error::Corrupt(format!("{what} before the modules"));
    while let Some(s) = r.next_section()? {
        match s {
            Section::Meta(m) => meta = Some(m),
            Section::Modules(m) => {
                let meta =
                    meta.take().ok_or_else(|| Error::Corrupt("no metadata before the modules".into()))?;
                out = Some(NewTrace::create(output, &meta, &m)?);
            }
            Section::Stream(mut h) => {
                let out = out.as_mut().ok_or_else(|| missing("a stream"))?;
                let sv = &surveys[index];
                index += 1;
                let keep = Keep::of(sv, cut);
                if let StreamKind::Thread { pid, generation, tid, .. } = h.kind {
                    ends_kept.insert((pid, generation, tid), keep.is_some_and(|k| k.keeps_end));
                }
                h.count = keep.map_or(0, |k| k.count());
                h.overwritten += keep.map_or(sv.branches, |k| k.branches_dropped_before);
                if !keep.is_some_and(|k| k.keeps_end) {
                    if let StreamKind::Thread { crashed, last_pc, .. } = &mut h.kind {
                        *crashed = false;
                        *last_pc = None;
                    }
                }
                out.begin_stream(&h)?;
                let mut pos = 0u64;
                let mut kept: Vec<BtsRecord> = Vec::with_capacity(CHUNK);
                while r.records(&mut recs, CHUNK)? > 0 {
                    if let Some(k) = keep {
                        for rec in &recs {
                            if k.wants(pos) {
                                kept.push(*rec);
                            }
                            pos += 1;
                        }
                    }
                    recs.clear();
                    kept_branches += kept.iter().filter(|r| r.is_branch()).count() as u64;
                    out.records(&kept)?;
                    kept.clear();
                }
            }
            Section::Code(c) => out.as_mut().ok_or_else(|| missing("code"))?.code(&c)?,
            Section::State(st) => {
                let out = out.as_mut().ok_or_else(|| missing("a thread state"))?;
                // Registers and stack belong to the end of the thread's trace.
                if ends_kept.get(&(st.pid, st.generation, st.tid)).copied().unwrap_or(false) {
                    out.state(&st)?;
                }
            }
        }
    }
    out.ok_or_else(|| Error::Corrupt("no modules section".into()))?.finish()?;
    Ok(kept_branches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_positions() {
        let ten = Survey { branches: 10, ..Survey::default() };
        assert_eq!(Cut::First(3).span(&ten), (0, 3));
        assert_eq!(Cut::Last(3).span(&ten), (7, 10));
        assert_eq!(Cut::Last(30).span(&ten), (0, 10));
        assert_eq!(Cut::Range(4, 6).span(&ten), (4, 6));
        assert_eq!(Cut::Range(8, 20).span(&ten), (8, 10));
        assert_eq!(Cut::Range(12, 20).span(&ten), (10, 10));
        // Records: C B B C B B (context at 0 and 3).
        let s = Survey { branches: 4, context: vec![0, 3], clocks: vec![100, 200] };
        // Branches 0-1 ran at 100, 2-3 at 200.
        assert_eq!(Cut::Time(150, 250).span(&s), (2, 4));
        assert_eq!(Cut::Time(0, 150).span(&s), (0, 2));
        assert_eq!(Cut::Time(0, 50).span(&s), (0, 0));
        assert_eq!(Cut::Time(300, 400).span(&s), (4, 4));
        assert_eq!((s.position_of(0), s.position_of(1), s.position_of(2), s.position_of(3)), (1, 2, 4, 5));
        let k = Keep::of(&s, Cut::Last(1)).unwrap();
        assert_eq!((k.lo, k.hi, k.before, k.count()), (5, 5, Some(3), 2));
        let k = Keep::of(&s, Cut::Range(1, 3)).unwrap();
        assert_eq!((k.lo, k.hi, k.before, k.count(), k.branches_dropped_before), (2, 4, Some(0), 4, 1));
        assert!(Keep::of(&s, Cut::Range(4, 9)).is_none());
    }
}
