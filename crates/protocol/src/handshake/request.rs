//! Incremental parsing of an HTTP/1.1 request head with httparse.
//!
//! Bytes are appended as they arrive; the parse runs once, when the blank line that ends
//! the head has been seen (found by scanning only the new bytes), so a request dribbled in
//! one byte at a time costs linear work. The head is bounded by a byte limit (431 past it).
//!
//! Line endings are CRLF only. RFC 9112 §2.2 lets a recipient accept a bare LF, but
//! httparse accepts it in some places and not others, and the head's end is found by its
//! CRLF CRLF: a head with bare LFs would wait for a blank line that never comes, and one
//! mixing both would be read by rules a proxy in front may not share. A bare LF anywhere in
//! the head is refused (400) as soon as it arrives, by the one scan both listeners use.

use std::borrow::Cow;
use std::ops::Range;

use bytes::{Bytes, BytesMut};

use crate::error::HandshakeError;

/// Default limit on the request head: 8 KiB, as nginx's default large header buffer.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 8 * 1024;
/// Header fields accepted in one request.
pub const MAX_HEADERS: usize = 64;

/// Accumulates a request head until it is complete. It holds at most the limit plus one
/// read's worth of bytes.
#[derive(Debug)]
pub struct RequestParser {
    buf: BytesMut,
    /// Bytes already searched for the end of the head.
    scanned: usize,
    max_bytes: usize,
}

impl RequestParser {
    /// A parser that refuses heads over `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        RequestParser {
            buf: BytesMut::new(),
            scanned: 0,
            max_bytes,
        }
    }

    /// Bytes held so far.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feeds bytes. Returns the request once its head is complete; bytes after the head
    /// (a client that sends frames without waiting for the 101) are in
    /// [`Request::trailing`]. `Ok(None)` means more bytes are needed.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<Request>, HandshakeError> {
        self.buf.extend_from_slice(data);
        // The head must end within the limit; only new bytes (and the 3 before them, which
        // could start the terminator) are searched.
        let limit = self.buf.len().min(self.max_bytes);
        let from = self.scanned.saturating_sub(3).min(limit);
        if let Some(end) = head_end(&self.buf[..limit], from)? {
            let trailing = self.buf.split_off(end).freeze();
            let head = std::mem::take(&mut self.buf).freeze();
            self.scanned = 0;
            return Request::parse(head, trailing).map(Some);
        }
        if self.buf.len() >= self.max_bytes {
            return Err(HandshakeError::HeadersTooLarge);
        }
        self.scanned = self.buf.len();
        Ok(None)
    }
}

/// Offset just past the blank line that ends the head at the front of `buf`, searching
/// from `from` (bytes before it were searched by an earlier call; a terminator may start
/// up to 3 bytes before it). `Ok(None)`: not there yet. A line feed not preceded by a
/// carriage return, or a carriage return followed by anything but a line feed, before the
/// end is [`HandshakeError::Malformed`].
pub fn head_end(buf: &[u8], from: usize) -> Result<Option<usize>, HandshakeError> {
    let mut at = from;
    while let Some(i) = buf
        .get(at..)
        .and_then(|rest| rest.iter().position(|&b| b == b'\n' || b == b'\r'))
    {
        let i = at + i;
        if buf[i] == b'\r' {
            // A bare CR (RFC 9112 §2.2) is refused at once like a bare LF; a head of bare
            // CRs would otherwise wait for its timeout. The next byte may not be here yet.
            match buf.get(i + 1) {
                Some(b'\n') | None => {
                    at = i + 1;
                    continue;
                }
                Some(_) => return Err(HandshakeError::Malformed),
            }
        }
        let lf = i;
        if lf == 0 || buf[lf - 1] != b'\r' {
            return Err(HandshakeError::Malformed);
        }
        if lf >= 3 && &buf[lf - 3..lf - 1] == b"\r\n" {
            return Ok(Some(lf + 1));
        }
        at = lf + 1;
    }
    Ok(None)
}

/// A parsed request head. Every string is a range into one shared buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    head: Bytes,
    method: Range<usize>,
    target: Range<usize>,
    minor_version: u8,
    headers: Vec<(Range<usize>, Range<usize>)>,
    trailing: Bytes,
}

