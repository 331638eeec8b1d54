//! One thread's trace, decoded: every instruction executed (with gaps),
//! and the function segments above them.

use bts_reader::{Stream, StreamKind};
use decode::calls::{CallBuilder, FnId, Segment};
use decode::flow::{Class, Flow, GapKind, Item};
use decode::kernel::{self, Filter};

use crate::trace::Image;

/// A numbered entry of the instruction history.
#[derive(Debug, Clone, Copy)]
pub enum Entry {
    Insn { number: u64, addr: u64, current: bool },
    Gap { number: u64, kind: GapKind, at: u64 },
}

impl Entry {
    pub fn number(&self) -> u64 {
        match *self {
            Entry::Insn { number, .. } | Entry::Gap { number, .. } => number,
        }
    }
}

pub struct Analysis {
    pub pid: i32,
    pub tid: i32,
    pub entries: Vec<Entry>,
    pub segments: Vec<Segment>,
}

/// The function an address belongs to.
pub fn fn_id(img: Option<&Image>, addr: u64) -> FnId {
    let Some(img) = img else { return FnId { start: 0, name: None } };
    let s = img.syms.lookup(addr);
    match s.function {
        Some(name) => FnId { start: addr.wrapping_sub(s.offset), name: Some(name) },
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
        calls.item(&item);
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
    Analysis { pid, tid, entries, segments: calls.finish() }
}

/// A GDB-style range: `N` (ten from N), `N,M`, `N,+K`, `N,-K`; none: the last ten.
pub fn parse_range(spec: Option<&str>, count: u64, size: u64) -> Result<(u64, u64), String> {
    let last = count.max(1);
    let Some(spec) = spec else {
        return Ok((last.saturating_sub(size - 1).max(1), last));
    };
    let bad = || format!("bad range '{spec}': use N, N,M, N,+K or N,-K");
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
        return Err(format!("range starts at {a}, but the history has {count} entries"));
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
