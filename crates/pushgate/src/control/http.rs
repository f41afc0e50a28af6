//! HTTP/1.1 for the control listener, without I/O: bytes in, parsed requests out, with
//! keep-alive and pipelining (requests are answered in order), a head limit (431), a
//! body limit (413), chunked bodies, `Expect: 100-continue`, and no guessing where a body
//! ends (400, RFC 9112 §6). The request head is parsed by the same code as the client
//! listener's upgrades ([`protocol::handshake::Request`], on httparse); this module adds
//! only what a request with a body needs.

use bytes::{Buf, Bytes, BytesMut};
use protocol::handshake::Request as Head;

/// Largest request head.
pub const MAX_HEAD: usize = 8 * 1024;
/// Chunks in one chunked body: real clients send a few large ones; tiny chunks cost a
/// line each, so their number is bounded too.
pub const MAX_CHUNKS: usize = 4096;
/// The interim response to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method, e.g. `POST`.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// `Authorization` header value, if any.
    pub authorization: Option<String>,
    /// The body (decoded, if it was chunked).
    pub body: Bytes,
    /// The client wants the connection kept open after the response.
    pub keep_alive: bool,
    /// The head as parsed: the query, every header.
    pub head: Head,
}

/// Why the input cannot be served; the connection is answered and closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not HTTP/1.x (400).
    Malformed,
    /// Head over [`MAX_HEAD`] (431).
    HeadTooLarge,
    /// Body over the limit, or chunked in more than [`MAX_CHUNKS`] chunks (413).
    BodyTooLarge,
    /// A transfer coding other than `chunked` (501, RFC 9112 §6.1).
    UnsupportedEncoding,
    /// A `Content-Length` that is not all digits, or several that disagree (400).
    BadContentLength,
    /// Both `Transfer-Encoding` and `Content-Length` (400).
    AmbiguousFraming,
    /// A chunk size line or chunk end that is not what RFC 9112 §7.1 allows (400).
    BadChunk,
}

impl ParseError {
    /// The status to answer with.
    pub fn status(self) -> (u16, &'static str) {
        match self {
            ParseError::Malformed => (400, "malformed request"),
            ParseError::HeadTooLarge => (431, "request head too large"),
            ParseError::BodyTooLarge => (413, "request body too large"),
            ParseError::UnsupportedEncoding => {
                (501, "only the chunked transfer coding is supported")
            }
            ParseError::BadContentLength => (400, "invalid or conflicting Content-Length"),
            ParseError::AmbiguousFraming => (400, "Transfer-Encoding and Content-Length together"),
            ParseError::BadChunk => (400, "malformed chunked body"),
        }
    }
}

/// What the front of the input holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// A complete request, taken from the input.
    Request(Box<Request>),
    /// More bytes are needed.
    Incomplete,
    /// The head is complete and asks `Expect: 100-continue` before sending its body: send
    /// [`CONTINUE`], then wait for the body. (Said again if asked again before any body
    /// byte arrives; a client takes any number of 1xx responses, RFC 9110 §15.2.)
    Continue,
}

/// What a request's body may hold, chosen from its head (a batch may be larger than a
/// push).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimit {
    /// Largest body in bytes (413 past it).
    pub bytes: usize,
    /// Most chunks of a chunked body (413 past it).
    pub chunks: usize,
}

impl BodyLimit {
    /// `bytes`, in at most [`MAX_CHUNKS`] chunks.
    pub fn bytes(bytes: usize) -> Self {
        BodyLimit {
            bytes,
            chunks: MAX_CHUNKS,
        }
    }
}

/// How the body of a request is framed.
#[derive(Debug, Clone, Copy)]
enum Framing {
    Length(usize),
    Chunked,
}

