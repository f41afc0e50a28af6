//! Authentication before the upgrade: JWT (HS256, RS256, ES256) by query or header, its
//! failures, token expiry while connected, dev mode refused when a secret is set, origin
//! allowlist.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Client, Gateway};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use protocol::CloseCode;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(secret: &str, sub: &str, exp: u64) -> String {
    let claims = serde_json::json!({"sub": sub, "exp": exp});
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn status(gw: &Gateway, path: &str, headers: &str) -> u16 {
    Client::try_connect(TcpStream::connect(gw.client_addr).unwrap(), path, headers).1
}

#[test]
fn hs256_tokens_by_query_and_by_header() {
    let gw = Gateway::start(&["--jwt-secret", "topsecret"]);
    let t = hs256("topsecret", "alice", now() + 3600);
    let mut c = Client::connect(gw.client_addr, &format!("/ws?token={t}"));
    assert_eq!(c.recv_json()["uid"], "alice");
    let mut c = Client::connect_with(
        TcpStream::connect(gw.client_addr).unwrap(),
        "/ws",
        &format!("Authorization: Bearer {t}\r\n"),
    );
    assert_eq!(c.recv_json()["uid"], "alice");
}

#[test]
fn bad_tokens_get_401_before_the_upgrade() {
    let gw = Gateway::start(&["--jwt-secret", "topsecret"]);
    let wrong_key = hs256("other", "alice", now() + 3600);
    let expired = hs256("topsecret", "alice", now() - 3600);
    assert_eq!(status(&gw, &format!("/ws?token={wrong_key}"), ""), 401);
    assert_eq!(status(&gw, &format!("/ws?token={expired}"), ""), 401);
    assert_eq!(status(&gw, "/ws?token=not.a.jwt", ""), 401);
    assert_eq!(status(&gw, "/ws", ""), 401);
    // Dev mode's ?uid= is refused once a secret is set.
    assert_eq!(status(&gw, "/ws?uid=alice", ""), 401);
    assert_eq!(gw.metric("pushgate_handshakes_total{result=\"401\"}"), 5.0);
    assert_eq!(gw.metric("pushgate_handshakes_total{result=\"ok\"}"), 0.0);
}

#[test]
fn a_token_that_expires_while_connected_closes_with_1008() {
    let gw = Gateway::start(&["--jwt-secret", "k", "--jwt-leeway", "0"]);
    let t = hs256("k", "brief", now() + 2);
    let start = Instant::now();
    let mut c = Client::connect(gw.client_addr, &format!("/ws?token={t}"));
    c.recv_json();
    assert_eq!(c.expect_close(Duration::from_secs(5)), CloseCode::POLICY);
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    assert!(gw.eventually(Duration::from_secs(2), |g| g
        .metric("pushgate_policy_closes_total")
        == 1.0));
}

fn openssl(args: &[&str]) {
    let ok = Command::new("openssl")
        .args(args)
        .status()
        .expect("openssl is needed for key tests")
        .success();
    assert!(ok, "openssl {args:?}");
}

#[test]
fn rs256_and_es256_public_keys() {
    let dir = std::env::temp_dir().join(format!("pushgate-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = |n: &str| dir.join(n).to_str().unwrap().to_owned();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &p("rsa.pem"),
    ]);
    openssl(&[
        "pkey",
        "-in",
        &p("rsa.pem"),
        "-pubout",
        "-out",
        &p("rsa.pub"),
    ]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &p("ec.pem"),
    ]);
    openssl(&["pkey", "-in", &p("ec.pem"), "-pubout", "-out", &p("ec.pub")]);
    let claims =
        serde_json::json!({"sub": "carol", "exp": now() + 600, "rooms": ["team-*", "lobby"]});
    for (alg, private, public) in [
        (Algorithm::RS256, "rsa.pem", "rsa.pub"),
        (Algorithm::ES256, "ec.pem", "ec.pub"),
    ] {
        let pem = std::fs::read(p(private)).unwrap();
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
            _ => EncodingKey::from_ec_pem(&pem).unwrap(),
        };
        let token = encode(&Header::new(alg), &claims, &key).unwrap();
        let name = format!("{alg:?}");
        let gw = Gateway::start(&["--jwt-public-key", &p(public), "--jwt-algorithm", &name]);
        let mut c = Client::connect(gw.client_addr, &format!("/ws?token={token}"));
        assert_eq!(c.recv_json()["uid"], "carol", "{name}");
        assert_rooms_granted(&gw, &mut c, &["team-7", "lobby"], &["lobby2", "team"]);
        // An HS256 token signed with the public key text is refused (algorithm confusion).
        let confused = hs256(
            &String::from_utf8_lossy(&std::fs::read(p(public)).unwrap()),
            "carol",
            now() + 600,
        );
        assert_eq!(
            status(&gw, &format!("/ws?token={confused}"), ""),
            401,
            "{name}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn origin_allowlist() {
    let gw = Gateway::dev(&[
        "--allowed-origins",
        "https://app.example, https://m.example",
    ]);
    assert_eq!(
        status(&gw, "/ws?uid=a", "Origin: https://app.example\r\n"),
        101
    );
    assert_eq!(
        status(&gw, "/ws?uid=a", "Origin: https://evil.example\r\n"),
        403
    );
    assert_eq!(
        status(&gw, "/echo", "Origin: https://evil.example\r\n"),
        403
    );
    assert_eq!(
        status(&gw, "/ws?uid=a", ""),
        101,
        "non-browser clients send no Origin"
    );
    assert_eq!(gw.metric("pushgate_handshakes_total{result=\"403\"}"), 2.0);
}

