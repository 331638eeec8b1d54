//! PEBS records: the legacy formats 0 to 3 and the adaptive format (4+).

use crate::Error;

/// The PEBS record format of a CPU (IA32_PERF_CAPABILITIES bits 11:8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PebsFormat {
    /// Core: flags, ip, 16 GPRs (144 bytes).
    Fmt0,
    /// Nehalem: + status, data linear address, data source, latency (176 bytes).
    Fmt1,
    /// Haswell: + real ip, TSX tuning (192 bytes).
    Fmt2,
    /// Skylake: + TSC (200 bytes).
    Fmt3,
    /// Ice Lake and later: a 32-byte basic group and optional groups.
    Adaptive,
}

impl PebsFormat {
    /// The format of `PERF_CAPABILITIES` bits 8-11.
    pub fn from_caps(fmt: u8) -> PebsFormat {
        match fmt {
            0 => PebsFormat::Fmt0,
            1 => PebsFormat::Fmt1,
            2 => PebsFormat::Fmt2,
            3 => PebsFormat::Fmt3,
            _ => PebsFormat::Adaptive,
        }
    }

    /// Size of a legacy record; `None` for the adaptive format (per record).
    pub fn legacy_size(self) -> Option<usize> {
        match self {
            PebsFormat::Fmt0 => Some(144),
            PebsFormat::Fmt1 => Some(176),
            PebsFormat::Fmt2 => Some(192),
            PebsFormat::Fmt3 => Some(200),
            PebsFormat::Adaptive => None,
        }
    }
}

/// General-purpose registers as a PEBS record saves them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gprs {
    /// RFLAGS.
    pub flags: u64,
    /// RIP (of the instruction after the event, before format 2's real IP).
    pub ip: u64,
    /// RAX.
    pub ax: u64,
    /// RBX.
    pub bx: u64,
    /// RCX.
    pub cx: u64,
    /// RDX.
    pub dx: u64,
    /// RSI.
    pub si: u64,
    /// RDI.
    pub di: u64,
    /// RBP.
    pub bp: u64,
    /// RSP.
    pub sp: u64,
    /// r8 to r15.
    pub r: [u64; 8],
}

/// The adaptive memory-info group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemInfo {
    /// The data linear address.
    pub address: u64,
    /// The auxiliary data source.
    pub aux: u64,
    /// The access latency.
    pub latency: u64,
    /// TSX tuning information.
    pub tsx_tuning: u64,
}

/// One LBR entry of an adaptive record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LbrEntry {
    /// The branch source.
    pub from: u64,
    /// The branch target.
    pub to: u64,
    /// The branch info (cycles, misprediction).
    pub info: u64,
}

/// One PEBS record of any format; fields a format lacks are zero / empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PebsRecord {
    /// The event's instruction pointer (next instruction before format 2).
    pub ip: u64,
    /// The general-purpose registers, when saved.
    pub gprs: Option<Gprs>,
    // fmt1+
    /// IA32_PERF_GLOBAL_STATUS at the event (format 1+).
    pub status: u64,
    /// The data linear address (format 1+).
    pub dla: u64,
    /// The data source encoding (format 1+).
    pub dse: u64,
    /// The load latency (format 1+).
    pub lat: u64,
    // fmt2+
    /// The eventing instruction's own address (format 2+).
    pub real_ip: u64,
    /// TSX tuning information (format 2+).
    pub tsx_tuning: u64,
    // fmt3+, adaptive
    /// The timestamp counter (format 3+).
    pub tsc: u64,
    // adaptive
    /// The counters the record applies to (adaptive).
    pub applicable_counters: u64,
    /// The memory-info group (adaptive).
    pub meminfo: Option<MemInfo>,
    /// XMM0 to XMM15 (adaptive).
    pub xmm: Option<[[u8; 16]; 16]>,
    /// The LBR entries (adaptive).
    pub lbr: Vec<LbrEntry>,
}

const CFG_MEMINFO: u64 = 1 << 0;
const CFG_GP: u64 = 1 << 1;
const CFG_XMMS: u64 = 1 << 2;
const CFG_LBRS: u64 = 1 << 3;
const CFG_LBR_SHIFT: u32 = 24;

struct Words<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Words<'_> {
    fn next(&mut self) -> Result<u64, Error> {
        let s = self.b.get(self.pos..self.pos + 8).ok_or(Error::PebsTruncated { at: self.pos })?;
        self.pos += 8;
        Ok(u64::from_le_bytes(s.try_into().expect("8 bytes")))
    }
}

fn legacy_gprs(w: &mut Words) -> Result<Gprs, Error> {
    let mut g = Gprs {
        flags: w.next()?,
        ip: w.next()?,
        ax: w.next()?,
        bx: w.next()?,
        cx: w.next()?,
        dx: w.next()?,
        si: w.next()?,
        di: w.next()?,
        bp: w.next()?,
        sp: w.next()?,
        ..Gprs::default()
    };
    for r in g.r.iter_mut() {
        *r = w.next()?;
    }
    Ok(g)
}