/// Reads requests from one connection's input as it arrives, keeping its progress between
/// reads: the head is searched only in new bytes and parsed once, and a chunked body is
/// decoded chunk by chunk as its bytes come. So a request trickled a byte at a time costs
/// work linear in its size, where parsing from the start on every read cost its square.
///
/// Its state describes the front of the input it was last given: the caller only appends
/// to that input between calls (this reader removes what it consumes), and uses a new
/// reader for a new connection.
#[derive(Debug, Default)]
pub struct Reader {
    /// Bytes at the front of the input already searched for the end of the head.
    head_scanned: usize,
    /// The complete head, once parsed, and how far its body has been read.
    pending: Option<Box<Pending>>,
    /// Input bytes looked at so far: the work done, for tests that bound it.
    examined: u64,
    /// The path of the last head parsed, so that a refusal can be counted per route.
    last_path: String,
}

#[derive(Debug)]
struct Pending {
    head: Head,
    head_len: usize,
    framing: Framing,
    chunked: Dechunk,
    limit: BodyLimit,
}

/// Progress through a chunked body (RFC 9112 §7.1).
#[derive(Debug, Default)]
struct Dechunk {
    /// Offset after the head of the first byte not yet decoded.
    at: usize,
    /// Offset after the head up to which the current line was searched for its end.
    scanned: usize,
    body: BytesMut,
    chunks: usize,
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// A chunk size line.
    #[default]
    Size,
    /// Chunk data, this many bytes still to come.
    Data(usize),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then the blank line.
    Trailers,
    /// All read; the body took this many bytes after the head.
    Done(usize),
}

/// Longest chunk size line accepted, extensions included.
const MAX_CHUNK_LINE: usize = 4096;

/// Takes the next complete request from the front of `buf`, with no memory of earlier
/// calls (each call parses from the start).
#[cfg(test)]
pub fn next_request(buf: &mut BytesMut, max_body: usize) -> Result<Next, ParseError> {
    Reader::default().next_request(buf, max_body)
}

impl Reader {
    /// Input bytes looked at so far.
    pub fn examined(&self) -> u64 {
        self.examined
    }

    /// The path of the last request head parsed (of a request refused, too).
    pub fn last_path(&self) -> &str {
        &self.last_path
    }

    /// Takes the next complete request from the front of `buf`.
    pub fn next_request(
        &mut self,
        buf: &mut BytesMut,
        max_body: usize,
    ) -> Result<Next, ParseError> {
        self.next_request_limited(buf, |_| BodyLimit::bytes(max_body))
    }

    /// [`Reader::next_request`] with the body limit chosen from the request's path.
    pub fn next_request_limited(
        &mut self,
        buf: &mut BytesMut,
        limit: impl Fn(&str) -> BodyLimit,
    ) -> Result<Next, ParseError> {
        if self.pending.is_none() {
            // A new request: its refusal, before its head is parsed, names no route.
            self.last_path.clear();
        }
        let result = self.advance(buf, limit);
        if !matches!(result, Ok(Next::Incomplete | Next::Continue)) {
            // A request taken, or the input refused: the next starts from nothing.
            self.head_scanned = 0;
            self.pending = None;
        }
        result
    }

