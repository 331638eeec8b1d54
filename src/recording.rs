//! A ptrace session's recording as a trace file.

use std::collections::HashMap;

use bts_reader::{CodeRange, Meta, Module, Stream, StreamKind, TraceFile};
use ptrace_shim::Recording;

/// Turns a recording into a trace file.
pub fn to_trace_file(r: &Recording, mut meta: Meta) -> TraceFile {
    meta.backend = r.backend.name().to_string();
    let mut build_ids: HashMap<String, Option<String>> = HashMap::new();
    let mut tf = TraceFile { meta, ..TraceFile::default() };
    for img in &r.images {
        for m in &img.maps {
            let build_id =
                build_ids.entry(m.path.clone()).or_insert_with(|| decode::symbols::build_id(&m.path)).clone();
            tf.modules.push(Module {
                pid: img.pid,
                generation: img.generation,
                path: m.path.clone(),
                start: m.start,
                end: m.end,
                offset: m.offset,
                build_id,
            });
        }
        for t in &img.threads {
            tf.streams.push(Stream {
                kind: StreamKind::Thread {
                    pid: img.pid,
                    generation: img.generation,
                    tid: t.tid,
                    crashed: t.crashed,
                    last_pc: t.last_pc,
                },
                capacity: t.buffer.capacity() as u64,
                overwritten: t.buffer.branches_overwritten(),
                lost: t.lost,
                records: t.buffer.snapshot(),
            });
        }
        for (addr, bytes) in &img.code {
            tf.code.push(CodeRange {
                pid: img.pid,
                generation: img.generation,
                addr: *addr,
                bytes: bytes.clone(),
            });
        }
    }
    for (cpu, b) in &r.cpus {
        tf.streams.push(Stream {
            kind: StreamKind::Cpu { cpu: *cpu },
            capacity: b.capacity() as u64,
            overwritten: b.branches_overwritten(),
            lost: 0,
            records: b.snapshot(),
        });
    }
    tf
}
