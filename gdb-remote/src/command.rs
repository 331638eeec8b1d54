//! The packets GDB sends, parsed. Parsing is total: anything that is not
//! understood becomes [`Command::Unknown`] (answered with an empty packet,
//! as the protocol asks), and a malformed argument [`Command::Malformed`]
//! (answered with an error). Nothing here panics on any input.

/// A thread as GDB names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadId {
    /// `-1`: all threads.
    All,
    /// `0`: any thread.
    Any,
    /// One thread (its tid).
    Id(i32),
}

/// Which part of the branch trace `qXfer:btrace:read` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BtraceRead {
    /// The whole trace.
    All,
    /// The whole trace, if it changed since the last read.
    New,
    /// What is new since the last read.
    Delta,
}

/// An action of `vCont`, `c`, `s` and their signal forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Continue (with a signal).
    Continue(Option<u8>),
    /// Step one instruction (with a signal).
    Step(Option<u8>),
    /// Stop.
    Stop,
}

/// One packet from GDB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `qSupported[:features]`.
    Supported,
    /// `QStartNoAckMode`.
    StartNoAckMode,
    /// `!`: extended mode.
    Extended,
    /// `?`: why the target stopped.
    StopReason,
    /// `Hg`/`Hc`: the thread for registers (`general`) or resuming.
    SetThread {
        /// `g` (true) or `c`.
        general: bool,
        /// The thread.
        thread: ThreadId,
    },
    /// `qC`: the current thread.
    CurrentThread,
    /// `qfThreadInfo`.
    ThreadsFirst,
    /// `qsThreadInfo`.
    ThreadsNext,
    /// `T<thread>`: is it alive?
    ThreadAlive(ThreadId),
    /// `g`.
    ReadRegisters,
    /// `p<n>`.
    ReadRegister(usize),
    /// `G`: all registers at once (answered: use `P`).
    WriteRegisters,
    /// `P<n>=<value>`: one register, its bytes in target order.
    WriteRegister {
        /// GDB's number of the register.
        n: usize,
        /// Its new bytes.
        bytes: Vec<u8>,
    },
    /// `m<addr>,<len>`.
    ReadMemory {
        /// Where.
        addr: u64,
        /// How many bytes.
        len: usize,
    },
    /// `M`/`X`: memory writes.
    WriteMemory {
        /// Where.
        addr: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// `qXfer:<object>:read:<annex>:<offset>,<length>`.
    XferRead {
        /// `features`, `btrace`, `btrace-conf`, `exec-file`, `libraries-svr4`, `auxv`…
        object: String,
        /// Its annex.
        annex: String,
        /// Offset in the document.
        offset: usize,
        /// At most this many bytes.
        len: usize,
    },
    /// `Qbtrace:bts`, `Qbtrace:pt`, `Qbtrace:off`.
    Btrace(String),
    /// `Qbtrace-conf:bts:size=<n>`.
    BtraceConfSize(u64),
    /// `vCont?`.
    VContQuery,
    /// `vCont;…`, `c`, `s`, `C`, `S`: the first action, the thread it
    /// names (none: every thread, or the one `Hc` chose), and whether the
    /// other threads continue meanwhile (`vCont;s:T;c`).
    Resume(Action, Option<ThreadId>, bool),
    /// `Z<type>,<addr>,<kind>` (insert) and `z…` (remove).
    Breakpoint {
        /// Insert (true) or remove.
        insert: bool,
        /// 0 software, 1 hardware, 2-4 watchpoints.
        kind: u8,
        /// Where.
        addr: u64,
    },
    /// `qRcmd,<hex>`: a `monitor` command.
    Monitor(String),
    /// `D`: detach.
    Detach,
    /// `k`: kill.
    Kill,
    /// Understood but with an argument that is not.
    Malformed(&'static str),
    /// Not understood.
    Unknown,
}

/// A hexadecimal number of at most 16 digits.
pub fn parse_hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let mut v = 0u64;
    for &b in s {
        let d = (b as char).to_digit(16)?;
        v = v << 4 | u64::from(d);
    }
    Some(v)
}

