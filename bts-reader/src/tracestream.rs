//! The `.bts` format read and written a section at a time, a stream's
//! records a chunk at a time, so that a trace of any size is cut, split or
//! copied in bounded memory. [`crate::TraceFile`] holds a whole file; this
//! is the same format ([`crate::tracefile`] documents it) for files that do
//! not fit.

use std::io::{Read, Seek, SeekFrom, Write};

use ds_alloc::{BtsRecord, BTS_RECORD_SIZE};

use crate::tracefile::{
    code_payload, json, parse_code, parse_state, state_payload, StreamHeader, FORMAT_VERSION, MAGIC,
    OLDEST_VERSION, OPTIONAL, SECTION_HEADER, TAG_CODE, TAG_END, TAG_META, TAG_MODULES, TAG_STATE,
    TAG_STREAM,
};
use crate::{CodeRange, Error, Meta, Module, Result, ThreadState};

/// The largest section other than a stream this reader takes (code of one
/// module, a thread's stack): beyond it, the length is taken as corrupt.
pub const MAX_SECTION: u64 = 1 << 30;

/// One section, as the reader meets it.
#[derive(Debug)]
pub enum Section {
    /// How the process ended.
    Meta(Meta),
    /// The modules of every image.
    Modules(Vec<Module>),
    /// A stream begins: its records follow ([`TraceReader::records`]).
    Stream(StreamHeader),
    /// Code bytes.
    Code(CodeRange),
    /// A thread's registers and stack.
    State(ThreadState),
}

/// The stream being read: records left, and the checksum so far.
struct Open {
    left: u64,
    crc: crc32fast::Hasher,
    expected: u32,
    at: u64,
}

/// Reads a trace file section by section.
pub struct TraceReader<R: Read> {
    r: R,
    pos: u64,
    open: Option<Open>,
    ended: bool,
    /// Where the section being read began.
    section_at: u64,
    /// What errors call the file: its path, once [`open`] opened it.
    name: String,
}

fn io(e: std::io::Error) -> Error {
    io_named(e, "the trace", "a section")
}

/// An error reading the file called `name`: one that ends early ends
/// `inside` something ("the section at offset 1591").
fn io_named(e: std::io::Error, name: &str, inside: impl std::fmt::Display) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::Truncated(format!("the file ends inside {inside}"))
    } else {
        Error::Io { path: name.into(), source: e }
    }
}