    fn advance(
        &mut self,
        buf: &mut BytesMut,
        body_limit: impl Fn(&str) -> BodyLimit,
    ) -> Result<Next, ParseError> {
        if self.pending.is_none() {
            let limit = buf.len().min(MAX_HEAD);
            let from = self.head_scanned.saturating_sub(3).min(limit);
            self.examined += (limit - from) as u64;
            let end = protocol::handshake::head_end(&buf[..limit], from)
                .map_err(|_| ParseError::Malformed)?;
            let Some(head_len) = end else {
                self.head_scanned = limit;
                return if buf.len() >= MAX_HEAD {
                    Err(ParseError::HeadTooLarge)
                } else {
                    Ok(Next::Incomplete)
                };
            };
            self.examined += head_len as u64;
            let head = Head::parse(Bytes::copy_from_slice(&buf[..head_len]), Bytes::new())
                .map_err(|e| match e {
                    protocol::HandshakeError::TooManyHeaders => ParseError::HeadTooLarge,
                    _ => ParseError::Malformed,
                })?;
            self.last_path.clear();
            self.last_path.push_str(head.path());
            let limit = body_limit(head.path());
            let framing = framing(&head)?;
            if let Framing::Length(n) = framing {
                if n > limit.bytes {
                    return Err(ParseError::BodyTooLarge);
                }
            }
            self.pending = Some(Box::new(Pending {
                head,
                head_len,
                framing,
                chunked: Dechunk::default(),
                limit,
            }));
        }
        let Some(p) = self.pending.as_mut() else {
            return Ok(Next::Incomplete);
        };
        let body_bytes = &buf[p.head_len..];
        let consumed = match p.framing {
            Framing::Length(n) if body_bytes.len() < n => return Ok(waiting(&p.head, body_bytes)),
            Framing::Length(n) => n,
            Framing::Chunked => match p.chunked.decode(body_bytes, p.limit, &mut self.examined)? {
                Some(consumed) => consumed,
                None => return Ok(waiting(&p.head, body_bytes)),
            },
        };
        let Some(p) = self.pending.take() else {
            return Ok(Next::Incomplete);
        };
        let Pending {
            head,
            head_len,
            framing,
            chunked,
            ..
        } = *p;
        let mut keep_alive = head.minor_version() >= 1;
        for value in head.header_values("connection") {
            let v = String::from_utf8_lossy(value).to_ascii_lowercase();
            if v.split(',').any(|t| t.trim() == "close") {
                keep_alive = false;
            } else if v.split(',').any(|t| t.trim() == "keep-alive") {
                keep_alive = true;
            }
        }
        buf.advance(head_len);
        let raw = buf.split_to(consumed).freeze();
        let body = match framing {
            Framing::Length(_) => raw,
            Framing::Chunked => chunked.body.freeze(),
        };
        Ok(Next::Request(Box::new(Request {
            method: head.method().to_owned(),
            path: head.path().to_owned(),
            authorization: head
                .header("authorization")
                .map(|v| String::from_utf8_lossy(v).into_owned()),
            body,
            keep_alive,
            head,
        })))
    }
}

impl Dechunk {
    /// Decodes what has arrived of the body (`bytes`, from just after the head): the bytes
    /// the whole body took once it is complete, trailer fields included (and ignored);
    /// `None` while incomplete. Each byte is looked at a bounded number of times however
    /// the body is split into reads.
    fn decode(
        &mut self,
        bytes: &[u8],
        limit: BodyLimit,
        examined: &mut u64,
    ) -> Result<Option<usize>, ParseError> {
        let max_body = limit.bytes;
        loop {
            match self.state {
                ChunkState::Done(consumed) => return Ok(Some(consumed)),
                ChunkState::Size => {
                    let Some(end) = self.line_end(bytes, MAX_CHUNK_LINE, examined)? else {
                        return Ok(None);
                    };
                    if self.chunks == limit.chunks {
                        return Err(ParseError::BodyTooLarge);
                    }
                    self.chunks += 1;
                    let size = match httparse::parse_chunk_size(&bytes[self.at..end]) {
                        Ok(httparse::Status::Complete((n, size))) if self.at + n == end => size,
                        _ => return Err(ParseError::BadChunk),
                    };
                    self.at = end;
                    self.scanned = end;
                    let size = usize::try_from(size).map_err(|_| ParseError::BodyTooLarge)?;
                    if size > max_body - self.body.len().min(max_body) {
                        return Err(ParseError::BodyTooLarge);
                    }
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    let take = left.min(bytes.len() - self.at);
                    *examined += take as u64;
                    self.body.extend_from_slice(&bytes[self.at..self.at + take]);
                    self.at += take;
                    self.scanned = self.at;
                    if take < left {
                        self.state = ChunkState::Data(left - take);
                        return Ok(None);
                    }
                    self.state = ChunkState::DataEnd;
                }
                ChunkState::DataEnd => {
                    let Some(crlf) = bytes.get(self.at..self.at + 2) else {
                        if bytes.get(self.at).is_some_and(|&b| b != b'\r') {
                            return Err(ParseError::BadChunk);
                        }
                        return Ok(None);
                    };
                    *examined += 2;
                    if crlf != b"\r\n" {
                        return Err(ParseError::BadChunk);
                    }
                    self.at += 2;
                    self.scanned = self.at;
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    // No trailer field: the blank line at once.
                    let rest = &bytes[self.at..];
                    if rest.starts_with(b"\r\n") {
                        self.state = ChunkState::Done(self.at + 2);
                        continue;
                    }
                    if rest.len() < 2 && rest.iter().all(|&b| b == b'\r') {
                        return Ok(None);
                    }
                    // Fields, then a blank line: bounded like a head, searched like one.
                    let limit = rest.len().min(MAX_HEAD);
                    let from = (self.scanned - self.at).saturating_sub(3).min(limit);
                    *examined += (limit - from) as u64;
                    match protocol::handshake::head_end(&rest[..limit], from) {
                        Ok(Some(end)) => self.state = ChunkState::Done(self.at + end),
                        Ok(None) if rest.len() >= MAX_HEAD => return Err(ParseError::HeadTooLarge),
                        Ok(None) => {
                            self.scanned = self.at + limit;
                            return Ok(None);
                        }
                        Err(_) => return Err(ParseError::BadChunk),
                    }
                }
            }
        }
    }

