//! One thread's call history (GDB's function segments) for a trace of any
//! size, in bounded memory.
//!
//! [`decode::calls::CallBuilder`] keeps only the live call chain and hands
//! segments out as they close, so one pass over the records gives every
//! segment in the memory of the deepest chain. What one pass cannot know
//! is kept in a [`CallIndex`], built once per trace file and thread: the
//! number of segments, the shallowest level (levels are shown from 0), and
//! checkpoints of the builder at points of the instruction index, from
//! which a range of segments is decoded without the records before it.
//!
//! A checkpoint holds the call chain, so it is kept only when the records
//! since the last one number at least 1024 per frame of the chain: the
//! index stays a small fraction of the trace even in a deep recursion.
//!
//! A segment's `next` (where its function instance goes on) is known only
//! when the instance resumes, which may be the end of the trace for an
//! outermost frame. The index keeps the `next` of every segment that waits
//! for it while [`WINDOW`] or more segments close ([`LongWait`]), so that
//! a reader needs to look at most [`WINDOW`] segments past a range.

use std::io::{Read, Seek};

use bts_reader::tracestream::StreamAt;
use decode::calls::{CallBuilder, CallEvent, CallState, FnId};
use decode::flow::{AddrMap, Item};
use serde::{Deserialize, Serialize};

use crate::model::Image;
use crate::stream::{drive, point_at, Point, Step, Walk, EVERY};
use crate::timeline::fn_id;

/// Records a checkpoint must stand for, per frame of its call chain.
const RECORDS_PER_FRAME: u64 = 1024;
/// The call index format's version.
pub const CALL_INDEX_VERSION: u32 = 2;
/// Segments a reader looks past one waiting for its `next` at most; the
/// `next` of one that waits longer is in the index ([`CallIndex::long_waits`]).
pub const WINDOW: u64 = 4096;

/// Where building may go on: a point of the instruction walk and the
/// call builder as it stood there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The walk.
    pub point: Point,
    /// The builder.
    pub state: CallState,
}

/// What one pass over a thread's records tells of its call history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallIndex {
    /// [`CALL_INDEX_VERSION`].
    pub version: u32,
    /// Kernel records kept as they are.
    pub keep_kernel: bool,
    /// Entries of the instruction history (instructions and gaps).
    pub entries: u64,
    /// Function segments.
    pub segments: u64,
    /// The shallowest call level met; levels are shown less it.
    pub min_level: i32,
    /// Checkpoints, in record order.
    pub checkpoints: Vec<Checkpoint>,
    /// The segments that waited for their `next` while [`WINDOW`] or more
    /// segments closed, by segment. Those wait in the live call chain, so
    /// there are at most about the chain's depth of them per [`WINDOW`]
    /// segments. (`default`: an index file of version 1, without them,
    /// must still parse, so that it is found old and rebuilt, not taken
    /// for a file that is no index and left alone.)
    #[serde(default)]
    pub long_waits: Vec<LongWait>,
}

/// A segment that waited long for its `next`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LongWait {
    /// The segment (an index: its number less one).
    pub segment: u64,
    /// Where its instance went on (an index); none when it ended.
    pub next: Option<u64>,
}

impl CallIndex {
    /// The `next` of segment `idx` (an index) if it waited long (see
    /// [`waited_long`]); `Some(None)`: its instance ended.
    pub fn long_wait(&self, idx: usize) -> Option<Option<usize>> {
        let at = self.long_waits.binary_search_by_key(&(idx as u64), |w| w.segment).ok()?;
        Some(self.long_waits[at].next.map(|n| n as usize))
    }
}

/// Whether a segment numbered `number` has waited long for its `next`
/// once the segment numbered `last_closed` has closed: [`WINDOW`] or more
/// segments closed after it. The index keeps those that waited long when
/// they settled; a reader asks it for those still waiting.
pub fn waited_long(number: u64, last_closed: u64) -> bool {
    last_closed.saturating_sub(number) >= WINDOW
}