impl<R: Read> TraceReader<R> {
    /// Checks the file header.
    pub fn new(mut r: R) -> Result<Self> {
        let mut head = [0u8; 16];
        let mut got = 0;
        while got < head.len() {
            match r.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e)),
            }
        }
        // As `TraceFile::from_bytes` tells them: not ours, or ours cut short.
        let seen = &head[..got.min(MAGIC.len())];
        if seen.is_empty() || !MAGIC.starts_with(seen) {
            return Err(Error::BadMagic);
        }
        if got < head.len() {
            return Err(Error::Truncated("the file ends inside its header".into()));
        }
        let version = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
        if !(OLDEST_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(Error::UnsupportedVersion { found: version });
        }
        Ok(TraceReader { r, pos: 16, open: None, ended: false, section_at: 16, name: "the trace".into() })
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<()> {
        let inside = |e| io_named(e, &self.name, format_args!("the section at offset {}", self.section_at));
        self.r.read_exact(buf).map_err(inside)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// The next section's header, at `at`: a file that ends just before it
    /// lacks its end marker (the recording was cut short).
    fn read_header(&mut self, h: &mut [u8], at: u64) -> Result<()> {
        let mut got = 0;
        while got < h.len() {
            match self.r.read(&mut h[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_named(e, &self.name, "a section header")),
            }
        }
        self.pos += got as u64;
        match got {
            0 => {
                Err(Error::Truncated(format!("no end marker after {at} bytes (the recording was cut short)")))
            }
            n if n < h.len() => Err(Error::Truncated(format!("section header at offset {at} is cut short"))),
            _ => Ok(()),
        }
    }

    /// The next section (none after the end marker). The records of a
    /// stream not read are read and checked on the way.
    pub fn next_section(&mut self) -> Result<Option<Section>> {
        let mut skip = Vec::new();
        while self.open.is_some() {
            self.records(&mut skip, 1 << 16)?;
            skip.clear();
        }
        loop {
            if self.ended {
                return Ok(None);
            }
            let at = self.pos;
            self.section_at = at;
            let mut h = [0u8; SECTION_HEADER];
            self.read_header(&mut h, at)?;
            let tag = u32::from_le_bytes(h[..4].try_into().expect("4 bytes"));
            let crc = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
            let len = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
            if tag == TAG_STREAM {
                let mut l = [0u8; 4];
                self.read(&mut l)?;
                let hlen = u32::from_le_bytes(l) as u64;
                if hlen > MAX_SECTION || 4 + hlen > len {
                    return Err(Error::Corrupt(format!("stream header at offset {at} claims {hlen} bytes")));
                }
                let mut header = vec![0u8; hlen as usize];
                self.read(&mut header)?;
                let sh: StreamHeader = serde_json::from_slice(&header)
                    .map_err(|e| Error::Corrupt(format!("stream header at offset {at}: {e}")))?;
                if sh.count.checked_mul(BTS_RECORD_SIZE as u64) != Some(len - 4 - hlen) {
                    return Err(Error::Corrupt(format!(
                        "stream at offset {at} says {} records but holds {} bytes",
                        sh.count,
                        len - 4 - hlen
                    )));
                }
                let mut hasher = crc32fast::Hasher::new();
                hasher.update(&l);
                hasher.update(&header);
                self.open = Some(Open { left: sh.count, crc: hasher, expected: crc, at });
                if sh.count == 0 {
                    self.close_stream()?;
                }
                return Ok(Some(Section::Stream(sh)));
            }
            if len > MAX_SECTION {
                return Err(Error::Corrupt(format!("section at offset {at} claims {len} bytes")));
            }
            let mut payload = vec![0u8; len as usize];
            self.read(&mut payload)?;
            if crc32fast::hash(&payload) != crc {
                return Err(Error::Corrupt(format!("checksum mismatch in section {tag} at offset {at}")));
            }
            let corrupt = |what: &str, e: serde_json::Error| Error::Corrupt(format!("{what}: {e}"));
            return Ok(Some(match tag {
                TAG_END => {
                    self.ended = true;
                    return Ok(None);
                }
                TAG_META => {
                    Section::Meta(serde_json::from_slice(&payload).map_err(|e| corrupt("metadata", e))?)
                }
                TAG_MODULES => {
                    Section::Modules(serde_json::from_slice(&payload).map_err(|e| corrupt("module list", e))?)
                }
                TAG_CODE => Section::Code(parse_code(&payload)?),
                TAG_STATE => Section::State(parse_state(&payload, at as usize)?),
                t if t & OPTIONAL != 0 => continue,
                t => return Err(Error::Corrupt(format!("unknown section tag {t:#x} at offset {at}"))),
            }));
        }
    }

    /// The byte offset the reader stands at: right after [`Section::Stream`],
    /// where that stream's records begin.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Up to `max` more records of the open stream, appended to `out`;
    /// 0 when it has no more (its checksum checked then).
    ///
    /// See [`TraceReader::skip_records`] to pass over them unread.
    pub fn records(&mut self, out: &mut Vec<BtsRecord>, max: usize) -> Result<usize> {
        let Some(open) = self.open.as_mut() else { return Ok(0) };
        let n = open.left.min(max as u64) as usize;
        // Straight into the records: no buffer of bytes between.
        let old = out.len();
        out.resize(old + n, BtsRecord::default());
        let bytes = zerocopy::IntoBytes::as_mut_bytes(&mut out[old..]);
        if let Err(e) = self.r.read_exact(bytes) {
            let at = open.at;
            out.truncate(old);
            return Err(io_named(e, &self.name, format_args!("the stream at offset {at}")));
        }
        self.pos += bytes.len() as u64;
        open.crc.update(bytes);
        open.left -= n as u64;
        BtsRecord::from_le_in_place(&mut out[old..]);
        if open.left == 0 {
            self.close_stream()?;
        }
        Ok(n)
    }

    fn close_stream(&mut self) -> Result<()> {
        let open = self.open.take().expect("open stream");
        if open.crc.finalize() != open.expected {
            return Err(Error::Corrupt(format!("checksum mismatch in the stream at offset {}", open.at)));
        }
        Ok(())
    }
}

