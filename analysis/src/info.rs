//! `bts info`: what a trace file holds, at a glance: the processes, threads
//! and CPUs it has buffers for, their records, the time the context records
//! span, the modules, and the bytes of each kind of section.

use std::collections::BTreeMap;

use bts_reader::tracestream::{open, Section};
use bts_reader::{Meta, Module, SectionSize, StreamHeader, StreamKind};
use ds_alloc::RecordKind;
use serde::Serialize;

/// Records read at a time.
const CHUNK: usize = 1 << 16;

/// A buffer's line, from its header and what its records were.
fn buffer_info(h: &StreamHeader, branches: u64, context: u64) -> BufferInfo {
    let (pid, generation, tid, cpu, crashed) = match h.kind {
        StreamKind::Thread { pid, generation, tid, crashed, .. } => {
            (Some(pid), Some(generation), Some(tid), None, crashed)
        }
        StreamKind::Cpu { cpu } => (None, None, None, Some(cpu), false),
    };
    BufferInfo {
        pid,
        generation,
        tid,
        cpu,
        crashed,
        branches,
        context,
        capacity: h.capacity,
        overwritten: h.overwritten,
        lost: h.lost,
    }
}

/// One buffer of the trace.
#[derive(Debug, Clone, Serialize)]
pub struct BufferInfo {
    /// The process (none for a CPU's catch-all buffer).
    pub pid: Option<i32>,
    /// The process's exec generation.
    pub generation: Option<u32>,
    /// The thread (none for a CPU's buffer).
    pub tid: Option<i32>,
    /// The CPU (a catch-all buffer only).
    pub cpu: Option<u32>,
    /// The thread that crashed.
    pub crashed: bool,
    /// Branch records kept.
    pub branches: u64,
    /// Context records kept (a task arriving on or leaving a CPU).
    pub context: u64,
    /// Records the buffer holds when full.
    pub capacity: u64,
    /// Branches overwritten before the snapshot.
    pub overwritten: u64,
    /// Records lost for other reasons.
    pub lost: u64,
}

/// One module of one image.
#[derive(Debug, Clone, Serialize)]
pub struct ModuleInfo {
    /// The process.
    pub pid: i32,
    /// Its exec generation.
    pub generation: u32,
    /// The file (or `[vdso]`).
    pub path: String,
    /// Start of the mapping, hex.
    pub start: String,
    /// End of the mapping, hex.
    pub end: String,
    /// Its GNU build-id, hex.
    pub build_id: Option<String>,
}

/// What a trace file holds.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    /// The traced command.
    pub command: Vec<String>,
    /// Its pid.
    pub pid: i32,
    /// The recorder.
    pub backend: String,
    /// How it ended: `signal`, `exit` or `detached`.
    pub outcome: String,
    /// The signal's name.
    pub signal: Option<String>,
    /// The exit code.
    pub code: Option<i32>,
    /// The processes with a buffer or a module in the trace.
    pub processes: Vec<i32>,
    /// Threads with a buffer.
    pub threads: usize,
    /// CPUs with a catch-all buffer.
    pub cpus: Vec<u32>,
    /// Every buffer.
    pub buffers: Vec<BufferInfo>,
    /// Branch records, all buffers.
    pub branches: u64,
    /// Context records, all buffers.
    pub context_records: u64,
    /// The first and last clock of the context records (ns, the
    /// recorder's monotonic clock), when there are any.
    pub time_span_ns: Option<(u64, u64)>,
    /// Every module of every image, by image, then address.
    pub modules: Vec<ModuleInfo>,
    /// Code bytes kept (for decoding after the process is gone).
    pub code_bytes: u64,
    /// Threads whose registers and stack were kept.
    pub thread_states: usize,
    /// Bytes by kind of section.
    pub sections: Vec<SectionSize>,
}

impl Info {
    /// What the trace file at `path` holds, read a section at a time: a
    /// trace of any size takes the memory of its modules and code only.
    pub fn read(path: &std::path::Path) -> bts_reader::Result<Info> {
        let mut r = open(path)?;
        let (mut meta, mut mods) = (None, Vec::new());
        let (mut buffers, mut span) = (Vec::new(), None::<(u64, u64)>);
        let (mut code_bytes, mut thread_states) = (0u64, 0usize);
        let mut sizes: Vec<SectionSize> = ["META", "MODULES", "STREAM", "CODE", "STATE"]
            .into_iter()
            .map(|name| SectionSize { name, count: 0, bytes: 0 })
            .collect();
        let mut recs = Vec::with_capacity(CHUNK);
        loop {
            let at = r.position();
            let Some(section) = r.next_section()? else { break };
            let kind = match section {
                Section::Meta(m) => {
                    meta = Some(m);
                    0
                }
                Section::Modules(m) => {
                    mods = m;
                    1
                }
                Section::Stream(h) => {
                    let (mut branches, mut context) = (0, 0);
                    while r.records(&mut recs, CHUNK)? > 0 {
                        for rec in &recs {
                            match rec.kind() {
                                RecordKind::Branch { .. } => branches += 1,
                                RecordKind::Context { clock, .. } => {
                                    context += 1;
                                    span = Some(
                                        span.map_or((clock, clock), |(a, b)| (a.min(clock), b.max(clock))),
                                    );
                                }
                            }
                        }
                        recs.clear();
                    }
                    buffers.push(buffer_info(&h, branches, context));
                    2
                }
                Section::Code(c) => {
                    code_bytes += c.bytes.len() as u64;
                    3
                }
                Section::State(_) => {
                    thread_states += 1;
                    4
                }
            };
            sizes[kind].count += 1;
            sizes[kind].bytes += r.position() - at;
        }
        let file_len = std::fs::metadata(path)
            .map_err(|source| bts_reader::Error::Io { path: path.display().to_string(), source })?
            .len();
        let sections: u64 = sizes.iter().map(|s| s.bytes).sum();
        sizes.push(SectionSize { name: "FILE", count: 1, bytes: file_len.saturating_sub(sections) });
        let meta = meta.ok_or_else(|| bts_reader::Error::Corrupt("no metadata section".into()))?;
        Ok(Info::of_parts(&meta, &mods, buffers, span, (code_bytes, thread_states), sizes))
    }

