//! One traced address space: its memory, the original bytes of every code
//! page read so far, the breakpoints planted in it, and decoded-code caches.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction};

use crate::maps::{self, Mapping};
use crate::sys::Pid;

pub const PAGE: u64 = 4096;
const INT3: u8 = 0xCC;
/// A straight-line walk longer than this ends in a "continue" site.
const MAX_BLOCK_INSNS: usize = 4096;

/// How a straight-line run of code ends, as the fast recorder sees it.
#[derive(Debug, Clone, Copy)]
pub enum BlockEnd {
    /// The first branch instruction of the run, at this address.
    Branch(u64),
    /// The code on the way could not be read or decoded.
    Unreadable,
}

pub struct Space {
    pub pid: Pid,
    /// `/proc/PID/mem`; none once the process is gone ([`Space::close`]).
    mem: Option<File>,
    /// Original bytes of code pages; `None` for a page that cannot be read.
    pages: HashMap<u64, Option<Box<[u8]>>>,
    /// Planted int3 sites and the byte each replaced.
    bps: HashMap<u64, u8>,
    insns: HashMap<u64, Instruction>,
    blocks: HashMap<u64, BlockEnd>,
    /// Every executable mapping seen since the image was loaded.
    pub maps: Vec<Mapping>,
    /// Process-unique counter of the image (bumped at exec).
    pub generation: u32,
}

fn open_mem(pid: Pid) -> io::Result<File> {
    std::fs::OpenOptions::new().read(true).write(true).open(format!("/proc/{pid}/mem"))
}

impl Space {
    pub fn new(pid: Pid, generation: u32) -> io::Result<Space> {
        Ok(Space {
            pid,
            mem: Some(open_mem(pid)?),
            pages: HashMap::new(),
            bps: HashMap::new(),
            insns: HashMap::new(),
            blocks: HashMap::new(),
            maps: Vec::new(),
            generation,
        })
    }

    /// The address space of a forked child: a copy of ours, breakpoints included
    /// (the child inherited the int3 bytes).
    pub fn fork_copy(&self, child: Pid) -> io::Result<Space> {
        Ok(Space {
            pid: child,
            mem: Some(open_mem(child)?),
            pages: self.pages.clone(),
            bps: self.bps.clone(),
            insns: self.insns.clone(),
            blocks: self.blocks.clone(),
            maps: self.maps.clone(),
            generation: 0,
        })
    }

    /// Reads live memory (what the process sees, our int3 bytes included).
    pub fn read_live(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.mem()?.read_exact_at(buf, addr)
    }

