//! The `.bts` trace file: self-contained and versioned.
//!
//! ```text
//! header   "BTSTRACE" | version u32 | reserved u32
//! section  tag u32 | crc32(payload) u32 | length u64 | payload
//! ...
//! end      tag 0xFFFF_FFFF, crc 0, length 0
//! ```
//! All integers are little-endian. Sections: META (JSON), MODULES (JSON),
//! STREAM (u32 header length, JSON header, then 24-byte BTS records oldest
//! first), CODE (pid u32, generation u32, address u64, bytes), and since
//! version 2 STATE (u32 header length, JSON header: a thread's registers
//! and signal at the stop, then the stack bytes from its header's
//! `stack_addr`). Sections whose tag has bit 31 set are optional: a reader
//! that does not know them skips them; any other unknown tag is an error.
//! Version 1 files (no STATE) still load.

use std::path::Path;

use decode::Mapping;
use ds_alloc::{BtsRecord, BTS_RECORD_SIZE};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The format version this bts writes and reads.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format version this bts reads.
pub const OLDEST_VERSION: u32 = 1;
pub(crate) const MAGIC: &[u8; 8] = b"BTSTRACE";
pub(crate) const TAG_META: u32 = 1;
pub(crate) const TAG_MODULES: u32 = 2;
pub(crate) const TAG_STREAM: u32 = 3;
pub(crate) const TAG_CODE: u32 = 4;
pub(crate) const TAG_END: u32 = 0xFFFF_FFFF;
/// Tags with this bit set may be skipped by a reader that does not know them.
pub(crate) const OPTIONAL: u32 = 0x8000_0000;
pub(crate) const TAG_STATE: u32 = 5;
pub(crate) const SECTION_HEADER: usize = 16;

/// What was traced and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// The program's command line.
    pub command: Vec<String>,
    /// Its pid.
    pub pid: i32,
    /// The recorder.
    pub backend: String,
    /// "signal", "exit", "detached" or "running".
    pub outcome: String,
    /// The fatal signal.
    pub signal: Option<i32>,
    /// Its name.
    pub signal_name: Option<String>,
    /// The fault address, for signals the CPU raises.
    pub fault_addr: Option<u64>,
    /// The signal's `si_code`.
    pub si_code: Option<i32>,
    /// The crashing thread.
    pub tid: Option<i32>,
    /// Exit code, for an exit.
    pub code: Option<i32>,
    /// The crashing thread's instruction pointer.
    pub pc: Option<u64>,
    /// Why the recorder is not the one asked for (auto fell back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// An executable mapping of a traced image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Module {
    /// The process.
    pub pid: i32,
    /// Its exec generation (0 before the first exec seen).
    pub generation: u32,
    /// Where the code is mapped (the file format keeps its fields flat).
    #[serde(flatten)]
    pub map: Mapping,
    /// GNU build-id, hex.
    pub build_id: Option<String>,
}

/// The bytes one kind of section takes in a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SectionSize {
    /// `META`, `MODULES`, `STREAM`, `CODE`, `STATE`, or `FILE` (the file
    /// header and end marker).
    pub name: &'static str,
    /// How many sections of it.
    pub count: u64,
    /// Their bytes, section headers included.
    pub bytes: u64,
}

/// Whose records a stream holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StreamKind {
    /// A thread's own buffer.
    Thread {
        /// Its process.
        pid: i32,
        /// The process's exec generation.
        generation: u32,
        /// The thread.
        tid: i32,
        /// It is the thread that crashed.
        crashed: bool,
        /// Where it stood last.
        last_pc: Option<u64>,
    },
    /// A CPU's catch-all buffer.
    Cpu {
        /// The CPU.
        cpu: u32,
    },
}

/// One circular buffer's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    /// Whose records.
    pub kind: StreamKind,
    /// Records the buffer holds when full.
    pub capacity: u64,
    /// Branch records overwritten before the snapshot (context records
    /// aside): with the branches kept, every branch the thread took.
    pub overwritten: u64,
    /// Records lost for other reasons (the source said so).
    pub lost: u64,
    /// Oldest first.
    pub records: Vec<BtsRecord>,
}

/// A stream's header in the file: whose records, and how many.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHeader {
    /// Whose records.
    #[serde(flatten)]
    pub kind: StreamKind,
    /// Records the buffer holds when full.
    pub capacity: u64,
    /// Branches overwritten before the kept records.
    pub overwritten: u64,
    /// Records lost for other reasons.
    pub lost: u64,
    /// Records that follow.
    pub count: u64,
}

