//! The core NATS text protocol, both directions: parsing what the server sends (`INFO`,
//! `MSG`, `HMSG`, `PING`, `PONG`, `+OK`, `-ERR`) out of a read buffer, and writing what a
//! client sends (`CONNECT`, `PUB`, `HPUB`, `SUB`, `UNSUB`, `PING`, `PONG`) into a write
//! buffer.
//!
//! Parsing borrows from the buffer and never allocates: a message is handed on while it
//! is still in the read buffer. A frame that does not follow the protocol is an error,
//! and the connection is dropped (the server never sends one; a proxy cutting a frame
//! short, or a wrong peer, may).

use std::fmt::Write as _;

/// The longest control line accepted (an `INFO` listing a large cluster's URLs is the
/// longest a server sends).
pub(super) const MAX_LINE: usize = 64 * 1024;

/// One operation from the server.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Op<'a> {
    /// `INFO {json}`.
    Info(&'a [u8]),
    /// `MSG` or `HMSG`.
    Msg(Msg<'a>),
    Ping,
    Pong,
    Ok,
    /// `-ERR 'text'`, without the quotes.
    Err(&'a str),
}

/// A message delivered on one of our subscriptions.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Msg<'a> {
    pub(super) subject: &'a str,
    pub(super) sid: u64,
    pub(super) reply: Option<&'a str>,
    /// The header block (`NATS/1.0...\r\n\r\n`), for `HMSG`.
    pub(super) headers: Option<&'a [u8]>,
    pub(super) payload: &'a [u8],
}

/// The server sent something that is not the protocol.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct WireError(pub(super) &'static str);

/// Parses one operation from the start of `buf`: `Ok(None)` when more bytes are needed,
/// else the operation and how many bytes it took. `max_body` bounds a message's size.
pub(super) fn parse(buf: &[u8], max_body: usize) -> Result<Option<(Op<'_>, usize)>, WireError> {
    let Some(end) = memchr_crlf(buf) else {
        return if buf.len() > MAX_LINE {
            Err(WireError("control line too long"))
        } else {
            Ok(None)
        };
    };
    let line = &buf[..end];
    let after = end + 2;
    let (verb, rest) = match line.iter().position(|&b| b == b' ' || b == b'\t') {
        Some(i) => (&line[..i], trim(&line[i + 1..])),
        None => (line, &line[line.len()..]),
    };
    let op = if verb.eq_ignore_ascii_case(b"MSG") {
        return message(buf, rest, after, false, max_body);
    } else if verb.eq_ignore_ascii_case(b"HMSG") {
        return message(buf, rest, after, true, max_body);
    } else if verb.eq_ignore_ascii_case(b"PING") {
        Op::Ping
    } else if verb.eq_ignore_ascii_case(b"PONG") {
        Op::Pong
    } else if verb.eq_ignore_ascii_case(b"+OK") {
        Op::Ok
    } else if verb.eq_ignore_ascii_case(b"INFO") {
        Op::Info(rest)
    } else if verb.eq_ignore_ascii_case(b"-ERR") {
        let text = std::str::from_utf8(rest).map_err(|_| WireError("-ERR not UTF-8"))?;
        Op::Err(text.trim_matches('\''))
    } else {
        return Err(WireError("unknown operation"));
    };
    Ok(Some((op, after)))
}

fn message<'a>(
    buf: &'a [u8],
    args: &'a [u8],
    start: usize,
    with_headers: bool,
    max_body: usize,
) -> Result<Option<(Op<'a>, usize)>, WireError> {
    let args = std::str::from_utf8(args).map_err(|_| WireError("MSG line not UTF-8"))?;
    let mut parts = [""; 5];
    let mut n = 0;
    for p in args.split_ascii_whitespace() {
        if n == parts.len() {
            return Err(WireError("MSG line with too many fields"));
        }
        parts[n] = p;
        n += 1;
    }
    let sizes = if with_headers { 2 } else { 1 };
    if n < 2 + sizes || n > 3 + sizes {
        return Err(WireError("MSG line with a wrong number of fields"));
    }
    let subject = parts[0];
    let sid = parts[1].parse().map_err(|_| WireError("bad sid"))?;
    let reply = (n == 3 + sizes).then_some(parts[2]);
    let number = |s: &str| s.parse::<usize>().map_err(|_| WireError("bad size"));
    let total = number(parts[n - 1])?;
    let header_len = if with_headers {
        number(parts[n - 2])?
    } else {
        0
    };
    if header_len > total || total > max_body {
        return Err(WireError("message size out of bounds"));
    }
    let end = start + total;
    if buf.len() < end + 2 {
        return Ok(None);
    }
    if &buf[end..end + 2] != b"\r\n" {
        return Err(WireError("message not followed by CRLF"));
    }
    let headers = with_headers.then(|| &buf[start..start + header_len]);
    Ok(Some((
        Op::Msg(Msg {
            subject,
            sid,
            reply,
            headers,
            payload: &buf[start + header_len..end],
        }),
        end + 2,
    )))
}

