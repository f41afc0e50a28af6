//! docs/openapi.yaml against a real gateway: every route of the control listener is asked
//! for its answers (successes and refusals), and each answer's status, content type and
//! body are validated against the spec by `tests/openapi/validate.py`
//! (openapi-spec-validator and openapi-schema-validator from PyPI, installed by
//! scripts/install-test-deps.sh). The served routes are read from the control listener's
//! source (`src/control/routes.rs`), so a route added there without the spec fails here.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::{Client, Gateway};

const KEY: &str = "openapi-test-key";
const SECRET: &str = "openapi-test-secret";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The paths `ControlState::handle` matches: the string literals of routes.rs that are
/// absolute paths.
fn served_routes() -> Vec<String> {
    let src = std::fs::read_to_string(root().join("crates/pushgate/src/control/routes.rs"))
        .expect("routes.rs");
    let code = src.split("#[cfg(test)]").next().unwrap_or_default();
    let mut routes: Vec<String> = code
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.len() > 1
                && s.starts_with('/')
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"/_-".contains(&b))
        })
        .map(str::to_owned)
        .collect();
    routes.sort();
    routes.dedup();
    routes
}

/// One request over a fresh connection: (status, content type, body).
fn exchange(addr: SocketAddr, raw: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The gateway may answer and close before reading all of an oversized request.
    let _ = s.write_all(raw);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, body)
}

/// The body of a chunked answer.
fn dechunk(mut raw: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = raw.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size, 16).expect("chunk size");
        if size == 0 {
            assert_eq!(rest, "\r\n", "nothing after the last chunk");
            return out;
        }
        out.push_str(&rest[..size]);
        raw = rest[size..].strip_prefix("\r\n").expect("chunk end");
    }
}

struct Recorder {
    addr: SocketAddr,
    records: Vec<serde_json::Value>,
}

