//! GDB's `record function-call-history`, written as segments close (see
//! [`crate::callstream`]): text with GDB's `/l /i /c` modifiers, or JSON.

use std::collections::{HashMap, VecDeque};
use std::io::Write;

use decode::calls::{CallEvent, Segment};
use serde_json::json;

use crate::callstream::CallSink;
use crate::history::CallOpts;
use crate::jsonout::{pretty_at, Out};
use crate::model::Image;

/// The source lines of the segment running: the first file met, and the
/// lowest and highest of its lines.
#[derive(Default)]
struct Lines {
    segment: Option<usize>,
    file: Option<String>,
    lo: u32,
    hi: u32,
}

impl Lines {
    fn add(&mut self, img: Option<&Image>, addr: u64, segment: usize) {
        if self.segment != Some(segment) {
            *self = Lines { segment: Some(segment), file: None, lo: u32::MAX, hi: 0 };
        }
        let Some(img) = img else { return };
        let sym = img.syms.lookup(addr);
        if let (Some(f), Some(l)) = (sym.file, sym.line) {
            if self.file.as_ref().is_none_or(|x| *x == f) {
                self.file = Some(f);
                self.lo = self.lo.min(l);
                self.hi = self.hi.max(l);
            }
        }
    }

    /// (file, first line, last line) of segment `segment` (an index).
    fn of(&self, segment: usize) -> Option<(String, u32, u32)> {
        if self.segment != Some(segment) {
            return None;
        }
        self.file.clone().map(|f| (f, self.lo, self.hi))
    }
}

/// What both forms share: the range (segment numbers) and the lines.
struct Range<'a> {
    img: Option<&'a Image>,
    lo: u64,
    hi: u64,
    lines: Option<Lines>,
}

impl Range<'_> {
    fn wants(&self, number: usize) -> bool {
        (self.lo..=self.hi).contains(&(number as u64))
    }

    fn insn(&mut self, addr: u64, segment: usize) {
        if self.wants(segment + 1) {
            if let Some(l) = &mut self.lines {
                l.add(self.img, addr, segment);
            }
        }
    }

    fn lines_of(&self, s: &Segment) -> Option<(String, u32, u32)> {
        self.lines.as_ref()?.of(s.number - 1)
    }
}

/// The text form: a line per segment of `[lo, hi]`, written as it closes.
pub struct CallText<'a> {
    range: Range<'a>,
    o: CallOpts,
    min_level: i32,
    out: Out<'a>,
}

impl<'a> CallText<'a> {
    /// Segments `lo..=hi` of an image's thread whose shallowest level is `min_level`.
    pub fn new(
        img: Option<&'a Image>,
        o: CallOpts,
        (lo, hi): (u64, u64),
        min_level: i32,
        out: &'a mut dyn Write,
    ) -> Self {
        let lines = o.lines.then(Lines::default);
        CallText { range: Range { img, lo, hi, lines }, o, min_level, out: Out::new(out) }
    }

    /// Flushes; the first error writing met.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.out.finish()
    }

    fn line(&self, s: &Segment) -> String {
        if let Some(kind) = s.gap {
            return format!("{}\t[decode error ({}): {}]", s.number, kind.code(), kind.text());
        }
        let mut line = format!("{}\t", s.number);
        if self.o.indent {
            line += &"  ".repeat((s.level - self.min_level).max(0) as usize);
        }
        line += s.function.as_deref().unwrap_or("??");
        if self.o.insn_range {
            line += &format!("\tinst {},{}", s.insn_begin, s.insn_end);
        }
        if let Some((file, lo, hi)) = self.range.lines_of(s) {
            let short = file.rsplit('/').next().unwrap_or(&file);
            line += &if lo == hi { format!("\tat {short}:{lo}") } else { format!("\tat {short}:{lo},{hi}") };
        }
        line + "\n"
    }
}

impl CallSink for CallText<'_> {
    fn event(&mut self, e: CallEvent<'_>) -> bool {
        let CallEvent::Closed { segment, .. } = e else { return true };
        if self.range.wants(segment.number) {
            let line = self.line(segment);
            if !self.out.put(&line) {
                return false;
            }
        }
        (segment.number as u64) < self.range.hi
    }

    fn insn(&mut self, addr: u64, segment: usize) {
        self.range.insn(addr, segment);
    }
}

/// Segments the JSON form keeps waiting for their `next` at most; one
/// that waits longer has its `next` from a first pass ([`LongWaits`]).
pub const WINDOW: u64 = 4096;

/// The first pass of a JSON call history longer than [`WINDOW`]: the
/// `next` of each segment of the range that waits for it while more than
/// [`WINDOW`] segments close. Those wait in the live call chain, so there
/// are at most the chain's depth of them per [`WINDOW`] segments.
pub struct LongWaits {
    lo: u64,
    hi: u64,
    last_closed: u64,
    /// Segments of the range closed and not yet gone on from or ended.
    open: u64,
    past: bool,
    /// The `next` (index) of those that waited long, by index.
    pub links: HashMap<usize, usize>,
}

impl LongWaits {
    /// The first pass for segments `lo..=hi`.
    pub fn new((lo, hi): (u64, u64)) -> Self {
        LongWaits { lo, hi, last_closed: 0, open: 0, past: false, links: HashMap::new() }
    }

    fn settles(&mut self, idx: usize) -> bool {
        let number = idx as u64 + 1;
        let in_range = (self.lo..=self.hi).contains(&number);
        if in_range {
            // Each closed segment of the range settles once.
            debug_assert!(self.open > 0);
            self.open = self.open.saturating_sub(1);
        }
        in_range && self.last_closed.saturating_sub(number) >= WINDOW
    }
}

