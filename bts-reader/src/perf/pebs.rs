//! PEBS samples (IP, ADDR, REGS_INTR) turned into PEBS records.

use ds_alloc::pebs::{Gprs, PebsRecord};

/// perf's x86 register numbers for the 16 GPRs, flags and ip.
const AX: u32 = 0;
const BX: u32 = 1;
const CX: u32 = 2;
const DX: u32 = 3;
const SI: u32 = 4;
const DI: u32 = 5;
const BP: u32 = 6;
const SP: u32 = 7;
const IP: u32 = 8;
const FLAGS: u32 = 9;
const R8: u32 = 16;

/// ax..sp, ip, flags, r8..r15.
pub const GPR_MASK: u64 = 0x3ff | (0xff << R8);

/// Parses the body of a PERF_RECORD_SAMPLE with sample_type IP|ADDR|REGS_INTR
/// (the 8-byte header already removed) and `regs_mask` registers.
pub fn parse_sample(body: &[u8], regs_mask: u64) -> Option<PebsRecord> {
    let word =
        |i: usize| -> Option<u64> { Some(u64::from_le_bytes(body.get(i * 8..i * 8 + 8)?.try_into().ok()?)) };
    let ip = word(0)?;
    let addr = word(1)?;
    let abi = word(2)?;
    let mut rec = PebsRecord { ip, dla: addr, ..PebsRecord::default() };
    if abi == 0 {
        // PERF_SAMPLE_REGS_ABI_NONE: no registers follow.
        return (body.len() == 24).then_some(rec);
    }
    let mut regs = [0u64; 64];
    let mut n = 3;
    for (bit, reg) in regs.iter_mut().enumerate() {
        if regs_mask & (1 << bit) != 0 {
            *reg = word(n)?;
            n += 1;
        }
    }
    if body.len() != n * 8 {
        return None;
    }
    let r = |i: u32| regs[i as usize];
    let mut g = Gprs {
        flags: r(FLAGS),
        ip: r(IP),
        ax: r(AX),
        bx: r(BX),
        cx: r(CX),
        dx: r(DX),
        si: r(SI),
        di: r(DI),
        bp: r(BP),
        sp: r(SP),
        ..Gprs::default()
    };
    for (i, v) in g.r.iter_mut().enumerate() {
        *v = r(R8 + i as u32);
    }
    rec.gprs = Some(g);
    Some(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_with_registers() {
        let mut body: Vec<u64> = vec![0x401000, 0xdead000, 2];
        // Registers in bit order: ax bx cx dx si di bp sp ip flags, r8..r15.
        body.extend([1, 2, 3, 4, 5, 6, 7, 8, 0x401000, 0x246]);
        body.extend(9..17);
        let bytes: Vec<u8> = body.iter().flat_map(|w| w.to_le_bytes()).collect();
        let r = parse_sample(&bytes, GPR_MASK).unwrap();
        assert_eq!(r.ip, 0x401000);
        assert_eq!(r.dla, 0xdead000);
        let g = r.gprs.unwrap();
        assert_eq!((g.ax, g.sp, g.flags, g.r[7]), (1, 8, 0x246, 16));
        assert!(parse_sample(&bytes[..bytes.len() - 8], GPR_MASK).is_none());
        assert_eq!(GPR_MASK.count_ones(), 18);
    }
}
