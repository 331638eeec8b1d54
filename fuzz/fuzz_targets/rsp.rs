//! Whatever arrives on the stub's connection (garbage, cut or oversized
//! packets, malformed arguments) gets an answer or is dropped: the packet
//! decoder, the parser and the protocol loop never panic. The target is a
//! small trace built here, so that every answer path runs.
#![no_main]

use bts_reader::{CodeRange, Meta, Registers, Stream, StreamKind, ThreadState, TraceFile};
use ds_alloc::BtsRecord;
use libfuzzer_sys::fuzz_target;

fn trace() -> TraceFile {
    TraceFile {
        meta: Meta { pid: 7, outcome: "signal".into(), signal: Some(11), tid: Some(7), ..Meta::default() },
        modules: Vec::new(),
        streams: vec![Stream {
            kind: StreamKind::Thread { pid: 7, generation: 1, tid: 7, crashed: true, last_pc: Some(0x1010) },
            capacity: 64,
            overwritten: 0,
            lost: 0,
            records: vec![BtsRecord::branch(0x1000, 0x1008), BtsRecord::branch(0x100c, 0x1004)],
        }],
        code: vec![CodeRange { pid: 7, generation: 1, addr: 0x1000, bytes: vec![0x90; 64] }],
        states: vec![ThreadState {
            pid: 7,
            generation: 1,
            tid: 7,
            signal: Some(11),
            regs: Registers { rip: 0x1010, rsp: 0x8000, ..Registers::default() },
            stack_addr: 0x7f80,
            stack: vec![0xab; 256],
        }],
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(mut target) = gdb_remote::PostMortem::new(trace(), "fuzz".into()) {
        let _ = gdb_remote::serve(&mut target, std::io::Cursor::new(data.to_vec()), std::io::sink());
    }
});