    /// The offset just past the CRLF ending the line at `self.at`, searching only bytes
    /// not searched before; a bare LF or a line over `max` is [`ParseError::BadChunk`].
    fn line_end(
        &mut self,
        bytes: &[u8],
        max: usize,
        examined: &mut u64,
    ) -> Result<Option<usize>, ParseError> {
        let limit = bytes.len().min(self.at + max);
        let from = self.scanned.max(self.at).min(limit);
        let found = bytes[from..limit].iter().position(|&b| b == b'\n');
        *examined += (found.map_or(limit, |i| from + i + 1) - from) as u64;
        match found {
            Some(i) => {
                let lf = from + i;
                if lf == self.at || bytes[lf - 1] != b'\r' {
                    return Err(ParseError::BadChunk);
                }
                Ok(Some(lf + 1))
            }
            None if limit - self.at >= max => Err(ParseError::BadChunk),
            None => {
                self.scanned = limit;
                Ok(None)
            }
        }
    }
}

/// The body is not all there: a client that asked to be told to go on is told, once no
/// byte of the body has arrived yet.
fn waiting(head: &Head, body_so_far: &[u8]) -> Next {
    let expects = head
        .header("expect")
        .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"100-continue"));
    if expects && body_so_far.is_empty() && head.minor_version() >= 1 {
        Next::Continue
    } else {
        Next::Incomplete
    }
}

/// RFC 9112 §6.1–6.3: `chunked` (last) or a `Content-Length`, never both.
fn framing(head: &Head) -> Result<Framing, ParseError> {
    let mut content_length: Option<usize> = None;
    for value in head.header_values("content-length") {
        content_length = Some(merge_content_length(content_length, value)?);
    }
    let codings: Vec<String> = head
        .header_values("transfer-encoding")
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
        })
        .collect();
    if codings.is_empty() {
        return Ok(Framing::Length(content_length.unwrap_or(0)));
    }
    // A request with both is a smuggling attempt or a broken proxy; either way the two
    // framings may disagree about where the next request starts.
    if content_length.is_some() {
        return Err(ParseError::AmbiguousFraming);
    }
    match codings.as_slice() {
        [only] if only == "chunked" => Ok(Framing::Chunked),
        _ => Err(ParseError::UnsupportedEncoding),
    }
}

/// Folds one `Content-Length` field value into what earlier fields said.
///
/// RFC 9112 §6.3 rule 5: a value must be `1*DIGIT`; a list or repeated field whose values
/// are all identical may be taken as that one value (we do: a proxy that folds repeated
/// fields into one line produces it), and any disagreement makes the framing unknowable:
/// 400 and close, never a guess, since a guess is what request smuggling exploits.
fn merge_content_length(seen: Option<usize>, value: &[u8]) -> Result<usize, ParseError> {
    let mut merged = seen;
    for item in value.split(|&b| b == b',') {
        let digits = item.trim_ascii();
        // `usize::from_str` would also take a leading `+`, which the grammar does not.
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(ParseError::BadContentLength);
        }
        let n = digits.iter().try_fold(0usize, |acc, &d| {
            acc.checked_mul(10)?.checked_add(usize::from(d - b'0'))
        });
        let n = n.ok_or(ParseError::BadContentLength)?;
        if merged.is_some_and(|m| m != n) {
            return Err(ParseError::BadContentLength);
        }
        merged = Some(n);
    }
    merged.ok_or(ParseError::BadContentLength)
}