/// One stream's records where they lie in a file, read from any record
/// on: for a file read whole once already (its checksums checked on the
/// way, as [`scan`] does), so that a range is read without the rest.
pub struct StreamAt<R> {
    r: R,
    data: u64,
    count: u64,
}

impl<R: Read + Seek> StreamAt<R> {
    /// The stream whose `count` records begin at byte `data` of `r`.
    pub fn new(r: R, data: u64, count: u64) -> Self {
        StreamAt { r, data, count }
    }

    /// The stream's records.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Up to `max` records from record `first` on, appended to `out`; 0 past the end.
    pub fn read(&mut self, first: u64, max: usize, out: &mut Vec<BtsRecord>) -> Result<usize> {
        let n = self.count.saturating_sub(first).min(max as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        let at = first.checked_mul(BTS_RECORD_SIZE as u64).and_then(|b| b.checked_add(self.data));
        let at = at.ok_or_else(|| Error::Corrupt("a record offset beyond any file".into()))?;
        self.r.seek(SeekFrom::Start(at)).map_err(io)?;
        // Straight into the records: no buffer of bytes between.
        let old = out.len();
        out.resize(old + n, BtsRecord::default());
        if let Err(e) = self.r.read_exact(zerocopy::IntoBytes::as_mut_bytes(&mut out[old..])) {
            out.truncate(old);
            return Err(io(e));
        }
        BtsRecord::from_le_in_place(&mut out[old..]);
        Ok(n)
    }
}

impl<R: Read + Seek> TraceReader<R> {
    /// Passes over the rest of the open stream's records without reading
    /// them (nor checking their checksum): for a file checked before.
    pub fn skip_records(&mut self) -> Result<()> {
        let Some(open) = self.open.take() else { return Ok(()) };
        let bytes = open.left.checked_mul(BTS_RECORD_SIZE as u64).ok_or_else(|| {
            Error::Corrupt(format!("the stream at offset {} is longer than any file", open.at))
        })?;
        self.pos += bytes;
        self.r.seek(SeekFrom::Start(self.pos)).map_err(io)?;
        Ok(())
    }
}

/// Where a stream's records lie in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// The byte offset of the first record.
    pub data: u64,
    /// The records.
    pub count: u64,
}

/// Everything of a trace file but its records (each stream with its
/// records left out), and where each stream's records lie in the file.
/// With `check`, the whole file is read and checked on the way, in bounded
/// memory; without, the records are passed over (a file checked before,
/// as its index says).
pub fn scan(path: &std::path::Path, check: bool) -> Result<(crate::TraceFile, Vec<Extent>)> {
    let mut r = open(path)?;
    let mut tf = crate::TraceFile::default();
    let mut offsets = Vec::new();
    while let Some(section) = r.next_section()? {
        match section {
            Section::Meta(m) => tf.meta = m,
            Section::Modules(m) => tf.modules = m,
            Section::Stream(h) => {
                offsets.push(Extent { data: r.position(), count: h.count });
                if !check {
                    r.skip_records()?;
                }
                tf.streams.push(crate::Stream {
                    kind: h.kind,
                    capacity: h.capacity,
                    overwritten: h.overwritten,
                    lost: h.lost,
                    records: Vec::new(),
                });
            }
            Section::Code(c) => tf.code.push(c),
            Section::State(st) => tf.states.push(st),
        }
    }
    Ok((tf, offsets))
}

