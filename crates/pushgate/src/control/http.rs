//! HTTP/1.1 for the control listener, without I/O: bytes in, parsed requests out, with
//! keep-alive and pipelining (requests are answered in order), a head limit (431), a
//! body limit (413), and no guessing where a body ends (400, RFC 9112 §6).

use bytes::{Buf, Bytes, BytesMut};

/// Largest request head.
pub const MAX_HEAD: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;

/// A complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method, e.g. `POST`.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The query, after `?` (empty without one).
    pub query: String,
    /// `Authorization` header value, if any.
    pub authorization: Option<String>,
    /// The body.
    pub body: Bytes,
    /// The client wants the connection kept open after the response.
    pub keep_alive: bool,
}

/// Why the input cannot be served; the connection is answered and closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not HTTP/1.x (400).
    Malformed,
    /// Head over [`MAX_HEAD`] (431).
    HeadTooLarge,
    /// Body over the limit (413).
    BodyTooLarge,
    /// Chunked or otherwise unsupported framing (411: send a Content-Length).
    LengthRequired,
    /// A `Content-Length` that is not all digits, or several that disagree (400).
    BadContentLength,
    /// Both `Transfer-Encoding` and `Content-Length` (400).
    AmbiguousFraming,
}

impl ParseError {
    /// The status to answer with.
    pub fn status(self) -> (u16, &'static str) {
        match self {
            ParseError::Malformed => (400, "malformed request"),
            ParseError::HeadTooLarge => (431, "request head too large"),
            ParseError::BodyTooLarge => (413, "request body too large"),
            ParseError::LengthRequired => (411, "a Content-Length is required"),
            ParseError::BadContentLength => (400, "invalid or conflicting Content-Length"),
            ParseError::AmbiguousFraming => (400, "Transfer-Encoding and Content-Length together"),
        }
    }
}

/// Takes the next complete request from the front of `buf`; `Ok(None)` when more bytes
/// are needed.
pub fn next_request(buf: &mut BytesMut, max_body: usize) -> Result<Option<Request>, ParseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(ParseError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ParseError::HeadTooLarge),
        Err(_) => return Err(ParseError::Malformed),
    };
    if head_len > MAX_HEAD {
        return Err(ParseError::HeadTooLarge);
    }
    let version = req.version.unwrap_or(0);
    let mut content_length: Option<usize> = None;
    let mut transfer_encoding = false;
    let mut keep_alive = version >= 1;
    let mut authorization = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            content_length = Some(merge_content_length(content_length, h.value)?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if v.split(',').any(|t| t.trim() == "close") {
                keep_alive = false;
            } else if v.split(',').any(|t| t.trim() == "keep-alive") {
                keep_alive = true;
            }
        } else if h.name.eq_ignore_ascii_case("authorization") {
            authorization = Some(String::from_utf8_lossy(h.value).into_owned());
        }
    }
    // RFC 9112 §6.1: a request with both is a smuggling attempt or a broken proxy; either
    // way the two framings may disagree about where the next request starts.
    if transfer_encoding {
        return Err(if content_length.is_some() {
            ParseError::AmbiguousFraming
        } else {
            ParseError::LengthRequired
        });
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > max_body {
        return Err(ParseError::BodyTooLarge);
    }
    if buf.len() < head_len + content_length {
        return Ok(None);
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (path, query) = (path.to_owned(), query.to_owned());
    let method = req.method.unwrap_or("").to_owned();
    buf.advance(head_len);
    let body = buf.split_to(content_length).freeze();
    Ok(Some(Request {
        method,
        path,
        query,
        authorization,
        body,
        keep_alive,
    }))
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
        503 => "Service Unavailable",
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

/// A JSON error body.
pub fn json_error(status: u16, message: &str, keep_alive: bool) -> Vec<u8> {
    // Written by hand to keep `ok` first, as the contract shows it; serde_json escapes.
    let message = serde_json::to_string(message).unwrap_or_else(|_| "\"\"".to_owned());
    let body = format!("{{\"ok\":false,\"error\":{message}}}");
    response(status, "application/json", body.as_bytes(), keep_alive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelined_requests_come_out_in_order() {
        let mut buf = BytesMut::from(
            &b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nPOST /v1/push HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET /m"[..],
        );
        let a = next_request(&mut buf, 100).unwrap().unwrap();
        assert_eq!(
            (a.method.as_str(), a.path.as_str(), a.keep_alive),
            ("GET", "/healthz", true)
        );
        let b = next_request(&mut buf, 100).unwrap().unwrap();
        assert_eq!((b.path.as_str(), &b.body[..]), ("/v1/push", &b"{}"[..]));
        assert_eq!(next_request(&mut buf, 100), Ok(None));
        assert_eq!(&buf[..], b"GET /m");
    }

    #[test]
    fn limits_and_framing() {
        let mut big = BytesMut::from(&b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n"[..]);
        assert_eq!(next_request(&mut big, 100), Err(ParseError::BodyTooLarge));
        let mut chunked =
            BytesMut::from(&b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"[..]);
        assert_eq!(
            next_request(&mut chunked, 100),
            Err(ParseError::LengthRequired)
        );
        let mut long = BytesMut::from(&b"GET / HTTP/1.1\r\nX: "[..]);
        long.extend_from_slice(&vec![b'a'; MAX_HEAD]);
        assert_eq!(next_request(&mut long, 100), Err(ParseError::HeadTooLarge));
        let mut close = BytesMut::from(&b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"[..]);
        assert!(!next_request(&mut close, 100).unwrap().unwrap().keep_alive);
        let mut old = BytesMut::from(&b"GET / HTTP/1.0\r\n\r\n"[..]);
        assert!(!next_request(&mut old, 100).unwrap().unwrap().keep_alive);
        let mut junk = BytesMut::from(&b"\x00\x01\x02 junk\r\n\r\n"[..]);
        assert_eq!(next_request(&mut junk, 100), Err(ParseError::Malformed));
    }

    fn parse(raw: &str) -> Result<Option<Request>, ParseError> {
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
            let req = parse(raw).unwrap().unwrap();
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
    fn json_errors_escape() {
        let r = json_error(400, "bad \"x\"", false);
        assert!(r.ends_with(br#"{"ok":false,"error":"bad \"x\""}"#));
    }
}
