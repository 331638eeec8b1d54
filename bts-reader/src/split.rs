//! `bts split` and `bts merge`: a trace into one file per thread, process
//! or CPU buffer, and traces of one run back into one. Both go a section
//! at a time, so any size of trace takes bounded memory; split keeps at
//! most [`MAX_OPEN`] outputs open, going through the input once per batch.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use ds_alloc::{BtsRecord, RecordKind};

use crate::newtrace::NewTrace;
use crate::tracestream::{open, Section, TraceReader};
use crate::{Error, Meta, Module, Result, StreamHeader, StreamKind};

/// Outputs open at once, at most.
pub const MAX_OPEN: usize = 1000;

/// Records read at a time.
const CHUNK: usize = 1 << 16;

/// How to split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// One file per thread buffer.
    Thread,
    /// One file per process (all its images and threads).
    Process,
    /// One file per CPU catch-all buffer (thread buffers hold no CPU).
    Cpu,
}

/// The part a stream belongs to, and the file it goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Part {
    Thread(i32, u32, i32),
    Process(i32),
    Cpu(u32),
}

impl Part {
    fn of(kind: &StreamKind, by: By) -> Option<Part> {
        match (by, kind) {
            (By::Thread, StreamKind::Thread { pid, generation, tid, .. }) => {
                Some(Part::Thread(*pid, *generation, *tid))
            }
            (By::Process, StreamKind::Thread { pid, .. }) => Some(Part::Process(*pid)),
            (By::Cpu, StreamKind::Cpu { cpu }) => Some(Part::Cpu(*cpu)),
            _ => None,
        }
    }

    fn name(&self, stem: &str) -> String {
        match self {
            Part::Thread(pid, gen, tid) => format!("{stem}.pid{pid}.{gen}.tid{tid}.bts"),
            Part::Process(pid) => format!("{stem}.pid{pid}.bts"),
            Part::Cpu(cpu) => format!("{stem}.cpu{cpu}.bts"),
        }
    }

    /// Whether code, modules and states of image (pid, generation) belong here.
    fn has_image(&self, pid: i32, generation: u32) -> bool {
        match *self {
            Part::Thread(p, g, _) => p == pid && g == generation,
            Part::Process(p) => p == pid,
            Part::Cpu(_) => true,
        }
    }
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.display().to_string(), source }
}

/// Copies the rest of the reader's open stream into `out`.
fn copy_stream<R: std::io::Read>(out: &mut NewTrace, r: &mut TraceReader<R>, h: &StreamHeader) -> Result<()> {
    out.begin_stream(h)?;
    let mut recs: Vec<BtsRecord> = Vec::with_capacity(CHUNK);
    while r.records(&mut recs, CHUNK)? > 0 {
        out.records(&recs)?;
        recs.clear();
    }
    Ok(())
}

/// The META and MODULES at the head of a trace.
fn head(path: &Path) -> Result<(Meta, Vec<Module>)> {
    let mut r = open(path)?;
    let mut meta = None;
    while let Some(s) = r.next_section()? {
        match s {
            Section::Meta(m) => meta = Some(m),
            Section::Modules(m) => {
                return Ok((meta.ok_or_else(|| Error::Corrupt("no metadata before the modules".into()))?, m))
            }
            _ => break,
        }
    }
    Err(Error::Corrupt("no metadata and modules at the head of the trace".into()))
}

/// Splits `input` into `dir` (made if needed); returns the files written.
pub fn split(input: &Path, by: By, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(io_at(dir))?;
    let stem = input.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "trace".into());
    let (meta, modules) = head(input)?;
    // The parts, in the order their first stream comes.
    let mut parts: Vec<Part> = Vec::new();
    let mut r = open(input)?;
    while let Some(s) = r.next_section()? {
        if let Section::Stream(h) = s {
            if let Some(p) = Part::of(&h.kind, by).filter(|p| !parts.contains(p)) {
                parts.push(p);
            }
        }
    }
    let mut written = Vec::new();
    for batch in parts.chunks(MAX_OPEN) {
        let mut outs: HashMap<Part, NewTrace> = HashMap::new();
        for &p in batch {
            let mods: Vec<Module> =
                modules.iter().filter(|m| p.has_image(m.pid, m.generation)).cloned().collect();
            let mut m = meta.clone();
            if let Part::Process(pid) = p {
                if pid != meta.pid {
                    // Another process of the run: its own number, its end unknown.
                    m = Meta {
                        pid,
                        backend: meta.backend.clone(),
                        outcome: "unknown".into(),
                        ..Meta::default()
                    };
                }
            }
            outs.insert(p, NewTrace::create(&dir.join(p.name(&stem)), &m, &mods)?);
        }
        let mut r = open(input)?;
        while let Some(s) = r.next_section()? {
            match s {
                Section::Stream(h) => {
                    if let Some(out) = Part::of(&h.kind, by).and_then(|p| outs.get_mut(&p)) {
                        copy_stream(out, &mut r, &h)?;
                    }
                }
                Section::Code(c) => {
                    for out in outs.values_mut() {
                        out.code(&c)?;
                    }
                }
                Section::State(st) => {
                    for (p, out) in outs.iter_mut() {
                        let mine = match *p {
                            Part::Thread(pid, gen, tid) => (pid, gen, tid) == (st.pid, st.generation, st.tid),
                            Part::Process(pid) => pid == st.pid,
                            Part::Cpu(_) => false,
                        };
                        if mine {
                            out.state(&st)?;
                        }
                    }
                }
                Section::Meta(_) | Section::Modules(_) => {}
            }
        }
        let mut batch_outs: Vec<(Part, NewTrace)> = outs.into_iter().collect();
        batch_outs.sort_by_key(|(p, _)| *p);
        for (_, out) in batch_outs {
            written.push(out.finish()?);
        }
    }
    Ok(written)
}

