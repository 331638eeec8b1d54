//! The x86-64 GNU/Linux target description GDB is given, and the register
//! layout of `g`/`p` answers that goes with it: the core registers, SSE,
//! `orig_rax` and the segment bases, in GDB's numbering. Registers this
//! stub cannot know (x87, SSE) are sent as unavailable (`xx`).

use bts_reader::Registers;

/// One register of the description.
#[derive(Debug, Clone, Copy)]
pub struct Reg {
    /// GDB's name.
    pub name: &'static str,
    /// Width in bits.
    pub bits: u32,
    /// GDB's predefined type.
    pub ty: &'static str,
}

const fn r(name: &'static str, bits: u32, ty: &'static str) -> Reg {
    Reg { name, bits, ty }
}

/// `org.gnu.gdb.i386.core`, numbers 0-39.
const CORE: &[Reg] = &[
    r("rax", 64, "int64"),
    r("rbx", 64, "int64"),
    r("rcx", 64, "int64"),
    r("rdx", 64, "int64"),
    r("rsi", 64, "int64"),
    r("rdi", 64, "int64"),
    r("rbp", 64, "data_ptr"),
    r("rsp", 64, "data_ptr"),
    r("r8", 64, "int64"),
    r("r9", 64, "int64"),
    r("r10", 64, "int64"),
    r("r11", 64, "int64"),
    r("r12", 64, "int64"),
    r("r13", 64, "int64"),
    r("r14", 64, "int64"),
    r("r15", 64, "int64"),
    r("rip", 64, "code_ptr"),
    r("eflags", 32, "int32"),
    r("cs", 32, "int32"),
    r("ss", 32, "int32"),
    r("ds", 32, "int32"),
    r("es", 32, "int32"),
    r("fs", 32, "int32"),
    r("gs", 32, "int32"),
    r("st0", 80, "i387_ext"),
    r("st1", 80, "i387_ext"),
    r("st2", 80, "i387_ext"),
    r("st3", 80, "i387_ext"),
    r("st4", 80, "i387_ext"),
    r("st5", 80, "i387_ext"),
    r("st6", 80, "i387_ext"),
    r("st7", 80, "i387_ext"),
    r("fctrl", 32, "int"),
    r("fstat", 32, "int"),
    r("ftag", 32, "int"),
    r("fiseg", 32, "int"),
    r("fioff", 32, "int"),
    r("foseg", 32, "int"),
    r("fooff", 32, "int"),
    r("fop", 32, "int"),
];

/// `org.gnu.gdb.i386.sse`, numbers 40-56.
const SSE: &[Reg] = &[
    r("xmm0", 128, "uint128"),
    r("xmm1", 128, "uint128"),
    r("xmm2", 128, "uint128"),
    r("xmm3", 128, "uint128"),
    r("xmm4", 128, "uint128"),
    r("xmm5", 128, "uint128"),
    r("xmm6", 128, "uint128"),
    r("xmm7", 128, "uint128"),
    r("xmm8", 128, "uint128"),
    r("xmm9", 128, "uint128"),
    r("xmm10", 128, "uint128"),
    r("xmm11", 128, "uint128"),
    r("xmm12", 128, "uint128"),
    r("xmm13", 128, "uint128"),
    r("xmm14", 128, "uint128"),
    r("xmm15", 128, "uint128"),
    r("mxcsr", 32, "int"),
];

/// `org.gnu.gdb.i386.linux` (57) and `org.gnu.gdb.i386.segments` (58-59).
const LINUX: &[Reg] = &[r("orig_rax", 64, "int64")];
const SEGMENTS: &[Reg] = &[r("fs_base", 64, "int64"), r("gs_base", 64, "int64")];

const FEATURES: &[(&str, &[Reg])] = &[
    ("org.gnu.gdb.i386.core", CORE),
    ("org.gnu.gdb.i386.sse", SSE),
    ("org.gnu.gdb.i386.linux", LINUX),
    ("org.gnu.gdb.i386.segments", SEGMENTS),
];

/// Every register in GDB's order (its number is the index).
pub fn registers() -> impl Iterator<Item = &'static Reg> {
    FEATURES.iter().flat_map(|(_, regs)| regs.iter())
}

/// The target description document (`qXfer:features:read:target.xml`).
pub fn target_xml() -> String {
    let mut x = String::from(
        "<?xml version=\"1.0\"?>\n<!DOCTYPE target SYSTEM \"gdb-target.dtd\">\n<target version=\"1.0\">\n\
         <architecture>i386:x86-64</architecture>\n<osabi>GNU/Linux</osabi>\n",
    );
    let mut n = 0;
    for (name, regs) in FEATURES {
        x.push_str(&format!("<feature name=\"{name}\">\n"));
        for reg in *regs {
            let group =
                if reg.name.starts_with("xmm") || reg.name == "mxcsr" { " group=\"vector\"" } else { "" };
            x.push_str(&format!(
                "<reg name=\"{}\" bitsize=\"{}\" type=\"{}\" regnum=\"{n}\"{group}/>\n",
                reg.name, reg.bits, reg.ty
            ));
            n += 1;
        }
        x.push_str("</feature>\n");
    }
    x.push_str("</target>\n");
    x
}

