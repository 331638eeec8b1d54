//! A trace file read for `history` and `export` without its records in
//! memory: everything else is loaded, and each thread's records are read
//! where they lie, a range at a time. The file is checked (CRCs) in full
//! once, when its first index is made; later runs pass over the records.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use bts_reader::tracestream::{self, Extent, StreamAt};
use bts_reader::{Stream, StreamKind, TraceFile};

use crate::load::InspectError;

/// A trace file, its records left where they lie.
pub struct Streamed {
    /// Everything but the records.
    pub tf: TraceFile,
    offsets: Vec<Extent>,
    path: PathBuf,
}

/// The records of one thread, read from the file.
pub type Source = StreamAt<BufReader<File>>;

impl Streamed {
    /// Reads `path` but its records.
    pub fn open(path: &Path) -> Result<Self, InspectError> {
        let (tf, offsets) = tracestream::scan(path, !crate::index::is_current(path)).map_err(bad(path))?;
        Ok(Streamed { tf, offsets, path: path.to_path_buf() })
    }

    /// The place in the file of `s`, one of `self.tf`'s streams.
    pub fn ordinal(&self, s: &Stream) -> usize {
        self.tf.streams.iter().position(|x| std::ptr::eq(x, s)).unwrap_or(0)
    }

    /// The records of the stream at `ordinal`.
    pub fn source(&self, ordinal: usize) -> Result<Source, InspectError> {
        let file = File::open(&self.path).map_err(|source| {
            InspectError::Io(bts_reader::Error::Io { path: self.path.display().to_string(), source })
        })?;
        let e = self.offsets[ordinal];
        Ok(StreamAt::new(BufReader::with_capacity(1 << 20, file), e.data, e.count))
    }

    /// An error reading the file, as the user is told it.
    pub fn bad(&self) -> impl Fn(bts_reader::Error) -> InspectError + '_ {
        bad(&self.path)
    }
}

fn bad(path: &Path) -> impl Fn(bts_reader::Error) -> InspectError + '_ {
    move |e| match e {
        bts_reader::Error::Io { .. } => InspectError::Io(e),
        e => InspectError::Bad { path: path.to_path_buf(), source: e },
    }
}

/// (pid, tid, where it stood) of a stream.
pub fn thread_of(kind: &StreamKind) -> (i32, i32, Option<u64>) {
    match *kind {
        StreamKind::Thread { pid, tid, last_pc, .. } => (pid, tid, last_pc),
        StreamKind::Cpu { .. } => (0, -1, None),
    }
}
