//! Which threads a command shows. One rule for the report, the history and
//! the exports: a thread asked for by id is its newest image; otherwise the
//! image of the crashed thread, else the newest image of the first process.

use bts_reader::{Stream, StreamKind, TraceFile};

use crate::Error;

fn image_key(s: &Stream) -> Option<(i32, u32)> {
    match s.kind {
        StreamKind::Thread { pid, generation, .. } => Some((pid, generation)),
        StreamKind::Cpu { .. } => None,
    }
}

fn is_crashed(s: &Stream) -> bool {
    matches!(s.kind, StreamKind::Thread { crashed: true, .. })
}

fn is_tid(s: &Stream, tid: i32) -> bool {
    matches!(s.kind, StreamKind::Thread { tid: t, .. } if t == tid)
}

/// The newest stream of thread `tid`.
pub fn thread(tf: &TraceFile, tid: i32) -> Option<&Stream> {
    tf.thread_streams().filter(|s| is_tid(s, tid)).last()
}

/// The image (process, exec generation) the trace is about: the crashed
/// thread's, else the newest image of the first process.
pub fn default_image(tf: &TraceFile) -> Option<(i32, u32)> {
    match tf.thread_streams().find(|s| is_crashed(s)) {
        Some(s) => image_key(s),
        None => tf
            .thread_streams()
            .filter(|s| matches!(s.kind, StreamKind::Thread { pid, .. } if pid == tf.meta.pid))
            .filter_map(image_key)
            .max_by_key(|k| k.1),
    }
}

/// The one thread a command works on: `tid`'s newest image, else the
/// crashed thread, else the first process's main thread, else the first.
pub fn one_thread(tf: &TraceFile, tid: Option<i32>) -> Result<&Stream, Error> {
    let found = match tid {
        Some(t) => thread(tf, t),
        None => tf
            .thread_streams()
            .find(|s| is_crashed(s))
            .or_else(|| thread(tf, tf.meta.pid))
            .or_else(|| tf.thread_streams().next()),
    };
    match (found, tid) {
        (Some(s), _) => Ok(s),
        (None, Some(t)) => Err(Error::NoSuchThread { tid: t }),
        (None, None) => Err(Error::NoThreads),
    }
}

/// The streams a report shows: `cpu`'s catch-all buffer, or thread `tid`,
/// or every thread of the default image.
pub fn report_streams(tf: &TraceFile, tid: Option<i32>, cpu: Option<u32>) -> Vec<&Stream> {
    if let Some(cpu) = cpu {
        return tf.streams.iter().filter(|s| s.kind == StreamKind::Cpu { cpu }).collect();
    }
    if let Some(tid) = tid {
        return thread(tf, tid).into_iter().collect();
    }
    let image = default_image(tf);
    tf.thread_streams().filter(|s| image.is_some() && image_key(s) == image).collect()
}

/// The streams an export covers: thread `tid`, or every thread.
pub fn export_streams(tf: &TraceFile, tid: Option<i32>) -> Result<Vec<&Stream>, Error> {
    match tid {
        Some(_) => Ok(vec![one_thread(tf, tid)?]),
        None => Ok(tf.thread_streams().collect()),
    }
}
