//! RSP framing: `$payload#cs` packets, `+`/`-` acknowledgements, the
//! Ctrl-C interrupt byte, and the escapes of binary data.
//!
//! [`Decoder`] takes the bytes as they come from the connection, in any
//! pieces, and yields [`Event`]s. It never panics and never grows without
//! bound: a packet longer than [`MAX_PACKET`] is dropped and reported.

/// The largest packet accepted (and announced as `PacketSize`).
pub const MAX_PACKET: usize = 64 * 1024;

/// What the connection said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A whole packet whose checksum matched: its payload, run-length
    /// encoding expanded (escapes are left to the commands that take binary data).
    Packet(Vec<u8>),
    /// The packet's checksum did not match (answer with `-`).
    BadChecksum,
    /// A packet over [`MAX_PACKET`] bytes was dropped.
    TooLong,
    /// `+`: the last packet sent arrived.
    Ack,
    /// `-`: send the last packet again.
    Nack,
    /// Ctrl-C (0x03) outside a packet: stop the target.
    Interrupt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Body,
    Check1,
    Check2(u8),
}

/// Turns a byte stream into [`Event`]s.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    body: Vec<u8>,
    sum: u8,
    overflow: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder { state: State::Idle, body: Vec::new(), sum: 0, overflow: false }
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl Decoder {
    /// A decoder between packets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; every event they complete is pushed to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Event>) {
        for &b in bytes {
            if let Some(e) = self.byte(b) {
                out.push(e);
            }
        }
    }

    fn byte(&mut self, b: u8) -> Option<Event> {
        match self.state {
            State::Idle => match b {
                b'$' => {
                    self.start();
                    None
                }
                b'+' => Some(Event::Ack),
                b'-' => Some(Event::Nack),
                0x03 => Some(Event::Interrupt),
                // Noise between packets is ignored, as GDB's own stubs do.
                _ => None,
            },
            State::Body => {
                match b {
                    b'#' => self.state = State::Check1,
                    // A new start inside a packet: the old one was cut short.
                    b'$' => self.start(),
                    _ => {
                        self.sum = self.sum.wrapping_add(b);
                        if self.body.len() < MAX_PACKET {
                            self.body.push(b);
                        } else {
                            self.overflow = true;
                        }
                    }
                }
                None
            }
            State::Check1 => {
                self.state = State::Check2(b);
                None
            }
            State::Check2(hi) => {
                self.state = State::Idle;
                let body = std::mem::take(&mut self.body);
                if self.overflow {
                    return Some(Event::TooLong);
                }
                let sent = match (hex_digit(hi), hex_digit(b)) {
                    (Some(h), Some(l)) => h << 4 | l,
                    _ => return Some(Event::BadChecksum),
                };
                if sent != self.sum {
                    return Some(Event::BadChecksum);
                }
                match expand_rle(&body) {
                    Some(p) => Some(Event::Packet(p)),
                    None => Some(Event::TooLong),
                }
            }
        }
    }

    fn start(&mut self) {
        self.state = State::Body;
        self.body.clear();
        self.sum = 0;
        self.overflow = false;
    }
}

/// Expands `X*N` runs (the repeat count is N - 29). None when the result
/// would exceed [`MAX_PACKET`].
fn expand_rle(body: &[u8]) -> Option<Vec<u8>> {
    if !body.contains(&b'*') {
        return Some(body.to_vec());
    }
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if b == b'*' && i + 1 < body.len() {
            if let Some(&prev) = out.last() {
                let n = body[i + 1].saturating_sub(29) as usize;
                out.extend(std::iter::repeat_n(prev, n));
                if out.len() > MAX_PACKET {
                    return None;
                }
                i += 2;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    Some(out)
}

/// The bytes that carry `payload` as a packet: `$payload#cs`, with `$`,
/// `#`, `}` and `*` escaped.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let special = |b: &u8| matches!(b, b'$' | b'#' | b'}' | b'*');
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.push(b'$');
    // Copy runs between the bytes to escape whole: replies of megabytes
    // (btrace documents) are mostly plain text.
    let mut rest = payload;
    while !rest.is_empty() {
        let run = rest.iter().position(special).unwrap_or(rest.len());
        out.extend_from_slice(&rest[..run]);
        if let Some(&b) = rest.get(run) {
            out.push(b'}');
            out.push(b ^ 0x20);
            rest = &rest[run + 1..];
        } else {
            rest = &[];
        }
    }
    let sum = out[1..].iter().fold(0u8, |s, &b| s.wrapping_add(b));
    out.push(b'#');
    out.extend_from_slice(format!("{sum:02x}").as_bytes());
    out
}

/// Undoes the `}` escapes of binary data (the `X` packet's).
pub fn unescape(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut it = data.iter();
    while let Some(&b) = it.next() {
        if b == b'}' {
            if let Some(&n) = it.next() {
                out.push(n ^ 0x20);
            }
        } else {
            out.push(b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(bytes: &[u8]) -> Vec<Event> {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        d.feed(bytes, &mut out);
        out
    }

    #[test]
    fn packets_acks_and_interrupts() {
        assert_eq!(
            events(b"+$g#67\x03-"),
            vec![Event::Ack, Event::Packet(b"g".to_vec()), Event::Interrupt, Event::Nack]
        );
    }

    #[test]
    fn byte_by_byte_is_the_same() {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for b in b"$qSupported:multiprocess+#c6" {
            d.feed(&[*b], &mut out);
        }
        assert_eq!(out, vec![Event::Packet(b"qSupported:multiprocess+".to_vec())]);
    }

    #[test]
    fn bad_checksums_are_reported() {
        assert_eq!(events(b"$g#00"), vec![Event::BadChecksum]);
        assert_eq!(events(b"$g#zz"), vec![Event::BadChecksum]);
    }

    #[test]
    fn framing_round_trips_with_escapes() {
        let payload = b"a$b#c}d*e".to_vec();
        let framed = frame(&payload);
        let got = events(&framed);
        assert_eq!(got.len(), 1);
        let Event::Packet(p) = &got[0] else { panic!("{got:?}") };
        assert_eq!(unescape(p), payload);
    }

    #[test]
    fn run_length_is_expanded() {
        // "0* " is '0' repeated 3 more times (' ' is 32 = 3 + 29).
        let body = b"0* ";
        let sum = body.iter().fold(0u8, |s, &b| s.wrapping_add(b));
        let mut bytes = b"$".to_vec();
        bytes.extend_from_slice(body);
        bytes.extend_from_slice(format!("#{sum:02x}").as_bytes());
        assert_eq!(events(&bytes), vec![Event::Packet(b"0000".to_vec())]);
    }

    #[test]
    fn oversized_packets_are_dropped_not_buffered() {
        let mut bytes = b"$".to_vec();
        bytes.extend(std::iter::repeat_n(b'a', MAX_PACKET + 10));
        bytes.extend_from_slice(b"#00$g#67");
        assert_eq!(events(&bytes), vec![Event::TooLong, Event::Packet(b"g".to_vec())]);
    }
}
