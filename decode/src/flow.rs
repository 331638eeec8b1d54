//! Flow reconstruction: every instruction executed, rebuilt from branch
//! records by walking the straight line from one record's `to` to the next
//! record's `from`. Each basic block is decoded once per trace and cached.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction};

use crate::kernel::{Branch, Transfer};
use crate::CodeMap;

/// The longest straight line walked between two records.
pub const MAX_WALK: usize = 1 << 20;

/// What kind of instruction, for the call structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[repr(u8)]
pub enum Class {
    /// No change of flow.
    Other,
    /// A call.
    Call,
    /// A return.
    Return,
    /// An unconditional jump.
    Jump,
    /// A conditional jump.
    CondJump,
    /// A system call instruction.
    Syscall,
    /// int, iret, ud2 and other exceptional flow.
    Other2,
}

/// One instruction of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Insn {
    /// Its address.
    pub addr: u64,
    /// Its length in bytes.
    pub len: u8,
    /// What kind of flow it ends in.
    pub class: Class,
}

/// A decoded basic block: instructions up to and including the first
/// control-flow instruction (system calls end a block too), kept in the
/// flow's instruction arena.
#[derive(Debug, Clone, Copy)]
struct BlockRef {
    /// Index of the first instruction in the arena.
    first: u32,
    len: u16,
    /// The block ends because the code after its last instruction could not
    /// be decoded (no bytes, invalid instruction).
    undecodable: bool,
}

/// An instruction in the arena: its address follows from the block start
/// and the lengths before it, so two bytes hold it.
#[derive(Debug, Clone, Copy)]
struct Packed {
    len: u8,
    class: Class,
}

/// Why the reconstruction has a hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GapKind {
    /// The walk passed the next record's `from` without reaching it
    /// (overwritten or lost records, self-modifying code).
    Overflow,
    /// An instruction could not be decoded (no code bytes for it).
    UnknownInsn,
    /// Where user code left before resuming is unknown.
    Resume,
}

impl GapKind {
    /// GDB's error code and text.
    pub fn code(self) -> u32 {
        match self {
            GapKind::Overflow | GapKind::Resume => 1,
            GapKind::UnknownInsn => 2,
        }
    }
    /// How GDB words the gap.
    pub fn text(self) -> &'static str {
        match self {
            GapKind::Overflow | GapKind::Resume => "instruction overflow",
            GapKind::UnknownInsn => "unknown instruction",
        }
    }
}

/// One step of the reconstructed execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// An instruction executed.
    Insn(Insn),
    /// An asynchronous transfer (signal delivery) happened before the next
    /// instruction.
    Async {
        /// The interrupted instruction (not executed).
        from: u64,
        /// The handler.
        to: u64,
    },
    /// Instructions the walk cannot account for.
    Gap {
        /// Why.
        kind: GapKind,
        /// Where the walk stopped.
        at: u64,
    },
}

#[derive(Default)]
/// A hasher for code addresses (a multiply, no SipHash): the walk looks blocks up by address in its hot loop.
pub struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        // The table indexes by the low bits and tags by the top seven: keep
        // the address in the low bits, so blocks near each other in the code
        // sit near each other in the table, and put a mixed tag on top.
        let tag = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 57;
        self.0 = ((n >> 1) & ((1 << 57) - 1)) | (tag << 57);
    }
}

/// A map keyed by code address, hashed with [`AddrHasher`].
pub type AddrMap<V> = HashMap<u64, V, BuildHasherDefault<AddrHasher>>;

fn class_of(i: &Instruction) -> Class {
    if crate::classify::is_syscall(i) {
        return Class::Syscall;
    }
    match i.flow_control() {
        FlowControl::Next => Class::Other,
        FlowControl::Call | FlowControl::IndirectCall => Class::Call,
        FlowControl::Return => Class::Return,
        FlowControl::UnconditionalBranch | FlowControl::IndirectBranch => Class::Jump,
        FlowControl::ConditionalBranch => Class::CondJump,
        _ => Class::Other2,
    }
}

/// Decodes straight-line code, one basic block at a time, with a cache.
pub struct Flow<'c> {
    code: &'c CodeMap,
    index: AddrMap<BlockRef>,
    arena: Vec<Packed>,
    /// Blocks decoded (cache misses), for statistics.
    pub decoded_blocks: u64,
}

/// The most instructions one block holds before it is cut.
const MAX_BLOCK: usize = 4096;

