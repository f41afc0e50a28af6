//! Safe by default: a node without a JWT key starts only with `--dev`; a control listener
//! beyond loopback needs an API key; `/echo` is off outside dev mode and, turned on, takes
//! `/ws`'s credentials; a second node on a port in use stops at start and leaves the first
//! one's clients alone.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{post, received, Client, Gateway};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

/// Runs the binary with `args` (and no `PUSHGATE_*` from the test's environment but the
/// I/O backend) until it exits; one that is still running after 10 s started, and fails
/// the test.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pushgate"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PUSHGATE_") && k != "PUSHGATE_IO" {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .envs(env.iter().copied())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{args:?} started: {}", String::from_utf8_lossy(&out.stdout));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// The one line of reason a refused start prints, after checking it exited non-zero.
fn refusal(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "it started: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line of reason: {stderr}");
    match lines[0].strip_prefix("pushgate: ") {
        Some(reason) => reason.to_owned(),
        None => panic!("not a reason: {stderr}"),
    }
}

const LOCAL: [&str; 4] = ["--listen", "127.0.0.1:0", "--control", "127.0.0.1:0"];

#[test]
fn no_jwt_key_and_no_dev_refuses_to_start_naming_the_flags() {
    let reason = refusal(&run(&LOCAL, &[]));
    assert_eq!(
        reason,
        "no JWT key: set --jwt-secret (PUSHGATE_JWT_SECRET) or --jwt-public-key \
         (PUSHGATE_JWT_PUBLIC_KEY), or pass --dev (PUSHGATE_DEV=true) to trust ?uid= on a \
         development node"
    );
    // An empty secret is no secret; PUSHGATE_DEV=false is not dev mode.
    refusal(&run(&LOCAL, &[("PUSHGATE_JWT_SECRET", "")]));
    refusal(&run(&LOCAL, &[("PUSHGATE_DEV", "false")]));
}

#[test]
fn dev_mode_works_as_before_by_flag_and_by_environment() {
    for gw in [
        Gateway::dev(&[]),
        Gateway::start_env(&[], &[("PUSHGATE_DEV", "true")]),
        Gateway::start_env(&[], &[("PUSHGATE_DEV", "1")]),
    ] {
        let mut alice = Client::connect(gw.client_addr, "/ws?uid=alice");
        assert_eq!(alice.recv_json()["type"], "welcome");
        let (status, _) = post(
            gw.control_addr,
            "/v1/push",
            &json!({"to": ["alice"], "data": "hi"}).to_string(),
            None,
        );
        assert_eq!(status, 200);
        assert_eq!(received(&mut alice, 300), [json!("hi")]);
        let mut echo = Client::connect(gw.client_addr, "/echo");
        echo.send_text("x");
        assert_eq!(
            echo.recv(),
            protocol::Message::Text(bytes::Bytes::from_static(b"x"))
        );
        let started = gw.log.lock().unwrap().join("\n");
        assert!(started.contains("DEV MODE (--dev)"), "{started}");
    }
}

fn status(gw: &Gateway, path: &str) -> u16 {
    Client::try_connect(TcpStream::connect(gw.client_addr).unwrap(), path, "").1
}

fn token(secret: &str, sub: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "exp": exp}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[test]
fn echo_is_off_outside_dev_mode_and_when_on_authenticated_like_ws() {
    let gw = Gateway::start(&["--jwt-secret", "s3"]);
    assert_eq!(status(&gw, "/echo"), 404);
    assert_eq!(
        status(&gw, &format!("/echo?token={}", token("s3", "a"))),
        404
    );
    assert_eq!(status(&gw, "/ws?uid=alice"), 401, "?uid= is not trusted");
    let on = Gateway::start(&["--jwt-secret", "s3", "--echo", "true"]);
    assert_eq!(status(&on, "/echo"), 401);
    assert_eq!(status(&on, "/echo?uid=alice"), 401);
    assert_eq!(
        status(&on, &format!("/echo?token={}", token("wrong", "a"))),
        401
    );
    let mut echo = Client::connect(on.client_addr, &format!("/echo?token={}", token("s3", "a")));
    echo.send_text("back");
    assert_eq!(
        echo.recv(),
        protocol::Message::Text(bytes::Bytes::from_static(b"back"))
    );
    assert_eq!(on.metric("pushgate_handshakes_total{result=\"401\"}"), 3.0);
}

#[test]
fn a_control_listener_beyond_loopback_without_an_api_key_refuses_to_start() {
    let args = [
        "--jwt-secret",
        "s3",
        "--listen",
        "127.0.0.1:0",
        "--control",
        "0.0.0.0:0",
    ];
    let reason = refusal(&run(&args, &[]));
    assert_eq!(
        reason,
        "the control listener 0.0.0.0:0 is not on loopback and has no API key: set --api-key \
         (PUSHGATE_API_KEY), listen on 127.0.0.1 with --control, or pass --dev \
         (PUSHGATE_DEV=true) on a development node"
    );
    // With a key (flag or environment) it starts, and the API asks for the key.
    let gw = Gateway::start_env(&args, &[("PUSHGATE_API_KEY", "k3y")]);
    let control = ([127, 0, 0, 1], gw.control_addr.port()).into();
    let body = json!({"to": ["nobody"], "data": 1}).to_string();
    assert_eq!(post(control, "/v1/push", &body, None).0, 401);
    assert_eq!(post(control, "/v1/push", &body, Some("k3y")).0, 200);
    // --dev may leave it open, loudly.
    let open = Gateway::dev(&args);
    let log = open.log.lock().unwrap().join("\n");
    assert!(log.contains("the control API has no key"), "{log}");
}

/// Without the probe, the second node would join the first one's `SO_REUSEPORT` group and
/// take a share of its new clients.
#[test]
fn a_second_node_on_a_port_in_use_exits_and_the_first_keeps_its_clients() {
    let first = Gateway::dev(&["--reactors", "2"]);
    let mut alice = Client::connect(first.client_addr, "/ws?uid=alice");
    assert_eq!(alice.recv_json()["type"], "welcome");
    let (client, control) = (
        first.client_addr.to_string(),
        first.control_addr.to_string(),
    );
    for (args, listener) in [
        (["--listen", &client, "--control", "127.0.0.1:0"], "client"),
        (
            ["--listen", "127.0.0.1:0", "--control", &control],
            "control",
        ),
    ] {
        let reason = refusal(&run(&[&["--dev"][..], &args].concat(), &[]));
        let addr = if listener == "client" {
            &client
        } else {
            &control
        };
        assert_eq!(
            reason,
            format!(
                "starting the listeners: {listener} listener {addr}: address already in use \
                 by another process"
            )
        );
    }
    // The first node still has its client, and every new client lands on it.
    let body = json!({"to": ["alice"], "data": "still here"}).to_string();
    assert_eq!(post(first.control_addr, "/v1/push", &body, None).0, 200);
    assert_eq!(received(&mut alice, 300), [json!("still here")]);
    let mut others = Vec::new();
    for i in 0..20 {
        let mut c = Client::connect(first.client_addr, &format!("/ws?uid=u{i}"));
        assert_eq!(c.recv_json()["type"], "welcome");
        others.push(c);
    }
    assert_eq!(first.metric("pushgate_users_online"), 21.0);
}