/// A trace file opened for reading a section at a time.
pub fn open(path: &std::path::Path) -> Result<TraceReader<std::io::BufReader<std::fs::File>>> {
    let name = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|source| Error::Io { path: name.clone(), source })?;
    let mut r = TraceReader::new(std::io::BufReader::with_capacity(1 << 20, f)).map_err(|e| match e {
        Error::Io { source, .. } => Error::Io { path: name.clone(), source },
        e => e,
    })?;
    r.name = name;
    Ok(r)
}

/// Writes a trace file section by section: META and MODULES first, then
/// streams (each announced with its record count, its checksum filled in
/// at its end), code and states, then the end marker.
pub struct TraceWriter<W: Write + Seek> {
    w: W,
    open: Option<(u64, u64, crc32fast::Hasher)>,
}

fn wio(e: std::io::Error) -> Error {
    Error::Io { path: "the output".into(), source: e }
}

impl<W: Write + Seek> TraceWriter<W> {
    /// The file header, META and MODULES.
    pub fn new(mut w: W, meta: &Meta, modules: &[Module]) -> Result<Self> {
        let mut head = MAGIC.to_vec();
        head.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes());
        w.write_all(&head).map_err(wio)?;
        let mut t = TraceWriter { w, open: None };
        t.section(TAG_META, &json(meta))?;
        t.section(TAG_MODULES, &json(&modules))?;
        Ok(t)
    }

    fn section(&mut self, tag: u32, payload: &[u8]) -> Result<()> {
        self.end_stream()?;
        let mut h = Vec::with_capacity(SECTION_HEADER);
        h.extend_from_slice(&tag.to_le_bytes());
        h.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        h.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        self.w.write_all(&h).map_err(wio)?;
        self.w.write_all(payload).map_err(wio)
    }

    /// Begins a stream of `header.count` records.
    pub fn begin_stream(&mut self, header: &StreamHeader) -> Result<()> {
        self.end_stream()?;
        let hj = json(header);
        let len = 4 + hj.len() as u64 + header.count * BTS_RECORD_SIZE as u64;
        let at = self.w.stream_position().map_err(wio)?;
        let mut h = Vec::with_capacity(SECTION_HEADER + 4 + hj.len());
        h.extend_from_slice(&TAG_STREAM.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&len.to_le_bytes());
        h.extend_from_slice(&(hj.len() as u32).to_le_bytes());
        h.extend_from_slice(&hj);
        self.w.write_all(&h).map_err(wio)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&h[SECTION_HEADER..]);
        self.open = Some((at, header.count, crc));
        Ok(())
    }

    /// More records of the open stream.
    pub fn records(&mut self, recs: &[BtsRecord]) -> Result<()> {
        let Some((_, left, crc)) = self.open.as_mut() else {
            return Err(Error::Corrupt("records written outside a stream".into()));
        };
        if recs.len() as u64 > *left {
            return Err(Error::Corrupt("more records than the stream announced".into()));
        }
        *left -= recs.len() as u64;
        let mut buf = Vec::with_capacity(recs.len() * BTS_RECORD_SIZE);
        for r in recs {
            buf.extend_from_slice(&r.to_bytes());
        }
        crc.update(&buf);
        self.w.write_all(&buf).map_err(wio)
    }

    /// Closes the open stream: its checksum goes into its header.
    fn end_stream(&mut self) -> Result<()> {
        let Some((at, left, crc)) = self.open.take() else { return Ok(()) };
        if left != 0 {
            return Err(Error::Corrupt(format!("a stream ended {left} records short of its count")));
        }
        let end = self.w.stream_position().map_err(wio)?;
        self.w.seek(SeekFrom::Start(at + 4)).map_err(wio)?;
        self.w.write_all(&crc.finalize().to_le_bytes()).map_err(wio)?;
        self.w.seek(SeekFrom::Start(end)).map_err(wio)?;
        Ok(())
    }

    /// Code bytes.
    pub fn code(&mut self, c: &CodeRange) -> Result<()> {
        self.section(TAG_CODE, &code_payload(c))
    }

    /// A thread's registers and stack.
    pub fn state(&mut self, st: &ThreadState) -> Result<()> {
        self.section(TAG_STATE, &state_payload(st))
    }

    /// The end marker; the writer back.
    pub fn finish(mut self) -> Result<W> {
        self.section(TAG_END, &[])?;
        self.w.flush().map_err(wio)?;
        Ok(self.w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Stream, StreamKind, TraceFile};

    fn sample() -> TraceFile {
        let mut tf = TraceFile::default();
        tf.meta.command = vec!["prog".into()];
        tf.meta.pid = 7;
        for (tid, n) in [(7, 5u64), (8, 0), (9, 70_000)] {
            tf.streams.push(Stream {
                kind: StreamKind::Thread { pid: 7, generation: 1, tid, crashed: tid == 9, last_pc: Some(3) },
                capacity: 100_000,
                overwritten: 2,
                lost: 1,
                records: (0..n).map(|i| BtsRecord::branch(i, i + 1)).collect(),
            });
        }
        tf.code.push(CodeRange { pid: 7, generation: 1, addr: 0x1000, bytes: vec![0x90; 4096] });
        tf
    }

    #[test]
    fn a_scan_finds_each_streams_records() {
        let tf = sample();
        let dir = std::env::temp_dir().join(format!("bts-scan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.bts");
        std::fs::write(&path, tf.to_bytes()).unwrap();
        let (scanned, offsets) = scan(&path, true).unwrap();
        assert_eq!(scan(&path, false).unwrap().1, offsets);
        assert_eq!(scanned.streams.len(), 3);
        assert!(scanned.streams.iter().all(|s| s.records.is_empty()));
        assert_eq!(scanned.code, tf.code);
        assert_eq!(offsets[2].count, 70_000);
        let mut at = StreamAt::new(std::fs::File::open(&path).unwrap(), offsets[2].data, offsets[2].count);
        let mut out = Vec::new();
        assert_eq!(at.read(69_990, 100, &mut out).unwrap(), 10);
        assert_eq!(out, tf.streams[2].records[69_990..]);
        assert_eq!(at.read(70_000, 100, &mut out).unwrap(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_copy_made_a_section_at_a_time_is_the_same_file() {
        let tf = sample();
        let bytes = tf.to_bytes();
        let mut r = TraceReader::new(&bytes[..]).unwrap();
        let mut w: Option<TraceWriter<std::io::Cursor<Vec<u8>>>> = None;
        let (mut meta, mut recs) = (None, Vec::new());
        while let Some(s) = r.next_section().unwrap() {
            match s {
                Section::Meta(m) => meta = Some(m),
                Section::Modules(m) => {
                    w = Some(
                        TraceWriter::new(std::io::Cursor::new(Vec::new()), meta.as_ref().unwrap(), &m)
                            .unwrap(),
                    )
                }
                Section::Stream(h) => {
                    let w = w.as_mut().unwrap();
                    w.begin_stream(&h).unwrap();
                    while r.records(&mut recs, 1000).unwrap() > 0 {
                        w.records(&recs).unwrap();
                        recs.clear();
                    }
                }
                Section::Code(c) => w.as_mut().unwrap().code(&c).unwrap(),
                Section::State(s) => w.as_mut().unwrap().state(&s).unwrap(),
            }
        }
        let out = w.unwrap().finish().unwrap().into_inner();
        assert_eq!(out, bytes);
    }

    #[test]
    fn bad_streams_are_errors() {
        let bytes = sample().to_bytes();
        // A flipped record byte: the stream's checksum fails when read through.
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 4096 - 64 - 100] ^= 1;
        let mut r = TraceReader::new(&bad[..]).unwrap();
        let mut err = None;
        loop {
            match r.next_section() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        assert!(err.is_some(), "a corrupt stream is found");
        // Every prefix is an error or a clean stop, never a panic.
        for cut in (0..bytes.len()).step_by(997) {
            let Ok(mut r) = TraceReader::new(&bytes[..cut]) else { continue };
            while let Ok(Some(_)) = r.next_section() {}
        }
    }
}
