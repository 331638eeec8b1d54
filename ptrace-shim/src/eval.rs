//! Evaluates a branch instruction from a stopped thread's registers and
//! memory, and emulates it, so the fast recorder needs one stop per branch.

use iced_x86::{Code, ConditionCode, FlowControl, Instruction, Mnemonic, OpKind, Register};

use crate::space::Space;
use crate::sys::Regs;

const CF: u64 = 1 << 0;
const PF: u64 = 1 << 2;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;

/// What the branch at the stop site will do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Control goes to this address.
    Taken(u64),
    /// A conditional branch falls through.
    NotTaken,
    /// The tracer cannot tell (far branch, interrupt, unreadable operand):
    /// the instruction must be single-stepped.
    Unknown,
}

/// The value of a general-purpose or segment-base register.
pub fn reg_value(regs: &Regs, reg: Register) -> Option<u64> {
    let full = match reg.full_register() {
        Register::RAX => regs.rax,
        Register::RBX => regs.rbx,
        Register::RCX => regs.rcx,
        Register::RDX => regs.rdx,
        Register::RSI => regs.rsi,
        Register::RDI => regs.rdi,
        Register::RBP => regs.rbp,
        Register::RSP => regs.rsp,
        Register::R8 => regs.r8,
        Register::R9 => regs.r9,
        Register::R10 => regs.r10,
        Register::R11 => regs.r11,
        Register::R12 => regs.r12,
        Register::R13 => regs.r13,
        Register::R14 => regs.r14,
        Register::R15 => regs.r15,
        Register::RIP => regs.rip,
        Register::FS => return Some(regs.fs_base),
        Register::GS => return Some(regs.gs_base),
        Register::ES | Register::CS | Register::SS | Register::DS => return Some(0),
        _ => return None,
    };
    if matches!(reg, Register::AH | Register::BH | Register::CH | Register::DH) {
        return Some((full >> 8) & 0xff);
    }
    Some(match reg.size() {
        8 => full,
        4 => full & 0xffff_ffff,
        2 => full & 0xffff,
        1 => full & 0xff,
        _ => return None,
    })
}

fn condition(cc: ConditionCode, flags: u64) -> bool {
    let f = |m: u64| flags & m != 0;
    match cc {
        ConditionCode::None => true,
        ConditionCode::o => f(OF),
        ConditionCode::no => !f(OF),
        ConditionCode::b => f(CF),
        ConditionCode::ae => !f(CF),
        ConditionCode::e => f(ZF),
        ConditionCode::ne => !f(ZF),
        ConditionCode::be => f(CF) || f(ZF),
        ConditionCode::a => !f(CF) && !f(ZF),
        ConditionCode::s => f(SF),
        ConditionCode::ns => !f(SF),
        ConditionCode::p => f(PF),
        ConditionCode::np => !f(PF),
        ConditionCode::l => f(SF) != f(OF),
        ConditionCode::ge => f(SF) == f(OF),
        ConditionCode::le => f(ZF) || f(SF) != f(OF),
        ConditionCode::g => !f(ZF) && f(SF) == f(OF),
    }
}

/// Width in bits of the count register of `loop*` and `j*cxz`.
fn counter_bits(insn: &Instruction) -> u32 {
    use Code::*;
    match insn.code() {
        Jrcxz_rel8_16 | Jrcxz_rel8_64 | Loopne_rel8_16_RCX | Loopne_rel8_64_RCX | Loope_rel8_16_RCX
        | Loope_rel8_64_RCX | Loop_rel8_16_RCX | Loop_rel8_64_RCX => 64,
        Jcxz_rel8_16 | Jcxz_rel8_32 | Loopne_rel8_16_CX | Loopne_rel8_32_CX | Loope_rel8_16_CX
        | Loope_rel8_32_CX | Loop_rel8_16_CX | Loop_rel8_32_CX => 16,
        _ => 32,
    }
}

fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        !0
    } else {
        (1u64 << bits) - 1
    }
}

