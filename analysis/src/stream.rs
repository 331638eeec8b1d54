//! One thread's instruction history for a trace of any size, in bounded
//! memory.
//!
//! [`crate::timeline::analyze`] keeps every instruction of a thread (about
//! 200 bytes per instruction with its segments): fine for a crash report,
//! not for a trace of gigabytes. Here, a sparse index ([`HistoryIndex`]),
//! built in one pass and kept by the caller (the CLI keeps it beside the
//! file), gives the history number of the first instruction after every
//! [`EVERY`]th branch, with the branch before it. A range `[lo, hi]` is then
//! decoded from the nearest point before `lo`, reading only the records
//! from there: a binary search and at most [`EVERY`] branches decoded
//! before the first line. Memory: the decoder's block cache (bounded by the
//! code the trace holds), one chunk of records, and the index (16 bytes
//! per [`EVERY`] branches).
//!
//! The numbers are those of [`crate::timeline::analyze`], entry for entry.

use std::io::{Read, Seek};

use bts_reader::tracestream::StreamAt;
use decode::flow::{Flow, Item};
use decode::kernel::{Branch, Filter, KernelFilter, Transfer};
use serde::{Deserialize, Serialize};

use crate::model::Image;
use crate::timeline::Entry;

/// Branches between two points of the index.
pub const EVERY: u64 = 16 * 1024;
/// Records read at a time.
const CHUNK: usize = 64 * 1024;
/// The index format's version.
pub const INDEX_VERSION: u32 = 1;

/// Where decoding may start afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Point {
    /// The record whose branch comes next (the filter is idle before it).
    pub record: u64,
    /// History entries before that branch's walk.
    pub before: u64,
    /// The branch before it: (from, to, transfer).
    pub prev: (u64, u64, u8),
}

/// The sparse index of one thread stream's instruction history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryIndex {
    /// [`INDEX_VERSION`].
    pub version: u32,
    /// Kernel records kept as they are.
    pub keep_kernel: bool,
    /// Entries of the whole history (instructions and gaps).
    pub entries: u64,
    /// Points, in record order.
    pub points: Vec<Point>,
}

/// The point before record `record`, whose branch comes after `prev`.
pub(crate) fn point_at(record: u64, before: u64, prev: Branch) -> Point {
    Point { record, before, prev: (prev.from, prev.to, transfer_code(prev.transfer)) }
}

fn transfer_code(t: Transfer) -> u8 {
    match t {
        Transfer::Branch => 0,
        Transfer::Syscall => 1,
        Transfer::Async => 2,
        Transfer::Resume => 3,
    }
}

fn transfer_of(c: u8) -> Transfer {
    match c {
        1 => Transfer::Syscall,
        2 => Transfer::Async,
        3 => Transfer::Resume,
        _ => Transfer::Branch,
    }
}

/// What a [`Walk`] hands out as it goes.
pub(crate) enum Step<'a> {
    /// Decoding may start afresh here, at the record being fed: the
    /// entries before it and the branch before it.
    Point {
        /// Entries before the record's branch.
        before: u64,
        /// The branch before it.
        prev: Branch,
    },
    /// The next item of the flow walk, with the number of the entry it
    /// makes (an `Async` item makes none).
    Item {
        /// The item.
        item: &'a Item,
        /// Its entry number.
        number: u64,
        /// The instruction the thread stood at (not executed).
        current: bool,
    },
}

/// The decoder as [`crate::timeline::analyze`] runs it, fed a record at a time.
pub(crate) struct Walk<'c> {
    code: &'c decode::CodeMap,
    flow: Flow<'c>,
    filter: KernelFilter,
    prev: Option<Branch>,
    /// The next entry's number.
    pub(crate) next: u64,
    branches: Vec<Branch>,
}

impl<'c> Walk<'c> {
    /// A walk from the start of a stream.
    pub(crate) fn new(code: &'c decode::CodeMap, keep_kernel: bool) -> Self {
        Self::at(code, keep_kernel, None, 1)
    }