fn memchr_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &s[start..end]
}

/// The value of header `name` (case-insensitive) in a `NATS/1.0` header block; `None` if
/// absent or the block is malformed.
pub(super) fn header<'a>(block: &'a [u8], name: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(block).ok()?;
    let mut lines = text.split("\r\n");
    if !lines.next()?.starts_with("NATS/1.0") {
        return None;
    }
    lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The status code on a header block's first line (`NATS/1.0 503`: no responders).
pub(super) fn status(block: &[u8]) -> Option<u16> {
    let first = block.split(|&b| b == b'\r').next()?;
    let first = std::str::from_utf8(first).ok()?;
    first
        .strip_prefix("NATS/1.0")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether `s` can be sent as a subject (or reply subject): non-empty, no whitespace or
/// control bytes, no empty tokens.
pub(super) fn valid_subject(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b > b' ' && b != 0x7f) && s.split('.').all(|t| !t.is_empty())
}

/// `PUB`, or `HPUB` when there are headers. Header names and values must not hold CR or
/// LF (ours never do: they are numbers, IDs and escaped tokens).
pub(super) fn write_pub(
    out: &mut Vec<u8>,
    subject: &str,
    reply: Option<&str>,
    headers: &[(&str, &str)],
    payload: &[u8],
) {
    let mut line = String::with_capacity(64);
    if headers.is_empty() {
        line.push_str("PUB ");
    } else {
        line.push_str("HPUB ");
    }
    line.push_str(subject);
    if let Some(r) = reply {
        line.push(' ');
        line.push_str(r);
    }
    if headers.is_empty() {
        let _ = write!(line, " {}\r\n", payload.len());
        out.extend_from_slice(line.as_bytes());
    } else {
        let block_len = headers_len(headers);
        let _ = write!(line, " {} {}\r\n", block_len, block_len + payload.len());
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"NATS/1.0\r\n");
        for (k, v) in headers {
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// The size of the header block [`write_pub`] writes for `headers` (0 for none).
pub(super) fn headers_len(headers: &[(&str, &str)]) -> usize {
    if headers.is_empty() {
        return 0;
    }
    10 + headers
        .iter()
        .map(|(k, v)| k.len() + v.len() + 4)
        .sum::<usize>()
        + 2
}

pub(super) fn write_sub(out: &mut Vec<u8>, subject: &str, sid: u64) {
    let _ = writeln_crlf(out, format_args!("SUB {subject} {sid}"));
}

pub(super) fn write_unsub(out: &mut Vec<u8>, sid: u64) {
    let _ = writeln_crlf(out, format_args!("UNSUB {sid}"));
}

fn writeln_crlf(out: &mut Vec<u8>, args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    use std::io::Write;
    out.write_fmt(args)?;
    out.extend_from_slice(b"\r\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one(buf: &[u8]) -> (Op<'_>, usize) {
        parse(buf, 1 << 20).unwrap().unwrap()
    }

    #[test]
    fn parses_every_server_operation() {
        assert_eq!(one(b"PING\r\n"), (Op::Ping, 6));
        assert_eq!(one(b"pong\r\nPING"), (Op::Pong, 6));
        assert_eq!(one(b"+OK\r\n"), (Op::Ok, 5));
        assert_eq!(
            one(b"-ERR 'Authorization Violation'\r\n").0,
            Op::Err("Authorization Violation")
        );
        assert_eq!(one(b"INFO {\"a\":1} \r\n").0, Op::Info(b"{\"a\":1}"));
        let (op, n) = one(b"MSG a.b 7 5\r\nhello\r\nPING\r\n");
        assert_eq!(n, 20);
        assert_eq!(
            op,
            Op::Msg(Msg {
                subject: "a.b",
                sid: 7,
                reply: None,
                headers: None,
                payload: b"hello"
            })
        );
        let raw = b"HMSG s 1 _INBOX.x 24 26\r\nNATS/1.0\r\nA: b\r\nC: d\r\n\r\nhi\r\n";
        let (op, n) = one(raw);
        assert_eq!(n, raw.len());
        let Op::Msg(m) = op else { panic!() };
        assert_eq!(m.reply, Some("_INBOX.x"));
        assert_eq!(m.payload, b"hi");
        assert_eq!(header(m.headers.unwrap(), "a"), Some("b"));
        assert_eq!(header(m.headers.unwrap(), "C"), Some("d"));
        assert_eq!(header(m.headers.unwrap(), "e"), None);
    }

    #[test]
    fn incomplete_frames_wait_for_more() {
        let raw = b"HMSG s 1 12 14\r\nNATS/1.0\r\n\r\nhi\r\n";
        for cut in 0..raw.len() {
            assert_eq!(parse(&raw[..cut], 1 << 20), Ok(None), "cut at {cut}");
        }
        assert!(parse(raw, 1 << 20).unwrap().is_some());
    }

    #[test]
    fn malformed_frames_are_errors() {
        for bad in [
            &b"MSG a\r\n"[..],
            b"MSG a x 1\r\nh\r\n",
            b"MSG a 1 2\r\nabcd",
            b"HMSG a 1 5 3\r\nabc\r\n",
            b"MSG a 1 b c d e\r\n",
            b"WHAT\r\n",
            b"MSG a 1 -1\r\n",
        ] {
            assert!(
                parse(bad, 1 << 20).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(parse(b"MSG a 1 100\r\n", 99).is_err());
        assert!(parse(&vec![b'x'; MAX_LINE + 1], 1 << 20).is_err());
    }

    #[test]
    fn statuses_and_subjects() {
        assert_eq!(status(b"NATS/1.0 503\r\n\r\n"), Some(503));
        assert_eq!(status(b"NATS/1.0\r\n\r\n"), None);
        assert!(valid_subject("a.b.c"));
        assert!(valid_subject("_INBOX.x.*"));
        for bad in ["", "a b", "a..b", ".a", "a.", "a\r\nb"] {
            assert!(!valid_subject(bad), "{bad:?}");
        }
    }

    #[test]
    fn writes_what_it_parses() {
        let mut out = Vec::new();
        write_pub(
            &mut out,
            "s.t",
            Some("r"),
            &[("K", "v"), ("L", "w x")],
            b"body",
        );
        // The server's MSG form of the same thing.
        let as_msg =
            String::from_utf8(out.clone())
                .unwrap()
                .replacen("HPUB s.t r", "HMSG s.t 3 r", 1);
        let (op, n) = one(as_msg.as_bytes());
        assert_eq!(n, as_msg.len());
        let Op::Msg(m) = op else { panic!() };
        assert_eq!(m.payload, b"body");
        assert_eq!(
            m.headers.unwrap().len(),
            headers_len(&[("K", "v"), ("L", "w x")])
        );
        assert_eq!(header(m.headers.unwrap(), "L"), Some("w x"));
        out.clear();
        write_pub(&mut out, "s", None, &[], b"x");
        write_sub(&mut out, "s.*", 9);
        write_unsub(&mut out, 9);
        assert_eq!(out, b"PUB s 1\r\nx\r\nSUB s.* 9\r\nUNSUB 9\r\n");
    }

    proptest! {
        /// However a stream of frames is split into reads, the same operations come out.
        #[test]
        fn any_split_parses_the_same(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6), cut in 0usize..400) {
            let mut stream = Vec::new();
            for (i, p) in payloads.iter().enumerate() {
                let mut frame = Vec::new();
                write_pub(&mut frame, "a.b", None, if i % 2 == 0 { &[] } else { &[("H", "v")] }, p);
                let text = if i % 2 == 0 { b"PUB a.b".as_slice() } else { b"HPUB a.b".as_slice() };
                let repl: &[u8] = if i % 2 == 0 { b"MSG a.b 1" } else { b"HMSG a.b 1" };
                frame.splice(0..text.len(), repl.iter().copied());
                stream.extend_from_slice(&frame);
                stream.extend_from_slice(b"PING\r\n");
            }
            let cut = cut.min(stream.len());
            let mut buf = stream[..cut].to_vec();
            let mut rest = &stream[cut..];
            let mut got = Vec::new();
            loop {
                match parse(&buf, 1 << 20).unwrap() {
                    Some((op, n)) => {
                        if let Op::Msg(m) = op { got.push(m.payload.to_vec()); }
                        buf.drain(..n);
                    }
                    None if rest.is_empty() => break,
                    None => { buf.extend_from_slice(rest); rest = &[]; }
                }
            }
            prop_assert_eq!(got, payloads);
            prop_assert!(buf.is_empty());
        }
    }
}