    /// [`Space::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.mem.is_none()
    }

    fn mem(&self) -> io::Result<&File> {
        self.mem.as_ref().ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))
    }

    /// The process is gone: its file descriptor and cached code go (a
    /// session that follows thousands of processes must not keep them).
    /// The image's trace has its maps already.
    pub fn close(&mut self) {
        self.mem = None;
        self.maps = Vec::new();
        self.pages = HashMap::new();
        self.bps = HashMap::new();
        self.insns = HashMap::new();
        self.blocks = HashMap::new();
    }

    /// Up to `len` bytes of live memory at `addr`, read a page at a time:
    /// what comes before the first unreadable page.
    pub fn read_live_upto(&self, addr: u64, len: usize) -> Vec<u8> {
        let end = addr.saturating_add(len as u64);
        let mut out = Vec::with_capacity(len);
        let mut at = addr;
        while at < end {
            let next = (at | (PAGE - 1)).saturating_add(1).min(end);
            let mut chunk = vec![0u8; (next - at) as usize];
            if self.read_live(at, &mut chunk).is_err() {
                break;
            }
            out.extend_from_slice(&chunk);
            at = next;
        }
        out
    }

    pub fn read_u64(&self, addr: u64) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.read_live(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn write_live(&self, addr: u64, data: &[u8]) -> io::Result<()> {
        self.mem()?.write_all_at(data, addr)
    }

    /// The original bytes of the code page at `page` (page-aligned).
    fn page(&mut self, page: u64) -> Option<&[u8]> {
        if !self.pages.contains_key(&page) {
            let mut buf = vec![0u8; PAGE as usize].into_boxed_slice();
            let got = match self.mem().and_then(|m| m.read_exact_at(&mut buf, page)) {
                Ok(()) => {
                    for (&a, &orig) in &self.bps {
                        if a & !(PAGE - 1) == page {
                            buf[(a - page) as usize] = orig;
                        }
                    }
                    Some(buf)
                }
                Err(_) => None,
            };
            self.pages.insert(page, got);
            if !self.maps.iter().any(|m| m.contains(page)) {
                self.refresh_maps();
            }
        }
        self.pages.get(&page).and_then(|p| p.as_deref())
    }

    /// Original code bytes at `addr`, up to `buf.len()`, stopping at the
    /// first unreadable page. Returns the count read.
    pub fn read_code(&mut self, addr: u64, buf: &mut [u8]) -> usize {
        let mut done = 0;
        while done < buf.len() {
            let a = addr.wrapping_add(done as u64);
            let page = a & !(PAGE - 1);
            let Some(bytes) = self.page(page) else { break };
            let off = (a - page) as usize;
            let n = (bytes.len() - off).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&bytes[off..off + n]);
            done += n;
        }
        done
    }

    /// The instruction at `addr`, decoded from the original code bytes.
    pub fn insn(&mut self, addr: u64) -> Option<Instruction> {
        if let Some(i) = self.insns.get(&addr) {
            return Some(*i);
        }
        let mut buf = [0u8; 15];
        let n = self.read_code(addr, &mut buf);
        if n == 0 {
            return None;
        }
        let mut dec = Decoder::with_ip(64, &buf[..n], addr, DecoderOptions::NONE);
        let insn = dec.decode();
        if insn.is_invalid() {
            return None;
        }
        self.insns.insert(addr, insn);
        Some(insn)
    }

    /// Where the straight-line run starting at `pc` ends.
    pub fn block_end(&mut self, pc: u64) -> BlockEnd {
        if let Some(e) = self.blocks.get(&pc) {
            return *e;
        }
        let mut a = pc;
        let mut end = BlockEnd::Unreadable;
        for _ in 0..MAX_BLOCK_INSNS {
            let Some(insn) = self.insn(a) else {
                end = BlockEnd::Unreadable;
                break;
            };
            if ends_block(&insn) {
                end = BlockEnd::Branch(a);
                break;
            }
            a = insn.next_ip();
            end = BlockEnd::Branch(a);
        }
        self.blocks.insert(pc, end);
        end
    }

    pub fn is_breakpoint(&self, addr: u64) -> bool {
        self.bps.contains_key(&addr)
    }

    /// Plants an int3 at `addr` (idempotent). The program's own int3 is
    /// left alone: it traps by itself, and that trap is the program's.
    pub fn plant(&mut self, addr: u64) -> io::Result<()> {
        if self.bps.contains_key(&addr) {
            return Ok(());
        }
        let mut orig = [0u8; 1];
        if self.read_code(addr, &mut orig) != 1 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "unreadable code"));
        }
        if orig[0] == INT3 {
            return Ok(());
        }
        if self.inside_a_site(addr) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "inside another site's instruction"));
        }
        self.write_live(addr, &[INT3])?;
        self.bps.insert(addr, orig[0]);
        Ok(())
    }

    /// Whether `addr` and a planted site overlap without being one: one
    /// lies inside the other's instruction. An int3 there would change what
    /// the other decodes to (a `48 cb` far return with an int3 planted on
    /// its second byte runs as a REX-prefixed int3), so none is planted.
    fn inside_a_site(&mut self, addr: u64) -> bool {
        const MAX_INSN: u64 = 15;
        for k in 1..MAX_INSN {
            let site = addr.wrapping_sub(k);
            if self.bps.contains_key(&site) && self.insn(site).is_none_or(|i| i.len() as u64 > k) {
                return true;
            }
        }
        let len = self.insn(addr).map_or(1, |i| i.len() as u64);
        (1..len).any(|k| self.bps.contains_key(&addr.wrapping_add(k)))
    }

    /// Puts the original byte back at `addr` while keeping the site known.
    pub fn lift(&mut self, addr: u64) -> io::Result<()> {
        match self.bps.get(&addr) {
            Some(&orig) => self.write_live(addr, &[orig]),
            None => Ok(()),
        }
    }

    /// Writes the int3 back at a lifted site.
    pub fn relower(&mut self, addr: u64) -> io::Result<()> {
        if self.bps.contains_key(&addr) {
            self.write_live(addr, &[INT3])?;
        }
        Ok(())
    }

    /// Removes the int3 at `addr` for good (its original byte back).
    pub fn unplant(&mut self, addr: u64) -> io::Result<()> {
        match self.bps.remove(&addr) {
            Some(orig) => self.write_live(addr, &[orig]),
            None => Ok(()),
        }
    }

    /// Puts the original bytes of planted sites into `buf`, read live at `addr`.
    pub fn hide_breakpoints(&self, addr: u64, buf: &mut [u8]) {
        let end = addr.saturating_add(buf.len() as u64);
        for (&a, &orig) in &self.bps {
            if a >= addr && a < end {
                buf[(a - addr) as usize] = orig;
            }
        }
    }

    /// Writes `data` at `addr` as the program's own bytes: a planted site
    /// keeps its int3 and takes the new byte as its original.
    pub fn write_keeping_breakpoints(&mut self, addr: u64, data: &[u8]) -> io::Result<()> {
        let mut live = data.to_vec();
        let end = addr.saturating_add(data.len() as u64);
        for (&a, orig) in self.bps.iter_mut() {
            if a >= addr && a < end {
                let i = (a - addr) as usize;
                *orig = data[i];
                live[i] = INT3;
            }
        }
        self.write_live(addr, &live)?;
        // Cached code of those pages is stale now.
        self.forget_code(addr, end);
        Ok(())
    }

    /// Removes every breakpoint from memory. Errors are collected, not fatal:
    /// the caller reports them, and every site that can be restored is.
    pub fn remove_all_breakpoints(&mut self) -> Vec<(u64, io::Error)> {
        let mut errors = Vec::new();
        for (&addr, &orig) in &self.bps {
            if let Err(e) = self.write_live(addr, &[orig]) {
                errors.push((addr, e));
            }
        }
        self.bps.clear();
        errors
    }

    /// Forgets breakpoints that were never written into this space's memory
    /// (a fork child whose bytes are handled elsewhere).
    pub fn forget_breakpoints(&mut self) {
        self.bps.clear();
    }

    /// The memory in `[lo, hi)` changed (munmap, mmap over it, mremap): drop
    /// what we knew of it.
    pub fn invalidate(&mut self, lo: u64, hi: u64) {
        self.bps.retain(|&a, _| a < lo || a >= hi);
        self.forget_code(lo, hi);
    }

    /// Forgets the code pages cached in `[lo, hi)`, and what was decoded
    /// from them; the breakpoints stay.
    fn forget_code(&mut self, lo: u64, hi: u64) {
        let before = self.pages.len();
        self.pages.retain(|&p, _| p + PAGE <= lo || p >= hi);
        if self.pages.len() != before {
            self.insns.clear();
            self.blocks.clear();
        }
    }

    pub fn refresh_maps(&mut self) {
        if let Ok(now) = maps::read_exec_maps(self.pid) {
            for m in now {
                if !self.maps.contains(&m) {
                    self.maps.push(m);
                }
            }
        }
    }

    /// Original bytes of the page at `page` if it was ever read.
    pub fn cached_page(&mut self, page: u64) -> Option<Vec<u8>> {
        self.page(page).map(|p| p.to_vec())
    }
}