impl Request {
    /// Parses a complete head (ending in a blank line).
    pub fn parse(head: Bytes, trailing: Bytes) -> Result<Request, HandshakeError> {
        // The same line-ending rule as the incremental parser, for heads found elsewhere.
        if head_end(&head, 0)? != Some(head.len()) {
            return Err(HandshakeError::Malformed);
        }
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut fields);
        match req.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return Err(HandshakeError::Malformed),
            Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooManyHeaders),
            Err(_) => return Err(HandshakeError::Malformed),
        }
        let range = |s: &[u8]| {
            let start = s.as_ptr() as usize - head.as_ptr() as usize;
            start..start + s.len()
        };
        let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
            return Err(HandshakeError::Malformed);
        };
        let method = range(method.as_bytes());
        let target = range(path.as_bytes());
        let headers = req
            .headers
            .iter()
            .map(|h| (range(h.name.as_bytes()), range(h.value)))
            .collect();
        Ok(Request {
            method,
            target,
            minor_version: version,
            headers,
            trailing,
            head,
        })
    }

    fn str_at(&self, r: &Range<usize>) -> &str {
        // httparse hands out method, target and names as &str: the ranges are UTF-8.
        std::str::from_utf8(&self.head[r.clone()]).unwrap_or_default()
    }

    /// The method, e.g. `GET`.
    pub fn method(&self) -> &str {
        self.str_at(&self.method)
    }

    /// The request target as sent, e.g. `/ws?uid=7`.
    pub fn target(&self) -> &str {
        self.str_at(&self.target)
    }

    /// The path part of the target.
    pub fn path(&self) -> &str {
        let t = self.target();
        t.split_once('?').map_or(t, |(p, _)| p)
    }

    /// The query string, without the `?`.
    pub fn query(&self) -> Option<&str> {
        self.target().split_once('?').map(|(_, q)| q)
    }

    /// The first value of query parameter `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<Cow<'_, str>> {
        form_urlencoded::parse(self.query()?.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// HTTP/1.x minor version.
    pub fn minor_version(&self) -> u8 {
        self.minor_version
    }

    /// All header fields in order, names as sent.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.headers
            .iter()
            .map(|(n, v)| (self.str_at(n), &self.head[v.clone()]))
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The request head as received, up to and including the blank line.
    pub fn head(&self) -> &Bytes {
        &self.head
    }

    /// Bytes the client sent after the head, to be decoded as frames.
    pub fn trailing(&self) -> &Bytes {
        &self.trailing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &[u8] =
        b"GET /ws?uid=a%20b&device=d1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n";

    #[test]
    fn any_split_gives_the_same_request() {
        for cut in 0..=REQ.len() {
            let mut p = RequestParser::new(DEFAULT_MAX_HEADER_BYTES);
            let first = p.feed(&REQ[..cut]).unwrap();
            let req = match first {
                Some(r) => {
                    assert_eq!(cut, REQ.len());
                    r
                }
                None => p.feed(&REQ[cut..]).unwrap().unwrap(),
            };
            assert_eq!(req.method(), "GET");
            assert_eq!(req.path(), "/ws");
            assert_eq!(req.query_param("uid").as_deref(), Some("a b"));
            assert_eq!(req.query_param("device").as_deref(), Some("d1"));
            assert_eq!(req.header("upgrade"), Some(&b"websocket"[..]));
            assert!(req.trailing().is_empty());
        }
    }

    #[test]
    fn bytes_after_the_head_are_kept() {
        let mut data = REQ.to_vec();
        data.extend_from_slice(b"\x81\x80abcd");
        let req = RequestParser::new(1024).feed(&data).unwrap().unwrap();
        assert_eq!(&req.trailing()[..], b"\x81\x80abcd");
    }

    #[test]
    fn oversize_heads_are_refused_without_growing() {
        let mut p = RequestParser::new(64);
        assert_eq!(p.feed(b"GET / HTTP/1.1\r\n"), Ok(None));
        let filler = vec![b'a'; 100];
        assert_eq!(p.feed(&filler), Err(HandshakeError::HeadersTooLarge));
        // A head that ends exactly at the limit is fine.
        let exact = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(RequestParser::new(exact.len())
            .feed(exact)
            .unwrap()
            .is_some());
        assert_eq!(
            RequestParser::new(exact.len() - 1).feed(exact).unwrap_err(),
            HandshakeError::HeadersTooLarge
        );
    }

    #[test]
    fn bare_carriage_returns_are_refused_as_soon_as_they_arrive() {
        // Bare CRs ending lines, one inside a value, one before the blank line.
        for raw in [
            &b"GET /ws HTTP/1.1\rHost: x\r\r"[..],
            b"GET /ws HTTP/1.1\r\nHost: x\ry\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\r\n",
        ] {
            let bare = (0..raw.len() - 1)
                .find(|&i| raw[i] == b'\r' && raw[i + 1] != b'\n')
                .unwrap();
            let mut p = RequestParser::new(DEFAULT_MAX_HEADER_BYTES);
            for (i, b) in raw.iter().enumerate() {
                let r = p.feed(std::slice::from_ref(b));
                if i <= bare {
                    assert_eq!(r, Ok(None), "{raw:?} at {i}: the CR alone may end a line");
                } else {
                    assert_eq!(r, Err(HandshakeError::Malformed), "{raw:?} at {i}");
                    break;
                }
            }
            let whole = RequestParser::new(DEFAULT_MAX_HEADER_BYTES).feed(raw);
            assert_eq!(whole, Err(HandshakeError::Malformed), "{raw:?}");
        }
        // A CR split from its LF across reads is a line ending.
        let mut p = RequestParser::new(DEFAULT_MAX_HEADER_BYTES);
        assert_eq!(p.feed(b"GET /ws HTTP/1.1\r"), Ok(None));
        assert!(matches!(p.feed(b"\nHost: x\r\n\r\n"), Ok(Some(_))));
    }

    #[test]
    fn bare_line_feeds_are_refused_as_soon_as_they_arrive() {
        // All bare LF, a mix, a bare LF ending the head, one leading the request.
        for raw in [
            &b"GET /ws HTTP/1.1\nHost: x\n\n"[..],
            b"GET /ws HTTP/1.1\r\nHost: x\nUpgrade: websocket\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nHost: x\r\n\n",
            b"GET /ws HTTP/1.1\nHost: x\r\n\r\n",
            b"\nGET /ws HTTP/1.1\r\n\r\n",
        ] {
            let first_lf = raw.iter().position(|&b| b == b'\n').unwrap();
            let bare = (0..raw.len())
                .find(|&i| raw[i] == b'\n' && (i == 0 || raw[i - 1] != b'\r'))
                .unwrap();
            assert!(bare >= first_lf);
            // Byte by byte: nothing is said until the bare LF, which is refused at once,
            // without waiting for a blank line (or a timeout).
            let mut p = RequestParser::new(DEFAULT_MAX_HEADER_BYTES);
            for (i, b) in raw.iter().enumerate() {
                let r = p.feed(std::slice::from_ref(b));
                if i < bare {
                    assert_eq!(r, Ok(None), "{raw:?} at {i}");
                } else {
                    assert_eq!(r, Err(HandshakeError::Malformed), "{raw:?} at {i}");
                    break;
                }
            }
            let whole = RequestParser::new(DEFAULT_MAX_HEADER_BYTES).feed(raw);
            assert_eq!(whole, Err(HandshakeError::Malformed), "{raw:?}");
            assert_eq!(
                Request::parse(Bytes::copy_from_slice(raw), Bytes::new()),
                Err(HandshakeError::Malformed),
                "{raw:?}"
            );
            assert_eq!(HandshakeError::Malformed.status().code(), 400);
        }
        // A bare LF after the head belongs to whatever follows it (frames), not the head.
        let mut data = REQ.to_vec();
        data.extend_from_slice(b"\n\n");
        let req = RequestParser::new(1024).feed(&data).unwrap().unwrap();
        assert_eq!(&req.trailing()[..], b"\n\n");
    }

    #[test]
    fn head_end_finds_the_first_blank_line() {
        assert_eq!(head_end(b"a\r\n\r\nb\r\n\r\n", 0), Ok(Some(5)));
        assert_eq!(head_end(b"a\r\n\r", 0), Ok(None));
        assert_eq!(head_end(b"", 0), Ok(None));
        assert_eq!(head_end(b"a\r\n", 9), Ok(None));
        // From an offset: the terminator may begin before it.
        assert_eq!(head_end(b"a\r\n\r\n", 4), Ok(Some(5)));
        assert_eq!(head_end(b"a\n", 0), Err(HandshakeError::Malformed));
    }

    #[test]
    fn garbage_and_too_many_headers() {
        assert_eq!(
            RequestParser::new(1024)
                .feed(b"\x00\x01 nonsense\r\n\r\n")
                .unwrap_err(),
            HandshakeError::Malformed
        );
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            RequestParser::new(8192).feed(&many).unwrap_err(),
            HandshakeError::TooManyHeaders
        );
    }
}
