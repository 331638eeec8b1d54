//! How fast the stub serves a branch trace: a thread of 2M branches over
//! real code (a loop of conditional and unconditional jumps), read the way
//! GDB reads it (`Hg`, then `qXfer:btrace:read:all` in packet-sized pieces,
//! acknowledged). Prints blocks/s. Run: `cargo bench -p gdb-remote --bench btrace`.

use std::io::Write;
use std::time::Instant;

use bts_reader::{CodeRange, Meta, Registers, Stream, StreamKind, ThreadState, TraceFile};
use ds_alloc::BtsRecord;

const BRANCHES: u64 = 2_000_000;
const BASE: u64 = 0x40_1000;

/// Code: four blocks of a few instructions, each ending in a jump to the next.
fn code() -> Vec<u8> {
    let mut c = Vec::new();
    for _ in 0..4 {
        c.extend_from_slice(&[0x48, 0x01, 0xc0]); // add rax, rax
        c.extend_from_slice(&[0x48, 0x83, 0xc3, 0x01]); // add rbx, 1
        c.extend_from_slice(&[0x48, 0x39, 0xcb]); // cmp rbx, rcx
        c.extend_from_slice(&[0x7c, 0x00]); // jl +0 (to the next block)
    }
    c.extend_from_slice(&[0xeb, 0x100u16.wrapping_sub(c.len() as u16 + 2) as u8]); // jmp back to the start
    c
}

fn trace() -> TraceFile {
    let code = code();
    // The branch sites: each block's jl (at +10 of 12 bytes) and the final jmp.
    let mut sites = Vec::new();
    for k in 0..4u64 {
        sites.push((BASE + k * 12 + 10, BASE + (k + 1) * 12));
    }
    sites.push((BASE + 48, BASE));
    let records: Vec<BtsRecord> = (0..BRANCHES)
        .map(|i| sites[(i % sites.len() as u64) as usize])
        .map(|(f, t)| BtsRecord::branch(f, t))
        .collect();
    TraceFile {
        meta: Meta { pid: 7, outcome: "signal".into(), signal: Some(11), tid: Some(7), ..Meta::default() },
        modules: Vec::new(),
        streams: vec![Stream {
            kind: StreamKind::Thread { pid: 7, generation: 1, tid: 7, crashed: true, last_pc: Some(BASE) },
            capacity: BRANCHES,
            overwritten: 0,
            lost: 0,
            records,
        }],
        code: vec![CodeRange { pid: 7, generation: 1, addr: BASE, bytes: code }],
        states: vec![ThreadState {
            pid: 7,
            generation: 1,
            tid: 7,
            signal: Some(11),
            regs: Registers { rip: BASE, ..Registers::default() },
            stack_addr: 0,
            stack: Vec::new(),
        }],
    }
}

fn packet(p: &str) -> Vec<u8> {
    gdb_remote::packet::frame(p.as_bytes())
}

/// Counts the replies and what they carried, acknowledging nothing.
struct Sink {
    bytes: usize,
}

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.bytes += b.len();
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn main() {
    let tf = trace();
    // Every piece GDB would ask for: the document is ~45 bytes a block.
    let chunk = gdb_remote::packet::MAX_PACKET - 64;
    let pieces = (BRANCHES as usize * 48) / chunk + 2;
    let mut input = packet("QStartNoAckMode");
    input.extend(packet("Hg7"));
    for k in 0..pieces {
        input.extend(packet(&format!("qXfer:btrace:read:all:{:x},{chunk:x}", k * chunk)));
    }
    let mut best = f64::MAX;
    for _ in 0..3 {
        let mut target = gdb_remote::PostMortem::new(tf.clone(), "bench".into()).expect("a thread");
        let mut out = Sink { bytes: 0 };
        let t0 = Instant::now();
        gdb_remote::serve(&mut target, std::io::Cursor::new(input.clone()), &mut out).expect("served");
        best = best.min(t0.elapsed().as_secs_f64());
        assert!(out.bytes as u64 > BRANCHES * 40, "the whole document was served ({} bytes)", out.bytes);
    }
    println!("{:<40} {:>16}", "gdb stub", "blocks/s");
    println!("{:<40} {:>16.0}", format!("qXfer:btrace:read:all, {BRANCHES} blocks"), BRANCHES as f64 / best);
}
