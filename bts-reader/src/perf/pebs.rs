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

/// PEBS samples of a (non-overwriting, unwrapped or wrapped) data ring read
/// forwards from `tail` to `head`; records of other types are skipped, a
/// bad size ends the read. Returns the records and whether it ended early.
pub fn parse_pebs_ring(ring: &[u8], tail: u64, head: u64, regs_mask: u64) -> (Vec<PebsRecord>, bool) {
    let size = ring.len() as u64;
    let mut out = Vec::new();
    if size == 0 || head < tail || head - tail > size {
        return (out, true);
    }
    let byte = |at: u64| ring[(at % size) as usize];
    let mut pos = tail;
    while pos + 8 <= head {
        let hdr: Vec<u8> = (0..8).map(|i| byte(pos + i)).collect();
        let kind = u32::from_le_bytes(hdr[0..4].try_into().expect("4"));
        let len = u64::from(u16::from_le_bytes([hdr[6], hdr[7]]));
        if len < 8 || pos + len > head {
            return (out, true);
        }
        if kind == super::ring::PERF_RECORD_SAMPLE {
            let body: Vec<u8> = (8..len).map(|i| byte(pos + i)).collect();
            match parse_sample(&body, regs_mask) {
                Some(r) => out.push(r),
                None => return (out, true),
            }
        }
        pos += len;
    }
    (out, false)
}

#[cfg(test)]
mod ring_tests {
    use super::*;

    fn sample(ip: u64) -> Vec<u8> {
        let mut body: Vec<u64> = vec![ip, 0x1000, 2];
        body.extend(0..18u64);
        let mut b = super::super::ring::PERF_RECORD_SAMPLE.to_le_bytes().to_vec();
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&((8 + body.len() * 8) as u16).to_le_bytes());
        b.extend(body.iter().flat_map(|w| w.to_le_bytes()));
        b
    }

    #[test]
    fn samples_wrapping_around_the_ring() {
        let one = sample(1).len();
        let mut ring = vec![0u8; 1024];
        // Three samples of 176 bytes written from offset 800: the second wraps.
        let mut at = 800u64;
        for ip in [0x401000u64, 0x402000, 0x403000] {
            for (i, b) in sample(ip).iter().enumerate() {
                ring[((at + i as u64) % 1024) as usize] = *b;
            }
            at += one as u64;
        }
        let (recs, early) = parse_pebs_ring(&ring, 800, at, GPR_MASK);
        assert!(!early);
        assert_eq!(recs.iter().map(|r| r.ip).collect::<Vec<_>>(), vec![0x401000, 0x402000, 0x403000]);
        assert_eq!(recs[1].gprs.unwrap().r[7], 17);
        // A size that runs past the head ends the read.
        let (recs, early) = parse_pebs_ring(&ring, 800, at - 8, GPR_MASK);
        assert!(early);
        assert_eq!(recs.len(), 2);
        assert!(parse_pebs_ring(&ring, 10, 5, GPR_MASK).1);
    }
}