/// True for an instruction that ends a straight-line run for the fast
/// recorder. System calls do not: the fast recorder sees them as syscall stops.
pub fn ends_block(insn: &Instruction) -> bool {
    match insn.flow_control() {
        FlowControl::Next => false,
        FlowControl::Call if is_syscall(insn) => false,
        FlowControl::Interrupt if is_syscall(insn) => false,
        _ => true,
    }
}

pub use decode::classify::is_syscall;

impl Space {
    /// Addresses of every planted breakpoint.
    pub fn breakpoint_sites(&self) -> Vec<u64> {
        self.bps.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_int3_goes_inside_another_sites_instruction() {
        // This process's own memory stands for the tracee's: a far return
        // (48 cb), then mov eax, 0 (b8 00 00 00 00) and ret (c3).
        let code =
            Box::new([0x48u8, 0xcb, 0xb8, 0, 0, 0, 0, 0xc3, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90]);
        let at = code.as_ptr() as u64;
        let mut space = Space::new(std::process::id() as Pid, 0).unwrap();
        space.plant(at).unwrap();
        assert!(space.plant(at + 1).is_err(), "the far return's second byte");
        space.plant(at + 2).unwrap();
        assert!(space.plant(at + 3).is_err(), "inside the mov");
        space.plant(at + 7).unwrap();
        // The other way: an instruction that would cover a planted site.
        let late = Box::new([
            0x48u8, 0xcb, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90,
        ]);
        let at = late.as_ptr() as u64;
        space.plant(at + 1).unwrap();
        assert!(space.plant(at).is_err(), "a far return whose second byte is a site");
        assert_eq!(std::hint::black_box(&*late)[..2], [0x48, 0xcc]);
        assert_eq!(std::hint::black_box(&*code)[..3], [0xcc, 0xcb, 0xcc]);
    }
}
