//! A trace of any length of one small loop that decodes, with a call and a
//! return in each round: the code `1000 call 1010; 1005 jne 1009;
//! 1007 jmp 1009; 1009 jmp 1000; 1010 ret`, the conditional going either
//! way, pseudo-randomly. Written a chunk at a time, so a trace of
//! gigabytes takes no memory. Shared by the tests and the benches
//! (`#[path]`).

use std::io::BufWriter;
use std::path::Path;

use bts_reader::tracestream::TraceWriter;
use bts_reader::{CodeRange, Meta, Module, StreamHeader, StreamKind};
use ds_alloc::BtsRecord;

/// The loop's code and module, in process `pid`.
pub fn loop_image(pid: i32) -> (CodeRange, Module) {
    let mut code = vec![0xcc; 4096];
    code[..11].copy_from_slice(&[0xe8, 0x0b, 0, 0, 0, 0x75, 0x02, 0xeb, 0x00, 0xeb, 0xf5]);
    code[0x10] = 0xc3;
    let module = Module {
        pid,
        generation: 1,
        map: decode::Mapping { start: 0x1000, end: 0x2000, offset: 0, path: "[loop]".into() },
        build_id: None,
    };
    (CodeRange { pid, generation: 1, addr: 0x1000, bytes: code }, module)
}

/// Where the thread of a loop trace stands at its end (the call).
pub const LAST_PC: u64 = 0x1000;

/// Writes a trace of `n` records of the loop (thread `pid` of process
/// `pid`, crashed at [`LAST_PC`]) to `path`; returns its newest `tail` records.
pub fn write_loop_trace(path: &Path, pid: i32, n: u64, tail: usize) -> Vec<BtsRecord> {
    let (code, module) = loop_image(pid);
    let meta = Meta { command: vec!["generated".into()], pid, outcome: "signal".into(), ..Meta::default() };
    let f = std::fs::File::create(path).unwrap();
    let mut w = TraceWriter::new(BufWriter::with_capacity(1 << 20, f), &meta, &[module]).unwrap();
    let kind = StreamKind::Thread { pid, generation: 1, tid: pid, crashed: true, last_pc: Some(LAST_PC) };
    w.begin_stream(&StreamHeader { kind, capacity: n, overwritten: 0, lost: 0, count: n }).unwrap();
    let mut x = 7u32;
    // Rounds of four records; the first round is cut so the last one ends whole.
    let rounds = std::iter::from_fn(|| {
        x = x.wrapping_mul(1103515245).wrapping_add(12345);
        let cond = if x & 0x100 != 0 { 0x1005 } else { 0x1007 };
        Some([
            BtsRecord::branch(0x1000, 0x1010),
            BtsRecord::branch(0x1010, 0x1005),
            BtsRecord::branch(cond, 0x1009),
            BtsRecord::branch(0x1009, 0x1000),
        ])
    });
    let mut records = rounds.flatten().skip(((4 - n % 4) % 4) as usize).take(n as usize);
    let mut chunk = Vec::with_capacity(1 << 16);
    let mut newest: Vec<BtsRecord> = Vec::new();
    loop {
        chunk.clear();
        chunk.extend(records.by_ref().take(1 << 16));
        if chunk.is_empty() {
            break;
        }
        w.records(&chunk).unwrap();
        newest.extend_from_slice(&chunk);
        let extra = newest.len().saturating_sub(tail);
        newest.drain(..extra);
    }
    w.code(&code).unwrap();
    w.finish().unwrap();
    newest
}