/// A response with a body, `Content-Length` and keep-alive or close.
pub fn response(status: u16, content_type: &str, body: &[u8], keep_alive: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// A JSON error response.
pub fn json_error(status: u16, message: &str, keep_alive: bool) -> Vec<u8> {
    response(status, "application/json", &error_body(message), keep_alive)
}

/// `{"ok":false,"error":message}`.
pub fn error_body(message: &str) -> Vec<u8> {
    // Written by hand to keep `ok` first, as the contract shows it; serde_json escapes.
    let message = serde_json::to_string(message).unwrap_or_else(|_| "\"\"".to_owned());
    format!("{{\"ok\":false,\"error\":{message}}}").into_bytes()
}

/// The head of a `200` whose body follows in chunks ([`chunk`]), ended by [`LAST_CHUNK`].
pub fn chunked_head(content_type: &str, keep_alive: bool) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: {}\r\n\r\n",
        if keep_alive { "keep-alive" } else { "close" }
    )
    .into_bytes()
}

/// Appends `data` to `out` as one chunk (RFC 9112 §7.1); nothing for empty data, which
/// would end the body.
pub fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The chunk that ends a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelined_requests_come_out_in_order() {
        let mut buf = BytesMut::from(
            &b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nPOST /v1/push HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET /m"[..],
        );
        let a = take(&mut buf);
        assert_eq!(
            (a.method.as_str(), a.path.as_str(), a.keep_alive),
            ("GET", "/healthz", true)
        );
        let b = take(&mut buf);
        assert_eq!((b.path.as_str(), &b.body[..]), ("/v1/push", &b"{}"[..]));
        assert_eq!(next_request(&mut buf, 100), Ok(Next::Incomplete));
        assert_eq!(&buf[..], b"GET /m");
    }

    #[test]
    fn limits_and_framing() {
        let mut big = BytesMut::from(&b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n"[..]);
        assert_eq!(next_request(&mut big, 100), Err(ParseError::BodyTooLarge));
        let mut gzip = BytesMut::from(&b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"[..]);
        assert_eq!(
            next_request(&mut gzip, 100),
            Err(ParseError::UnsupportedEncoding)
        );
        let mut long = BytesMut::from(&b"GET / HTTP/1.1\r\nX: "[..]);
        long.extend_from_slice(&vec![b'a'; MAX_HEAD]);
        assert_eq!(next_request(&mut long, 100), Err(ParseError::HeadTooLarge));
        let mut close = BytesMut::from(&b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"[..]);
        assert!(!take(&mut close).keep_alive);
        let mut old = BytesMut::from(&b"GET / HTTP/1.0\r\n\r\n"[..]);
        assert!(!take(&mut old).keep_alive);
        let mut junk = BytesMut::from(&b"\x00\x01\x02 junk\r\n\r\n"[..]);
        assert_eq!(next_request(&mut junk, 100), Err(ParseError::Malformed));
    }

    fn take(buf: &mut BytesMut) -> Request {
        match next_request(buf, 100) {
            Ok(Next::Request(r)) => *r,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn parse(raw: &str) -> Result<Next, ParseError> {
        next_request(&mut BytesMut::from(raw.as_bytes()), 100)
    }

    #[test]
    fn content_length_must_be_one_unambiguous_number() {
        // Conflicting values: which one frames the body is unknowable.
        for raw in [
            "POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\n{}",
            "POST / HTTP/1.1\r\nContent-Length: 2, 5\r\n\r\n{}",
            "POST / HTTP/1.1\r\nContent-Length: +2\r\n\r\n{}",
            "POST / HTTP/1.1\r\nContent-Length: -2\r\n\r\n{}",
            "POST / HTTP/1.1\r\nContent-Length: 0x2\r\n\r\n{}",
            "POST / HTTP/1.1\r\nContent-Length: \r\n\r\n{}",
            "POST / HTTP/1.1\r\nContent-Length: 2,\r\n\r\n{}",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n{}",
        ] {
            assert_eq!(parse(raw), Err(ParseError::BadContentLength), "{raw:?}");
        }
        // Identical repeats fold into one value.
        for raw in [
            "POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
            "POST / HTTP/1.1\r\nContent-Length: 2 , 2\r\n\r\n{}",
            "POST / HTTP/1.1\r\nContent-Length:  2 \r\n\r\n{}",
        ] {
            let req = take(&mut BytesMut::from(raw.as_bytes()));
            assert_eq!(&req.body[..], b"{}", "{raw:?}");
        }
        // Both framings, in either order.
        for raw in [
            "POST / HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
        ] {
            assert_eq!(parse(raw), Err(ParseError::AmbiguousFraming), "{raw:?}");
        }
        assert_eq!(
            ParseError::BadContentLength.status().0,
            ParseError::AmbiguousFraming.status().0
        );
        assert_eq!(ParseError::AmbiguousFraming.status().0, 400);
    }

    #[test]
    fn chunked_bodies_are_decoded_at_any_split() {
        let raw = b"POST /v1/push HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            4;ext=1\r\n{\"to\r\n3\r\n\":1\r\n1\r\n}\r\n0\r\nX-Trailer: t\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n";
        let first_end = raw.windows(4).position(|w| w == b"GET ").unwrap();
        for cut in 0..raw.len() {
            let mut buf = BytesMut::from(&raw[..cut]);
            let early = next_request(&mut buf, 100);
            if cut < first_end {
                assert_eq!(early, Ok(Next::Incomplete), "cut {cut}");
                buf.extend_from_slice(&raw[cut..]);
                let req = take(&mut buf);
                assert_eq!(&req.body[..], b"{\"to\":1}", "cut {cut}");
            } else {
                let Ok(Next::Request(req)) = early else {
                    panic!("cut {cut}: {early:?}")
                };
                assert_eq!(&req.body[..], b"{\"to\":1}", "cut {cut}");
                buf.extend_from_slice(&raw[cut..]);
            }
            assert_eq!(take(&mut buf).path, "/healthz");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn chunked_limits_and_malformed_chunks() {
        let head = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        // One chunk, or the sum of several, past the body limit: 413 before it arrives.
        assert_eq!(
            parse(&format!("{head}65\r\n")),
            Err(ParseError::BodyTooLarge)
        );
        let sixty = format!("3c\r\n{}\r\n", "a".repeat(60));
        assert_eq!(
            parse(&format!("{head}{sixty}{sixty}")),
            Err(ParseError::BodyTooLarge)
        );
        let many = "1\r\na\r\n".repeat(MAX_CHUNKS + 1);
        assert_eq!(
            next_request(
                &mut BytesMut::from(format!("{head}{many}").as_bytes()),
                1 << 20
            ),
            Err(ParseError::BodyTooLarge)
        );
        for bad in ["zz\r\n", "2\r\nabc\r\n", "-1\r\n"] {
            assert_eq!(
                parse(&format!("{head}{bad}")),
                Err(ParseError::BadChunk),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Err(ParseError::UnsupportedEncoding)
        );
    }

    #[test]
    fn expect_continue_is_answered_before_the_body() {
        let head = "POST / HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n";
        assert_eq!(parse(head), Ok(Next::Continue));
        // Once body bytes arrive, only the request itself remains to be said.
        assert_eq!(parse(&format!("{head}{{")), Ok(Next::Incomplete));
        assert!(matches!(
            parse(&format!("{head}{{}}")),
            Ok(Next::Request(_))
        ));
        // Too large: refused without asking for the body.
        let big = "POST / HTTP/1.1\r\nContent-Length: 101\r\nExpect: 100-continue\r\n\r\n";
        assert_eq!(parse(big), Err(ParseError::BodyTooLarge));
        // HTTP/1.0 clients never wait for a 100.
        let old = "POST / HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n";
        assert_eq!(parse(old), Ok(Next::Incomplete));
    }

    #[test]
    fn bare_line_feeds_are_refused_before_the_head_ends() {
        for raw in [
            "GET /healthz HTTP/1.1\nHost: x",
            "GET /healthz HTTP/1.1\r\nHost: x\n",
            "GET /healthz HTTP/1.1\r\nHost: x\r\n\n",
            "POST / HTTP/1.1\r\nContent-Length: 2\nX: y\r\n\r\n{}",
        ] {
            assert_eq!(parse(raw), Err(ParseError::Malformed), "{raw:?}");
        }
        assert_eq!(ParseError::Malformed.status().0, 400);
    }

    /// Issue 31: a trickled chunked body was parsed again from the start on every read,
    /// quadratic work. Fed a byte at a time to one reader, each byte is looked at a
    /// bounded number of times, and the request comes out the same as in one piece.
    #[test]
    fn a_trickled_chunked_body_costs_linear_work() {
        let chunks = 2_000;
        let mut raw =
            b"POST /v1/push HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for i in 0..chunks {
            raw.extend_from_slice(format!("1;n={i}\r\na\r\n").as_bytes());
        }
        raw.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
        let mut reader = Reader::default();
        let mut buf = BytesMut::new();
        let mut most_in_one_call = 0;
        let mut req = None;
        for (i, b) in raw.iter().enumerate() {
            buf.extend_from_slice(std::slice::from_ref(b));
            let before = reader.examined();
            let next = reader.next_request(&mut buf, 1 << 20);
            most_in_one_call = most_in_one_call.max(reader.examined() - before);
            match next {
                Ok(Next::Incomplete) => assert!(i + 1 < raw.len(), "incomplete at the end"),
                Ok(Next::Request(r)) => {
                    assert_eq!(i + 1, raw.len(), "complete early");
                    req = Some(r);
                }
                other => panic!("at {i}: {other:?}"),
            }
        }
        let req = req.expect("a request");
        assert_eq!(&req.body[..], "a".repeat(chunks).as_bytes());
        assert!(buf.is_empty());
        let total = raw.len() as u64;
        // Re-parsing from the start looks at about total²/2 bytes (here ~10⁸).
        assert!(
            reader.examined() <= 4 * total,
            "{} bytes looked at for {total}",
            reader.examined()
        );
        // One byte in looks at a few bytes (a terminator may be looked at again), except
        // the read that completes the head, which parses it.
        let head_len = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() as u64 + 4;
        assert!(most_in_one_call <= head_len + 4, "{most_in_one_call}");
    }

    #[test]
    fn one_reader_fed_any_split_gives_the_same_requests() {
        let raw = b"POST /v1/push HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            4;ext=1\r\n{\"to\r\n3\r\n\":1\r\n1\r\n}\r\n0\r\nX-Trailer: t\r\n\r\n\
            POST /x HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET /healthz HTTP/1.1\r\n\r\n";
        for step in 1..=raw.len() {
            let mut reader = Reader::default();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for piece in raw.chunks(step) {
                buf.extend_from_slice(piece);
                while let Ok(Next::Request(r)) = reader.next_request(&mut buf, 100) {
                    got.push((r.path.clone(), r.body.clone()));
                }
            }
            assert_eq!(
                got,
                [
                    ("/v1/push".to_owned(), Bytes::from_static(b"{\"to\":1}")),
                    ("/x".to_owned(), Bytes::from_static(b"{}")),
                    ("/healthz".to_owned(), Bytes::new()),
                ],
                "step {step}"
            );
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn chunk_lines_with_bare_line_feeds_or_no_end_are_refused() {
        let head = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for bad in [
            "1\na\r\n0\r\n\r\n",
            "1\r\na\n0\r\n\r\n",
            "0\r\n\n",
            "0\r\nX: y\n\r\n",
        ] {
            assert_eq!(
                parse(&format!("{head}{bad}")),
                Err(ParseError::BadChunk),
                "{bad:?}"
            );
        }
        let endless = format!("{head}1;{}", "e".repeat(MAX_CHUNK_LINE));
        assert_eq!(parse(&endless), Err(ParseError::BadChunk));
    }

    #[test]
    fn json_errors_escape() {
        let r = json_error(400, "bad \"x\"", false);
        assert!(r.ends_with(br#"{"ok":false,"error":"bad \"x\""}"#));
    }
}
