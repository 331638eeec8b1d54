//! One thread's trace, decoded: every instruction executed (with gaps),
//! and the function segments above them.

use bts_reader::{Stream, StreamKind};
use decode::calls::{CallBuilder, FnId, Segment, SegmentList};
use decode::flow::{Class, Flow, GapKind, Item};
use decode::kernel::{self, Filter};

use crate::model::Image;

/// A numbered entry of the instruction history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// An instruction executed.
    Insn {
        /// Its number in the history (from 1).
        number: u64,
        /// Its address.
        addr: u64,
        /// The instruction the thread stood at (not executed).
        current: bool,
    },
    /// Instructions the trace cannot account for.
    Gap {
        /// Its number in the history.
        number: u64,
        /// Why.
        kind: GapKind,
        /// The address where the walk stopped.
        at: u64,
    },
}

impl Entry {
    /// Its number in the history.
    pub fn number(&self) -> u64 {
        match *self {
            Entry::Insn { number, .. } | Entry::Gap { number, .. } => number,
        }
    }
}

/// One thread's trace, decoded.
pub struct Analysis {
    /// The process.
    pub pid: i32,
    /// The thread.
    pub tid: i32,
    /// Every instruction executed, and the gaps, oldest first.
    pub entries: Vec<Entry>,
    /// The function segments above them (GDB's call history).
    pub segments: Vec<Segment>,
}

/// The function an address belongs to.
pub fn fn_id(img: Option<&Image>, addr: u64) -> FnId {
    let Some(img) = img else { return FnId { start: 0, name: None } };
    let s = img.syms.lookup(addr);
    match s.function {
        Some(name) => FnId { start: addr.wrapping_sub(s.offset), name: Some(name.into()) },
        None => FnId { start: 0, name: None },
    }
}

/// Decodes a thread stream. `progress` is called with (done, total) records.
pub fn analyze(
    s: &Stream,
    img: Option<&Image>,
    keep_kernel: bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Analysis {
    let (pid, tid, last_pc) = match s.kind {
        StreamKind::Thread { pid, tid, last_pc, .. } => (pid, tid, last_pc),
        StreamKind::Cpu { .. } => (0, -1, None),
    };
    let empty = decode::CodeMap::new();
    let code = img.map(|i| &i.code).unwrap_or(&empty);
    let branches = kernel::filter(&s.records, code, Filter { keep_kernel, kernel_text: None });
    let mut flow = Flow::new(code);
    flow.reserve(s.records.len());
    let mut entries: Vec<Entry> = Vec::new();
    let mut calls = CallBuilder::new(|a| fn_id(img, a));
    let mut list = SegmentList::default();
    let mut n = 1u64;
    let total = branches.len();
    let mut push = |item: Item, entries: &mut Vec<Entry>, calls: &mut CallBuilder<_>| {
        match item {
            Item::Insn(i) => {
                entries.push(Entry::Insn { number: n, addr: i.addr, current: false });
                n += 1;
            }
            Item::Gap { kind, at } => {
                entries.push(Entry::Gap { number: n, kind, at });
                n += 1;
            }
            Item::Async { .. } => {}
        }
        calls.item(&item, &mut |e| list.event(e));
    };
    let mut items = Vec::new();
    if let Some(first) = branches.first() {
        flow.start(first, &mut |i| items.push(i));
    }
    for (k, w) in branches.windows(2).enumerate() {
        flow.step(&w[0], &w[1], &mut |i| items.push(i));
        for item in items.drain(..) {
            push(item, &mut entries, &mut calls);
        }
        if k % 65536 == 0 {
            progress(k, total);
        }
    }
    if let (Some(pc), Some(last)) = (last_pc, branches.last()) {
        flow.finish(last, pc, &mut |i| items.push(i));
    }
    for item in items.drain(..) {
        push(item, &mut entries, &mut calls);
    }
    progress(total, total);
    if let Some(pc) = last_pc {
        let len = decode::classify::decode_at(code, pc).map_or(0, |i| i.len() as u8);
        let item = Item::Insn(decode::flow::Insn { addr: pc, len, class: Class::Other });
        push(item, &mut entries, &mut calls);
        if let Some(Entry::Insn { current, .. }) = entries.last_mut() {
            *current = true;
        }
    }
    calls.finish(&mut |e| list.event(e));
    Analysis { pid, tid, entries, segments: list.finish() }
}
