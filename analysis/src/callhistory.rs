//! GDB's `record function-call-history`, written as segments close (see
//! [`crate::callstream`]): text with GDB's `/l /i /c` modifiers, or JSON.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::rc::Rc;

use decode::calls::{CallEvent, Segment};
use decode::flow::AddrMap;
use serde_json::json;

use crate::callstream::{waited_long, CallIndex, CallSink};
use crate::history::CallOpts;
use crate::jsonout::{pretty_at, Out};
use crate::model::Image;

/// Addresses whose source line is kept (beyond, the cache starts over).
const LINES_KEPT: usize = 1 << 18;

/// The source lines of the segment running: the first file met, and the
/// lowest and highest of its lines. A trace runs the same instructions
/// over and over: each address's file (shared) and line are kept, not
/// taken again from the symbolizer, whose answer is a whole `Symbol` of
/// new strings (3× faster over 66M instructions).
#[derive(Default)]
struct Lines {
    segment: Option<usize>,
    file: Option<Rc<str>>,
    lo: u32,
    hi: u32,
    known: AddrMap<Option<(Rc<str>, u32)>>,
    /// Each file's name, held once.
    files: HashMap<String, Rc<str>>,
}

impl Lines {
    fn add(&mut self, img: Option<&Image>, addr: u64, segment: usize) {
        if self.segment != Some(segment) {
            (self.segment, self.file, self.lo, self.hi) = (Some(segment), None, u32::MAX, 0);
        }
        let Some(img) = img else { return };
        if self.known.len() >= LINES_KEPT {
            self.known.clear();
            self.files.clear();
        }
        let files = &mut self.files;
        let line = self.known.entry(addr).or_insert_with(|| {
            let sym = img.syms.lookup(addr);
            let file = sym.file.map(|f| files.entry(f).or_insert_with_key(|f| f.as_str().into()).clone());
            file.zip(sym.line)
        });
        if let Some((f, l)) = line {
            if self.file.as_ref().is_none_or(|x| x == f) {
                self.file = Some(f.clone());
                self.lo = self.lo.min(*l);
                self.hi = self.hi.max(*l);
            }
        }
    }

    /// (file, first line, last line) of segment `segment` (an index).
    fn of(&self, segment: usize) -> Option<(String, u32, u32)> {
        if self.segment != Some(segment) {
            return None;
        }
        self.file.as_ref().map(|f| (f.to_string(), self.lo, self.hi))
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

/// A segment waiting for its `next` (known once its instance goes on or ends).
struct Pending {
    segment: Segment,
    lines: Option<(String, u32, u32)>,
    done: bool,
}

/// The JSON form, GDB's fields and the links (`up`, `prev`, `next`). A
/// segment is written once its `next` is known: when its instance goes
/// on or ends, or from the call index once [`crate::callstream::WINDOW`]
/// segments have closed after it. So the walk goes at most that far past
/// `hi`, and at most that many segments wait.
pub struct CallJson<'a> {
    range: Range<'a>,
    index: &'a CallIndex,
    waiting: VecDeque<Pending>,
    written: usize,
    /// The number of the last segment closed.
    last_closed: u64,
    /// The last segment of the range has closed.
    past: bool,
    out: Out<'a>,
}

impl<'a> CallJson<'a> {
    /// Segments `lo..=hi` of the thread of an image that `index` indexes.
    pub fn new(
        img: Option<&'a Image>,
        (lo, hi): (u64, u64),
        index: &'a CallIndex,
        out: &'a mut dyn Write,
    ) -> Self {
        let mut out = Out::new(out);
        out.put("{\n  \"calls\": [");
        let range = Range { img, lo, hi, lines: Some(Lines::default()) };
        CallJson { range, index, waiting: VecDeque::new(), written: 0, last_closed: 0, past: false, out }
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
            "number": s.number, "function": s.function, "level": s.level - self.index.min_level,
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
            self.last_closed = segment.number as u64;
            self.past |= self.last_closed >= self.range.hi;
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
        loop {
            if !self.write_done() {
                return false;
            }
            // The oldest waits long: the index has its `next`.
            let Some(front) = self.waiting.front_mut() else { break };
            let number = front.segment.number as u64;
            if !waited_long(number, self.last_closed) {
                break;
            }
            // An index built from these records has every long wait. One
            // that lacks it (edited by hand) costs time, not a wrong link:
            // the segment waits on for its instance to go on or end.
            let Some(next) = self.index.long_wait(number as usize - 1) else { break };
            front.segment.next = next;
            front.done = true;
        }
        !(self.past && self.waiting.is_empty())
    }

    fn insn(&mut self, addr: u64, segment: usize) {
        self.range.insn(addr, segment);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callstream::tests::call_trace_in;
    use crate::callstream::{build_call_index, calls, WINDOW};
    use crate::model::images;
    use crate::stream::tests::{on_disk, one_thread};
    use crate::timeline::{analyze, Analysis};
    use bts_reader::tracestream::StreamAt;
    use bts_reader::TraceFile;
    use ds_alloc::BtsRecord;

    /// Notes the last segment closed before the sink had enough.
    struct Counted<'a> {
        json: CallJson<'a>,
        closed: u64,
    }