/// The target of an indirect near branch (register or memory operand).
fn indirect_target(insn: &Instruction, regs: &Regs, space: &Space) -> Option<u64> {
    match insn.op0_kind() {
        OpKind::Register => reg_value(regs, insn.op0_register()),
        OpKind::Memory => {
            let addr = insn.virtual_address(0, 0, |r, _, _| reg_value(regs, r))?;
            let v = space.read_u64(addr).ok()?;
            Some(match insn.memory_size().size() {
                8 => v,
                4 => v & 0xffff_ffff,
                2 => v & 0xffff,
                _ => return None,
            })
        }
        _ => None,
    }
}

/// Whether jrcxz or a loop `insn` is taken, given the count register as
/// the instruction leaves it (a loop counts it down first) and the flags.
fn counted_taken(insn: &Instruction, count_after: u64, flags: u64) -> bool {
    let count = count_after & mask(counter_bits(insn));
    let zf = flags & ZF != 0;
    match insn.mnemonic() {
        Mnemonic::Jrcxz | Mnemonic::Jecxz | Mnemonic::Jcxz => count == 0,
        Mnemonic::Loope => count != 0 && zf,
        Mnemonic::Loopne => count != 0 && !zf,
        _ => count != 0,
    }
}

/// Evaluates the branch `insn` for a thread stopped just before it.
pub fn evaluate(insn: &Instruction, regs: &Regs, space: &Space) -> Outcome {
    if insn.is_jmp_far() || insn.is_jmp_far_indirect() || insn.is_call_far() || insn.is_call_far_indirect() {
        return Outcome::Unknown;
    }
    let flags = regs.eflags;
    let taken_if = |c: bool| {
        if c {
            Outcome::Taken(insn.near_branch_target())
        } else {
            Outcome::NotTaken
        }
    };
    match insn.flow_control() {
        FlowControl::ConditionalBranch => match insn.mnemonic() {
            Mnemonic::Jrcxz | Mnemonic::Jecxz | Mnemonic::Jcxz => {
                taken_if(counted_taken(insn, regs.rcx, flags))
            }
            Mnemonic::Loop | Mnemonic::Loope | Mnemonic::Loopne => {
                taken_if(counted_taken(insn, regs.rcx.wrapping_sub(1), flags))
            }
            _ if insn.condition_code() != ConditionCode::None => {
                taken_if(condition(insn.condition_code(), flags))
            }
            _ => Outcome::Unknown,
        },
        FlowControl::UnconditionalBranch | FlowControl::Call => {
            if insn.op0_kind() == OpKind::NearBranch64 {
                Outcome::Taken(insn.near_branch_target())
            } else {
                Outcome::Unknown
            }
        }
        FlowControl::IndirectBranch | FlowControl::IndirectCall => {
            indirect_target(insn, regs, space).map_or(Outcome::Unknown, Outcome::Taken)
        }
        FlowControl::Return if insn.mnemonic() == Mnemonic::Ret => {
            space.read_u64(regs.rsp).map_or(Outcome::Unknown, Outcome::Taken)
        }
        _ => Outcome::Unknown,
    }
}

/// Applies the instruction's effect to the thread's registers (and, for a
/// call, its stack), as if it had executed with `outcome`. Returns false if
/// it cannot, in which case nothing was changed and the instruction must be
/// single-stepped.
pub fn emulate(insn: &Instruction, outcome: Outcome, regs: &mut Regs, space: &Space) -> bool {
    let next = match outcome {
        Outcome::Taken(t) => t,
        Outcome::NotTaken => insn.next_ip(),
        Outcome::Unknown => return false,
    };
    match insn.flow_control() {
        FlowControl::Call | FlowControl::IndirectCall => {
            let sp = regs.rsp.wrapping_sub(8);
            if space.write_live(sp, &insn.next_ip().to_le_bytes()).is_err() {
                return false;
            }
            regs.rsp = sp;
        }
        FlowControl::Return => {
            regs.rsp = regs.rsp.wrapping_add(8 + u64::from(insn.immediate16()));
        }
        FlowControl::ConditionalBranch
            if matches!(insn.mnemonic(), Mnemonic::Loop | Mnemonic::Loope | Mnemonic::Loopne) =>
        {
            let m = mask(counter_bits(insn));
            let count = regs.rcx.wrapping_sub(1) & m;
            regs.rcx = if counter_bits(insn) == 32 { count } else { (regs.rcx & !m) | count };
        }
        _ => {}
    }
    regs.rip = next;
    true
}

