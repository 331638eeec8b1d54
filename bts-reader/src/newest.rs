//! The newest branches of each buffer of a trace: what a report or GDB
//! needs, from a trace of any size, in bounded memory. Each buffer is cut
//! as `bts cut --last N` cuts it ([`crate::cut`]): its newest N branches,
//! the records among them, and the context record before them (where and
//! when the task ran). A buffer of N branches or fewer is read whole.

use std::path::Path;

use crate::cut::{surveys, Cut, Keep};
use crate::tracestream::{scan, StreamAt};
use crate::{Error, Result, TraceFile};

/// [`read_newest_each`] with `total` branches over all buffers, shared
/// evenly, at least 65536 each.
pub fn read_newest(path: &Path, total: u64) -> Result<(TraceFile, Vec<u64>)> {
    let buffers = surveys(path)?;
    let each = (total / buffers.len().max(1) as u64).max(1 << 16);
    newest(path, &buffers, each)
}

/// The trace at `path` with each buffer's newest `each` branches, and, by
/// buffer, the branches left out: they are in the file, not lost (each
/// stream's `overwritten` is the file's). Every record is read and checked
/// once, and only the kept ones are held.
pub fn read_newest_each(path: &Path, each: u64) -> Result<(TraceFile, Vec<u64>)> {
    newest(path, &surveys(path)?, each)
}

fn newest(path: &Path, buffers: &[crate::cut::Survey], each: u64) -> Result<(TraceFile, Vec<u64>)> {
    let (mut tf, extents) = scan(path, false)?;
    let same = |(e, sv): (&crate::tracestream::Extent, &crate::cut::Survey)| {
        e.count == sv.branches + sv.context.len() as u64
    };
    if extents.len() != buffers.len() || !extents.iter().zip(buffers).all(same) {
        return Err(Error::Corrupt("the file changed while it was read".into()));
    }
    // No branch at all would be every branch (`Cut::Last(0)` keeps none).
    let each = each.max(1);
    let f =
        std::fs::File::open(path).map_err(|source| Error::Io { path: path.display().to_string(), source })?;
    let mut f = std::io::BufReader::with_capacity(1 << 20, f);
    let mut unread = Vec::with_capacity(buffers.len());
    for ((s, e), sv) in tf.streams.iter_mut().zip(&extents).zip(buffers) {
        let mut at = StreamAt::new(&mut f, e.data, e.count);
        match Keep::of(sv, Cut::Last(each)).filter(|k| k.branches_dropped_before > 0) {
            Some(k) => {
                if let Some(c) = k.before {
                    at.read(c, 1, &mut s.records)?;
                }
                at.read(k.lo, usize::try_from(k.hi - k.lo + 1).unwrap_or(usize::MAX), &mut s.records)?;
                unread.push(k.branches_dropped_before);
            }
            None => {
                at.read(0, usize::try_from(e.count).unwrap_or(usize::MAX), &mut s.records)?;
                unread.push(0);
            }
        }
    }
    Ok((tf, unread))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Meta, Stream, StreamKind};
    use ds_alloc::BtsRecord;

    fn arrival(clock: u64) -> BtsRecord {
        BtsRecord::context(ds_alloc::ContextKind::TaskArrives, clock, 1)
    }

    /// Three buffers: short, long with arrivals, long without.
    fn trace() -> TraceFile {
        let branch = |i: u64| BtsRecord::branch(0x1000 + i, 0x2000 + i);
        let thread = |tid, records: Vec<BtsRecord>| Stream {
            kind: StreamKind::Thread { pid: 1, generation: 1, tid, crashed: false, last_pc: None },
            capacity: records.len() as u64,
            overwritten: 5,
            lost: 0,
            records,
        };
        let mut with_arrivals = Vec::new();
        for i in 0..70_000u64 {
            if i % 1000 == 0 {
                with_arrivals.push(arrival(i));
            }
            with_arrivals.push(branch(i));
        }
        TraceFile {
            meta: Meta { pid: 1, ..Meta::default() },
            streams: vec![
                thread(1, vec![arrival(0), branch(0), branch(1)]),
                thread(2, with_arrivals),
                thread(3, (0..70_000).map(branch).collect()),
            ],
            ..TraceFile::default()
        }
    }

    #[test]
    fn each_buffer_keeps_its_newest_branches_and_the_arrival_before_them() {
        let tf = trace();
        let dir = std::env::temp_dir().join(format!("bts-newest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.bts");
        std::fs::write(&path, tf.to_bytes()).unwrap();
        let branches = |s: &Stream| s.records.iter().filter(|r| r.is_branch()).copied().collect::<Vec<_>>();

        let (got, unread) = read_newest_each(&path, 2500).unwrap();
        assert_eq!(got.streams[0].records, tf.streams[0].records, "a short buffer whole");
        let want = branches(&tf.streams[1]);
        assert_eq!(branches(&got.streams[1]), want[70_000 - 2500..]);
        // The arrival before branch 67500 is the one at 67000.
        assert_eq!(got.streams[1].records[0], arrival(67_000));
        assert_eq!(got.streams[1].records.len(), 2500 + 3, "the arrival before, and two among them");
        assert_eq!(got.streams[2].records, tf.streams[2].records[70_000 - 2500..]);
        assert_eq!(unread, [0, 70_000 - 2500, 70_000 - 2500], "branches, not records");
        assert!(got.streams.iter().all(|s| s.overwritten == 5), "the file's own");

        let (got, unread) = read_newest(&path, 0).unwrap();
        assert_eq!(branches(&got.streams[2]).len(), 65536, "at least 65536 a buffer");
        assert_eq!(unread[2], 70_000 - 65536);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