/// Decodes hex-encoded bytes (`qRcmd`, `M`).
pub fn decode_hex(s: &[u8]) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks(2).map(|c| parse_hex(c).map(|v| v as u8)).collect()
}

fn thread_id(s: &[u8]) -> Option<ThreadId> {
    // Multiprocess form `p<pid>.<tid>`: the tid is what names a thread here.
    let s = match s.strip_prefix(b"p") {
        Some(rest) => match rest.iter().position(|&b| b == b'.') {
            Some(dot) => &rest[dot + 1..],
            None => rest,
        },
        None => s,
    };
    match s {
        b"-1" => Some(ThreadId::All),
        b"0" => Some(ThreadId::Any),
        _ => parse_hex(s).and_then(|v| i32::try_from(v).ok()).map(ThreadId::Id),
    }
}

fn addr_len(s: &[u8]) -> Option<(u64, usize)> {
    let comma = s.iter().position(|&b| b == b',')?;
    let addr = parse_hex(&s[..comma])?;
    let len = usize::try_from(parse_hex(&s[comma + 1..])?).ok()?;
    Some((addr, len))
}

fn signal(s: &[u8]) -> Option<u8> {
    parse_hex(s.get(..2)?).map(|v| v as u8)
}

fn xfer(rest: &[u8]) -> Command {
    // <object>:read:<annex>:<offset>,<length>
    let parts: Vec<&[u8]> = rest.splitn(4, |&b| b == b':').collect();
    let [object, op, annex, range] = parts[..] else { return Command::Malformed("qXfer") };
    if op != b"read" {
        return Command::Unknown;
    }
    match addr_len(range) {
        Some((offset, len)) => match usize::try_from(offset) {
            Ok(offset) => Command::XferRead {
                object: String::from_utf8_lossy(object).into_owned(),
                annex: String::from_utf8_lossy(annex).into_owned(),
                offset,
                len,
            },
            Err(_) => Command::Malformed("qXfer offset"),
        },
        None => Command::Malformed("qXfer range"),
    }
}

fn vcont(rest: &[u8]) -> Command {
    // ;action[:thread]… — the first action is the one for the thread GDB
    // resumes; a stop-only vCont (;t) stops.
    if let Some(item) = rest.split(|&b| b == b';').find(|s| !s.is_empty()) {
        let mut parts = item.splitn(2, |&b| b == b':');
        let action = parts.next().unwrap_or(&[]);
        let thread = match parts.next() {
            Some(t) => match thread_id(t) {
                Some(t) => Some(t),
                None => return Command::Malformed("vCont thread"),
            },
            None => None,
        };
        let a = match action.first() {
            Some(b'c') => Action::Continue(None),
            Some(b'C') => Action::Continue(signal(&action[1..])),
            Some(b's') => Action::Step(None),
            Some(b'S') => Action::Step(signal(&action[1..])),
            Some(b't') => Action::Stop,
            _ => return Command::Malformed("vCont action"),
        };
        // A later bare `c` lets the other threads run while this one steps.
        let others = rest
            .split(|&b| b == b';')
            .filter(|s| !s.is_empty())
            .skip(1)
            .any(|item| item.first() == Some(&b'c') && !item.contains(&b':'));
        return Command::Resume(a, thread, others);
    }
    Command::Malformed("vCont")
}