/// True if the branch `insn` was taken when execution went from it to
/// `next`, as seen after single-stepping it; `after` holds the registers
/// after the step. A conditional branch to the next instruction (a
/// displacement of 0) goes there either way: the flags, which it leaves as
/// they were, and the count register tell, as the hardware records it.
pub fn stepped_branch_taken(insn: &Instruction, next: u64, after: &Regs) -> bool {
    if raises_sigtrap(insn) {
        return false;
    }
    match insn.flow_control() {
        FlowControl::Next => false,
        FlowControl::ConditionalBranch if insn.near_branch_target() == insn.next_ip() => {
            match insn.condition_code() {
                // jrcxz and the loops; a loop's count is already counted down.
                ConditionCode::None => counted_taken(insn, after.rcx, after.eflags),
                cc => condition(cc, after.eflags),
            }
        }
        FlowControl::ConditionalBranch => next != insn.next_ip(),
        _ => true,
    }
}

/// True for an instruction that raises SIGTRAP by itself when executed
/// (`int1`, `int3` in either encoding): a trap that is the program's.
pub fn raises_sigtrap(insn: &Instruction) -> bool {
    match insn.mnemonic() {
        Mnemonic::Int1 | Mnemonic::Int3 => true,
        Mnemonic::Int => insn.immediate8() == 3,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions};

    fn decode(bytes: &[u8]) -> Instruction {
        Decoder::with_ip(64, bytes, 0x1000, DecoderOptions::NONE).decode()
    }

    fn regs() -> Regs {
        // SAFETY: plain old data.
        unsafe { std::mem::zeroed() }
    }

    #[test]
    fn jcc_conditions() {
        let je = decode(&[0x74, 0x10]);
        let mut r = regs();
        r.eflags = ZF;
        assert!(condition(je.condition_code(), r.eflags));
        let jl = decode(&[0x7c, 0x10]);
        assert!(!condition(jl.condition_code(), 0));
        assert!(condition(jl.condition_code(), SF));
        assert!(!condition(jl.condition_code(), SF | OF));
        let jg = decode(&[0x7f, 0x10]);
        assert!(condition(jg.condition_code(), SF | OF));
        assert!(!condition(jg.condition_code(), ZF));
        let ja = decode(&[0x77, 0x10]);
        assert!(!condition(ja.condition_code(), CF));
        assert!(condition(ja.condition_code(), 0));
        let jp = decode(&[0x7a, 0x10]);
        assert!(condition(jp.condition_code(), PF));
    }

    #[test]
    fn the_programs_own_traps_are_told_apart() {
        assert!(raises_sigtrap(&decode(&[0xcc]))); // int3
        assert!(raises_sigtrap(&decode(&[0xcd, 0x03]))); // int 3
        assert!(raises_sigtrap(&decode(&[0xf1]))); // int1
        assert!(!raises_sigtrap(&decode(&[0xcd, 0x80]))); // a system call
        assert!(!raises_sigtrap(&decode(&[0x90])));
    }

    #[test]
    fn a_stepped_branch_is_taken_when_it_did_not_fall_through() {
        let r = regs();
        let jne = decode(&[0x75, 0x10]); // at 0x1000, to 0x1012
        assert!(!stepped_branch_taken(&jne, 0x1002, &r));
        assert!(stepped_branch_taken(&jne, 0x1012, &r));
        assert!(stepped_branch_taken(&decode(&[0xe8, 0, 0, 0, 0]), 0x1005, &r)); // call next
        assert!(stepped_branch_taken(&decode(&[0xc3]), 0x4000, &r)); // ret
        assert!(!stepped_branch_taken(&decode(&[0x90]), 0x1001, &r));
        assert!(!stepped_branch_taken(&decode(&[0xcc]), 0x1001, &r));
    }

    #[test]
    fn a_stepped_branch_to_the_next_instruction_is_told_by_its_condition() {
        let (mut set, clear) = (regs(), regs());
        set.eflags = ZF;
        let (je, jne) = (decode(&[0x74, 0]), decode(&[0x0f, 0x85, 0, 0, 0, 0]));
        assert!(stepped_branch_taken(&je, 0x1002, &set));
        assert!(!stepped_branch_taken(&je, 0x1002, &clear));
        assert!(!stepped_branch_taken(&jne, 0x1006, &set));
        assert!(stepped_branch_taken(&jne, 0x1006, &clear));
        let (jrcxz, loop_) = (decode(&[0xe3, 0]), decode(&[0xe2, 0]));
        let mut counted = regs();
        counted.rcx = 3; // after the step
        assert!(
            stepped_branch_taken(&jrcxz, 0x1002, &clear) && !stepped_branch_taken(&jrcxz, 0x1002, &counted)
        );
        assert!(
            stepped_branch_taken(&loop_, 0x1002, &counted) && !stepped_branch_taken(&loop_, 0x1002, &clear)
        );
    }

    #[test]
    fn branches_evaluate_and_emulate_against_real_memory() {
        // This process's own memory stands for the tracee's.
        let space = Space::new(std::process::id() as i32, 0).unwrap();
        let slot = Box::new(0xdead_b000u64);
        let mut r = regs();
        r.rax = &*slot as *const u64 as u64;
        assert_eq!(evaluate(&decode(&[0xff, 0x20]), &r, &space), Outcome::Taken(0xdead_b000)); // jmp [rax]
        let stack = Box::new([0x1234u64, 0]);
        r.rsp = stack.as_ptr() as u64;
        let ret = decode(&[0xc3]);
        let o = evaluate(&ret, &r, &space);
        assert_eq!(o, Outcome::Taken(0x1234));
        let mut after = r;
        assert!(emulate(&ret, o, &mut after, &space));
        assert_eq!((after.rip, after.rsp), (0x1234, r.rsp + 8));
        let je = decode(&[0x74, 0x10]);
        assert_eq!(evaluate(&je, &r, &space), Outcome::NotTaken);
        r.eflags = ZF;
        assert_eq!(evaluate(&je, &r, &space), Outcome::Taken(0x1012));
        // A far jump through memory cannot be evaluated: it is stepped.
        assert_eq!(evaluate(&decode(&[0x48, 0xff, 0x28]), &r, &space), Outcome::Unknown);
    }

    #[test]
    fn loop_counter_widths() {
        assert_eq!(counter_bits(&decode(&[0xe2, 0xfe])), 64); // loop rcx
        assert_eq!(counter_bits(&decode(&[0x67, 0xe2, 0xfe])), 32); // loop ecx
        assert_eq!(counter_bits(&decode(&[0xe3, 0x05])), 64); // jrcxz
        assert_eq!(counter_bits(&decode(&[0x67, 0xe3, 0x05])), 32); // jecxz
    }

    #[test]
    fn register_values() {
        let mut r = regs();
        r.rax = 0x1122_3344_5566_7788;
        assert_eq!(reg_value(&r, Register::EAX), Some(0x5566_7788));
        assert_eq!(reg_value(&r, Register::AX), Some(0x7788));
        assert_eq!(reg_value(&r, Register::AH), Some(0x77));
        assert_eq!(reg_value(&r, Register::AL), Some(0x88));
        assert_eq!(reg_value(&r, Register::XMM0), None);
    }
}
