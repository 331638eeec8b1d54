//! Straight-line walks and instruction formatting.

use iced_x86::{Formatter, GasFormatter, Instruction, IntelFormatter};

use crate::classify::decode_at;
use crate::CodeMap;

/// The longest straight line walked between two records.
pub const MAX_WALK: usize = 100_000;

/// The instructions of a straight-line walk, and why it stopped early.
#[derive(Debug, Clone, Default)]
pub struct Walked {
    /// The instructions, in order.
    pub insns: Vec<Instruction>,
    /// Why the walk did not reach its end, if it did not.
    pub gap: Option<String>,
}

/// Walks from `start` until the instruction at `end` (included if
/// `include_end`).
pub fn straight_line(code: &CodeMap, start: u64, end: u64, include_end: bool) -> Walked {
    let mut w = Walked::default();
    let mut a = start;
    loop {
        if a == end && !include_end {
            return w;
        }
        if w.insns.len() >= MAX_WALK {
            w.gap = Some(format!("no branch within {MAX_WALK} instructions of {start:#x}"));
            return w;
        }
        let Some(insn) = decode_at(code, a) else {
            w.gap = Some(format!("no code bytes at {a:#x}"));
            return w;
        };
        w.insns.push(insn);
        if a == end {
            return w;
        }
        if a > end {
            w.gap = Some(format!("the walk from {start:#x} passed {end:#x}"));
            return w;
        }
        a = insn.next_ip();
    }
}

/// Intel syntax of one instruction.
pub fn format_insn(insn: &Instruction) -> String {
    let mut f = IntelFormatter::new();
    f.options_mut().set_space_after_operand_separator(true);
    f.options_mut().set_hex_prefix("0x");
    f.options_mut().set_hex_suffix("");
    f.options_mut().set_uppercase_hex(false);
    let mut out = String::new();
    f.format(insn, &mut out);
    out
}

/// An instruction as GDB prints it: AT&T syntax (or Intel), mnemonic
/// padded to seven columns like objdump.
pub fn format_gdb(insn: &Instruction, intel: bool) -> String {
    let mut out = String::new();
    if intel {
        let mut f = IntelFormatter::new();
        f.options_mut().set_first_operand_char_index(7);
        f.options_mut().set_hex_prefix("0x");
        f.options_mut().set_hex_suffix("");
        f.options_mut().set_rip_relative_addresses(true);
        f.options_mut().set_branch_leading_zeros(false);
        f.format(insn, &mut out);
    } else {
        let mut f = GasFormatter::new();
        let o = f.options_mut();
        o.set_first_operand_char_index(7);
        o.set_small_hex_numbers_in_decimal(false);
        o.set_rip_relative_addresses(true);
        o.set_branch_leading_zeros(false);
        o.set_uppercase_hex(false);
        f.format(insn, &mut out);
    }
    out
}

/// The last `n` instructions a thread executed before it stopped at `pc`,
/// rebuilt from its records (oldest first, each `(from, to, executed_from)`).
pub fn last_instructions(
    code: &CodeMap,
    records: &[(u64, u64, bool)],
    pc: u64,
    n: usize,
) -> Vec<Instruction> {
    let mut out: Vec<Instruction> = Vec::new();
    let Some(&(_, last_to, _)) = records.last() else {
        return out;
    };
    // The run from the last record's target up to (not including) the pc.
    let tail = straight_line(code, last_to, pc, false);
    if tail.gap.is_none() {
        out = tail.insns;
    }
    let mut k = records.len() - 1;
    while out.len() < n {
        let (from, _, executed) = records[k];
        let start = if k == 0 { None } else { Some(records[k - 1].1) };
        let block = match start {
            Some(s) => straight_line(code, s, from, executed),
            None => {
                Walked { insns: decode_at(code, from).filter(|_| executed).into_iter().collect(), gap: None }
            }
        };
        let gap = block.gap.is_some();
        let mut insns =
            if gap { decode_at(code, from).filter(|_| executed).into_iter().collect() } else { block.insns };
        insns.extend(out);
        out = insns;
        if k == 0 || gap {
            break;
        }
        k -= 1;
    }
    let skip = out.len().saturating_sub(n);
    out.drain(..skip);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_and_formats() {
        let mut m = CodeMap::new();
        // 0x1000: mov eax, 1 ; 0x1005: nop ; 0x1006: ret
        m.insert(0x1000, vec![0xb8, 1, 0, 0, 0, 0x90, 0xc3]);
        let w = straight_line(&m, 0x1000, 0x1006, true);
        assert!(w.gap.is_none());
        assert_eq!(w.insns.len(), 3);
        assert_eq!(format_insn(&w.insns[0]), "mov eax, 1");
        let w = straight_line(&m, 0x1000, 0x1006, false);
        assert_eq!(w.insns.len(), 2);
        let w = straight_line(&m, 0x1000, 0x1003, true);
        assert!(w.gap.is_some());
        let w = straight_line(&m, 0x1000, 0x2000, true);
        assert!(w.gap.unwrap().contains("no code bytes"));
    }

    #[test]
    fn last_instructions_reach_back_over_branches() {
        let mut m = CodeMap::new();
        // 0x1000: nop; nop; jmp 0x1010 | 0x1010: nop; nop; (pc 0x1012)
        m.insert(0x1000, vec![0x90, 0x90, 0xeb, 0x0c]);
        m.insert(0x1010, vec![0x90, 0x90, 0x90]);
        let recs = [(0x0fff_u64, 0x1000_u64, true), (0x1002, 0x1010, true)];
        let got = last_instructions(&m, &recs, 0x1012, 10);
        let ips: Vec<u64> = got.iter().map(|i| i.ip()).collect();
        assert_eq!(ips, vec![0x1000, 0x1001, 0x1002, 0x1010, 0x1011]);
        let got = last_instructions(&m, &recs, 0x1012, 3);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].ip(), 0x1002);
    }
}
