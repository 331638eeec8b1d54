//! The call structure, after GDB's btrace: function segments with a call
//! depth, linked to their caller (`up`) and to the previous and next
//! segments of the same function instance. Calls, returns (also several
//! levels at once: longjmp, exceptions), tail calls through jumps (PLT stubs,
//! the lazy resolver), and signal handlers entered asynchronously and left
//! through sigreturn.

use crate::flow::{Class, GapKind, Insn, Item};

/// What is known of the function an address belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FnId {
    /// Start address of the function (0 when unknown).
    pub start: u64,
    /// Its name, when symbols have it.
    pub name: Option<String>,
}

/// One function segment.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Builds segments from reconstructed items; `fn_of` names an address.
pub struct CallBuilder<F: FnMut(u64) -> FnId> {
    fn_of: F,
    /// The segments, in execution order.
    pub segments: Vec<Segment>,
    /// Instruction number of the next instruction.
    next_number: u64,
    last: Option<Insn>,
    pending_async: bool,
}

impl<F: FnMut(u64) -> FnId> CallBuilder<F> {
    /// A builder that names functions with `fn_of`.
    pub fn new(fn_of: F) -> Self {
        CallBuilder { fn_of, segments: Vec::new(), next_number: 1, last: None, pending_async: false }
    }

    fn push(&mut self, f: &FnId, level: i32, up: Option<usize>, prev: Option<usize>) -> usize {
        let idx = self.segments.len();
        let n = self.next_number;
        self.segments.push(Segment {
            number: idx + 1,
            function: f.name.clone(),
            fn_start: f.start,
            level,
            insn_begin: n,
            insn_end: n,
            up,
            prev,
            next: None,
            signal: false,
            tail_call: false,
            gap: None,
        });
        if let Some(p) = prev {
            self.segments[p].next = Some(idx);
        }
        idx
    }

    fn same_fn(seg: &Segment, f: &FnId) -> bool {
        if f.start != 0 || seg.fn_start != 0 {
            seg.fn_start == f.start && seg.function == f.name
        } else {
            seg.function == f.name
        }
    }

    /// The first segment up the call chain of `from` that runs `f`.
    fn find_up(&self, from: usize, f: &FnId) -> Option<usize> {
        // Two functions without symbols cannot be told apart: no match.
        f.name.as_ref()?;
        let mut cur = self.segments[from].up;
        let mut steps = 0;
        while let Some(c) = cur {
            if Self::same_fn(&self.segments[c], f) {
                return Some(c);
            }
            cur = self.segments[c].up;
            steps += 1;
            if steps > 100_000 {
                break;
            }
        }
        None
    }

    /// Returns to (continues) the instance of segment `c`.
    fn resume_in(&mut self, c: usize, f: &FnId) -> usize {
        let (level, up) = (self.segments[c].level, self.segments[c].up);
        let mut last_of_instance = c;
        while let Some(n) = self.segments[last_of_instance].next {
            last_of_instance = n;
        }
        self.push(f, level, up, Some(last_of_instance))
    }

    /// Takes the next item of the flow walk.
    pub fn item(&mut self, item: &Item) {
        match *item {
            Item::Gap { kind, .. } => {
                let level = self.segments.last().map_or(0, |s| s.level);
                let idx = self.push(&FnId { start: 0, name: None }, level, None, None);
                self.segments[idx].gap = Some(kind);
                self.next_number += 1;
                self.last = None;
                self.pending_async = false;
            }
            // An interrupt that resumed where it struck changes nothing;
            // one that went elsewhere delivered a signal.
            Item::Async { from, to } => self.pending_async = from != to,
            Item::Insn(i) => self.insn(i),
        }
    }

    fn insn(&mut self, i: Insn) {
        let f = (self.fn_of)(i.addr);
        let cur = self.segments.len().checked_sub(1).filter(|&c| self.segments[c].gap.is_none());
        let seg = match (cur, self.last) {
            (None, _) | (_, None) => {
                let level = self.segments.last().map_or(0, |s| s.level);
                self.push(&f, level, None, None)
            }
            (Some(c), Some(last)) => {
                let fell_through = i.addr == last.addr + u64::from(last.len);
                if self.pending_async {
                    let s = self.push(&f, self.segments[c].level + 1, Some(c), None);
                    self.segments[s].signal = true;
                    s
                } else {
                    match last.class {
                        Class::Call if !fell_through => {
                            self.push(&f, self.segments[c].level + 1, Some(c), None)
                        }
                        Class::Return | Class::Syscall if !fell_through || last.class == Class::Return => {
                            let up = self.segments[c].up;
                            match self.find_up(c, &f) {
                                Some(u) => self.resume_in(u, &f),
                                // Into code without symbols: back to the caller,
                                // if it has none either.
                                None if f.name.is_none()
                                    && up.is_some_and(|u| self.segments[u].function.is_none()) =>
                                {
                                    self.resume_in(up.expect("checked"), &f)
                                }
                                // Returned above the start of the trace.
                                None => self.push(&f, self.segments[c].level - 1, None, None),
                            }
                        }
                        Class::Jump if !Self::same_fn(&self.segments[c], &f) => {
                            if f.start == i.addr && f.start != 0 {
                                // A tail call: same level, same caller.
                                let (level, up) = (self.segments[c].level, self.segments[c].up);
                                let s = self.push(&f, level, up, None);
                                self.segments[s].tail_call = true;
                                s
                            } else if let Some(u) = self.find_up(c, &f) {
                                // longjmp, an exception landing: unwind.
                                self.resume_in(u, &f)
                            } else {
                                let (level, up) = (self.segments[c].level, self.segments[c].up);
                                self.push(&f, level, up, None)
                            }
                        }
                        _ if !Self::same_fn(&self.segments[c], &f) => {
                            let (level, up) = (self.segments[c].level, self.segments[c].up);
                            self.push(&f, level, up, None)
                        }
                        _ => c,
                    }
                }
            }
        };
        self.segments[seg].insn_end = self.next_number;
        self.next_number += 1;
        self.last = Some(i);
        self.pending_async = false;
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
        for i in items {
            b.item(i);
        }
        b.finish()
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
