//! The call structure, after GDB's btrace: function segments with a call
//! depth, linked to their caller (`up`) and to the previous and next
//! segments of the same function instance. Calls, returns (also several
//! levels at once: longjmp, exceptions), tail calls through jumps (PLT stubs,
//! the lazy resolver), and signal handlers entered asynchronously and left
//! through sigreturn.

use serde::{Deserialize, Serialize};

use crate::flow::{Class, GapKind, Insn, Item};

/// What is known of the function an address belongs to. Cheap to clone
/// (the name is shared): a builder asks for one per instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FnId {
    /// Start address of the function (0 when unknown).
    pub start: u64,
    /// Its name, when symbols have it.
    pub name: Option<std::rc::Rc<str>>,
}

/// One function segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// 1-based, in execution order.
    pub number: usize,
    /// The function's name, when known.
    pub function: Option<String>,
    /// The function's start (0 when unknown).
    pub fn_start: u64,
    /// Call depth; the shallowest segment of the trace is at 0.
    pub level: i32,
    /// First and last instruction numbers (1-based, inclusive).
    pub insn_begin: u64,
    /// The last instruction number (inclusive).
    pub insn_end: u64,
    /// Index of the caller's segment.
    pub up: Option<usize>,
    /// Previous / next segment of the same function instance.
    pub prev: Option<usize>,
    /// The next segment of the same function instance.
    pub next: Option<usize>,
    /// Entered by a signal delivery.
    pub signal: bool,
    /// Entered by a jump to a function's start (tail call).
    pub tail_call: bool,
    /// A gap in the trace, not a function.
    pub gap: Option<GapKind>,
}

impl Segment {
    /// Instructions in the segment.
    pub fn insn_count(&self) -> u64 {
        self.insn_end + 1 - self.insn_begin
    }
}

/// One entry of the live call chain: a segment that may still be returned
/// to, with what is known of its function instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// The instance's newest segment.
    pub segment: Segment,
    /// The instance's first instruction.
    pub begin: u64,
    /// Segments of the instance so far.
    pub segments: usize,
    /// The instance was entered by a signal delivery.
    pub signal: bool,
}

/// What the builder tells as it goes.
#[derive(Debug)]
pub enum CallEvent<'a> {
    /// A segment that will not grow any more, with its callers (outermost
    /// first). Segments close in number order; `next` is not known yet.
    Closed {
        /// The segment.
        segment: &'a Segment,
        /// Its call chain, outermost first.
        callers: &'a [Frame],
    },
    /// The instance of segment `prev` goes on in segment `next` (indices).
    Resumed {
        /// The earlier segment.
        prev: usize,
        /// The new one.
        next: usize,
    },
    /// A function instance ended: nothing it runs or calls comes after.
    /// `end` is the last instruction it or its callees ran.
    Ended {
        /// The instance, as its last segment left it.
        frame: &'a Frame,
        /// Its last instruction, callees included.
        end: u64,
    },
}

/// Everything the builder carries from one item to the next: a
/// checkpoint from which building may go on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallState {
    /// The live call chain, outermost first; the last is the current
    /// segment. Each is its instance's newest segment.
    pub stack: Vec<Frame>,
    /// Instruction number of the next instruction.
    pub next_number: u64,
    /// Segments made so far.
    pub made: usize,
    /// The instruction before.
    pub last: Option<Insn>,
    /// A signal was delivered before the next instruction.
    pub pending_async: bool,
}

impl Default for CallState {
    /// The state before the first item.
    fn default() -> Self {
        CallState { stack: Vec::new(), next_number: 1, made: 0, last: None, pending_async: false }
    }
}

/// Builds segments from reconstructed items, a call chain deep in memory:
/// segments are handed out ([`CallEvent`]) as they close, so a trace of
/// any length takes the memory of its deepest call chain. `fn_of` names an
/// address.
pub struct CallBuilder<F: FnMut(u64) -> FnId> {
    fn_of: F,
    st: CallState,
}

