//! GDB's branch trace documents: the `btrace` block list and the
//! `btrace-conf` configuration, and the blocks of a recorded thread.
//!
//! A block is a straight run of instructions: `begin` is a branch target,
//! `end` the address of the run's last instruction (inclusive). GDB wants
//! them newest first; the newest ends at the current pc (not yet executed).

use decode::kernel::{self, Branch, Filter, Transfer};
use decode::CodeMap;
use ds_alloc::BtsRecord;

/// One block of executed instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// The first instruction (a branch target).
    pub begin: u64,
    /// The last instruction (inclusive).
    pub end: u64,
}

/// The `btrace` document of `blocks` (newest first).
pub fn document(blocks: &[Block]) -> String {
    let mut x = String::with_capacity(64 + blocks.len() * 48);
    x.push_str("<!DOCTYPE btrace SYSTEM \"btrace.dtd\">\n<btrace version=\"1.0\">\n");
    for b in blocks {
        // Hand-formatted: this runs once per block of traces of millions.
        x.push_str("<block begin=\"");
        push_hex(&mut x, b.begin);
        x.push_str("\" end=\"");
        push_hex(&mut x, b.end);
        x.push_str("\"/>\n");
    }
    x.push_str("</btrace>\n");
    x
}

/// Appends `0x` and `v` in lower-case hex, no leading zeros.
fn push_hex(x: &mut String, v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 18];
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = DIGITS[(v & 0xf) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    i -= 2;
    buf[i] = b'0';
    buf[i + 1] = b'x';
    // Only ASCII digits were written.
    x.push_str(std::str::from_utf8(&buf[i..]).unwrap_or_default());
}

/// The `btrace-conf` document: BTS with a buffer of `size` bytes.
pub fn conf_document(size: Option<u64>) -> String {
    let mut x =
        String::from("<!DOCTYPE btrace-conf SYSTEM \"btrace-conf.dtd\">\n<btrace-conf version=\"1.0\">\n");
    if let Some(size) = size {
        x.push_str(&format!("<bts size=\"{size:#x}\"/>\n"));
    }
    x.push_str("</btrace-conf>\n");
    x
}

/// The instruction before `at` on the straight line from `begin`, if `at`
/// is reached (None when `at == begin` or the walk cannot reach it).
fn last_before(code: &CodeMap, begin: u64, at: u64) -> Option<u64> {
    let mut pc = begin;
    let mut prev = None;
    // A block is short; the bound only stops a walk that never arrives.
    for _ in 0..1 << 16 {
        if pc == at {
            return prev;
        }
        if pc > at {
            return None;
        }
        let insn = decode::classify::decode_at(code, pc)?;
        prev = Some(pc);
        pc = insn.next_ip();
    }
    None
}

/// The blocks of a thread's user-mode branches (oldest first, kernel
/// records filtered), newest first, the newest ending at `pc`.
///
/// Each branch ends the block before it at its source: an asynchronous
/// event (a signal) struck before its `from` executed, so that block ends
/// one instruction earlier; a resume whose source is unknown ends no block.
/// The oldest branch's own source block is not known (the ring dropped
/// its beginning) and is not sent, as with GDB's own BTS.
pub fn blocks(branches: &[Branch], code: &CodeMap, pc: Option<u64>) -> Vec<Block> {
    let mut out = Vec::with_capacity(branches.len() + 1);
    if let (Some(last), Some(pc)) = (branches.last(), pc) {
        out.push(Block { begin: last.to, end: pc });
    }
    for w in branches.windows(2).rev() {
        let (older, newer) = (&w[0], &w[1]);
        let end = match newer.transfer {
            Transfer::Branch | Transfer::Syscall => Some(newer.from),
            Transfer::Async => last_before(code, older.to, newer.from),
            Transfer::Resume => None,
        };
        if let Some(end) = end.filter(|&e| e >= older.to) {
            out.push(Block { begin: older.to, end });
        }
    }
    out
}

/// The blocks of a thread's raw records (oldest first): kernel records
/// filtered out, then [`blocks`].
pub fn blocks_of(records: &[BtsRecord], code: &CodeMap, pc: Option<u64>) -> Vec<Block> {
    blocks(&kernel::filter(records, code, Filter::default()), code, pc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(from: u64, to: u64, transfer: Transfer) -> Branch {
        Branch { from, to, transfer }
    }

    fn nops() -> CodeMap {
        let mut c = CodeMap::new();
        c.insert(0x1000, vec![0x90; 0x100]);
        c
    }

    #[test]
    fn newest_first_ending_at_pc() {
        let br = [b(0x1000, 0x1010, Transfer::Branch), b(0x1020, 0x1040, Transfer::Branch)];
        assert_eq!(
            blocks(&br, &nops(), Some(0x1048)),
            vec![Block { begin: 0x1040, end: 0x1048 }, Block { begin: 0x1010, end: 0x1020 }]
        );
    }

    #[test]
    fn a_signal_ends_its_block_before_the_interrupted_instruction() {
        let br = [b(0x1000, 0x1010, Transfer::Branch), b(0x1014, 0x1080, Transfer::Async)];
        assert_eq!(blocks(&br, &nops(), None), vec![Block { begin: 0x1010, end: 0x1013 }]);
        // Interrupted at the block's first instruction: nothing ran.
        let br = [b(0x1000, 0x1010, Transfer::Branch), b(0x1010, 0x1080, Transfer::Async)];
        assert!(blocks(&br, &nops(), None).is_empty());
    }

    #[test]
    fn a_resume_from_nowhere_ends_no_block() {
        let br = [b(0x1000, 0x1010, Transfer::Branch), b(0x1030, 0x1030, Transfer::Resume)];
        assert_eq!(blocks(&br, &nops(), Some(0x1031)), vec![Block { begin: 0x1030, end: 0x1031 }]);
    }

    #[test]
    fn hex_as_format_gives_it() {
        for v in [0u64, 1, 0xf, 0x10, 0x401000, 0x7fff_ffff_ffff, u64::MAX] {
            let mut s = String::new();
            push_hex(&mut s, v);
            assert_eq!(s, format!("{v:#x}"));
        }
    }

    #[test]
    fn documents() {
        let d = document(&[Block { begin: 0x10, end: 0x20 }]);
        assert!(d.contains("<btrace version=\"1.0\">"));
        assert!(d.contains("<block begin=\"0x10\" end=\"0x20\"/>"));
        assert!(conf_document(Some(0x10000)).contains("<bts size=\"0x10000\"/>"));
        assert!(!conf_document(None).contains("<bts"));
    }
}