/// Original code bytes of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeRange {
    /// The process.
    pub pid: i32,
    /// Its exec generation.
    pub generation: u32,
    /// The first address.
    pub addr: u64,
    /// The original bytes.
    pub bytes: Vec<u8>,
}

/// A thread's general registers, as the kernel's `user_regs_struct` holds them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Registers {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

/// A thread as it stood when the trace was taken: what a debugger needs
/// to unwind it after the process is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadState {
    /// The process.
    pub pid: i32,
    /// Its exec generation.
    pub generation: u32,
    /// The thread.
    pub tid: i32,
    /// The signal it was stopped with (the fatal one for the crashed thread).
    pub signal: Option<i32>,
    /// Its general registers.
    pub regs: Registers,
    /// Where `stack` begins (a little below the stack pointer: the red zone).
    pub stack_addr: u64,
    /// The stack bytes from `stack_addr` up.
    pub stack: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct StateHeader {
    pid: i32,
    generation: u32,
    tid: i32,
    signal: Option<i32>,
    regs: Registers,
    stack_addr: u64,
}

/// A whole trace file in memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceFile {
    /// How the process ended, and who recorded.
    pub meta: Meta,
    /// Every executable mapping of every image.
    pub modules: Vec<Module>,
    /// Every buffer.
    pub streams: Vec<Stream>,
    /// The code the kept records run through.
    pub code: Vec<CodeRange>,
    /// Registers and stacks of the threads that were stopped when the
    /// trace was taken (none in version 1 files, nor from Valgrind).
    pub states: Vec<ThreadState>,
}

fn section(out: &mut Vec<u8>, tag: u32, payload: &[u8]) {
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
}

pub(crate) fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("trace metadata serializes")
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or_else(|| {
            Error::Truncated(format!(
                "{what} needs {n} bytes at offset {}, file has {}",
                self.pos,
                self.data.len()
            ))
        })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

