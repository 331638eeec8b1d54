//! The history index of a trace file, kept beside it (`FILE.idx`): built
//! once per file and thread, used by every later `bts history` of it. It
//! names the file's size and modification time; a file changed since is
//! indexed again. A name that is taken by something else is left alone
//! (the index then lives for one run), and so is a folder bts may not
//! write to.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use analysis::callstream::{CallIndex, CALL_INDEX_VERSION};
use analysis::stream::{HistoryIndex, INDEX_VERSION};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The file beside a trace: what it is for, and the indexes it holds.
#[derive(Serialize, Deserialize)]
pub struct IndexFile {
    format: String,
    version: u32,
    file_len: u64,
    mtime_ns: u128,
    /// By "STREAM/KERNEL": the stream's place in the file, 1 with kernel records.
    threads: BTreeMap<String, HistoryIndex>,
    /// The call indexes, by the same keys (made by `--calls` and `export`).
    #[serde(default)]
    calls: BTreeMap<String, CallIndex>,
}

/// An index kept in the file.
pub trait Kept: Clone + Serialize + DeserializeOwned {
    /// Where the file keeps indexes of this kind.
    fn slot(f: &mut IndexFile) -> &mut BTreeMap<String, Self>;
    /// The index was made by this version.
    fn current(&self) -> bool;
}

impl Kept for HistoryIndex {
    fn slot(f: &mut IndexFile) -> &mut BTreeMap<String, Self> {
        &mut f.threads
    }
    fn current(&self) -> bool {
        self.version == INDEX_VERSION
    }
}

impl Kept for CallIndex {
    fn slot(f: &mut IndexFile) -> &mut BTreeMap<String, Self> {
        &mut f.calls
    }
    fn current(&self) -> bool {
        self.version == CALL_INDEX_VERSION
    }
}

const FORMAT: &str = "bts history index";

fn sidecar(trace: &Path) -> PathBuf {
    let mut name = trace.as_os_str().to_owned();
    name.push(".idx");
    PathBuf::from(name)
}

fn identity(trace: &Path) -> Option<(u64, u128)> {
    let m = std::fs::metadata(trace).ok()?;
    let t = m.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
    Some((m.len(), t))
}

/// The index file was made by this version for the trace as it is now.
fn is_for(f: &IndexFile, id: Option<(u64, u128)>) -> bool {
    f.format == FORMAT && f.version == INDEX_VERSION && Some((f.file_len, f.mtime_ns)) == id
}

fn key(stream: usize, keep_kernel: bool) -> String {
    format!("{stream}/{}", u8::from(keep_kernel))
}

/// What the sidecar holds: `Ok(None)` when there is none; `Err` when the
/// name is taken by something that is not an index.
fn read(path: &Path) -> Result<Option<IndexFile>, ()> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<IndexFile>(&bytes).map(Some).map_err(|_| ()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(_) => Err(()),
    }
}

/// True when an index beside `trace` was made for it as it is now (so
/// the file was read whole and checked once already). Only the header's
/// fields are taken from the file.
pub fn is_current(trace: &Path) -> bool {
    #[derive(Deserialize)]
    struct Header {
        format: String,
        version: u32,
        file_len: u64,
        mtime_ns: u128,
    }
    let Ok(bytes) = std::fs::read(sidecar(trace)) else { return false };
    let Ok(h) = serde_json::from_slice::<Header>(&bytes) else { return false };
    h.format == FORMAT && h.version == INDEX_VERSION && Some((h.file_len, h.mtime_ns)) == identity(trace)
}

/// The index of stream `stream` of `trace`, from beside it if it is there
/// and current; else `build`'s, kept beside it when that can be done
/// without replacing anything but an older index.
pub fn index_of<T: Kept>(
    trace: &Path,
    stream: usize,
    keep_kernel: bool,
    build: impl FnOnce() -> bts_reader::Result<T>,
) -> bts_reader::Result<T> {
    let mut build = Some(build);
    let mut got = indexes_of(trace, &[stream], keep_kernel, |_| build.take().expect("built once")())?;
    Ok(got.pop().expect("one index"))
}

/// The indexes of `streams` of `trace`, as `index_of` makes each, with
/// the file beside the trace read once and written at most once (an
/// export of many threads would otherwise rewrite it per thread).
/// `build(k)` makes the index of `streams[k]`. If one cannot be made, the
/// ones made before it are still kept.
pub fn indexes_of<T: Kept>(
    trace: &Path,
    streams: &[usize],
    keep_kernel: bool,
    mut build: impl FnMut(usize) -> bts_reader::Result<T>,
) -> bts_reader::Result<Vec<T>> {
    let path = sidecar(trace);
    let id = identity(trace);
    let mut existing = read(&path);
    let mut indexes = Vec::with_capacity(streams.len());
    let mut built_any = false;
    let mut failed = None;
    for (k, &stream) in streams.iter().enumerate() {
        let kept = match &mut existing {
            // Taken out, not copied: put back only if the file is written.
            Ok(Some(f)) if is_for(f, id) => {
                T::slot(f).remove(&key(stream, keep_kernel)).filter(|i| i.current())
            }
            _ => None,
        };
        let index = match kept {
            Some(i) => i,
            None => match build(k) {
                Ok(i) => {
                    built_any = true;
                    i
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            },
        };
        indexes.push(index);
    }
    if built_any {
        keep(&path, id, existing, streams, keep_kernel, &indexes);
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(indexes),
    }
}

/// Writes `indexes` (of the first streams of `streams`) into the file
/// beside the trace, with the others it held, when that replaces nothing
/// but an older index.
fn keep<T: Kept>(
    path: &Path,
    id: Option<(u64, u128)>,
    existing: Result<Option<IndexFile>, ()>,
    streams: &[usize],
    keep_kernel: bool,
    indexes: &[T],
) {
    let Some((file_len, mtime_ns)) = id else { return };
    let mut file = match existing {
        Ok(Some(f)) if is_for(&f, id) => f,
        Ok(Some(f)) if f.format != FORMAT => return,
        Ok(_) => IndexFile {
            format: FORMAT.into(),
            version: INDEX_VERSION,
            file_len,
            mtime_ns,
            threads: BTreeMap::new(),
            calls: BTreeMap::new(),
        },
        Err(()) => return,
    };
    for (&stream, index) in streams.iter().zip(indexes) {
        T::slot(&mut file).insert(key(stream, keep_kernel), index.clone());
    }
    if let Ok(bytes) = serde_json::to_vec(&file) {
        // Written aside, then put in place: a reader never sees half of it.
        let tmp = PathBuf::from(format!("{}.{}.tmp", path.display(), std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes));
        if written.is_err() || std::fs::rename(&tmp, path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}
