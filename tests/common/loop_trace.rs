//! A trace of any length of one small loop that decodes: the code
//! `1000 nop; 1001 jne 1005; 1003 jmp 1000; 1005 jmp 1000` with the
//! conditional going either way, pseudo-randomly. Written a chunk at a
//! time, so a trace of gigabytes takes no memory. Shared by the tests and
//! the benches (`#[path]`).

use std::io::BufWriter;
use std::path::Path;

use bts_reader::tracestream::TraceWriter;
use bts_reader::{CodeRange, Meta, Module, StreamHeader, StreamKind};
use ds_alloc::BtsRecord;

/// The loop's code and module, in process `pid`.
pub fn loop_image(pid: i32) -> (CodeRange, Module) {
    let mut code = vec![0x90, 0x75, 0x02, 0xeb, 0xfb, 0xeb, 0xf9];
    code.resize(4096, 0xcc);
    let module = Module {
        pid,
        generation: 1,
        map: decode::Mapping { start: 0x1000, end: 0x2000, offset: 0, path: "[loop]".into() },
        build_id: None,
    };
    (CodeRange { pid, generation: 1, addr: 0x1000, bytes: code }, module)
}

/// Writes a trace of `n` records of the loop (thread `pid` of process
/// `pid`, crashed at 0x1001) to `path`; returns its newest `tail` records.
pub fn write_loop_trace(path: &Path, pid: i32, n: u64, tail: usize) -> Vec<BtsRecord> {
    let (code, module) = loop_image(pid);
    let meta = Meta { command: vec!["generated".into()], pid, outcome: "signal".into(), ..Meta::default() };
    let f = std::fs::File::create(path).unwrap();
    let mut w = TraceWriter::new(BufWriter::with_capacity(1 << 20, f), &meta, &[module]).unwrap();
    let kind = StreamKind::Thread { pid, generation: 1, tid: pid, crashed: true, last_pc: Some(0x1001) };
    w.begin_stream(&StreamHeader { kind, capacity: n, overwritten: 0, lost: 0, count: n }).unwrap();
    let (mut x, mut made) = (7u32, 0u64);
    let mut chunk = Vec::with_capacity(1 << 16);
    let mut newest: Vec<BtsRecord> = Vec::new();
    while made < n {
        x = x.wrapping_mul(1103515245).wrapping_add(12345);
        if x & 0x100 != 0 && made + 2 <= n {
            chunk.extend([BtsRecord::branch(0x1001, 0x1005), BtsRecord::branch(0x1005, 0x1000)]);
            made += 2;
        } else {
            chunk.push(BtsRecord::branch(0x1003, 0x1000));
            made += 1;
        }
        if chunk.len() >= (1 << 16) - 2 || made == n {
            w.records(&chunk).unwrap();
            newest.extend_from_slice(&chunk);
            let extra = newest.len().saturating_sub(tail);
            newest.drain(..extra);
            chunk.clear();
        }
    }
    w.code(&code).unwrap();
    w.finish().unwrap();
    newest
}
