//! The kind of a branch record, decided by decoding the instruction at `from`.

use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic};

use crate::CodeMap;

/// What kind of control transfer a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchKind {
    /// A call (near or far).
    Call,
    /// A return.
    Return,
    /// An unconditional jump.
    Jump,
    /// A conditional branch taken.
    Conditional,
    /// A system call and the return to user code.
    Syscall,
    /// An asynchronous transfer (signal delivery, interrupt): `from` is the
    /// interrupted instruction, which did not execute.
    Async,
}

impl BranchKind {
    /// Its name in reports (`call`, `return`...).
    pub fn as_str(self) -> &'static str {
        match self {
            BranchKind::Call => "call",
            BranchKind::Return => "return",
            BranchKind::Jump => "jump",
            BranchKind::Conditional => "conditional",
            BranchKind::Syscall => "syscall",
            BranchKind::Async => "async",
        }
    }
}

/// Decodes the instruction at `addr` from the trace's code.
pub fn decode_at(code: &CodeMap, addr: u64) -> Option<Instruction> {
    let mut buf = [0u8; 15];
    let n = code.read(addr, &mut buf);
    if n == 0 {
        return None;
    }
    let insn = Decoder::with_ip(64, &buf[..n], addr, DecoderOptions::NONE).decode();
    (!insn.is_invalid()).then_some(insn)
}

/// Classifies the record `from -> to`.
pub fn classify(code: &CodeMap, from: u64, to: u64) -> BranchKind {
    Shape::of(decode_at(code, from).as_ref()).kind(to)
}

/// A system call instruction: `syscall`, `sysenter` or `int 0x80`. The one
/// definition every part of bts uses (the recorders, the kernel filter, the
/// flow walk).
pub fn is_syscall(insn: &Instruction) -> bool {
    match insn.mnemonic() {
        Mnemonic::Syscall | Mnemonic::Sysenter => true,
        Mnemonic::Int => insn.immediate8() == 0x80,
        _ => false,
    }
}

/// What the instruction at a transfer's source says of any transfer from
/// it: its kind, and for a direct branch the one target it may go to (a
/// transfer elsewhere is asynchronous). Kept per address by the kernel
/// filter, so an instruction is decoded once per trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    target: Option<u64>,
    kind: BranchKind,
}

impl Shape {
    /// The shape of `insn`; `None` (no instruction there) takes nothing but
    /// asynchronous transfers.
    pub fn of(insn: Option<&Instruction>) -> Shape {
        let any = |kind| Shape { target: None, kind };
        let Some(insn) = insn else { return any(BranchKind::Async) };
        let direct = |kind| Shape { target: Some(insn.near_branch_target()), kind };
        match insn.flow_control() {
            _ if is_syscall(insn) => any(BranchKind::Syscall),
            FlowControl::Call if insn.is_call_near() => direct(BranchKind::Call),
            FlowControl::Call | FlowControl::IndirectCall => any(BranchKind::Call),
            FlowControl::UnconditionalBranch if insn.is_jmp_short_or_near() => direct(BranchKind::Jump),
            FlowControl::UnconditionalBranch | FlowControl::IndirectBranch => any(BranchKind::Jump),
            FlowControl::ConditionalBranch => direct(BranchKind::Conditional),
            FlowControl::Return => any(BranchKind::Return),
            FlowControl::Interrupt
            | FlowControl::Exception
            | FlowControl::XbeginXabortXend
            | FlowControl::Next => any(BranchKind::Async),
        }
    }

    /// The kind of a transfer from this instruction to `to`.
    pub fn kind(self, to: u64) -> BranchKind {
        match self.target {
            Some(t) if t != to => BranchKind::Async,
            _ => self.kind,
        }
    }
}

/// Classifies a transfer by the instruction at its source.
pub fn classify_insn(insn: &Instruction, to: u64) -> BranchKind {
    Shape::of(Some(insn)).kind(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_sysenter_and_int_0x80_are_system_calls_and_nothing_else() {
        let insn = |b: &[u8]| iced_x86::Decoder::with_ip(64, b, 0x1000, 0).decode();
        for b in [&[0x0f, 0x05][..], &[0x0f, 0x34], &[0xcd, 0x80]] {
            assert!(is_syscall(&insn(b)), "{b:02x?}");
        }
        for b in [&[0xcc][..], &[0xcd, 0x03], &[0xcd, 0x81], &[0xe8, 0, 0, 0, 0], &[0x0f, 0x07]] {
            assert!(!is_syscall(&insn(b)), "{b:02x?}");
        }
    }

    fn code(bytes: &[u8]) -> CodeMap {
        let mut m = CodeMap::new();
        m.insert(0x1000, bytes.to_vec());
        m
    }

    #[test]
    fn kinds() {
        // call rel32 to 0x1105
        let m = code(&[0xe8, 0x00, 0x01, 0x00, 0x00]);
        assert_eq!(classify(&m, 0x1000, 0x1105), BranchKind::Call);
        assert_eq!(classify(&m, 0x1000, 0x2000), BranchKind::Async);
        assert_eq!(classify(&code(&[0xc3]), 0x1000, 0x5555), BranchKind::Return);
        assert_eq!(classify(&code(&[0x0f, 0x05]), 0x1000, 0x1002), BranchKind::Syscall);
        assert_eq!(classify(&code(&[0x74, 0x10]), 0x1000, 0x1012), BranchKind::Conditional);
        assert_eq!(classify(&code(&[0xff, 0xe0]), 0x1000, 0x7777), BranchKind::Jump);
        assert_eq!(classify(&code(&[0xff, 0xd0]), 0x1000, 0), BranchKind::Call);
        // A signal delivered at a mov.
        assert_eq!(classify(&code(&[0x48, 0x89, 0xc7]), 0x1000, 0x4000), BranchKind::Async);
        // No code at all.
        assert_eq!(classify(&code(&[]), 0x9000, 0x4000), BranchKind::Async);
    }
}