impl TraceFile {
    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        self.each_section(|tag, payload| section(&mut out, tag, payload));
        section(&mut out, TAG_END, &[]);
        out
    }

    /// Every section of the file, in order: its tag and payload.
    fn each_section(&self, mut emit: impl FnMut(u32, &[u8])) {
        emit(TAG_META, &json(&self.meta));
        emit(TAG_MODULES, &json(&self.modules));
        for s in &self.streams {
            let header = json(&StreamHeader {
                kind: s.kind.clone(),
                capacity: s.capacity,
                overwritten: s.overwritten,
                lost: s.lost,
                count: s.records.len() as u64,
            });
            let mut p = Vec::with_capacity(4 + header.len() + s.records.len() * BTS_RECORD_SIZE);
            p.extend_from_slice(&(header.len() as u32).to_le_bytes());
            p.extend_from_slice(&header);
            for r in &s.records {
                p.extend_from_slice(&r.to_bytes());
            }
            emit(TAG_STREAM, &p);
        }
        for c in &self.code {
            emit(TAG_CODE, &code_payload(c));
        }
        for st in &self.states {
            emit(TAG_STATE, &state_payload(st));
        }
    }

    /// Parses a whole file. Every length is checked against the data and
    /// every section against its checksum: bad input is an error, never a panic.
    pub fn from_bytes(data: &[u8]) -> Result<TraceFile> {
        let mut c = Cursor { data, pos: 0 };
        let magic = c.take(8, "the file header").map_err(|_| {
            if MAGIC.starts_with(data) && !data.is_empty() {
                Error::Truncated("the file ends inside its header".into())
            } else {
                Error::BadMagic
            }
        })?;
        if magic != MAGIC {
            return Err(Error::BadMagic);
        }
        let version = c.u32("the format version")?;
        if !(OLDEST_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(Error::UnsupportedVersion { found: version });
        }
        c.u32("the header")?;
        let mut tf = TraceFile::default();
        let mut saw_meta = false;
        loop {
            if c.pos == data.len() {
                return Err(Error::Truncated(format!(
                    "no end marker after {} bytes (the recording was cut short)",
                    data.len()
                )));
            }
            let at = c.pos;
            if data.len() - at < SECTION_HEADER {
                return Err(Error::Truncated(format!("section header at offset {at} is cut short")));
            }
            let tag = c.u32("a section tag")?;
            let crc = c.u32("a section checksum")?;
            let len = c.u64("a section length")?;
            let len = usize::try_from(len)
                .map_err(|_| Error::Corrupt(format!("section at offset {at} claims {len} bytes")))?;
            let payload = c.take(len, &format!("section {tag} at offset {at}"))?;
            if crc32fast::hash(payload) != crc {
                return Err(Error::Corrupt(format!("checksum mismatch in section {tag} at offset {at}")));
            }
            match tag {
                TAG_END => break,
                TAG_META => {
                    tf.meta = serde_json::from_slice(payload)
                        .map_err(|e| Error::Corrupt(format!("metadata: {e}")))?;
                    saw_meta = true;
                }
                TAG_MODULES => {
                    tf.modules = serde_json::from_slice(payload)
                        .map_err(|e| Error::Corrupt(format!("module list: {e}")))?;
                }
                TAG_STREAM => tf.streams.push(parse_stream(payload, at)?),
                TAG_CODE => tf.code.push(parse_code(payload)?),
                TAG_STATE => tf.states.push(parse_state(payload, at)?),
                t if t & OPTIONAL != 0 => {}
                t => return Err(Error::Corrupt(format!("unknown section tag {t:#x} at offset {at}"))),
            }
        }
        if !saw_meta {
            return Err(Error::Corrupt("no metadata section".into()));
        }
        Ok(tf)
    }

    /// Writes the file by the shell's rules for `>` ([`crate::outfile`]):
    /// never replacing a device or a file's inode, never leaving a partial file.
    pub fn write(&self, path: &Path) -> Result<()> {
        Ok(crate::outfile::write(path, &self.to_bytes())?)
    }

    /// Reads and checks a trace file.
    pub fn read(path: &Path) -> Result<TraceFile> {
        let data =
            std::fs::read(path).map_err(|source| Error::Io { path: path.display().to_string(), source })?;
        TraceFile::from_bytes(&data)
    }

    /// The state of thread `tid` of image (`pid`, `generation`) at the stop.
    pub fn state(&self, pid: i32, generation: u32, tid: i32) -> Option<&ThreadState> {
        self.states.iter().find(|s| (s.pid, s.generation, s.tid) == (pid, generation, tid))
    }

    /// Branch streams of threads, in file order.
    pub fn thread_streams(&self) -> impl Iterator<Item = &Stream> {
        self.streams.iter().filter(|s| matches!(s.kind, StreamKind::Thread { .. }))
    }
}

fn parse_stream(payload: &[u8], at: usize) -> Result<Stream> {
    let mut p = Cursor { data: payload, pos: 0 };
    let hlen = p.u32("stream header length")? as usize;
    let header = p.take(hlen, "stream header")?;
    let h: StreamHeader = serde_json::from_slice(header)
        .map_err(|e| Error::Corrupt(format!("stream header at offset {at}: {e}")))?;
    let body = &payload[p.pos..];
    let expect = usize::try_from(h.count).ok().and_then(|n| n.checked_mul(BTS_RECORD_SIZE));
    if expect != Some(body.len()) {
        return Err(Error::Corrupt(format!(
            "stream at offset {at} says {} records but holds {} bytes",
            h.count,
            body.len()
        )));
    }
    let records = BtsRecord::parse_all(body).map_err(|source| Error::Records { at, source })?;
    Ok(Stream { kind: h.kind, capacity: h.capacity, overwritten: h.overwritten, lost: h.lost, records })
}

/// A CODE section's payload: pid, generation, address, bytes.
pub(crate) fn parse_code(payload: &[u8]) -> Result<CodeRange> {
    let mut p = Cursor { data: payload, pos: 0 };
    let pid = p.u32("code pid")? as i32;
    let generation = p.u32("code generation")?;
    let addr = p.u64("code address")?;
    let bytes = payload[p.pos..].to_vec();
    if addr.checked_add(bytes.len() as u64).is_none() {
        return Err(Error::Corrupt(format!("code range at {addr:#x} wraps the address space")));
    }
    Ok(CodeRange { pid, generation, addr, bytes })
}

/// A CODE section's payload for `c`.
pub(crate) fn code_payload(c: &CodeRange) -> Vec<u8> {
    let mut p = Vec::with_capacity(16 + c.bytes.len());
    p.extend_from_slice(&(c.pid as u32).to_le_bytes());
    p.extend_from_slice(&c.generation.to_le_bytes());
    p.extend_from_slice(&c.addr.to_le_bytes());
    p.extend_from_slice(&c.bytes);
    p
}

