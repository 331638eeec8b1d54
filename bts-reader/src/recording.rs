//! What every backend produces, and the one builder that turns it into a
//! trace file. The ptrace recorders (step, fast, perf) snapshot their
//! session into a [`Recording`]; the Valgrind backend turns the tool's
//! buffers into one the same way, through the allocator
//! ([`crate::valgrind::VgRun::recording`]).

use std::collections::HashMap;

use decode::Mapping;
use ds_alloc::BtsBuffer;

use crate::{CodeRange, Meta, Module, Stream, StreamKind, ThreadState, TraceFile};

/// The recorded branches of one thread.
#[derive(Debug, Clone)]
pub struct ThreadTrace {
    /// The thread.
    pub tid: i32,
    /// Its buffer, from the allocator.
    pub buffer: BtsBuffer,
    /// Branch records overwritten before the buffer's oldest (context
    /// records aside).
    pub overwritten: u64,
    /// It is the thread that crashed.
    pub crashed: bool,
    /// The thread's last known instruction pointer.
    pub last_pc: Option<u64>,
    /// Records the source reported lost (besides overwritten ones).
    pub lost: u64,
    /// Registers and stack, when the thread was stopped at the snapshot.
    pub state: Option<ThreadState>,
}

/// Everything recorded for one program image (a pid between two execs).
#[derive(Debug, Clone)]
pub struct ImageTrace {
    /// The process.
    pub pid: i32,
    /// Its exec generation.
    pub generation: u32,
    /// Its executable mappings.
    pub maps: Vec<Mapping>,
    /// Original bytes of every code page the kept records touch, by address.
    pub code: Vec<(u64, Vec<u8>)>,
    /// Its threads.
    pub threads: Vec<ThreadTrace>,
}

/// A snapshot of everything a backend recorded.
#[derive(Debug, Clone)]
pub struct Recording {
    /// The backend's name (`fast`, `step`, `perf`, `valgrind`).
    pub backend: &'static str,
    /// The first process.
    pub root_pid: i32,
    /// Every image, finished ones first.
    pub images: Vec<ImageTrace>,
    /// The catch-all buffer of each CPU.
    pub cpus: Vec<(u32, BtsBuffer)>,
}

impl TraceFile {
    /// The trace file of a recording; `meta` says how the process ended
    /// (its `backend` is set from the recording).
    pub fn from_recording(r: &Recording, mut meta: Meta) -> TraceFile {
        meta.backend = r.backend.to_string();
        let mut build_ids: HashMap<String, Option<String>> = HashMap::new();
        let mut tf = TraceFile { meta, ..TraceFile::default() };
        for img in &r.images {
            for m in &img.maps {
                let build_id = build_ids
                    .entry(m.path.clone())
                    .or_insert_with(|| decode::symbols::build_id(&m.path))
                    .clone();
                tf.modules.push(Module {
                    pid: img.pid,
                    generation: img.generation,
                    map: m.clone(),
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
                    overwritten: t.overwritten,
                    lost: t.lost,
                    records: t.buffer.snapshot(),
                });
                tf.states.extend(t.state.clone());
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
}