impl<'c> Flow<'c> {
    /// A walker over the code in `code`.
    pub fn new(code: &'c CodeMap) -> Self {
        Flow { code, index: AddrMap::default(), arena: Vec::new(), decoded_blocks: 0 }
    }

    /// The block at `start`, decoded once.
    #[inline]
    fn block(&mut self, start: u64) -> BlockRef {
        match self.index.entry(start) {
            std::collections::hash_map::Entry::Occupied(o) => *o.get(),
            std::collections::hash_map::Entry::Vacant(v) => {
                self.decoded_blocks += 1;
                *v.insert(decode_block(self.code, &mut self.arena, start))
            }
        }
    }

    /// Makes room for the blocks of a trace of `records` records up front
    /// (at most one new block per record), instead of growing as it goes.
    pub fn reserve(&mut self, records: usize) {
        self.index.reserve(records.saturating_sub(self.index.len()));
    }

    /// The block's instructions, with their addresses, from `start`.
    fn insns(&self, b: BlockRef, start: u64) -> impl Iterator<Item = Insn> + '_ {
        let mut addr = start;
        self.arena[b.first as usize..b.first as usize + b.len as usize].iter().map(move |p| {
            let i = Insn { addr, len: p.len, class: p.class };
            addr += u64::from(p.len);
            i
        })
    }

    /// Walks from `start` to the instruction at `end` (included when
    /// `include_end`), calling `emit` for each instruction. Returns the gap
    /// that stopped the walk early, if one did.
    pub fn walk(
        &mut self,
        start: u64,
        end: u64,
        include_end: bool,
        emit: &mut impl FnMut(Insn),
    ) -> Option<(GapKind, u64)> {
        let mut pc = start;
        let mut walked = 0usize;
        loop {
            if pc == end && !include_end {
                return None;
            }
            let b = self.block(pc);
            let mut last: Option<Insn> = None;
            // Stop inside this block if the end lies in it.
            for i in self.insns(b, pc) {
                if i.addr == end {
                    if include_end {
                        emit(i);
                    }
                    return None;
                }
                if i.addr > end && end >= pc {
                    return Some((GapKind::Overflow, i.addr));
                }
                emit(i);
                last = Some(i);
            }
            walked += b.len as usize;
            let Some(l) = last else { return Some((GapKind::UnknownInsn, pc)) };
            if b.undecodable {
                return Some((GapKind::UnknownInsn, l.addr + u64::from(l.len)));
            }
            // Only a branch that may fall through lets the walk go on.
            match l.class {
                Class::CondJump | Class::Syscall | Class::Other => {}
                _ => return Some((GapKind::Overflow, l.addr)),
            }
            if walked > MAX_WALK {
                return Some((GapKind::Overflow, l.addr));
            }
            pc = l.addr + u64::from(l.len);
        }
    }

    /// Reconstructs a thread's execution from its filtered records (oldest
    /// first), up to `end_pc` (the instruction the thread stands at, not
    /// executed) when known.
    pub fn reconstruct(&mut self, branches: &[Branch], end_pc: Option<u64>, emit: &mut impl FnMut(Item)) {
        self.reserve(branches.len());
        let Some(first) = branches.first() else { return };
        self.start(first, emit);
        for w in branches.windows(2) {
            self.step(&w[0], &w[1], emit);
        }
        if let (Some(end), Some(last)) = (end_pc, branches.last()) {
            self.finish(last, end, emit);
        }
    }

    /// The first record: execution starts at its target.
    pub fn start(&mut self, first: &Branch, emit: &mut impl FnMut(Item)) {
        if first.transfer == Transfer::Async {
            emit(Item::Async { from: first.from, to: first.to });
        }
    }

    /// The instructions between two consecutive records, and the second's transfer.
    pub fn step(&mut self, prev: &Branch, b: &Branch, emit: &mut impl FnMut(Item)) {
        match b.transfer {
            Transfer::Resume => emit(Item::Gap { kind: GapKind::Resume, at: b.to }),
            t => {
                let include = t != Transfer::Async;
                if let Some((kind, at)) = self.walk(prev.to, b.from, include, &mut |i| emit(Item::Insn(i))) {
                    emit(Item::Gap { kind, at });
                }
                if t == Transfer::Async {
                    emit(Item::Async { from: b.from, to: b.to });
                }
            }
        }
    }

    /// The run from the last record's target up to `end_pc` (not included).
    pub fn finish(&mut self, last: &Branch, end_pc: u64, emit: &mut impl FnMut(Item)) {
        if let Some((kind, at)) = self.walk(last.to, end_pc, false, &mut |i| emit(Item::Insn(i))) {
            emit(Item::Gap { kind, at });
        }
    }
}