/// A STATE section's payload for `st`.
pub(crate) fn state_payload(st: &ThreadState) -> Vec<u8> {
    let header = json(&StateHeader {
        pid: st.pid,
        generation: st.generation,
        tid: st.tid,
        signal: st.signal,
        regs: st.regs,
        stack_addr: st.stack_addr,
    });
    let mut p = Vec::with_capacity(4 + header.len() + st.stack.len());
    p.extend_from_slice(&(header.len() as u32).to_le_bytes());
    p.extend_from_slice(&header);
    p.extend_from_slice(&st.stack);
    p
}

pub(crate) fn parse_state(payload: &[u8], at: usize) -> Result<ThreadState> {
    let mut p = Cursor { data: payload, pos: 0 };
    let hlen = p.u32("thread state header length")? as usize;
    let header = p.take(hlen, "thread state header")?;
    let h: StateHeader = serde_json::from_slice(header)
        .map_err(|e| Error::Corrupt(format!("thread state at offset {at}: {e}")))?;
    let stack = payload[p.pos..].to_vec();
    if h.stack_addr.checked_add(stack.len() as u64).is_none() {
        return Err(Error::Corrupt(format!("stack at {:#x} wraps the address space", h.stack_addr)));
    }
    Ok(ThreadState {
        pid: h.pid,
        generation: h.generation,
        tid: h.tid,
        signal: h.signal,
        regs: h.regs,
        stack_addr: h.stack_addr,
        stack,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TraceFile {
        TraceFile {
            meta: Meta {
                command: vec!["./crash".into()],
                pid: 42,
                backend: "fast".into(),
                outcome: "signal".into(),
                signal: Some(11),
                signal_name: Some("SIGSEGV".into()),
                fault_addr: Some(0),
                tid: Some(42),
                ..Meta::default()
            },
            modules: vec![Module {
                pid: 42,
                generation: 1,
                map: Mapping { path: "/bin/x".into(), start: 0x1000, end: 0x2000, offset: 0 },
                build_id: Some("abcd".into()),
            }],
            streams: vec![Stream {
                kind: StreamKind::Thread { pid: 42, generation: 1, tid: 42, crashed: true, last_pc: Some(0) },
                capacity: 100,
                overwritten: 7,
                lost: 0,
                records: vec![BtsRecord::branch(0x1000, 0x1010), BtsRecord::branch(0x1012, 0)],
            }],
            code: vec![CodeRange { pid: 42, generation: 1, addr: 0x1000, bytes: vec![0x90; 64] }],
            states: vec![ThreadState {
                pid: 42,
                generation: 1,
                tid: 42,
                signal: Some(11),
                regs: Registers { rip: 0, rsp: 0x7ff0_0000, rbp: 0x7ff0_0010, ..Registers::default() },
                stack_addr: 0x7ff0_0000 - 128,
                stack: (0..=255).collect(),
            }],
        }
    }

    #[test]
    fn round_trip() {
        let t = sample();
        assert_eq!(TraceFile::from_bytes(&t.to_bytes()).unwrap(), t);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = sample().to_bytes();
        for n in 0..bytes.len() {
            let r = TraceFile::from_bytes(&bytes[..n]);
            assert!(r.is_err(), "prefix of {n} bytes parsed");
        }
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let bytes = sample().to_bytes();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x5a;
            // A flip may land in a reserved header word and be harmless;
            // it must never panic, and a flip in any section is detected.
            let r = TraceFile::from_bytes(&b);
            if (20..).contains(&i) {
                assert!(r.is_err(), "flip at {i} went unnoticed");
            }
        }
    }

    #[test]
    fn rejects_other_files_and_versions() {
        assert!(matches!(TraceFile::from_bytes(b"ELF\x7f not a trace"), Err(Error::BadMagic)));
        let mut b = sample().to_bytes();
        b[8] = 9;
        assert!(matches!(TraceFile::from_bytes(&b), Err(Error::UnsupportedVersion { found: 9 })));
    }

    #[test]
    fn version_1_files_still_load() {
        // A version 1 file is a version 2 file without STATE sections.
        let mut t = sample();
        t.states.clear();
        let mut b = t.to_bytes();
        b[8] = 1;
        assert_eq!(TraceFile::from_bytes(&b).unwrap(), t);
    }
}
