//! The TypeScript client (`clients/js`) against real gateways: built with `tsc`, then its
//! tests run with `node --test`, in Node and in headless Chromium, with these gateways'
//! addresses — forced disconnects (kicks and TCP resets through a proxy), WebSocket and SSE
//! refused by a proxy, a token expiring mid-session, a restarted gateway, and a client moved
//! between two cluster nodes with JetStream history — each checking that every message
//! arrives exactly once, in order. The npm packages come from
//! `scripts/install-test-deps.sh` (`npm ci` in `clients/js`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use common::nats::Js;
use common::Gateway;

const SECRET: &str = "js-client-test-secret";
const API_KEY: &str = "js-client-test-key";

pub fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../clients/js")
}

/// Compiles the client once per test binary (`dist/` is not committed).
pub fn build_client() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = js_dir();
        let tsc = dir.join("node_modules/.bin/tsc");
        let out = Command::new(&tsc)
            .args(["-p", "."])
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} (run scripts/install-test-deps.sh): {e}",
                    tsc.display()
                )
            });
        assert!(
            out.status.success(),
            "tsc failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// The gateway the client tests run against: JWT auth with no clock leeway (so a
/// short token expires when it says), a fast advertised backoff, short polls.
fn gateway() -> Gateway {
    Gateway::start(&[
        "--jwt-secret",
        SECRET,
        "--api-key",
        API_KEY,
        "--jwt-leeway",
        "0",
        "--reconnect-base-ms",
        "50",
        "--reconnect-cap-ms",
        "400",
        "--poll-timeout",
        "5",
    ])
}

/// Runs `node --test <files>` in `clients/js` with the gateway's addresses; fails with
/// node's report when any test fails.
fn node_test(files: &[&str], envs: &[(&str, String)]) {
    let out = Command::new("node")
        // A failed test may leave a client reconnecting: the runner must still exit.
        .args([
            "--test",
            "--test-reporter=spec",
            "--test-timeout=90000",
            "--test-force-exit",
        ])
        .args(files)
        .current_dir(js_dir())
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run node");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(
        out.status.success(),
        "node --test {files:?} failed:\n{report}"
    );
}

fn base_env(gw: &Gateway) -> Vec<(&'static str, String)> {
    vec![
        ("PUSHGATE_CLIENT", gw.client_addr.to_string()),
        ("PUSHGATE_CONTROL", gw.control_addr.to_string()),
        ("PUSHGATE_BIN", env!("CARGO_BIN_EXE_pushgate").to_owned()),
        ("PUSHGATE_SECRET", SECRET.to_owned()),
        ("PUSHGATE_API_KEY", API_KEY.to_owned()),
    ]
}

#[test]
fn node_client_against_a_gateway() {
    build_client();
    let gw = gateway();
    node_test(
        &["test/unit.test.mjs", "test/node.test.mjs"],
        &base_env(&gw),
    );
}

/// A cluster node with history on JetStream, once its stream is ready.
fn cluster_node(nats: &str, id: &str) -> Gateway {
    let gw = common::nats::node(
        nats,
        id,
        &[
            "--jwt-secret",
            SECRET,
            "--api-key",
            API_KEY,
            "--reconnect-base-ms",
            "50",
            "--reconnect-cap-ms",
            "400",
        ],
    );
    let ready = gw.eventually(std::time::Duration::from_secs(10), |g| {
        g.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("history stream ready on JetStream"))
    });
    assert!(ready, "node {id}: no history stream");
    gw
}

#[test]
fn chromium_client_against_a_gateway() {
    build_client();
    let gw = gateway();
    node_test(&["test/browser.test.mjs"], &base_env(&gw));
}

#[test]
fn node_client_moves_between_cluster_nodes() {
    build_client();
    let js = Js::start();
    let a = cluster_node(&js.nats.url(), "js-a");
    let b = cluster_node(&js.nats.url(), "js-b");
    let mut envs = base_env(&a);
    envs.push(("PUSHGATE_CLIENT_B", b.client_addr.to_string()));
    envs.push(("PUSHGATE_CONTROL_B", b.control_addr.to_string()));
    node_test(&["test/cluster.test.mjs"], &envs);
}