/// The field of `regs` that holds the register GDB calls `name` (none for
/// the registers bts does not keep: x87, SSE).
fn field<'a>(regs: &'a mut Registers, name: &str) -> Option<&'a mut u64> {
    Some(match name {
        "rax" => &mut regs.rax,
        "rbx" => &mut regs.rbx,
        "rcx" => &mut regs.rcx,
        "rdx" => &mut regs.rdx,
        "rsi" => &mut regs.rsi,
        "rdi" => &mut regs.rdi,
        "rbp" => &mut regs.rbp,
        "rsp" => &mut regs.rsp,
        "r8" => &mut regs.r8,
        "r9" => &mut regs.r9,
        "r10" => &mut regs.r10,
        "r11" => &mut regs.r11,
        "r12" => &mut regs.r12,
        "r13" => &mut regs.r13,
        "r14" => &mut regs.r14,
        "r15" => &mut regs.r15,
        "rip" => &mut regs.rip,
        "eflags" => &mut regs.eflags,
        "cs" => &mut regs.cs,
        "ss" => &mut regs.ss,
        "ds" => &mut regs.ds,
        "es" => &mut regs.es,
        "fs" => &mut regs.fs,
        "gs" => &mut regs.gs,
        "orig_rax" => &mut regs.orig_rax,
        "fs_base" => &mut regs.fs_base,
        "gs_base" => &mut regs.gs_base,
        _ => return None,
    })
}

/// The value of register `n` when known (only registers of 64 bits or
/// fewer ever are): from a full set, or just the pc.
pub fn value(regs: Option<&Registers>, pc: Option<u64>, n: usize) -> Option<u64> {
    let name = registers().nth(n)?.name;
    match regs {
        Some(&r) => {
            let mut r = r;
            field(&mut r, name).map(|v| *v)
        }
        None if name == "rip" => pc,
        None => None,
    }
}

/// Sets register `n` in `regs` from its little-endian `bytes`; false for
/// a register not kept (x87, SSE) or bytes of the wrong size.
pub fn set_value(regs: &mut Registers, n: usize, bytes: &[u8]) -> bool {
    let Some(reg) = registers().nth(n) else { return false };
    if bytes.len() != (reg.bits / 8) as usize || bytes.len() > 8 {
        return false;
    }
    let mut b = [0u8; 8];
    b[..bytes.len()].copy_from_slice(bytes);
    match field(regs, reg.name) {
        Some(f) => {
            *f = u64::from_le_bytes(b);
            true
        }
        None => false,
    }
}

/// Register `n` as the `p` packet answers it: little-endian hex, or `xx`
/// per byte when unknown. None for a number beyond the description.
pub fn hex_register(regs: Option<&Registers>, pc: Option<u64>, n: usize) -> Option<String> {
    let reg = registers().nth(n)?;
    let bytes = (reg.bits / 8) as usize;
    Some(match value(regs, pc, n) {
        Some(v) => v.to_le_bytes().iter().take(bytes).map(|b| format!("{b:02x}")).collect(),
        None => "xx".repeat(bytes),
    })
}

/// Every register, as the `g` packet answers.
pub fn hex_registers(regs: Option<&Registers>, pc: Option<u64>) -> String {
    (0..registers().count()).filter_map(|n| hex_register(regs, pc, n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdb_numbers_and_sizes() {
        let all: Vec<&Reg> = registers().collect();
        assert_eq!(all.len(), 60);
        assert_eq!(all[16].name, "rip");
        assert_eq!(all[40].name, "xmm0");
        assert_eq!(all[57].name, "orig_rax");
        // 16×8 + 8 + 4 + 6×4 + 8×10 + 8×4 core, 16×16 + 4 SSE, 3×8 more.
        let bytes: u32 = all.iter().map(|r| r.bits / 8).sum();
        assert_eq!(bytes, 276 + 260 + 24);
        assert_eq!(hex_registers(None, None).len(), 2 * bytes as usize);
    }

    #[test]
    fn known_values_little_endian_unknown_as_xx() {
        let regs = Registers { rax: 0x1122, rip: 0x401000, eflags: 0x246, ..Registers::default() };
        assert_eq!(hex_register(Some(&regs), None, 0).unwrap(), "2211000000000000");
        assert_eq!(hex_register(Some(&regs), None, 17).unwrap(), "46020000");
        assert_eq!(hex_register(Some(&regs), None, 24).unwrap(), "xx".repeat(10));
        assert_eq!(hex_register(None, Some(0x401000), 16).unwrap(), "0010400000000000");
        assert_eq!(hex_register(None, Some(0x401000), 0).unwrap(), "xx".repeat(8));
        assert!(hex_register(None, None, 60).is_none());
    }

    #[test]
    fn writes_what_it_reads() {
        let mut regs = Registers::default();
        assert!(set_value(&mut regs, 16, &0x401234u64.to_le_bytes()));
        assert!(set_value(&mut regs, 17, &0x246u32.to_le_bytes()));
        assert_eq!((regs.rip, regs.eflags), (0x401234, 0x246));
        assert_eq!(hex_register(Some(&regs), None, 16).unwrap(), "3412400000000000");
        assert!(!set_value(&mut regs, 16, &[1, 2]));
        assert!(!set_value(&mut regs, 24, &[0; 10]));
    }
}