fn adaptive_gprs(w: &mut Words) -> Result<Gprs, Error> {
    // The adaptive group orders them flags, ip, ax, cx, dx, bx, sp, bp, si, di.
    let mut g = Gprs { flags: w.next()?, ip: w.next()?, ax: w.next()?, ..Gprs::default() };
    g.cx = w.next()?;
    g.dx = w.next()?;
    g.bx = w.next()?;
    g.sp = w.next()?;
    g.bp = w.next()?;
    g.si = w.next()?;
    g.di = w.next()?;
    for r in g.r.iter_mut() {
        *r = w.next()?;
    }
    Ok(g)
}

impl PebsRecord {
    /// Parses one record at the start of `b`; returns it and its size.
    pub fn parse(format: PebsFormat, b: &[u8]) -> Result<(PebsRecord, usize), Error> {
        let mut w = Words { b, pos: 0 };
        let mut r = PebsRecord::default();
        if format != PebsFormat::Adaptive {
            let g = legacy_gprs(&mut w)?;
            r.ip = g.ip;
            r.gprs = Some(g);
            if format != PebsFormat::Fmt0 {
                r.status = w.next()?;
                r.dla = w.next()?;
                r.dse = w.next()?;
                r.lat = w.next()?;
            }
            if matches!(format, PebsFormat::Fmt2 | PebsFormat::Fmt3) {
                r.real_ip = w.next()?;
                r.tsx_tuning = w.next()?;
            }
            if format == PebsFormat::Fmt3 {
                r.tsc = w.next()?;
            }
            return Ok((r, w.pos));
        }
        let format_size = w.next()?;
        let size = (format_size >> 48) as usize;
        r.ip = w.next()?;
        r.applicable_counters = w.next()?;
        r.tsc = w.next()?;
        if format_size & CFG_MEMINFO != 0 {
            r.meminfo = Some(MemInfo {
                address: w.next()?,
                aux: w.next()?,
                latency: w.next()?,
                tsx_tuning: w.next()?,
            });
        }
        if format_size & CFG_GP != 0 {
            r.gprs = Some(adaptive_gprs(&mut w)?);
        }
        if format_size & CFG_XMMS != 0 {
            let mut x = [[0u8; 16]; 16];
            for reg in x.iter_mut() {
                let lo = w.next()?;
                let hi = w.next()?;
                reg[..8].copy_from_slice(&lo.to_le_bytes());
                reg[8..].copy_from_slice(&hi.to_le_bytes());
            }
            r.xmm = Some(x);
        }
        if format_size & CFG_LBRS != 0 {
            let n = ((format_size >> CFG_LBR_SHIFT) & 0xff) + 1;
            for _ in 0..n {
                r.lbr.push(LbrEntry { from: w.next()?, to: w.next()?, info: w.next()? });
            }
        }
        if size != w.pos {
            return Err(Error::PebsBadSize { declared: size, parsed: w.pos });
        }
        Ok((r, size))
    }

    /// The record's bytes in `format`.
    pub fn to_bytes(&self, format: PebsFormat) -> Vec<u8> {
        let mut words: Vec<u64> = Vec::new();
        let g = self.gprs.unwrap_or_default();
        if format != PebsFormat::Adaptive {
            words.extend([g.flags, self.ip, g.ax, g.bx, g.cx, g.dx, g.si, g.di, g.bp, g.sp]);
            words.extend(g.r);
            if format != PebsFormat::Fmt0 {
                words.extend([self.status, self.dla, self.dse, self.lat]);
            }
            if matches!(format, PebsFormat::Fmt2 | PebsFormat::Fmt3) {
                words.extend([self.real_ip, self.tsx_tuning]);
            }
            if format == PebsFormat::Fmt3 {
                words.push(self.tsc);
            }
        } else {
            let mut cfg = 0u64;
            let mut body: Vec<u64> = Vec::new();
            if let Some(m) = self.meminfo {
                cfg |= CFG_MEMINFO;
                body.extend([m.address, m.aux, m.latency, m.tsx_tuning]);
            }
            if let Some(g) = self.gprs {
                cfg |= CFG_GP;
                body.extend([g.flags, g.ip, g.ax, g.cx, g.dx, g.bx, g.sp, g.bp, g.si, g.di]);
                body.extend(g.r);
            }
            if let Some(x) = self.xmm {
                cfg |= CFG_XMMS;
                for reg in x {
                    body.push(u64::from_le_bytes(reg[..8].try_into().expect("8")));
                    body.push(u64::from_le_bytes(reg[8..].try_into().expect("8")));
                }
            }
            if !self.lbr.is_empty() {
                cfg |= CFG_LBRS | (((self.lbr.len() as u64 - 1) & 0xff) << CFG_LBR_SHIFT);
                for e in self.lbr.iter().take(256) {
                    body.extend([e.from, e.to, e.info]);
                }
            }
            let size = (4 + body.len()) as u64 * 8;
            words.extend([cfg | (size << 48), self.ip, self.applicable_counters, self.tsc]);
            words.extend(body);
        }
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// Parses a whole PEBS buffer (base to index).
    pub fn parse_all(format: PebsFormat, mut b: &[u8]) -> Result<Vec<PebsRecord>, Error> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let (r, n) = PebsRecord::parse(format, b)?;
            if n == 0 {
                return Err(Error::PebsBadSize { declared: 0, parsed: 0 });
            }
            out.push(r);
            b = &b[n..];
        }
        Ok(out)
    }
}