/// What a reader of the call history does with it.
pub trait CallSink {
    /// One event of the builder. Return false when nothing more is wanted.
    fn event(&mut self, e: CallEvent<'_>) -> bool;
    /// Each instruction, with the index of the segment it runs in.
    fn insn(&mut self, _addr: u64, _segment: usize) {}
}

/// The builder with the symbols of one image.
type Builder<'i> = CallBuilder<Box<dyn FnMut(u64) -> FnId + 'i>>;

/// Addresses whose function is kept (beyond, the cache starts over).
const FUNCTIONS: usize = 1 << 18;

fn builder<'i>(img: Option<&'i Image>, state: Option<CallState>) -> Builder<'i> {
    // A trace runs the same instructions over and over: each address is
    // looked up once, and each function's name is held once.
    let mut known: AddrMap<FnId> = AddrMap::default();
    let mut names: AddrMap<std::rc::Rc<str>> = AddrMap::default();
    let fn_of: Box<dyn FnMut(u64) -> FnId + 'i> = Box::new(move |a| {
        if known.len() >= FUNCTIONS {
            known.clear();
            names.clear();
        }
        known
            .entry(a)
            .or_insert_with(|| {
                let mut f = fn_id(img, a);
                if let Some(n) = f.name.take() {
                    let held = names.entry(f.start).or_insert_with(|| n.clone());
                    f.name = Some(if *held == n { held.clone() } else { n });
                }
                f
            })
            .clone()
    });
    match state {
        Some(s) => CallBuilder::resume(fn_of, s),
        None => CallBuilder::new(fn_of),
    }
}

/// Feeds a walk item to the builder and the sink; false once the sink is done.
fn take(b: &mut Builder<'_>, item: &Item, sink: &mut dyn CallSink) -> bool {
    let mut more = true;
    b.item(item, &mut |e| more &= sink.event(e));
    if let (Item::Insn(i), Some(top)) = (item, b.state().stack.last()) {
        sink.insn(i.addr, top.segment.number - 1);
    }
    more
}

/// Builds the call index of `src`, a thread stream of the image `img`
/// whose thread stood at `last_pc`, reading it once.
pub fn build_call_index<R: Read + Seek>(
    src: &mut StreamAt<R>,
    img: Option<&Image>,
    keep_kernel: bool,
    last_pc: Option<u64>,
    progress: &mut dyn FnMut(usize, usize),
) -> bts_reader::Result<CallIndex> {
    struct Count {
        min_level: i32,
        last_closed: u64,
        long_waits: Vec<LongWait>,
    }
    impl Count {
        fn settled(&mut self, idx: usize, next: Option<usize>) {
            if waited_long(idx as u64 + 1, self.last_closed) {
                self.long_waits.push(LongWait { segment: idx as u64, next: next.map(|n| n as u64) });
            }
        }
    }
    impl CallSink for Count {
        fn event(&mut self, e: CallEvent<'_>) -> bool {
            match e {
                CallEvent::Closed { segment, .. } => {
                    self.min_level = self.min_level.min(segment.level);
                    self.last_closed = segment.number as u64;
                }
                CallEvent::Resumed { prev, next } => self.settled(prev, Some(next)),
                CallEvent::Ended { frame, .. } => self.settled(frame.segment.number - 1, None),
            }
            true
        }
    }
    let empty = decode::CodeMap::new();
    let code = img.map(|i| &i.code).unwrap_or(&empty);
    let mut walk = Walk::new(code, keep_kernel);
    let mut b = builder(img, None);
    let mut count = Count { min_level: 0, last_closed: 0, long_waits: Vec::new() };
    let mut checkpoints = Vec::new();
    let (mut seen, mut last_kept) = (0u64, 0u64);
    drive(src, &mut walk, 0, last_pc, progress, &mut |step, record| {
        match step {
            Step::Point { before, prev } => {
                seen += 1;
                let frames = b.state().stack.len() as u64;
                if seen.is_multiple_of(EVERY) && frames * RECORDS_PER_FRAME <= record - last_kept {
                    last_kept = record;
                    let state = b.state().clone();
                    checkpoints.push(Checkpoint { point: point_at(record, before, prev), state });
                }
            }
            Step::Item { item, .. } => {
                take(&mut b, item, &mut count);
            }
        }
        true
    })?;
    b.finish(&mut |e| {
        count.event(e);
    });
    Ok(CallIndex {
        version: CALL_INDEX_VERSION,
        keep_kernel,
        entries: walk.next - 1,
        segments: b.state().made as u64,
        min_level: count.min_level,
        checkpoints,
        long_waits: {
            count.long_waits.sort_unstable_by_key(|w| w.segment);
            count.long_waits
        },
    })
}