impl Recorder {
    /// Sends `method path` (the query, if any, after `path`) with `headers` and `body`,
    /// records the answer under the route `path`, and checks its status.
    fn ask(
        &mut self,
        method: &str,
        path: &str,
        query: &str,
        headers: &str,
        body: &[u8],
        expect: u16,
    ) -> serde_json::Value {
        let mut raw = format!(
            "{method} {path}{query} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(body);
        let request_type = headers
            .lines()
            .find_map(|l| l.strip_prefix("Content-Type: "))
            .unwrap_or_default();
        let answer = self.raw(method, path, &raw, expect);
        // The request too, for the spec's request body schema.
        if let Some(last) = self.records.last_mut() {
            last["request"] = String::from_utf8_lossy(body).into_owned().into();
            last["request_type"] = request_type.into();
        }
        answer
    }

    fn raw(&mut self, method: &str, path: &str, raw: &[u8], expect: u16) -> serde_json::Value {
        let (status, content_type, body) = exchange(self.addr, raw);
        assert_eq!(status, expect, "{method} {path}: {body}");
        self.records.push(serde_json::json!({
            "method": method, "path": path, "status": status,
            "content_type": content_type, "body": body,
        }));
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
    }
}

const AUTH: &str = "Authorization: Bearer openapi-test-key\r\n";

#[test]
fn every_answer_matches_the_openapi_spec() {
    let gw = Gateway::start(&[
        "--jwt-secret",
        SECRET,
        "--api-key",
        KEY,
        "--max-body-bytes",
        "4096",
        "--batch-max-items",
        "5",
        "--history-read-max",
        "10",
    ]);
    // A connected user, so presence lists an entry and a disconnect closes something.
    let token = pushgate::token::mint(
        SECRET.as_bytes(),
        "alice",
        None,
        Duration::from_secs(600),
        SystemTime::now(),
    )
    .unwrap();
    let mut alice = Client::connect(gw.client_addr, &format!("/ws?token={token}&device=phone"));
    assert_eq!(alice.recv_json()["type"], "welcome");

    let mut r = Recorder {
        addr: gw.control_addr,
        records: Vec::new(),
    };
    let json = "Content-Type: application/json\r\n";
    let both = format!("{AUTH}{json}");

    // POST /v1/push
    let a = r.ask(
        "POST",
        "/v1/push",
        "",
        &both,
        br#"{"to":["alice","bob"],"rooms":["lobby"],"from":"svc","id":"m-1","data":{"x":1}}"#,
        200,
    );
    assert_eq!(a["offline"], serde_json::json!(["bob"]), "{a}");
    let again = r.ask(
        "POST",
        "/v1/push",
        "",
        &both,
        br#"{"to":["alice","bob"],"id":"m-1","data":{"x":2}}"#,
        200,
    );
    assert_eq!(again, a, "a retried id gets the first answer");
    r.ask(
        "POST",
        "/v1/push",
        "",
        &both,
        br#"{"rooms":["lobby"],"data":null}"#,
        200,
    );
    r.ask("POST", "/v1/push", "", &both, b"{nope", 400);
    r.ask("POST", "/v1/push", "", &both, br#"{"to":[],"data":1}"#, 400);
    r.ask(
        "POST",
        "/v1/push",
        "",
        json,
        br#"{"to":["a"],"data":1}"#,
        401,
    );
    r.ask("GET", "/v1/push", "", AUTH, b"", 405);
    let big = format!(r#"{{"to":["a"],"data":"{}"}}"#, "x".repeat(5000));
    r.ask("POST", "/v1/push", "", &both, big.as_bytes(), 413);
    r.raw(
        "POST",
        "/v1/push",
        format!("POST /v1/push HTTP/1.1\r\nHost: x\r\n{AUTH}Transfer-Encoding: gzip\r\n\r\n")
            .as_bytes(),
        501,
    );
    r.raw(
        "POST",
        "/v1/push",
        format!(
            "POST /v1/push HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "h".repeat(9000)
        )
        .as_bytes(),
        431,
    );

    // POST /v1/broadcast
    r.ask(
        "POST",
        "/v1/broadcast",
        "",
        &both,
        br#"{"data":{"notice":1},"from":"ops"}"#,
        200,
    );
    r.ask(
        "POST",
        "/v1/broadcast",
        "",
        &both,
        br#"{"from":"ops"}"#,
        400,
    );
    r.ask("POST", "/v1/broadcast", "", json, br#"{"data":1}"#, 401);
    r.ask("PUT", "/v1/broadcast", "", &both, br#"{"data":1}"#, 405);

    // POST /v1/batch
    let b = r.ask(
        "POST",
        "/v1/batch",
        "",
        &both,
        br#"[{"to":["alice","bob"],"id":"b-1","data":{"x":3}},{"rooms":["lobby"],"data":4}]"#,
        200,
    );
    assert!(b["results"][0]["seq"]["alice"].as_u64().is_some(), "{b}");
    // A bad push among good ones: its own 400 result (the request itself is not a
    // valid batch, so it is not checked against the request schema).
    let b = r.ask(
        "POST",
        "/v1/batch",
        "",
        &both,
        br#"[{"to":["alice"],"data":1},{"to":["alice"]}]"#,
        200,
    );
    assert_eq!(b["results"][1]["status"], 400, "{b}");
    if let Some(last) = r.records.last_mut() {
        last.as_object_mut().unwrap().remove("request");
    }
    let ndjson = format!("{AUTH}Content-Type: application/x-ndjson\r\n");
    r.ask(
        "POST",
        "/v1/batch",
        "",
        &ndjson,
        b"{\"to\":[\"alice\"],\"data\":5}\n{\"to\":[\"alice\"],\"data\":6}\nnope\n",
        200,
    );
    r.ask(
        "POST",
        "/v1/batch",
        "",
        &both,
        br#"{"to":["a"],"data":1}"#,
        400,
    );
    r.ask(
        "POST",
        "/v1/batch",
        "",
        json,
        br#"[{"to":["a"],"data":1}]"#,
        401,
    );
    r.ask("GET", "/v1/batch", "", AUTH, b"", 405);
    let six = format!("[{}]", [r#"{"to":["a"],"data":1}"#; 6].join(","));
    r.ask("POST", "/v1/batch", "", &both, six.as_bytes(), 413);

    // GET /v1/history
    let h = r.ask("GET", "/v1/history", "?uid=alice&limit=2", AUTH, b"", 200);
    assert_eq!(h["messages"].as_array().map(Vec::len), Some(2), "{h}");
    assert_eq!(h["more"], true, "{h}");
    r.ask("GET", "/v1/history", "?room=lobby&since=0", AUTH, b"", 200);
    r.ask("GET", "/v1/history", "?uid=alice&limit=11", AUTH, b"", 400);
    r.ask("GET", "/v1/history", "?uid=alice", "", b"", 401);
    r.ask("POST", "/v1/history", "?uid=alice", AUTH, b"", 405);

    // GET /v1/presence
    let p = r.ask("GET", "/v1/presence", "?uid=alice&uid=bob", AUTH, b"", 200);
    assert_eq!(p["users"]["alice"][0]["device"], "phone", "{p}");
    r.ask("GET", "/v1/presence", "", AUTH, b"", 400);
    r.ask("GET", "/v1/presence", "?uid=alice", "", b"", 401);
    r.ask("POST", "/v1/presence", "?uid=alice", AUTH, b"", 405);

    // GET /v1/rooms/presence (alice is in "team" from the join below only later: first
    // an empty room, then the member)
    let p = r.ask("GET", "/v1/rooms/presence", "?room=team", AUTH, b"", 200);
    assert_eq!(
        (p["connections"].as_u64(), p["users"].as_u64()),
        (Some(0), Some(0)),
        "{p}"
    );
    r.ask(
        "GET",
        "/v1/rooms/presence",
        "?room=team&count_only=1",
        AUTH,
        b"",
        200,
    );
    r.ask("GET", "/v1/rooms/presence", "", AUTH, b"", 400);
    r.ask(
        "GET",
        "/v1/rooms/presence",
        "?room=team&limit=1001",
        AUTH,
        b"",
        400,
    );
    r.ask("GET", "/v1/rooms/presence", "?room=team", "", b"", 401);
    r.ask("POST", "/v1/rooms/presence", "?room=team", AUTH, b"", 405);

    // POST /v1/rooms/join and /v1/rooms/leave
    let j = r.ask(
        "POST",
        "/v1/rooms/join",
        "",
        &both,
        br#"{"uid":"alice","room":"team"}"#,
        200,
    );
    assert_eq!(j["joined"], 1, "{j}");
    // Behind the messages pushed to alice above.
    let mut seen = alice.recv_json();
    while seen["type"] == "msg" {
        seen = alice.recv_json();
    }
    assert_eq!(seen["type"], "joined", "{seen}");
    let p = r.ask("GET", "/v1/rooms/presence", "?room=team", AUTH, b"", 200);
    assert_eq!(p["members"][0]["device"], "phone", "{p}");
    let p = r.ask(
        "GET",
        "/v1/rooms/presence",
        "?room=team&limit=0",
        AUTH,
        b"",
        200,
    );
    assert_eq!(
        (p["connections"].as_u64(), p["more"].as_bool()),
        (Some(1), None)
    );
    let l = r.ask(
        "POST",
        "/v1/rooms/leave",
        "",
        &both,
        br#"{"uid":"alice","room":"team","device":"phone"}"#,
        200,
    );
    assert_eq!(l["left"], 1, "{l}");
    assert_eq!(alice.recv_json()["type"], "left");
    r.ask(
        "POST",
        "/v1/rooms/join",
        "",
        &both,
        br#"{"uid":"alice"}"#,
        400,
    );
    r.ask(
        "POST",
        "/v1/rooms/leave",
        "",
        json,
        br#"{"uid":"a","room":"r"}"#,
        401,
    );
    r.ask("GET", "/v1/rooms/join", "", AUTH, b"", 405);

    // POST /v1/disconnect
    r.ask(
        "POST",
        "/v1/disconnect",
        "",
        &both,
        br#"{"uid":"alice","code":999}"#,
        400,
    );
    r.ask(
        "POST",
        "/v1/disconnect",
        "",
        json,
        br#"{"uid":"alice","code":4001}"#,
        401,
    );
    r.ask("GET", "/v1/disconnect", "", AUTH, b"", 405);
    let d = r.ask(
        "POST",
        "/v1/disconnect",
        "",
        &both,
        br#"{"uid":"alice","device":"phone","code":4001,"reason":"bye"}"#,
        200,
    );
    assert_eq!(d["closed"], 1, "{d}");
    assert_eq!(alice.expect_close(Duration::from_secs(5)).0, 4001);

    // Health and metrics, never behind the key.
    r.ask("GET", "/healthz", "", "", b"", 200);
    r.ask("POST", "/healthz", "", "", b"", 405);
    r.ask("GET", "/readyz", "", "", b"", 200);
    r.ask("DELETE", "/readyz", "", "", b"", 405);
    r.ask("GET", "/metrics", "", "", b"", 200);
    r.ask("POST", "/metrics", "", "", b"", 405);
    // Not a route: 404 with the error body (checked by hand: the spec documents routes).
    let (status, _, body) = exchange(
        gw.control_addr,
        b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 404);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ok"], false);

    let routes = served_routes();
    for known in ["/v1/push", "/v1/disconnect", "/v1/rooms/join", "/metrics"] {
        assert!(
            routes.iter().any(|r| r == known),
            "scan missed {known}: {routes:?}"
        );
    }
    let dir = std::env::temp_dir().join(format!("pushgate-openapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let records = dir.join("records.json");
    let routes_file = dir.join("routes.json");
    std::fs::write(&records, serde_json::to_vec(&r.records).unwrap()).unwrap();
    std::fs::write(&routes_file, serde_json::to_vec(&routes).unwrap()).unwrap();
    let out = Command::new("python3")
        .arg(root().join("crates/pushgate/tests/openapi/validate.py"))
        .arg(root().join("docs/openapi.yaml"))
        .arg(&records)
        .arg(&routes_file)
        .output()
        .expect("run python3");
    let _ = std::fs::remove_dir_all(&dir);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(
        out.status.success(),
        "answers do not match docs/openapi.yaml (run scripts/install-test-deps.sh if a module is missing):\n{report}"
    );
}