/// What a tracer asks of PEBS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PebsConfig {
    /// The record format the CPU writes.
    pub format: PebsFormat,
    /// Counter reset value (the sampling period).
    pub reset: u64,
    /// Records the buffer holds.
    pub records: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PebsRecord {
        let g = Gprs {
            flags: 0x246,
            ip: 0x401000,
            ax: 1,
            bx: 2,
            cx: 3,
            dx: 4,
            si: 5,
            di: 6,
            bp: 7,
            sp: 8,
            r: [9, 10, 11, 12, 13, 14, 15, 16],
        };
        PebsRecord { ip: 0x401000, gprs: Some(g), ..PebsRecord::default() }
    }

    #[test]
    fn legacy_sizes_and_offsets() {
        let mut r = sample();
        r.status = 0x11;
        r.dla = 0x22;
        r.dse = 0x33;
        r.lat = 0x44;
        r.real_ip = 0x55;
        r.tsx_tuning = 0x66;
        r.tsc = 0x77;
        for (fmt, size) in [
            (PebsFormat::Fmt0, 144),
            (PebsFormat::Fmt1, 176),
            (PebsFormat::Fmt2, 192),
            (PebsFormat::Fmt3, 200),
        ] {
            let b = r.to_bytes(fmt);
            assert_eq!(b.len(), size);
            assert_eq!(Some(size), fmt.legacy_size());
            assert_eq!(&b[8..16], &0x401000u64.to_le_bytes(), "ip at 0x08");
            assert_eq!(&b[16..24], &1u64.to_le_bytes(), "ax at 0x10");
            assert_eq!(&b[136..144], &16u64.to_le_bytes(), "r15 at 0x88");
            let (back, n) = PebsRecord::parse(fmt, &b).unwrap();
            assert_eq!(n, size);
            assert_eq!(back.ip, r.ip);
            assert_eq!(back.gprs, r.gprs);
            if fmt != PebsFormat::Fmt0 {
                assert_eq!(&b[0x90..0x98], &0x11u64.to_le_bytes(), "status at 0x90");
                assert_eq!(back.lat, 0x44);
            }
            if fmt == PebsFormat::Fmt3 {
                assert_eq!(&b[0xc0..0xc8], &0x77u64.to_le_bytes(), "tsc at 0xc0");
                assert_eq!(back, r);
            }
        }
    }

    #[test]
    fn adaptive_groups() {
        let mut r = sample();
        r.applicable_counters = 1;
        r.tsc = 99;
        assert_eq!(r.to_bytes(PebsFormat::Adaptive).len(), 32 + 144);
        r.meminfo = Some(MemInfo { address: 0xdead, aux: 1, latency: 30, tsx_tuning: 0 });
        r.xmm = Some([[7u8; 16]; 16]);
        r.lbr = vec![LbrEntry { from: 1, to: 2, info: 3 }, LbrEntry { from: 4, to: 5, info: 6 }];
        let b = r.to_bytes(PebsFormat::Adaptive);
        assert_eq!(b.len(), 32 + 32 + 144 + 256 + 2 * 24);
        let format_size = u64::from_le_bytes(b[..8].try_into().unwrap());
        assert_eq!(format_size >> 48, b.len() as u64);
        assert_eq!(format_size & 0xf, 0xf);
        assert_eq!((format_size >> 24) & 0xff, 1, "LBR count minus one");
        let (back, n) = PebsRecord::parse(PebsFormat::Adaptive, &b).unwrap();
        assert_eq!(n, b.len());
        assert_eq!(back, r);
        // Two back to back.
        let mut two = b.clone();
        two.extend(sample().to_bytes(PebsFormat::Adaptive));
        assert_eq!(PebsRecord::parse_all(PebsFormat::Adaptive, &two).unwrap().len(), 2);
    }

    #[test]
    fn bad_buffers_are_errors() {
        let b = sample().to_bytes(PebsFormat::Fmt1);
        assert!(PebsRecord::parse(PebsFormat::Fmt1, &b[..100]).is_err());
        let mut a = sample().to_bytes(PebsFormat::Adaptive);
        a[6] ^= 0x01; // declared size no longer matches
        assert!(PebsRecord::parse(PebsFormat::Adaptive, &a).is_err());
        assert!(PebsRecord::parse_all(PebsFormat::Adaptive, &[0u8; 8]).is_err());
    }
}
