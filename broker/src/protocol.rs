//! The wire protocol between `bts daemon` and its clients.
//!
//! A frame is a 4-byte little-endian length, then that many bytes of one
//! message encoded with `postcard` (serde's compact binary codec: varints,
//! no field names, a documented and stable wire format, and a decoder that
//! never panics on hostile input). The first request of a connection is
//! [`Request::Hello`] with [`VERSION`]; the daemon answers with its own
//! and drops a client that speaks another version.
//!
//! Requests are small ([`MAX_REQUEST`]); replies carry traces and records
//! and may be large ([`MAX_REPLY`]). Events ([`Reply::Crash`],
//! [`Reply::Ended`], [`Reply::Notice`]) arrive between replies at any
//! time; every other reply answers the oldest request not yet answered.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The protocol's version.
pub const VERSION: u16 = 1;
/// The largest request frame the daemon reads.
pub const MAX_REQUEST: usize = 64 * 1024;
/// The largest reply frame a client reads (the most a length says).
pub const MAX_REPLY: usize = u32::MAX as usize;
/// The largest buffer a client may ask for per thread.
pub const MAX_BUFFER: u64 = 1 << 30;

/// Errors of the framing and the codec.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The peer closed the connection between frames.
    #[error("the connection was closed")]
    Closed,
    /// Reading or writing failed (a timeout too).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A frame longer than allowed.
    #[error("a frame of {len} bytes is over the limit of {max}")]
    TooLong {
        /// The length the frame declared.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a message.
    #[error("malformed message: {0}")]
    Malformed(#[from] postcard::Error),
}

/// The recorder a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireBackend {
    /// One ptrace stop per branch.
    Fast,
    /// Single-step every instruction.
    Step,
    /// Hardware BTS through perf.
    Perf,
}

/// What a PEBS request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireTarget {
    /// A process the client traces.
    Task(i32),
    /// A CPU.
    Cpu(u32),
}

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The first request: the client's protocol version and a name for listings.
    Hello {
        /// [`VERSION`].
        version: u16,
        /// What the client calls itself ("bts attach").
        name: String,
    },
    /// Trace process `pid`: a buffer of `buffer_bytes` on each of its threads.
    Attach {
        /// The process.
        pid: i32,
        /// Bytes per thread.
        buffer_bytes: u64,
        /// The recorder, if the daemon starts tracing the process now.
        backend: WireBackend,
        /// Pin the traced threads to one CPU (if the daemon starts tracing now).
        pin_cpu: bool,
        /// Stack bytes kept per thread in a crash's trace.
        stack_bytes: u64,
        /// The client launched it and waits for its exec: the buffers
        /// start empty at the exec.
        from_exec: bool,
    },
    /// Stop tracing `pid`; the daemon detaches when no tracer is left.
    Detach {
        /// The process.
        pid: i32,
    },
    /// A `.bts` of what the client holds of `pid` now.
    Snapshot {
        /// The process.
        pid: i32,
    },
    /// Empty the client's buffers of `pid`.
    Clear {
        /// The process.
        pid: i32,
    },
    /// Every record of the client's buffer of thread `tid`, oldest first,
    /// then empty it.
    Drain {
        /// The thread.
        tid: i32,
    },
    /// A legacy `PTRACE_BTS_*` request, as `ptrace(request, task, addr, data)`.
    Legacy {
        /// 40 (CONFIG) to 45 (DRAIN).
        request: u32,
        /// The thread.
        task: u32,
        /// GET's index.
        addr: u64,
        /// CONFIG's struct.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Own PEBS on a target.
    RequestPebs {
        /// The target.
        target: WireTarget,
        /// The record format (`PERF_CAPABILITIES` bits 8-11; 4 and up adaptive).
        format: u8,
        /// Counter reset value.
        reset: u64,
        /// Records the buffer holds.
        records: u32,
    },
    /// Give PEBS on a target up.
    ReleasePebs {
        /// The target.
        target: WireTarget,
    },
    /// Tracers, buffers and tasks, as far as the client may see them.
    List,
    /// A catch-all buffer of `bytes` on CPU `cpu`: the branches of traced
    /// tasks that no tracer follows, seen on that CPU (needs the right to
    /// watch a whole CPU).
    CpuBuffer {
        /// The CPU.
        cpu: u32,
        /// Bytes (the kernel slack comes on top).
        bytes: u64,
    },
    /// Every record of the client's catch-all buffer of `cpu`, oldest
    /// first, then empty it.
    DrainCpu {
        /// The CPU.
        cpu: u32,
    },
}