    impl CallSink for Counted<'_> {
        fn event(&mut self, e: CallEvent<'_>) -> bool {
            if let CallEvent::Closed { segment, .. } = e {
                self.closed = segment.number as u64;
            }
            self.json.event(e)
        }
        fn insn(&mut self, addr: u64, segment: usize) {
            self.json.insn(addr, segment);
        }
    }

    /// Each range's JSON, from the index, against the whole history: the
    /// same segments and links, and no walk past `hi + WINDOW`.
    fn check_ranges(
        src: &mut StreamAt<std::fs::File>,
        img: Option<&Image>,
        (index, full): (&CallIndex, &Analysis),
        last_pc: Option<u64>,
        ranges: &[(u64, u64)],
    ) {
        for &(lo, hi) in ranges {
            let mut text = Vec::new();
            let mut sink = Counted { json: CallJson::new(img, (lo, hi), index, &mut text), closed: 0 };
            calls(src, index, img, last_pc, lo, &mut sink).unwrap();
            let closed = sink.closed;
            sink.json.finish(7, 7, index.segments).unwrap();
            assert!(closed <= hi + WINDOW, "{lo}..{hi}: the walk went on to segment {closed}");
            let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
            let got = v["calls"].as_array().unwrap();
            assert_eq!(got.len() as u64, hi + 1 - lo);
            let one = |n: Option<usize>| json!(n.map(|n| n + 1));
            for (c, s) in got.iter().zip(&full.segments[lo as usize - 1..]) {
                let what = format!("{lo}..{hi}, segment {}", s.number);
                assert_eq!(c["number"], s.number, "{what}");
                assert_eq!(c["next"], one(s.next), "{what}");
                assert_eq!(c["prev"], one(s.prev), "{what}");
                assert_eq!(c["up"], one(s.up), "{what}");
                assert_eq!(c["level"], s.level, "{what}: the whole history shows levels from 0");
                assert_eq!(
                    (c["insn_begin"].as_u64(), c["insn_end"].as_u64()),
                    (Some(s.insn_begin), Some(s.insn_end))
                );
                assert_eq!(
                    (c["signal"].as_bool(), c["gap"].is_null()),
                    (Some(s.signal), s.gap.is_none()),
                    "{what}"
                );
            }
        }
    }