impl CallSink for LongWaits {
    fn event(&mut self, e: CallEvent<'_>) -> bool {
        match e {
            CallEvent::Closed { segment, .. } => {
                self.last_closed = segment.number as u64;
                self.past |= self.last_closed >= self.hi;
                if (self.lo..=self.hi).contains(&self.last_closed) && segment.gap.is_none() {
                    self.open += 1;
                }
            }
            CallEvent::Resumed { prev, next } => {
                if self.settles(prev) {
                    self.links.insert(prev, next);
                }
            }
            CallEvent::Ended { frame, .. } => {
                self.settles(frame.segment.number - 1);
            }
        }
        !(self.past && self.open == 0)
    }
}

/// A segment waiting for its `next` (known once its instance goes on or ends).
struct Pending {
    segment: Segment,
    lines: Option<(String, u32, u32)>,
    done: bool,
}

/// The JSON form, GDB's fields and the links (`up`, `prev`, `next`). A
/// segment is written once its `next` is known, so the walk may go past
/// `hi` until every segment of the range is settled; those waiting are
/// kept meanwhile.
pub struct CallJson<'a> {
    range: Range<'a>,
    min_level: i32,
    waiting: VecDeque<Pending>,
    written: usize,
    /// The last segment of the range has closed.
    past: bool,
    /// From [`LongWaits`], for a range longer than [`WINDOW`].
    links: Option<HashMap<usize, usize>>,
    out: Out<'a>,
}

impl<'a> CallJson<'a> {
    /// Segments `lo..=hi` of an image's thread whose shallowest level is
    /// `min_level`; `links` from [`LongWaits`] when the range is longer
    /// than [`WINDOW`].
    pub fn new(
        img: Option<&'a Image>,
        (lo, hi): (u64, u64),
        min_level: i32,
        links: Option<HashMap<usize, usize>>,
        out: &'a mut dyn Write,
    ) -> Self {
        let mut out = Out::new(out);
        out.put("{\n  \"calls\": [");
        let range = Range { img, lo, hi, lines: Some(Lines::default()) };
        CallJson { range, min_level, waiting: VecDeque::new(), written: 0, past: false, links, out }
    }

    /// The end of the document; the first error writing met.
    pub fn finish(mut self, pid: i32, tid: i32, total: u64) -> std::io::Result<()> {
        for p in std::mem::take(&mut self.waiting) {
            self.write(&p);
        }
        let close = if self.written == 0 { "]" } else { "\n  ]" };
        self.out.put(&format!("{close},\n  \"pid\": {pid},\n  \"tid\": {tid},\n  \"total\": {total}\n}}\n"));
        self.out.finish()
    }

    fn write(&mut self, p: &Pending) -> bool {
        let (s, lines) = (&p.segment, &p.lines);
        let v = json!({
            "number": s.number, "function": s.function, "level": s.level - self.min_level,
            "insn_begin": s.insn_begin, "insn_end": s.insn_end,
            "file": lines.as_ref().map(|l| l.0.clone()),
            "line_begin": lines.as_ref().map(|l| l.1), "line_end": lines.as_ref().map(|l| l.2),
            "up": s.up.map(|u| u + 1), "prev": s.prev.map(|u| u + 1), "next": s.next.map(|u| u + 1),
            "signal": s.signal, "tail_call": s.tail_call,
            "gap": s.gap.map(|g| json!({"code": g.code(), "text": g.text()})),
        });
        let sep = if self.written == 0 { "\n    " } else { ",\n    " };
        self.written += 1;
        self.out.put(sep) && self.out.put(&pretty_at(&v, 4))
    }

    /// Writes the settled segments at the front; false once writing failed.
    fn write_done(&mut self) -> bool {
        while self.waiting.front().is_some_and(|p| p.done) {
            let p = self.waiting.pop_front().expect("front");
            if !self.write(&p) {
                return false;
            }
        }
        true
    }

    /// The waiting segment with index `idx`, if it waits.
    fn waiting(&mut self, idx: usize) -> Option<&mut Pending> {
        let first = self.waiting.front()?.segment.number - 1;
        self.waiting.get_mut(idx.checked_sub(first)?)
    }
}

impl CallSink for CallJson<'_> {
    fn event(&mut self, e: CallEvent<'_>) -> bool {
        if let CallEvent::Closed { segment, .. } = &e {
            self.past |= segment.number as u64 >= self.range.hi;
        }
        match e {
            CallEvent::Closed { segment, .. } if self.range.wants(segment.number) => {
                let lines = self.range.lines_of(segment);
                // A gap is never gone on from.
                let done = segment.gap.is_some();
                self.waiting.push_back(Pending { segment: segment.clone(), lines, done });
            }
            CallEvent::Resumed { prev, next } => {
                if let Some(p) = self.waiting(prev) {
                    p.segment.next = Some(next);
                    p.done = true;
                }
            }
            CallEvent::Ended { frame, .. } => {
                if let Some(p) = self.waiting(frame.segment.number - 1) {
                    p.done = true;
                }
            }
            CallEvent::Closed { .. } => {}
        }
        // The oldest waits too long: its `next` came to the first pass.
        while self.links.is_some() && self.waiting.len() as u64 > WINDOW {
            let next = |links: &Option<HashMap<usize, usize>>, idx| links.as_ref()?.get(&idx).copied();
            let front = self.waiting.front_mut().expect("longer than WINDOW");
            front.segment.next = next(&self.links, front.segment.number - 1);
            front.done = true;
            if !self.write_done() {
                return false;
            }
        }
        if !self.write_done() {
            return false;
        }
        !(self.past && self.waiting.is_empty())
    }

    fn insn(&mut self, addr: u64, segment: usize) {
        self.range.insn(addr, segment);
    }
}