/// How a traced process ended, for [`Reply::Ended`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireOutcome {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
    /// The daemon detached (it was stopped, or tracing failed); the process runs on.
    Detached,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The client may not do that (the kernel's rules).
    Denied,
    /// No such process or thread, or not one the client traces.
    NotFound,
    /// The locked-memory limit, or a size.
    Limit,
    /// PEBS is owned by another client.
    Busy,
    /// The request makes no sense.
    Invalid,
    /// The daemon failed.
    Failed,
}

/// One buffer, in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferRow {
    /// Process.
    pub pid: i32,
    /// Thread.
    pub tid: u32,
    /// Bytes, with the kernel slack.
    pub bytes: u64,
    /// Records held.
    pub records: u64,
    /// Records written since made or emptied.
    pub written: u64,
    /// Takes no records (its thread ended).
    pub suspended: bool,
}

/// One tracer, in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracerRow {
    /// The daemon's number for the client.
    pub id: u64,
    /// The client's name.
    pub name: String,
    /// The client process.
    pub client_pid: i32,
    /// Its uid.
    pub uid: u32,
    /// Bytes charged.
    pub charged_bytes: u64,
    /// Its RLIMIT_MEMLOCK (`u64::MAX`: CAP_IPC_LOCK, not limited).
    pub limit_bytes: u64,
    /// Processes it traces.
    pub processes: Vec<i32>,
    /// Its buffers.
    pub buffers: Vec<BufferRow>,
    /// PEBS it owns.
    pub pebs: Vec<WireTarget>,
    /// Its catch-all buffers, by CPU (`tid` is the CPU, `pid` -1).
    pub cpus: Vec<BufferRow>,
}

/// One traced process, in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRow {
    /// The process.
    pub pid: i32,
    /// Its command line.
    pub command: Vec<String>,
    /// The recorder.
    pub backend: String,
    /// The ids of its tracers.
    pub tracers: Vec<u64>,
}

/// What `List` answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    /// The daemon's pid.
    pub daemon_pid: u32,
    /// The tracers the client may see (all of them for root, its own uid's otherwise).
    pub tracers: Vec<TracerRow>,
    /// The processes traced.
    pub tasks: Vec<TaskRow>,
}

/// What the daemon sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The answer to Hello.
    Hello {
        /// [`VERSION`].
        version: u16,
        /// The daemon's pid.
        daemon_pid: u32,
        /// The client's id in listings.
        id: u64,
    },
    /// Done.
    Ok,
    /// Attached (or joined the tracers of a traced process).
    Attached {
        /// The process.
        pid: i32,
        /// Its command line.
        command: Vec<String>,
        /// The recorder that records it.
        backend: String,
        /// Another client traced it already.
        joined: bool,
    },
    /// The request failed.
    Error {
        /// Why, for programs.
        kind: ErrorKind,
        /// Why, for people.
        message: String,
    },
    /// A `.bts` file.
    Trace(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Raw 24-byte BTS records, oldest first.
    Records(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A legacy request's value and output bytes.
    Legacy {
        /// What `ptrace` returned.
        value: i64,
        /// What it wrote to `data`.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The listing.
    List(Listing),
    /// Event: a traced process is held at a fatal signal; the client's trace of it.
    Crash {
        /// The process.
        pid: i32,
        /// The `.bts` file.
        #[serde(with = "serde_bytes")]
        trace: Vec<u8>,
    },
    /// Event: tracing of `pid` ended; the client's trace of it.
    Ended {
        /// The process.
        pid: i32,
        /// How.
        outcome: WireOutcome,
        /// The `.bts` file.
        #[serde(with = "serde_bytes")]
        trace: Vec<u8>,
    },
    /// Event: something the client should know that stops nothing.
    Notice {
        /// The process.
        pid: i32,
        /// What.
        message: String,
    },
}

impl Reply {
    /// True for the messages that come unasked.
    pub fn is_event(&self) -> bool {
        matches!(self, Reply::Crash { .. } | Reply::Ended { .. } | Reply::Notice { .. })
    }

    /// An error reply.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Reply {
        Reply::Error { kind, message: message.into() }
    }
}

/// Encodes a message as one frame.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtocolError> {
    let mut frame = postcard::to_extend(msg, vec![0u8; 4])?;
    let len = u32::try_from(frame.len() - 4)
        .map_err(|_| ProtocolError::TooLong { len: frame.len(), max: u32::MAX as usize })?;
    frame[..4].copy_from_slice(&len.to_le_bytes());
    Ok(frame)
}