    fn of_parts(
        m: &Meta,
        mods: &[Module],
        buffers: Vec<BufferInfo>,
        time_span_ns: Option<(u64, u64)>,
        (code_bytes, thread_states): (u64, usize),
        sections: Vec<SectionSize>,
    ) -> Info {
        let mut processes: Vec<i32> =
            mods.iter().map(|m| m.pid).chain(buffers.iter().filter_map(|b| b.pid)).collect();
        processes.sort_unstable();
        processes.dedup();
        let mut cpus: Vec<u32> = buffers.iter().filter_map(|b| b.cpu).collect();
        cpus.sort_unstable();
        let mut modules: Vec<&Module> = mods.iter().collect();
        modules.sort_by_key(|m| (m.pid, m.generation, m.map.start));
        Info {
            command: m.command.clone(),
            pid: m.pid,
            backend: m.backend.clone(),
            outcome: m.outcome.clone(),
            signal: m.signal_name.clone(),
            code: m.code,
            processes,
            threads: buffers.iter().filter(|b| b.tid.is_some()).count(),
            cpus,
            branches: buffers.iter().map(|b| b.branches).sum(),
            context_records: buffers.iter().map(|b| b.context).sum(),
            buffers,
            time_span_ns,
            modules: modules
                .into_iter()
                .map(|md| ModuleInfo {
                    pid: md.pid,
                    generation: md.generation,
                    path: md.map.path.clone(),
                    start: format!("{:#x}", md.map.start),
                    end: format!("{:#x}", md.map.end),
                    build_id: md.build_id.clone(),
                })
                .collect(),
            code_bytes,
            thread_states,
            sections,
        }
    }

    /// The file's size, from its sections.
    pub fn file_bytes(&self) -> u64 {
        self.sections.iter().map(|s| s.bytes).sum()
    }

    /// The text `bts info` prints.
    pub fn to_text(&self) -> String {
        let mut out = format!("command:  {} (pid {})\n", self.command.join(" "), self.pid);
        let how = match (&self.signal, self.code) {
            (Some(s), _) => format!("{} ({s})", self.outcome),
            (None, Some(c)) => format!("{} (code {c})", self.outcome),
            _ => self.outcome.clone(),
        };
        out += &format!("recorder: {}; ended: {how}\n", self.backend);
        let pids: Vec<String> = self.processes.iter().map(|p| p.to_string()).collect();
        out += &format!(
            "buffers:  {} threads in {} ({}), {} CPU catch-all buffers\n",
            self.threads,
            if self.processes.len() == 1 {
                "1 process".to_string()
            } else {
                format!("{} processes", self.processes.len())
            },
            pids.join(", "),
            self.cpus.len()
        );
        let overwritten: u64 = self.buffers.iter().map(|b| b.overwritten).sum();
        let lost: u64 = self.buffers.iter().map(|b| b.lost).sum();
        out += &format!(
            "records:  {} branches, {} context records; {overwritten} branches overwritten before them, {lost} lost\n",
            self.branches, self.context_records
        );
        if let Some((a, b)) = self.time_span_ns {
            out += &format!(
                "time:     {:.6} s between the first and last context records\n",
                (b - a) as f64 / 1e9
            );
        }
        for b in &self.buffers {
            let who = match (b.tid, b.cpu) {
                (Some(t), _) => format!(
                    "thread {t} (pid {}{})",
                    b.pid.unwrap_or(0),
                    if b.crashed { ", crashed" } else { "" }
                ),
                (None, Some(c)) => format!("cpu {c}"),
                _ => "?".into(),
            };
            out += &format!(
                "  {who}: {} branches, {} context, {} overwritten, {} lost, capacity {}\n",
                b.branches, b.context, b.overwritten, b.lost, b.capacity
            );
        }
        let mut by_image: BTreeMap<(i32, u32), Vec<&ModuleInfo>> = BTreeMap::new();
        for m in &self.modules {
            by_image.entry((m.pid, m.generation)).or_default().push(m);
        }
        for ((pid, gen), mods) in by_image {
            out += &format!("modules of pid {pid} (image {gen}):\n");
            for m in mods {
                let id = m.build_id.as_deref().map(|b| format!("  build-id {b}")).unwrap_or_default();
                out += &format!("  {}-{}  {}{id}\n", m.start, m.end, m.path);
            }
        }
        out += &format!("size:     {} bytes\n", self.file_bytes());
        for s in self.sections.iter().filter(|s| s.count > 0) {
            out += &format!("  {:<8} {:>6} sections {:>12} bytes\n", s.name, s.count, s.bytes);
        }
        out += &format!("  code kept: {} bytes; thread states: {}\n", self.code_bytes, self.thread_states);
        out
    }
}