/// Hands `sink` the call history of `src` from the segment numbered
/// `from` (or from one before it) until it wants no more or the stream
/// ends. Levels are as built: less `index.min_level` to show them.
pub fn calls<R: Read + Seek>(
    src: &mut StreamAt<R>,
    index: &CallIndex,
    img: Option<&Image>,
    last_pc: Option<u64>,
    from: u64,
    sink: &mut dyn CallSink,
) -> bts_reader::Result<()> {
    let empty = decode::CodeMap::new();
    let code = img.map(|i| &i.code).unwrap_or(&empty);
    // The last checkpoint before segment `from` began (so every
    // instruction of it is seen: `--lines` needs them).
    let at = index.checkpoints.partition_point(|c| (c.state.made as u64) < from.max(1));
    let (record, mut walk, mut b) = match at.checked_sub(1).map(|i| &index.checkpoints[i]) {
        Some(c) => (
            c.point.record,
            Walk::from_point(code, index.keep_kernel, &c.point),
            builder(img, Some(c.state.clone())),
        ),
        None => (0, Walk::new(code, index.keep_kernel), builder(img, None)),
    };
    let more = drive(src, &mut walk, record, last_pc, &mut |_, _| {}, &mut |step, _| match step {
        Step::Item { item, .. } => take(&mut b, item, sink),
        Step::Point { .. } => true,
    })?;
    if more {
        let mut more = true;
        b.finish(&mut |e| more = more && sink.event(e));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::images;
    use crate::stream::tests::{on_disk, one_thread};
    use crate::timeline::analyze;
    use bts_reader::TraceFile;
    use decode::calls::Segment;
    use ds_alloc::BtsRecord;

    /// Calls one or two deep, at random:
    /// 1000 call 1010; 1005 jmp 1000;
    /// 1010 jne 1013; 1012 ret; 1013 call 1020; 1018 ret; 1020 ret.
    fn call_trace(n: usize) -> TraceFile {
        call_trace_in(n, false)
    }

    /// [`call_trace`], called by an outer function when `outer`: 10f0 jmp
    /// 1100; 1100 call 1000; 1105 jmp 1100, with the loop's `jmp` a `jne`
    /// that falls through once, halfway, to a `ret` (1007). The outer
    /// function's first segment goes on halfway, its second never.
    pub(crate) fn call_trace_in(n: usize, outer: bool) -> TraceFile {
        let mut records = Vec::with_capacity(n + 9);
        if outer {
            records.push(BtsRecord::branch(0x10f0, 0x1100));
            records.push(BtsRecord::branch(0x1100, 0x1000));
        }
        let mut x = 54321u32;
        let mut returned = !outer;
        while records.len() < n {
            x = x.wrapping_mul(1103515245).wrapping_add(12345);
            records.push(BtsRecord::branch(0x1000, 0x1010));
            if x & 0x100 != 0 {
                records.push(BtsRecord::branch(0x1010, 0x1013));
                records.push(BtsRecord::branch(0x1013, 0x1020));
                records.push(BtsRecord::branch(0x1020, 0x1018));
                records.push(BtsRecord::branch(0x1018, 0x1005));
            } else {
                records.push(BtsRecord::branch(0x1012, 0x1005));
            }
            if !returned && records.len() >= n / 2 {
                returned = true;
                records.push(BtsRecord::branch(0x1007, 0x1105));
                records.push(BtsRecord::branch(0x1105, 0x1100));
                records.push(BtsRecord::branch(0x1100, 0x1000));
            } else {
                records.push(BtsRecord::branch(0x1005, 0x1000));
            }
        }
        let mut code = vec![0xcc; 0x21];
        code[..7].copy_from_slice(&[0xe8, 0x0b, 0, 0, 0, 0xeb, 0xf9]);
        code[0x10..0x19].copy_from_slice(&[0x75, 0x01, 0xc3, 0xe8, 0x08, 0, 0, 0, 0xc3]);
        code[0x20] = 0xc3;
        if outer {
            code[5..8].copy_from_slice(&[0x75, 0xf9, 0xc3]);
            code.resize(0x107, 0xcc);
            code[0xf0..0xf2].copy_from_slice(&[0xeb, 0x0e]);
            code[0x100..].copy_from_slice(&[0xe8, 0xfb, 0xfe, 0xff, 0xff, 0xeb, 0xf9]);
        }
        one_thread(records, &code, 0x1005)
    }

    /// Segments `lo..` by index, as [`decode::calls::SegmentList`] links them.
    struct Collect {
        lo: usize,
        min_level: i32,
        got: BTreeMap<usize, Segment>,
    }

    impl CallSink for Collect {
        fn event(&mut self, e: CallEvent<'_>) -> bool {
            match e {
                CallEvent::Closed { segment, .. } if segment.number >= self.lo => {
                    let level = segment.level - self.min_level;
                    self.got.insert(segment.number - 1, Segment { level, ..segment.clone() });
                }
                CallEvent::Resumed { prev, next } => {
                    if let Some(s) = self.got.get_mut(&prev) {
                        s.next = Some(next);
                    }
                }
                _ => {}
            }
            true
        }
    }

    #[test]
    fn segments_from_checkpoints_equal_the_full_decode() {
        let tf = call_trace(6 * EVERY as usize + 321);
        let (dir, mut src) = on_disk(&tf, "callstream");
        let imgs = images(&tf);
        let img = imgs.get(&(7, 1));
        let last_pc = Some(0x1005);
        let full = analyze(&tf.streams[0], img, false, &mut |_, _| {});
        let index = build_call_index(&mut src, img, false, last_pc, &mut |_, _| {}).unwrap();
        assert_eq!(index.segments, full.segments.len() as u64);
        assert_eq!(index.entries, full.entries.len() as u64);
        assert!(index.checkpoints.len() >= 4, "{}", index.checkpoints.len());
        assert!(full.segments.iter().any(|s| s.level == 2), "calls two deep");
        let mid = index.checkpoints[2].state.made;
        let n = full.segments.len();
        for lo in [1, mid - 1, mid, mid + 1, n - 3, n] {
            let mut c = Collect { lo, min_level: index.min_level, got: BTreeMap::new() };
            calls(&mut src, &index, img, last_pc, lo as u64, &mut c).unwrap();
            let got: Vec<Segment> = c.got.into_values().collect();
            assert_eq!(got, full.segments[lo - 1..], "from segment {lo}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_sink_that_has_enough_stops_the_walk() {
        let tf = call_trace(3 * EVERY as usize);
        let (dir, mut src) = on_disk(&tf, "callstop");
        let imgs = images(&tf);
        let img = imgs.get(&(7, 1));
        let index = build_call_index(&mut src, img, false, None, &mut |_, _| {}).unwrap();
        struct Five(Vec<usize>);
        impl CallSink for Five {
            fn event(&mut self, e: CallEvent<'_>) -> bool {
                if let CallEvent::Closed { segment, .. } = e {
                    self.0.push(segment.number);
                }
                self.0.len() < 5
            }
        }
        let mut five = Five(Vec::new());
        calls(&mut src, &index, img, None, 1, &mut five).unwrap();
        assert_eq!(five.0, vec![1, 2, 3, 4, 5]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