/// The postcard heads of the bulk replies (their variant tags, records'
/// then a trace's), found once by encoding each variant empty: the tag,
/// then the length 0 as one varint byte.
fn bulk_tags() -> (u8, u8) {
    static TAGS: std::sync::OnceLock<(u8, u8)> = std::sync::OnceLock::new();
    *TAGS.get_or_init(|| {
        let tag = |empty: Reply| {
            let bytes = postcard::to_stdvec(&empty).expect("an empty reply encodes");
            debug_assert_eq!(bytes.len(), 2, "a one-byte tag and a zero length");
            bytes[0]
        };
        (tag(Reply::Records(Vec::new())), tag(Reply::Trace(Vec::new())))
    })
}

/// Waits for the first byte of a frame: [`ProtocolError::Closed`] when the
/// peer closed the connection between frames (a signal's EINTR is waited
/// through: bts's own interval timer ticks while it waits).
fn first_byte(r: &mut impl Read, b: &mut [u8]) -> Result<(), ProtocolError> {
    loop {
        match r.read(&mut b[..1]) {
            Ok(0) => return Err(ProtocolError::Closed),
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// An empty vector with room for `n` bytes, its memory already mapped
/// when it is large: faulting 64 MiB in page by page costs about 60 ms under
/// a hypervisor (one exit per 4 KiB page), longer than the copy itself;
/// MADV_POPULATE_WRITE (Linux 5.14) maps it in one call, in about half the time.
pub(crate) fn bulk_buffer(n: usize) -> Vec<u8> {
    const MADV_POPULATE_WRITE: libc::c_int = 23;
    let v: Vec<u8> = Vec::with_capacity(n);
    if n >= 1 << 20 {
        let start = (v.as_ptr() as usize).next_multiple_of(4096);
        let end = (v.as_ptr() as usize + n) & !4095;
        if end > start {
            // SAFETY: the range lies inside the vector's own allocation and
            // is page-aligned; populating only maps its pages in (an older
            // kernel refuses with EINVAL, and they fault in as they are written).
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, MADV_POPULATE_WRITE) };
        }
    }
    v
}

fn varint(mut n: usize, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Writes a reply as one frame. The bytes of a bulk reply (records, a
/// trace) go out as they are, not copied into the frame first: draining a
/// large buffer costs one copy of it in the daemon, not three.
pub fn write_reply(w: &mut impl Write, msg: &Reply) -> Result<(), ProtocolError> {
    match msg {
        Reply::Records(d) => write_bulk(w, bulk_tags().0, &[d]),
        Reply::Trace(d) => write_bulk(w, bulk_tags().1, &[d]),
        other => write_msg(w, other),
    }
}

/// Writes a [`Reply::Records`] frame whose bytes come in pieces (a
/// ring buffer's two halves), straight from where they lie.
pub fn write_records(w: &mut impl Write, pieces: &[&[u8]]) -> Result<(), ProtocolError> {
    write_bulk(w, bulk_tags().0, pieces)
}

fn write_bulk(w: &mut impl Write, tag: u8, pieces: &[&[u8]]) -> Result<(), ProtocolError> {
    let n: usize = pieces.iter().map(|p| p.len()).sum();
    let mut head = vec![0u8; 4];
    head.push(tag);
    varint(n, &mut head);
    let len = head.len() - 4 + n;
    let len = u32::try_from(len).map_err(|_| ProtocolError::TooLong { len, max: u32::MAX as usize })?;
    head[..4].copy_from_slice(&len.to_le_bytes());
    w.write_all(&head)?;
    for p in pieces {
        w.write_all(p)?;
    }
    Ok(())
}

/// Reads one reply frame of at most `max` bytes. A bulk reply's bytes are
/// read straight into their own vector (no second copy).
pub fn read_reply(r: &mut impl Read, max: usize) -> Result<Reply, ProtocolError> {
    read_reply_reusing(r, max, &mut Vec::new())
}

/// [`read_reply`], with the bytes of a bulk reply read into `spare` when it
/// has room enough (a client that drains again and again faults its
/// memory in once).
pub fn read_reply_reusing(
    r: &mut impl Read,
    max: usize,
    spare: &mut Vec<u8>,
) -> Result<Reply, ProtocolError> {
    let len = read_len(r, max)?;
    let mut pre = [0u8; 11];
    let have = len.min(pre.len());
    r.read_exact(&mut pre[..have])?;
    let (records_tag, trace_tag) = bulk_tags();
    let bulk = [(records_tag, true), (trace_tag, false)].into_iter().find(|(t, _)| have > 1 && pre[0] == *t);
    if let Some((_, records)) = bulk {
        // The varint length after the tag.
        let (mut n, mut shift, mut at) = (0usize, 0u32, 1usize);
        while at < have && shift < 64 {
            n |= ((pre[at] & 0x7f) as usize) << shift;
            shift += 7;
            at += 1;
            if pre[at - 1] & 0x80 == 0 {
                break;
            }
        }
        if pre[at - 1] & 0x80 == 0 && at.checked_add(n) == Some(len) {
            let mut data = if spare.capacity() >= n { std::mem::take(spare) } else { bulk_buffer(n) };
            data.clear();
            data.extend_from_slice(&pre[at..have]);
            let rest = (len - have) as u64;
            if r.take(rest).read_to_end(&mut data)? as u64 != rest {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
            return Ok(if records { Reply::Records(data) } else { Reply::Trace(data) });
        }
    }
    let mut payload = vec![0u8; len];
    payload[..have].copy_from_slice(&pre[..have]);
    r.read_exact(&mut payload[have..])?;
    decode_reply(&payload)
}

/// Decodes a request from a frame's payload. The fuzzed entry point.
pub fn decode_request(payload: &[u8]) -> Result<Request, ProtocolError> {
    Ok(postcard::from_bytes(payload)?)
}

/// Decodes a reply from a frame's payload.
pub fn decode_reply(payload: &[u8]) -> Result<Reply, ProtocolError> {
    Ok(postcard::from_bytes(payload)?)
}

/// Writes one message.
pub fn write_msg<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), ProtocolError> {
    w.write_all(&encode(msg)?)?;
    Ok(())
}

/// A frame's length from its 4-byte head, refused beyond `max`.
fn frame_len(head: [u8; 4], max: usize) -> Result<usize, ProtocolError> {
    let len = u32::from_le_bytes(head) as usize;
    if len > max {
        return Err(ProtocolError::TooLong { len, max });
    }
    Ok(len)
}

/// Reads a frame's head: its length, refused beyond `max`. A connection
/// closed before the first byte is [`ProtocolError::Closed`].
fn read_len(r: &mut impl Read, max: usize) -> Result<usize, ProtocolError> {
    let mut head = [0u8; 4];
    first_byte(r, &mut head)?;
    r.read_exact(&mut head[1..])?;
    frame_len(head, max)
}

/// Reads one frame's payload, at most `max` bytes. A connection closed
/// before the first byte is [`ProtocolError::Closed`].
pub fn read_frame(r: &mut impl Read, max: usize) -> Result<Vec<u8>, ProtocolError> {
    let len = read_len(r, max)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(payload)
}

/// Reads one request frame from a client that may stay idle between
/// requests as long as it likes, but must send a frame it began within
/// `timeout` (a slow client is cut off, not waited for).
pub fn read_request(
    s: &std::os::unix::net::UnixStream,
    timeout: std::time::Duration,
) -> Result<Vec<u8>, ProtocolError> {
    s.set_read_timeout(None)?;
    let mut head = [0u8; 4];
    first_byte(&mut &*s, &mut head)?;
    // The whole rest of the frame within `timeout`, however it trickles in.
    let deadline = std::time::Instant::now() + timeout;
    read_by(s, &mut head[1..], deadline)?;
    let len = frame_len(head, MAX_REQUEST)?;
    let mut payload = vec![0u8; len];
    read_by(s, &mut payload, deadline)?;
    Ok(payload)
}

/// Fills `buf` from `s` before `deadline`.
fn read_by(
    s: &std::os::unix::net::UnixStream,
    buf: &mut [u8],
    deadline: std::time::Instant,
) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        s.set_read_timeout(Some(left))?;
        match (&*s).read(&mut buf[got..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let req = Request::Legacy { request: 40, task: 7, addr: 0, data: vec![1, 2, 3] };
        let frame = encode(&req).unwrap();
        assert_eq!(u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize, frame.len() - 4);
        let payload = read_frame(&mut &frame[..], MAX_REQUEST).unwrap();
        assert_eq!(decode_request(&payload).unwrap(), req);
        let big = Reply::Records(vec![7u8; 1 << 20]);
        let frame = encode(&big).unwrap();
        assert!(frame.len() < (1 << 20) + 16, "bytes are sent as bytes, not one varint each");
        assert_eq!(decode_reply(&read_frame(&mut &frame[..], MAX_REPLY).unwrap()).unwrap(), big);
    }

    #[test]
    fn bulk_replies_are_plain_postcard_frames() {
        for reply in [
            Reply::Records(vec![9u8; 300]),
            Reply::Trace(vec![]),
            Reply::Trace(vec![1, 2, 3]),
            Reply::Ok,
            Reply::Notice { pid: 1, message: "x".into() },
        ] {
            let mut fast = Vec::new();
            write_reply(&mut fast, &reply).unwrap();
            assert_eq!(fast, encode(&reply).unwrap(), "{reply:?}");
            assert_eq!(read_reply(&mut &fast[..], MAX_REPLY).unwrap(), reply);
        }
        let mut cut = Vec::new();
        write_reply(&mut cut, &Reply::Records(vec![1u8; 100])).unwrap();
        let mut pieces = Vec::new();
        write_records(&mut pieces, &[&[1, 2], &[], &[3]]).unwrap();
        assert_eq!(pieces, encode(&Reply::Records(vec![1, 2, 3])).unwrap());
        cut.truncate(50);
        assert!(read_reply(&mut &cut[..], MAX_REPLY).is_err());
    }

    #[test]
    fn hostile_frames_are_errors() {
        let mut long = (MAX_REQUEST as u32 + 1).to_le_bytes().to_vec();
        long.extend([0u8; 16]);
        assert!(matches!(read_frame(&mut &long[..], MAX_REQUEST), Err(ProtocolError::TooLong { .. })));
        assert!(matches!(read_frame(&mut &[][..], MAX_REQUEST), Err(ProtocolError::Closed)));
        assert!(matches!(read_frame(&mut &[5u8, 0][..], MAX_REQUEST), Err(ProtocolError::Io(_))));
        assert!(matches!(read_frame(&mut &[9, 0, 0, 0, 1][..], MAX_REQUEST), Err(ProtocolError::Io(_))));
        for garbage in [&[0xffu8; 12][..], &[200, 1], &[3, 0xff, 0xff, 0xff, 0xff, 0xff], &[]] {
            assert!(decode_request(garbage).is_err(), "{garbage:?}");
        }
    }
}