impl Command {
    /// Parses one packet's payload.
    pub fn parse(p: &[u8]) -> Command {
        let Some(&first) = p.first() else { return Command::Unknown };
        let rest = &p[1..];
        match first {
            b'?' => Command::StopReason,
            b'!' => Command::Extended,
            b'g' if rest.is_empty() => Command::ReadRegisters,
            b'G' => Command::WriteRegisters,
            b'P' => {
                let Some(eq) = rest.iter().position(|&b| b == b'=') else { return Command::Malformed("P") };
                match (
                    parse_hex(&rest[..eq]).and_then(|n| usize::try_from(n).ok()),
                    decode_hex(&rest[eq + 1..]),
                ) {
                    (Some(n), Some(bytes)) => Command::WriteRegister { n, bytes },
                    _ => Command::Malformed("P"),
                }
            }
            b'p' => match parse_hex(rest).and_then(|v| usize::try_from(v).ok()) {
                Some(n) => Command::ReadRegister(n),
                None => Command::Malformed("p"),
            },
            b'm' => match addr_len(rest) {
                Some((addr, len)) => Command::ReadMemory { addr, len },
                None => Command::Malformed("m"),
            },
            b'M' | b'X' => {
                let Some(colon) = rest.iter().position(|&b| b == b':') else {
                    return Command::Malformed("memory write");
                };
                let Some((addr, len)) = addr_len(&rest[..colon]) else {
                    return Command::Malformed("memory write");
                };
                let raw = &rest[colon + 1..];
                let data = if first == b'M' { decode_hex(raw) } else { Some(crate::packet::unescape(raw)) };
                match data {
                    Some(d) if d.len() == len => Command::WriteMemory { addr, data: d },
                    _ => Command::Malformed("memory write"),
                }
            }
            b'H' => match (rest.first(), thread_id(rest.get(1..).unwrap_or(&[]))) {
                (Some(b'g'), Some(t)) => Command::SetThread { general: true, thread: t },
                (Some(b'c'), Some(t)) => Command::SetThread { general: false, thread: t },
                _ => Command::Malformed("H"),
            },
            b'T' => match thread_id(rest) {
                Some(t) => Command::ThreadAlive(t),
                None => Command::Malformed("T"),
            },
            b'c' => Command::Resume(Action::Continue(None), None, false),
            b's' => Command::Resume(Action::Step(None), None, false),
            b'C' => Command::Resume(Action::Continue(signal(rest)), None, false),
            b'S' => Command::Resume(Action::Step(signal(rest)), None, false),
            b'D' => Command::Detach,
            b'k' => Command::Kill,
            b'Z' | b'z' => {
                let parts: Vec<&[u8]> = rest.split(|&b| b == b',').collect();
                match parts[..] {
                    [kind, addr, _size, ..] => match (parse_hex(kind), parse_hex(addr)) {
                        (Some(k), Some(a)) if k <= 4 => {
                            Command::Breakpoint { insert: first == b'Z', kind: k as u8, addr: a }
                        }
                        _ => Command::Malformed("Z"),
                    },
                    _ => Command::Malformed("Z"),
                }
            }
            _ => Self::parse_named(p),
        }
    }

    fn parse_named(p: &[u8]) -> Command {
        if p == b"qSupported" || p.starts_with(b"qSupported:") {
            Command::Supported
        } else if p == b"QStartNoAckMode" {
            Command::StartNoAckMode
        } else if p == b"qC" {
            Command::CurrentThread
        } else if p == b"qfThreadInfo" {
            Command::ThreadsFirst
        } else if p == b"qsThreadInfo" {
            Command::ThreadsNext
        } else if p == b"vCont?" {
            Command::VContQuery
        } else if let Some(rest) = p.strip_prefix(b"vCont") {
            vcont(rest)
        } else if let Some(rest) = p.strip_prefix(b"qXfer:") {
            xfer(rest)
        } else if let Some(rest) = p.strip_prefix(b"Qbtrace-conf:bts:size=") {
            match parse_hex(rest.strip_prefix(b"0x").unwrap_or(rest)) {
                Some(v) => Command::BtraceConfSize(v),
                None => Command::Malformed("Qbtrace-conf"),
            }
        } else if let Some(rest) = p.strip_prefix(b"Qbtrace:") {
            Command::Btrace(String::from_utf8_lossy(rest).into_owned())
        } else if let Some(rest) = p.strip_prefix(b"qRcmd,") {
            match decode_hex(rest) {
                Some(b) => Command::Monitor(String::from_utf8_lossy(&b).into_owned()),
                None => Command::Malformed("qRcmd"),
            }
        } else if let Some(rest) = p.strip_prefix(b"D;") {
            // Multiprocess detach names the process; there is one here.
            let _ = rest;
            Command::Detach
        } else {
            Command::Unknown
        }
    }
}