    /// The outer function's segments wait for their `next` for half the
    /// trace, then to its end: a range at the start is written after at
    /// most [`WINDOW`] more segments, from the index's long waits, and its
    /// links are those of the whole history.
    #[test]
    fn a_range_under_a_frame_that_waits_long_is_written_without_the_rest() {
        let tf = call_trace_in(20 * WINDOW as usize, true);
        let (dir, mut src) = on_disk(&tf, "calljson");
        let imgs = images(&tf);
        let img = imgs.get(&(7, 1));
        let last_pc = Some(0x1005);
        let full = analyze(&tf.streams[0], img, false, &mut |_, _| {});
        let index = build_call_index(&mut src, img, false, last_pc, &mut |_, _| {}).unwrap();
        let n = index.segments;
        assert!(n > 8 * WINDOW, "{n}");
        // The outer function's two segments; the loop's go on soon.
        let outer: Vec<usize> =
            (0..n as usize).filter(|&i| full.segments[i].level == index.min_level).collect();
        assert_eq!(outer.len(), 2, "{outer:?}");
        assert_eq!(full.segments[0].next, Some(outer[1]));
        assert_eq!(index.long_wait(0), Some(Some(outer[1])), "it went on halfway");
        assert_eq!(index.long_wait(outer[1]), Some(None), "it ended at the trace's end");
        assert_eq!(index.long_waits.len(), 2, "{:?}", index.long_waits);
        let mid = outer[1] as u64 + 1;
        let ranges = [(1, 10), (1, 3 * WINDOW), (mid - 5, mid + 5), (n - 3, n)];
        check_ranges(&mut src, img, (&index, &full), last_pc, &ranges);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Where the kernel's records sit (a page of `ret`s is enough: they
    /// are never decoded, only their addresses matter).
    const KERNEL: u64 = 0xffff_ffff_8100_0000;
    /// Two copies of a body of `call rax` (ff d0) ending in `ret`, from
    /// 0x1000 and 0x1800; a function "j" is entered 2j bytes before the
    /// `ret`, so it makes j calls.
    const RET: u64 = 0x1400;

    fn entry(copy: u64, calls: u64) -> u64 {
        copy + RET - 0x1000 - 2 * calls
    }

    /// A random call tree of `n` records: calls alternate between the two
    /// copies (so a callee is never its caller's code), a few callees
    /// make hundreds of calls, returns above the start, and, when `rough`,
    /// interrupts, resumes from the kernel, signal handlers and records
    /// that cannot be reached (gaps). Returns the trace and its last pc.
    fn random_tree(seed: u64, n: usize, rough: bool) -> (TraceFile, u64) {
        let mut x = seed;
        let mut rand = |below: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % below
        };
        let copy_of = |a: u64| if a < 0x1800 { 0x1000 } else { 0x1800 };
        let other = |a: u64| if a < 0x1800 { 0x1800 } else { 0x1000 };
        let mut recs = vec![];
        let mut stack: Vec<u64> = vec![];
        let mut pc = entry(0x1000, 3 + rand(5));
        recs.push(BtsRecord::branch(0x1900, pc));
        while recs.len() < n {
            let roll = if rough { rand(100_000) } else { u64::MAX };
            if roll < 2 {
                // Somewhere the walk cannot follow: a gap.
                pc = entry(0x1000, 1 + rand(6));
                recs.push(BtsRecord::branch(0x1f00, pc));
            } else if roll < 60 {
                // An interrupt, back where it struck.
                recs.extend(
                    [(pc, KERNEL), (KERNEL + 4, KERNEL + 8), (KERNEL + 12, pc)]
                        .map(|(f, t)| BtsRecord::branch(f, t)),
                );
            } else if roll < 62 {
                // Back from the kernel, its entry not seen.
                recs.push(BtsRecord::branch(KERNEL + 12, pc));
            } else if roll < 80 && stack.len() < 30 {
                // A signal handler, returning to where it struck.
                let handler = entry(other(pc), rand(3));
                recs.extend([(pc, KERNEL), (KERNEL + 12, handler)].map(|(f, t)| BtsRecord::branch(f, t)));
                stack.push(pc);
                pc = handler;
            } else if pc < copy_of(pc) + RET - 0x1000 {
                let depth = stack.len();
                let calls = match depth {
                    0..3 if rand(4) == 0 => 20 + rand(200),
                    41.. => 0,
                    _ => rand(3),
                };
                let callee = entry(other(pc), calls);
                recs.push(BtsRecord::branch(pc, callee));
                stack.push(pc + 2);
                pc = callee;
            } else {
                let back = stack.pop().unwrap_or_else(|| entry(copy_of(pc), 2 + rand(200)));
                recs.push(BtsRecord::branch(copy_of(pc) + RET - 0x1000, back));
                pc = back;
            }
        }
        let mut code = vec![0xcc; 0x1000];
        for copy in [0, 0x800] {
            for k in (copy..copy + 0x400).step_by(2) {
                code[k..k + 2].copy_from_slice(&[0xff, 0xd0]);
            }
            code[copy + 0x400] = 0xc3;
        }
        (one_thread(recs, &code, pc), pc)
    }

    /// Random call trees, with and without interrupts, signals and gaps,
    /// with and without the kernel's records: ranges around each long
    /// wait, just inside and outside [`WINDOW`] of it, and at random, read
    /// as the whole history does.
    #[test]
    fn random_call_trees_read_by_range_as_whole() {
        for (seed, rough) in [(0x9e37_79b9_7f4a_7c15, false), (0x3c6e_f372_fe94_f82a, true)] {
            let (tf, last) = random_tree(seed, 400_000, rough);
            let (dir, mut src) = on_disk(&tf, &format!("calltree{}", u8::from(rough)));
            let imgs = images(&tf);
            let img = imgs.get(&(7, 1));
            for keep_kernel in [false, true] {
                let full = analyze(&tf.streams[0], img, keep_kernel, &mut |_, _| {});
                let index = build_call_index(&mut src, img, keep_kernel, Some(last), &mut |_, _| {}).unwrap();
                let n = index.segments;
                assert_eq!(n as usize, full.segments.len());
                assert!(index.long_waits.len() >= 2, "{seed:#x}: {:?}", index.long_waits);
                if rough && !keep_kernel {
                    assert!(full.segments.iter().any(|s| s.gap.is_some()), "{seed:#x}: gaps");
                    assert!(full.segments.iter().any(|s| s.signal), "{seed:#x}: signals");
                }
                for w in &index.long_waits {
                    assert_eq!(full.segments[w.segment as usize].next.map(|x| x as u64), w.next);
                }
                let mut ranges = vec![(1, 10), (n - 5, n)];
                for w in index.long_waits.iter().step_by(3).take(8) {
                    let s = w.segment + 1;
                    ranges.extend([(s.max(4) - 3, (s + 3).min(n)), (s, s), (s, (s + WINDOW - 1).min(n))]);
                    ranges.push((s.max(WINDOW + 1) - WINDOW, s.max(WINDOW + 1) - WINDOW));
                }
                let mut x = seed;
                for len in [1, 10, 100, 5000, 1, 10, 100, 5000] {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let lo = 1 + (x >> 33) % n;
                    ranges.push((lo, (lo + len - 1).min(n)));
                }
                check_ranges(&mut src, img, (&index, &full), Some(last), &ranges);
            }
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