/// Joins each room: the granted ones are joined (a push to the room arrives), the others
/// are refused with `forbidden` and the push to them does not arrive.
fn assert_rooms_granted(gw: &Gateway, c: &mut Client, granted: &[&str], refused: &[&str]) {
    for room in refused {
        c.send_text(&format!(r#"{{"type":"join","room":"{room}"}}"#));
        let reply = c.recv_json();
        assert_eq!(reply["code"], "forbidden", "{room}: {reply}");
    }
    for room in granted {
        c.send_text(&format!(r#"{{"type":"join","room":"{room}"}}"#));
    }
    // Requests are handled in order: once the pong is back, the joins are in place.
    c.send_text(r#"{"type":"ping"}"#);
    assert_eq!(c.recv_json()["type"], "pong");
    for room in granted.iter().chain(refused) {
        let body = format!(r#"{{"rooms":["{room}"],"data":"{room}"}}"#);
        assert_eq!(
            common::post(gw.control_addr, "/v1/push", &body, None).0,
            200
        );
    }
    for room in granted {
        assert_eq!(c.recv_json()["data"], *room);
    }
    assert!(matches!(
        c.read(Duration::from_millis(300)),
        common::Read_::Timeout
    ));
}

#[test]
fn the_rooms_claim_limits_joins() {
    let gw = Gateway::start(&["--jwt-secret", "topsecret"]);
    let claims = |rooms: serde_json::Value| {
        let mut c = serde_json::json!({"sub": "dave", "exp": now() + 600});
        if !rooms.is_null() {
            c["rooms"] = rooms;
        }
        encode(
            &Header::new(Algorithm::HS256),
            &c,
            &EncodingKey::from_secret(b"topsecret"),
        )
        .unwrap()
    };
    let t = claims(serde_json::json!(["news.*", "general"]));
    let mut c = Client::connect(gw.client_addr, &format!("/ws?token={t}"));
    c.recv_json();
    assert_rooms_granted(&gw, &mut c, &["news.eu", "general"], &["generals", "news"]);
    assert_eq!(
        gw.metric("pushgate_client_requests_total{type=\"forbidden\"}"),
        2.0
    );
    // No claim: any room. An empty claim: none.
    let t = claims(serde_json::Value::Null);
    let mut c = Client::connect(gw.client_addr, &format!("/ws?token={t}"));
    c.recv_json();
    assert_rooms_granted(&gw, &mut c, &["anything"], &[]);
    let t = claims(serde_json::json!([]));
    let mut c = Client::connect(gw.client_addr, &format!("/ws?token={t}"));
    c.recv_json();
    assert_rooms_granted(&gw, &mut c, &[], &["anything"]);
    // A claim that is not a list of room names makes the token invalid.
    let t = claims(serde_json::json!("general"));
    assert_eq!(status(&gw, &format!("/ws?token={t}"), ""), 401);
    // Dev mode allows any room.
    let dev = Gateway::dev(&[]);
    let mut c = Client::connect(dev.client_addr, "/ws?uid=erin");
    c.recv_json();
    assert_rooms_granted(&dev, &mut c, &["x", "y*"], &[]);
}

/// Issue 31: `nbf` was not checked, so a token issued for later worked at once.
#[test]
fn a_token_before_its_nbf_gets_401_and_within_the_leeway_connects() {
    let gw = Gateway::start(&["--jwt-secret", "k", "--jwt-leeway", "30"]);
    let token = |nbf: u64| {
        encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "later", "exp": now() + 7200, "nbf": nbf}),
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap()
    };
    assert_eq!(
        status(&gw, &format!("/ws?token={}", token(now() + 3600)), ""),
        401
    );
    let mut c = Client::connect(gw.client_addr, &format!("/ws?token={}", token(now() + 5)));
    assert_eq!(c.recv_json()["uid"], "later");
    assert_eq!(gw.metric("pushgate_handshakes_total{result=\"401\"}"), 1.0);
}