/// Decodes the block at `start` into the arena.
fn decode_block(code: &CodeMap, arena: &mut Vec<Packed>, start: u64) -> BlockRef {
    let first = arena.len() as u32;
    let mut undecodable = false;
    let mut at = start;
    'outer: loop {
        let Some(bytes) = code.slice_at(at) else {
            undecodable = true;
            break;
        };
        let mut dec = Decoder::with_ip(64, bytes, at, DecoderOptions::NONE);
        let mut i = Instruction::default();
        loop {
            if !dec.can_decode() {
                // The range ended at an instruction boundary: maybe another follows.
                continue 'outer;
            }
            dec.decode_out(&mut i);
            let mut crossed = false;
            if i.is_invalid() {
                // Perhaps cut short at the end of a range: read across it.
                let mut buf = [0u8; 15];
                let n = code.read(at, &mut buf);
                let retry = Decoder::with_ip(64, &buf[..n], at, DecoderOptions::NONE).decode();
                if retry.is_invalid() {
                    undecodable = true;
                    break 'outer;
                }
                i = retry;
                crossed = true;
            }
            let class = class_of(&i);
            arena.push(Packed { len: i.len() as u8, class });
            at = i.next_ip();
            if class != Class::Other || arena.len() - first as usize >= MAX_BLOCK {
                break 'outer;
            }
            if crossed {
                continue 'outer;
            }
        }
    }
    BlockRef { first, len: (arena.len() as u32 - first) as u16, undecodable }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn br(from: u64, to: u64) -> Branch {
        Branch { from, to, transfer: Transfer::Branch }
    }

    fn code() -> CodeMap {
        let mut m = CodeMap::new();
        // 0x1000: nop; nop; jne 0x1000 (74 -> 75 fa)  | 0x1004: nop; ret
        m.insert(0x1000, vec![0x90, 0x90, 0x75, 0xfc, 0x90, 0xc3]);
        m
    }

    fn run(branches: &[Branch], end: Option<u64>) -> Vec<Item> {
        let code = code();
        let mut f = Flow::new(&code);
        let mut out = Vec::new();
        f.reconstruct(branches, end, &mut |i| out.push(i));
        out
    }

    fn addrs(items: &[Item]) -> Vec<u64> {
        items.iter().filter_map(|i| if let Item::Insn(x) = i { Some(x.addr) } else { None }).collect()
    }

    #[test]
    fn loops_fall_through_and_end_at_the_pc() {
        // Entered at 0x1000, looped once, fell through, returned.
        let items = run(&[br(0x9000, 0x1000), br(0x1002, 0x1000), br(0x1005, 0x2000)], None);
        assert_eq!(addrs(&items), vec![0x1000, 0x1001, 0x1002, 0x1000, 0x1001, 0x1002, 0x1004, 0x1005]);
        let items = run(&[br(0x9000, 0x1000)], Some(0x1004));
        assert_eq!(addrs(&items), vec![0x1000, 0x1001, 0x1002]);
    }

    #[test]
    fn a_missing_record_is_a_gap() {
        // ret at 0x1005 always branches: a record claiming 0x1005 was
        // reached from 0x1000 while a jump back was taken is inconsistent.
        let items = run(&[br(0x9000, 0x1004), br(0x1001, 0x3000)], None);
        assert!(items.iter().any(|i| matches!(i, Item::Gap { kind: GapKind::Overflow, .. })), "{items:?}");
        let items = run(&[br(0x9000, 0x5000), br(0x5004, 0x1000)], None);
        assert!(matches!(items[0], Item::Gap { kind: GapKind::UnknownInsn, at: 0x5000 }), "{items:?}");
    }

    #[test]
    fn async_records_exclude_the_interrupted_instruction() {
        let b = [br(0x9000, 0x1000), Branch { from: 0x1001, to: 0x7000, transfer: Transfer::Async }];
        let items = run(&b, None);
        assert_eq!(addrs(&items), vec![0x1000]);
        assert!(matches!(items.last(), Some(Item::Async { from: 0x1001, to: 0x7000 })));
    }
}