/// The `annex` of `qXfer:btrace:read` as a read kind.
pub fn btrace_read(annex: &str) -> Option<BtraceRead> {
    match annex {
        "all" => Some(BtraceRead::All),
        "new" => Some(BtraceRead::New),
        "delta" => Some(BtraceRead::Delta),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_gdb_sends() {
        assert_eq!(Command::parse(b"qSupported:multiprocess+;xmlRegisters=i386"), Command::Supported);
        assert_eq!(Command::parse(b"Hg1f"), Command::SetThread { general: true, thread: ThreadId::Id(0x1f) });
        assert_eq!(Command::parse(b"Hc-1"), Command::SetThread { general: false, thread: ThreadId::All });
        assert_eq!(
            Command::parse(b"Hgp10.11"),
            Command::SetThread { general: true, thread: ThreadId::Id(0x11) }
        );
        assert_eq!(Command::parse(b"m7ffe0010,40"), Command::ReadMemory { addr: 0x7ffe0010, len: 0x40 });
        assert_eq!(Command::parse(b"p10"), Command::ReadRegister(16));
        assert_eq!(
            Command::parse(b"P10=3412000000000000"),
            Command::WriteRegister { n: 16, bytes: vec![0x34, 0x12, 0, 0, 0, 0, 0, 0] }
        );
        assert_eq!(Command::parse(b"P10=zz"), Command::Malformed("P"));
        assert_eq!(
            Command::parse(b"qXfer:btrace:read:delta:0,fff"),
            Command::XferRead { object: "btrace".into(), annex: "delta".into(), offset: 0, len: 0xfff }
        );
        assert_eq!(
            Command::parse(b"qXfer:features:read:target.xml:7fd,ffb"),
            Command::XferRead {
                object: "features".into(),
                annex: "target.xml".into(),
                offset: 0x7fd,
                len: 0xffb
            }
        );
        assert_eq!(Command::parse(b"Qbtrace:bts"), Command::Btrace("bts".into()));
        assert_eq!(Command::parse(b"Qbtrace-conf:bts:size=0x10000"), Command::BtraceConfSize(0x10000));
        assert_eq!(
            Command::parse(b"vCont;c:1f;t"),
            Command::Resume(Action::Continue(None), Some(ThreadId::Id(0x1f)), false)
        );
        assert_eq!(
            Command::parse(b"vCont;S0b:1f"),
            Command::Resume(Action::Step(Some(11)), Some(ThreadId::Id(0x1f)), false)
        );
        assert_eq!(Command::parse(b"vCont;c"), Command::Resume(Action::Continue(None), None, false));
        assert_eq!(
            Command::parse(b"vCont;s:1f;c"),
            Command::Resume(Action::Step(None), Some(ThreadId::Id(0x1f)), true)
        );
        assert_eq!(
            Command::parse(b"Z0,401000,1"),
            Command::Breakpoint { insert: true, kind: 0, addr: 0x401000 }
        );
        assert_eq!(Command::parse(b"qRcmd,6c6173742d6272616e6368"), Command::Monitor("last-branch".into()));
        assert_eq!(
            Command::parse(b"X1000,3:a}\x03b"),
            Command::WriteMemory { addr: 0x1000, data: vec![b'a', b'#', b'b'] }
        );
    }

    #[test]
    fn garbage_is_unknown_or_malformed_never_a_panic() {
        assert_eq!(Command::parse(b""), Command::Unknown);
        assert_eq!(Command::parse(b"qFoo"), Command::Unknown);
        assert_eq!(Command::parse(b"m"), Command::Malformed("m"));
        assert_eq!(Command::parse(b"m12345678901234567,1"), Command::Malformed("m"));
        assert_eq!(Command::parse(b"Hz"), Command::Malformed("H"));
        assert_eq!(Command::parse(b"qXfer:btrace"), Command::Malformed("qXfer"));
        assert_eq!(Command::parse(b"qRcmd,6"), Command::Malformed("qRcmd"));
        assert_eq!(Command::parse(b"vCont;q"), Command::Malformed("vCont action"));
        assert_eq!(Command::parse(b"M10,2:zz"), Command::Malformed("memory write"));
        for len in 0..40 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = Command::parse(&junk);
        }
    }
}