impl<F: FnMut(u64) -> FnId> CallBuilder<F> {
    /// A builder that names functions with `fn_of`.
    pub fn new(fn_of: F) -> Self {
        Self::resume(fn_of, CallState::default())
    }

    /// A builder that goes on from `state`.
    pub fn resume(fn_of: F, state: CallState) -> Self {
        CallBuilder { fn_of, st: state }
    }

    /// Where the builder stands.
    pub fn state(&self) -> &CallState {
        &self.st
    }

    /// Closes the current segment, if any.
    fn close_top(&self, sink: &mut impl FnMut(CallEvent<'_>)) {
        if let Some((top, callers)) = self.st.stack.split_last() {
            sink(CallEvent::Closed { segment: &top.segment, callers });
        }
    }

    /// Pops the chain down to `keep` frames, ending each instance popped.
    fn pop_to(&mut self, keep: usize, sink: &mut impl FnMut(CallEvent<'_>)) {
        let end = self.st.next_number.saturating_sub(1);
        while self.st.stack.len() > keep {
            let frame = self.st.stack.pop().expect("longer than keep");
            if frame.segment.gap.is_none() {
                sink(CallEvent::Ended { frame: &frame, end });
            }
        }
    }

    /// A new segment on top of the chain (its frame starts an instance).
    fn push(&mut self, f: &FnId, level: i32, up: Option<usize>) -> &mut Frame {
        let idx = self.st.made;
        self.st.made += 1;
        let n = self.st.next_number;
        let segment = Segment {
            number: idx + 1,
            function: f.name.as_deref().map(str::to_string),
            fn_start: f.start,
            level,
            insn_begin: n,
            insn_end: n,
            up,
            prev: None,
            next: None,
            signal: false,
            tail_call: false,
            gap: None,
        };
        self.st.stack.push(Frame { segment, begin: n, segments: 1, signal: false });
        self.st.stack.last_mut().expect("pushed")
    }

    fn same_fn(seg: &Segment, f: &FnId) -> bool {
        if f.start != 0 || seg.fn_start != 0 {
            seg.fn_start == f.start && seg.function.as_deref() == f.name.as_deref()
        } else {
            seg.function.as_deref() == f.name.as_deref()
        }
    }

    /// The innermost caller of the current segment that runs `f`.
    fn find_up(&self, f: &FnId) -> Option<usize> {
        // Two functions without symbols cannot be told apart: no match.
        f.name.as_ref()?;
        let callers = self.st.stack.len().checked_sub(1)?;
        (0..callers).rev().find(|&k| Self::same_fn(&self.st.stack[k].segment, f))
    }

    /// Returns to (continues) the instance of frame `k`, ending those above it.
    fn resume_in(&mut self, k: usize, f: &FnId, sink: &mut impl FnMut(CallEvent<'_>)) {
        self.close_top(sink);
        self.pop_to(k + 1, sink);
        let old = self.st.stack.pop().expect("frame k");
        let prev = old.segment.number - 1;
        let frame = self.push(f, old.segment.level, old.segment.up);
        frame.segment.prev = Some(prev);
        frame.begin = old.begin;
        frame.segments = old.segments + 1;
        frame.signal = old.signal;
        let next = frame.segment.number - 1;
        sink(CallEvent::Resumed { prev, next });
    }

    /// A new instance in place of the current one (same caller, same level).
    fn replace(&mut self, f: &FnId, sink: &mut impl FnMut(CallEvent<'_>)) -> &mut Frame {
        self.close_top(sink);
        let c = self.st.stack.len() - 1;
        let (level, up) = (self.st.stack[c].segment.level, self.st.stack[c].segment.up);
        self.pop_to(c, sink);
        self.push(f, level, up)
    }

    /// A new chain: everything before ends (a gap, the start of the trace,
    /// a return above where the trace began).
    fn restart(&mut self, f: &FnId, level: i32, sink: &mut impl FnMut(CallEvent<'_>)) -> &mut Frame {
        self.close_top(sink);
        self.pop_to(0, sink);
        self.push(f, level, None)
    }

    /// Takes the next item of the flow walk.
    pub fn item(&mut self, item: &Item, sink: &mut impl FnMut(CallEvent<'_>)) {
        match *item {
            Item::Gap { kind, .. } => {
                let level = self.st.stack.last().map_or(0, |t| t.segment.level);
                let frame = self.restart(&FnId { start: 0, name: None }, level, sink);
                frame.segment.gap = Some(kind);
                self.st.next_number += 1;
                self.st.last = None;
                self.st.pending_async = false;
            }
            // An interrupt that resumed where it struck changes nothing;
            // one that went elsewhere delivered a signal.
            Item::Async { from, to } => self.st.pending_async = from != to,
            Item::Insn(i) => self.insn(i, sink),
        }
    }

    fn insn(&mut self, i: Insn, sink: &mut impl FnMut(CallEvent<'_>)) {
        let f = (self.fn_of)(i.addr);
        let top = self.st.stack.last().filter(|t| t.segment.gap.is_none());
        let top = top.map(|t| (t.segment.level, t.segment.number - 1, Self::same_fn(&t.segment, &f)));
        match (top, self.st.last) {
            (None, _) | (_, None) => {
                let level = self.st.stack.last().map_or(0, |t| t.segment.level);
                self.restart(&f, level, sink);
            }
            (Some((level, cur, same)), Some(last)) => {
                let fell_through = i.addr == last.addr + u64::from(last.len);
                if self.st.pending_async {
                    self.close_top(sink);
                    let up = Some(cur);
                    let frame = self.push(&f, level + 1, up);
                    frame.segment.signal = true;
                    frame.signal = true;
                } else {
                    match last.class {
                        Class::Call if !fell_through => {
                            self.close_top(sink);
                            let up = Some(cur);
                            self.push(&f, level + 1, up);
                        }
                        Class::Return | Class::Syscall if !fell_through || last.class == Class::Return => {
                            let n = self.st.stack.len();
                            match self.find_up(&f) {
                                Some(k) => self.resume_in(k, &f, sink),
                                // Into code without symbols: back to the caller,
                                // if it has none either.
                                None if f.name.is_none()
                                    && n >= 2
                                    && self.st.stack[n - 2].segment.function.is_none() =>
                                {
                                    self.resume_in(n - 2, &f, sink)
                                }
                                // Returned above the start of the trace.
                                None => {
                                    self.restart(&f, level - 1, sink);
                                }
                            }
                        }
                        Class::Jump if !same => {
                            if f.start == i.addr && f.start != 0 {
                                // A tail call: same level, same caller.
                                self.replace(&f, sink).segment.tail_call = true;
                            } else if let Some(k) = self.find_up(&f) {
                                // longjmp, an exception landing: unwind.
                                self.resume_in(k, &f, sink)
                            } else {
                                self.replace(&f, sink);
                            }
                        }
                        _ if !same => {
                            self.replace(&f, sink);
                        }
                        _ => {}
                    }
                }
            }
        }
        let top = self.st.stack.last_mut().expect("a segment is current");
        top.segment.insn_end = self.st.next_number;
        self.st.next_number += 1;
        self.st.last = Some(i);
        self.st.pending_async = false;
    }

    /// Closes the current segment and ends every instance still open.
    pub fn finish(&mut self, sink: &mut impl FnMut(CallEvent<'_>)) {
        self.close_top(sink);
        self.pop_to(0, sink);
    }
}

/// Every segment of a trace in memory, linked both ways: the events of a
/// [`CallBuilder`] collected.
#[derive(Debug, Default)]
pub struct SegmentList {
    segments: Vec<Segment>,
}

impl SegmentList {
    /// Takes one event.
    pub fn event(&mut self, e: CallEvent<'_>) {
        match e {
            CallEvent::Closed { segment, .. } => self.segments.push(segment.clone()),
            CallEvent::Resumed { prev, next } => self.segments[prev].next = Some(next),
            CallEvent::Ended { .. } => {}
        }
    }

    /// The segments, levels normalized so the shallowest is 0.
    pub fn finish(mut self) -> Vec<Segment> {
        let min = self.segments.iter().map(|s| s.level).min().unwrap_or(0);
        for s in &mut self.segments {
            s.level -= min;
        }
        self.segments
    }
}

/// The names of the call stack of a segment, outermost first.
pub fn stack_names(segs: &[Segment], idx: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = Some(idx);
    let mut guard = 0;
    while let Some(c) = cur {
        out.push(segs[c].function.clone().unwrap_or_else(|| "??".into()));
        cur = segs[c].up;
        guard += 1;
        if guard > 100_000 {
            break;
        }
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Class::*;

    fn fn_of(addr: u64) -> FnId {
        // Functions at 0x1000 (main), 0x2000 (a), 0x3000 (b), 0x4000 (handler).
        let start = addr & !0xfff;
        let name = match start {
            0x1000 => "main",
            0x2000 => "a",
            0x3000 => "b",
            0x4000 => "handler",
            _ => return FnId { start: 0, name: None },
        };
        FnId { start, name: Some(name.into()) }
    }

    fn ins(addr: u64, class: Class) -> Item {
        Item::Insn(Insn { addr, len: 1, class })
    }

    fn build(items: &[Item]) -> Vec<Segment> {
        let mut b = CallBuilder::new(fn_of);
        let mut list = SegmentList::default();
        for i in items {
            b.item(i, &mut |e| list.event(e));
        }
        b.finish(&mut |e| list.event(e));
        list.finish()
    }

    fn shape(segs: &[Segment]) -> Vec<(String, i32, u64, u64)> {
        segs.iter()
            .map(|s| (s.function.clone().unwrap_or("??".into()), s.level, s.insn_begin, s.insn_end))
            .collect()
    }

    #[test]
    fn calls_returns_and_a_tail_call() {
        let items = [
            ins(0x1000, Other),
            ins(0x1001, Call), // main calls a
            ins(0x2000, Jump), // a tail-calls b
            ins(0x3000, Other),
            ins(0x3001, Return), // b returns to main
            ins(0x1002, Other),
        ];
        let segs = build(&items);
        assert_eq!(
            shape(&segs),
            vec![
                ("main".into(), 0, 1, 2),
                ("a".into(), 1, 3, 3),
                ("b".into(), 1, 4, 5),
                ("main".into(), 0, 6, 6)
            ]
        );
        assert!(segs[2].tail_call);
        assert_eq!(segs[3].prev, Some(0));
        assert_eq!(segs[0].next, Some(3));
        assert_eq!(stack_names(&segs, 2), vec!["main", "b"]);
    }

    #[test]
    fn longjmp_unwinds_and_signals_nest() {
        let items = [
            ins(0x1000, Call),
            ins(0x2000, Call),
            ins(0x3000, Jump), // longjmp back into main's middle
            ins(0x1010, Other),
            Item::Async { from: 0x1011, to: 0x4000 },
            ins(0x4000, Other),
            ins(0x4001, Syscall), // rt_sigreturn
            ins(0x1011, Other),
        ];
        let segs = build(&items);
        assert_eq!(
            shape(&segs),
            vec![
                ("main".into(), 0, 1, 1),
                ("a".into(), 1, 2, 2),
                ("b".into(), 2, 3, 3),
                ("main".into(), 0, 4, 4),
                ("handler".into(), 1, 5, 6),
                ("main".into(), 0, 7, 7),
            ]
        );
        assert!(segs[4].signal);
    }

    #[test]
    fn returns_above_the_trace_start_and_gaps() {
        let items = [
            ins(0x3000, Return), // b returns into a, which the trace never saw called
            ins(0x2000, Return),
            ins(0x1000, Other),
            Item::Gap { kind: GapKind::Overflow, at: 0 },
            ins(0x1005, Other),
        ];
        let segs = build(&items);
        assert_eq!(segs[0].level, 2);
        assert_eq!(segs[1].level, 1);
        assert_eq!(segs[2].level, 0);
        assert_eq!(segs[3].gap, Some(GapKind::Overflow));
        assert_eq!(segs[3].insn_begin, 4);
        assert_eq!(segs[4].insn_begin, 5);
    }
}