/// A buffer as merging tells buffers apart: a thread's (pid, exec
/// generation, tid) or a CPU's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum BufferKey {
    Thread(i32, u32, i32),
    Cpu(u32),
}

impl BufferKey {
    fn of(kind: &StreamKind) -> BufferKey {
        match *kind {
            StreamKind::Thread { pid, generation, tid, .. } => BufferKey::Thread(pid, generation, tid),
            StreamKind::Cpu { cpu } => BufferKey::Cpu(cpu),
        }
    }
}

impl std::fmt::Display for BufferKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            BufferKey::Thread(pid, generation, tid) => {
                write!(f, "the buffer of thread {tid} (pid {pid}, image {generation})")
            }
            BufferKey::Cpu(cpu) => write!(f, "the catch-all buffer of CPU {cpu}"),
        }
    }
}

/// The first context record's clock of `input`'s streams (where it
/// starts in the run's time), and its buffers.
fn survey(input: &Path) -> Result<(u64, Vec<BufferKey>)> {
    let mut r = open(input)?;
    let mut first = u64::MAX;
    let mut buffers = Vec::new();
    let mut recs = Vec::with_capacity(CHUNK);
    while let Some(s) = r.next_section()? {
        if let Section::Stream(h) = s {
            buffers.push(BufferKey::of(&h.kind));
            // The arrival is the first record, or near it.
            r.records(&mut recs, 64)?;
            for rec in &recs {
                if let RecordKind::Context { clock, .. } = rec.kind() {
                    first = first.min(clock);
                    break;
                }
            }
            recs.clear();
        }
    }
    Ok((first, buffers))
}

/// Merges traces of one run (its processes, or parts split off) into
/// `output`, ordered by when each began (its first context record); the
/// first to begin gives the metadata. A buffer in two inputs (a file named
/// twice, parts that overlap) is an error ([`Error::MergeOverlap`]), and
/// nothing is written.
pub fn merge(inputs: &[PathBuf], output: &Path) -> Result<()> {
    let mut order: Vec<(u64, usize)> = Vec::new();
    let mut owner: HashMap<BufferKey, usize> = HashMap::new();
    for (i, p) in inputs.iter().enumerate() {
        let (first, buffers) = survey(p)?;
        for b in buffers {
            match owner.insert(b, i) {
                Some(j) if j != i => {
                    let (first, second) = (inputs[j].display().to_string(), p.display().to_string());
                    return Err(Error::MergeOverlap { buffer: b.to_string(), first, second });
                }
                _ => {}
            }
        }
        order.push((first, i));
    }
    order.sort();
    let mut modules: Vec<Module> = Vec::new();
    let mut meta = None;
    for &(_, i) in &order {
        let (m, mods) = head(&inputs[i])?;
        meta.get_or_insert(m);
        for md in mods {
            if !modules.contains(&md) {
                modules.push(md);
            }
        }
    }
    let meta = meta.ok_or_else(|| Error::Corrupt("nothing to merge".into()))?;
    let mut out = NewTrace::create(output, &meta, &modules)?;
    let mut code_seen: HashSet<(i32, u32, u64)> = HashSet::new();
    let mut states_seen: HashSet<(i32, u32, i32)> = HashSet::new();
    for &(_, i) in &order {
        let mut r = open(&inputs[i])?;
        while let Some(s) = r.next_section()? {
            match s {
                Section::Stream(h) => copy_stream(&mut out, &mut r, &h)?,
                Section::Code(c) => {
                    if code_seen.insert((c.pid, c.generation, c.addr)) {
                        out.code_whole(&c)?;
                    }
                }
                Section::State(st) => {
                    if states_seen.insert((st.pid, st.generation, st.tid)) {
                        out.state(&st)?;
                    }
                }
                Section::Meta(_) | Section::Modules(_) => {}
            }
        }
    }
    out.finish()?;
    Ok(())
}
