//! A trace file the tools (`cut`, `split`, `filter`, `merge`) write: aside
//! under a private name, linked in only when complete and never over an
//! existing file, with the code pages its records run through.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use ds_alloc::BtsRecord;

use crate::tracestream::TraceWriter;
use crate::{CodeRange, Error, Meta, Module, Result, StreamHeader, StreamKind, ThreadState};

/// An image, or none for a CPU's catch-all buffer.
type Image = Option<(i32, u32)>;

/// A new trace file being written.
pub(crate) struct NewTrace {
    tmp: tempfile::NamedTempFile,
    w: TraceWriter<File>,
    path: PathBuf,
    /// Code pages the records written run through, by image.
    pages: HashMap<Image, BTreeSet<u64>>,
    /// The open stream's image, and its last branch so far.
    image: Image,
    carry: Option<BtsRecord>,
}

impl NewTrace {
    /// A new file at `path`, its header, META and MODULES written.
    pub fn create(path: &Path, meta: &Meta, modules: &[Module]) -> Result<NewTrace> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let io = |source| Error::Io { path: dir.display().to_string(), source };
        let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        let w = TraceWriter::new(tmp.as_file().try_clone().map_err(io)?, meta, modules)?;
        Ok(NewTrace { tmp, w, path: path.to_path_buf(), pages: HashMap::new(), image: None, carry: None })
    }

    /// Begins a stream; the page its thread stood at is kept.
    pub fn begin_stream(&mut self, h: &StreamHeader) -> Result<()> {
        let (image, last_pc) = match h.kind {
            StreamKind::Thread { pid, generation, last_pc, .. } => (Some((pid, generation)), last_pc),
            StreamKind::Cpu { .. } => (None, None),
        };
        self.image = image;
        self.carry = None;
        ds_alloc::pages::touched_pages(std::iter::empty(), last_pc, self.pages.entry(image).or_default());
        self.w.begin_stream(h)
    }

    /// Records of the open stream that ran one after the other: the code
    /// between them is needed too (across calls as well).
    pub fn records(&mut self, recs: &[BtsRecord]) -> Result<()> {
        let pages = self.pages.entry(self.image).or_default();
        ds_alloc::pages::touched_pages(self.carry.iter().chain(recs.iter()), None, pages);
        self.carry = recs.iter().rev().find(|r| r.is_branch()).copied().or(self.carry);
        self.w.records(recs)
    }

    /// Records picked apart from the others: each branch's own code only
    /// (what lies between two of them may not have run).
    pub fn picked(&mut self, recs: &[BtsRecord]) -> Result<()> {
        let pages = self.pages.entry(self.image).or_default();
        for b in recs.iter().filter(|r| r.is_branch()) {
            ds_alloc::pages::touched_pages(std::iter::once(b), None, pages);
        }
        self.w.records(recs)
    }

    /// Writes `c` if a record written runs through it (in its image, or
    /// in a CPU buffer, whose image is unknown).
    pub fn code(&mut self, c: &CodeRange) -> Result<()> {
        let end = c.addr.saturating_add(c.bytes.len() as u64);
        let touches = |image: Image| {
            self.pages.get(&image).is_some_and(|p| p.range(c.addr & !0xfff..end).next().is_some())
        };
        if touches(Some((c.pid, c.generation))) || touches(None) {
            self.w.code(c)?;
        }
        Ok(())
    }

    /// Writes `c` whatever the records need (merge keeps all it is given).
    pub fn code_whole(&mut self, c: &CodeRange) -> Result<()> {
        self.w.code(c)
    }

    /// A thread's registers and stack.
    pub fn state(&mut self, st: &ThreadState) -> Result<()> {
        self.w.state(st)
    }

    /// The end marker; the file linked in at its path.
    pub fn finish(self) -> Result<PathBuf> {
        self.w.finish()?;
        self.tmp
            .persist_noclobber(&self.path)
            .map_err(|e| Error::Io { path: self.path.display().to_string(), source: e.error })?;
        Ok(self.path)
    }
}