    /// A walk that goes on from `p` (the record `p.record` comes next).
    pub(crate) fn from_point(code: &'c decode::CodeMap, keep_kernel: bool, p: &Point) -> Self {
        let prev = Branch { from: p.prev.0, to: p.prev.1, transfer: transfer_of(p.prev.2) };
        Self::at(code, keep_kernel, Some(prev), p.before + 1)
    }

    fn at(code: &'c decode::CodeMap, keep_kernel: bool, prev: Option<Branch>, next: u64) -> Self {
        Walk {
            code,
            flow: Flow::new(code),
            filter: KernelFilter::new(Filter { keep_kernel, kernel_text: None }),
            prev,
            next,
            branches: Vec::new(),
        }
    }

    /// Feeds one record.
    pub(crate) fn feed(&mut self, r: &ds_alloc::BtsRecord, on: &mut impl FnMut(Step<'_>)) {
        let idle = self.filter.is_idle();
        self.branches.clear();
        self.filter.feed(r, self.code, &mut self.branches);
        let fresh = idle && self.branches.len() == 1;
        for k in 0..self.branches.len() {
            let b = self.branches[k];
            if let (Some(p), true) = (self.prev, fresh) {
                on(Step::Point { before: self.next - 1, prev: p });
            }
            let next = &mut self.next;
            match self.prev {
                Some(p) => self.flow.step(&p, &b, &mut |item| number(item, next, on)),
                None => self.flow.start(&b, &mut |item| number(item, next, on)),
            }
            self.prev = Some(b);
        }
    }

    /// The walk to where the thread stood, and that instruction (not executed).
    pub(crate) fn finish(&mut self, last_pc: Option<u64>, on: &mut impl FnMut(Step<'_>)) {
        let Some(pc) = last_pc else { return };
        if let Some(last) = self.prev {
            let next = &mut self.next;
            self.flow.finish(&last, pc, &mut |item| number(item, next, on));
        }
        let len = decode::classify::decode_at(self.code, pc).map_or(0, |i| i.len() as u8);
        let item = Item::Insn(decode::flow::Insn { addr: pc, len, class: decode::flow::Class::Other });
        on(Step::Item { item: &item, number: self.next, current: true });
        self.next += 1;
    }
}

/// Hands out `item` with its entry number, and counts the entry.
fn number(item: Item, next: &mut u64, on: &mut impl FnMut(Step<'_>)) {
    on(Step::Item { item: &item, number: *next, current: false });
    if !matches!(item, Item::Async { .. }) {
        *next += 1;
    }
}

/// The history entry an item makes, if any.
pub(crate) fn entry_of(item: &Item, number: u64, current: bool) -> Option<Entry> {
    match *item {
        Item::Insn(i) => Some(Entry::Insn { number, addr: i.addr, current }),
        Item::Gap { kind, at } => Some(Entry::Gap { number, kind, at }),
        Item::Async { .. } => None,
    }
}

/// Builds the index of `src`, a thread stream of the image `img` whose
/// thread stood at `last_pc`, reading it once.
pub fn build_index<R: Read + Seek>(
    src: &mut StreamAt<R>,
    img: Option<&Image>,
    keep_kernel: bool,
    last_pc: Option<u64>,
    progress: &mut dyn FnMut(usize, usize),
) -> bts_reader::Result<HistoryIndex> {
    let empty = decode::CodeMap::new();
    let code = img.map(|i| &i.code).unwrap_or(&empty);
    let mut walk = Walk::new(code, keep_kernel);
    let mut points = Vec::new();
    let mut seen = 0u64;
    drive(src, &mut walk, 0, last_pc, progress, &mut |step, record| {
        if let Step::Point { before, prev } = step {
            seen += 1;
            if seen.is_multiple_of(EVERY) {
                points.push(point_at(record, before, prev));
            }
        }
        true
    })?;
    Ok(HistoryIndex { version: INDEX_VERSION, keep_kernel, entries: walk.next - 1, points })
}

/// Calls `entry` with history entries `lo..=hi` of `src`, in order.
pub fn entries<R: Read + Seek>(
    src: &mut StreamAt<R>,
    index: &HistoryIndex,
    img: Option<&Image>,
    last_pc: Option<u64>,
    lo: u64,
    hi: u64,
    entry: &mut impl FnMut(&Entry),
) -> bts_reader::Result<()> {
    let empty = decode::CodeMap::new();
    let code = img.map(|i| &i.code).unwrap_or(&empty);
    // The last point whose first entry comes at or before `lo`.
    let at = index.points.partition_point(|p| p.before < lo);
    let start = at.checked_sub(1).map(|i| index.points[i]);
    let (record, mut walk) = match start {
        Some(p) => (p.record, Walk::from_point(code, index.keep_kernel, &p)),
        None => (0, Walk::new(code, index.keep_kernel)),
    };
    drive(src, &mut walk, record, last_pc, &mut |_, _| {}, &mut |step, _| {
        let Step::Item { item, number, current } = step else { return true };
        if (lo..=hi).contains(&number) {
            if let Some(e) = entry_of(item, number, current) {
                entry(&e);
            }
        }
        // An asynchronous item carries the number of the instruction after it.
        number < hi || matches!(item, Item::Async { .. })
    })?;
    Ok(())
}

/// Walks the records of `src` from `record` on, a chunk at a time: `on`
/// gets each step with the record it came from, and says whether to go on
/// (the walk stops after the record that said no). At the end of the
/// stream the walk is finished, to where the thread stood (`last_pc`).
/// False when `on` stopped it.
pub(crate) fn drive<R: Read + Seek>(
    src: &mut StreamAt<R>,
    walk: &mut Walk<'_>,
    mut record: u64,
    last_pc: Option<u64>,
    progress: &mut dyn FnMut(usize, usize),
    on: &mut impl FnMut(Step<'_>, u64) -> bool,
) -> bts_reader::Result<bool> {
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut more = true;
    loop {
        chunk.clear();
        if src.read(record, CHUNK, &mut chunk)? == 0 {
            walk.finish(last_pc, &mut |step| more = more && on(step, record));
            progress(record as usize, record as usize);
            return Ok(more);
        }
        progress(record as usize, src.count() as usize);
        for r in &chunk {
            walk.feed(r, &mut |step| more = more && on(step, record));
            if !more {
                return Ok(false);
            }
            record += 1;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::images;
    use crate::timeline::analyze;
    use bts_reader::{CodeRange, Module, Stream, StreamKind, TraceFile};
    use ds_alloc::BtsRecord;

    /// A trace of one thread (pid 7) of `records`, with `code` at 0x1000
    /// (the rest of the page int3) and the thread standing at `last_pc`.
    pub(crate) fn one_thread(records: Vec<BtsRecord>, code: &[u8], last_pc: u64) -> TraceFile {
        let mut tf = TraceFile::default();
        tf.meta.pid = 7;
        tf.streams.push(Stream {
            kind: StreamKind::Thread { pid: 7, generation: 1, tid: 7, crashed: true, last_pc: Some(last_pc) },
            capacity: records.len() as u64,
            overwritten: 0,
            lost: 0,
            records,
        });
        let mut bytes = vec![0xcc; 4096];
        bytes[..code.len()].copy_from_slice(code);
        tf.code.push(CodeRange { pid: 7, generation: 1, addr: 0x1000, bytes });
        tf.modules.push(Module {
            pid: 7,
            generation: 1,
            map: decode::Mapping { start: 0x1000, end: 0x2000, offset: 0, path: "[code]".into() },
            build_id: None,
        });
        tf
    }

    /// `tf` written into a fresh folder `name` under the temporary one:
    /// the folder (for the caller to remove) and its first stream's records.
    pub(crate) fn on_disk(tf: &TraceFile, name: &str) -> (std::path::PathBuf, StreamAt<std::fs::File>) {
        let dir = std::env::temp_dir().join(format!("bts-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.bts");
        std::fs::write(&path, tf.to_bytes()).unwrap();
        let (scanned, offsets) = bts_reader::tracestream::scan(&path, true).unwrap();
        assert_eq!(scanned.streams.len(), tf.streams.len());
        assert_eq!(offsets[0].count, tf.streams[0].records.len() as u64);
        (dir, StreamAt::new(std::fs::File::open(&path).unwrap(), offsets[0].data, offsets[0].count))
    }

    /// A loop whose conditional goes either way:
    /// 1000 nop; 1001 jne 1005; 1003 jmp 1000; 1005 jmp 1000.
    fn loop_trace(n: usize) -> TraceFile {
        let mut records = Vec::with_capacity(n);
        let mut x = 12345u32;
        while records.len() < n {
            x = x.wrapping_mul(1103515245).wrapping_add(12345);
            if x & 0x100 != 0 {
                records.push(BtsRecord::branch(0x1001, 0x1005));
                records.push(BtsRecord::branch(0x1005, 0x1000));
            } else {
                records.push(BtsRecord::branch(0x1003, 0x1000));
            }
        }
        one_thread(records, &[0x90, 0x75, 0x02, 0xeb, 0xfb, 0xeb, 0xf9], 0x1001)
    }

    #[test]
    fn ranges_decoded_from_the_index_equal_the_full_decode() {
        let tf = loop_trace(5 * EVERY as usize + 777);
        let (dir, mut src) = on_disk(&tf, "stream");
        let imgs = images(&tf);
        let img = imgs.get(&(7, 1));
        let full = analyze(&tf.streams[0], img, false, &mut |_, _| {});
        let index = build_index(&mut src, img, false, Some(0x1001), &mut |_, _| {}).unwrap();
        assert_eq!(index.entries, full.entries.len() as u64);
        assert!(index.points.len() >= 5, "{}", index.points.len());
        let n = index.entries;
        let p = index.points[2].before;
        for (lo, hi) in [(1, 10), (p - 3, p + 3), (p + 1, p + 1), (n - 20, n), (n, n), (1, n)] {
            let mut got = Vec::new();
            entries(&mut src, &index, img, Some(0x1001), lo, hi, &mut |e| got.push(*e)).unwrap();
            let want = &full.entries[(lo - 1) as usize..hi as usize];
            assert_eq!(got, want, "range {lo}..={hi}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Every range's end is reached, also when its last entry comes right
    /// after an interrupt (whose item carries that entry's number).
    #[test]
    fn a_range_ending_after_an_interrupt_is_whole() {
        const K: u64 = 0xffff_ffff_8100_0000;
        let mut records = Vec::new();
        for round in 0..100 {
            if round % 3 == 0 {
                // Interrupted at the nop, resumed there.
                records.push(BtsRecord::branch(0x1000, K));
                records.push(BtsRecord::branch(K + 0x10, 0x1000));
            }
            records.push(BtsRecord::branch(0x1003, 0x1000));
        }
        let tf = one_thread(records, &[0x90, 0x75, 0x02, 0xeb, 0xfb, 0xeb, 0xf9], 0x1001);
        let (dir, mut src) = on_disk(&tf, "stream-async");
        let imgs = images(&tf);
        let img = imgs.get(&(7, 1));
        let full = analyze(&tf.streams[0], img, false, &mut |_, _| {});
        let index = build_index(&mut src, img, false, Some(0x1001), &mut |_, _| {}).unwrap();
        assert_eq!(index.entries, full.entries.len() as u64);
        for hi in 1..=index.entries {
            let mut got = Vec::new();
            entries(&mut src, &index, img, Some(0x1001), 1, hi, &mut |e| got.push(*e)).unwrap();
            assert_eq!(got, full.entries[..hi as usize], "entries 1..={hi}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn transfers_round_trip() {
        for t in [Transfer::Branch, Transfer::Syscall, Transfer::Async, Transfer::Resume] {
            assert_eq!(transfer_of(transfer_code(t)), t);
        }
    }
}
