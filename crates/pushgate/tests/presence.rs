//! One node: `/v1/presence`, `/v1/disconnect` and the per-user connection cap
//! (`--max-conns-per-user`, 4008), in dev mode.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::time::Duration;

use common::{http, post, users_online, Client, Gateway, Read_};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(5);

fn ws(gw: &Gateway, query: &str) -> Client {
    let mut c = Client::connect(gw.client_addr, &format!("/ws?{query}"));
    assert_eq!(c.recv_json()["type"], "welcome");
    c
}

fn presence(gw: &Gateway, query: &str) -> (u16, Value) {
    let (status, body) = gw.control_get(&format!("/v1/presence?{query}"));
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn disconnect(gw: &Gateway, body: &str) -> (u16, Value) {
    let (status, body) = post(gw.control_addr, "/v1/disconnect", body, None);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// The devices listed for one user, sorted.
fn devices(v: &Value, uid: &str) -> Vec<String> {
    let mut d: Vec<String> = v["users"][uid]
        .as_array()
        .unwrap_or_else(|| panic!("no {uid} in {v}"))
        .iter()
        .map(|e| e["device"].as_str().unwrap().to_owned())
        .collect();
    d.sort();
    d
}

#[test]
fn presence_lists_the_local_connections_of_each_user() {
    let gw = Gateway::dev(&["--node-id", "solo", "--reactors", "2"]);
    let _a = ws(&gw, "uid=alice&device=phone");
    let _b = ws(&gw, "uid=alice");
    let _c = ws(&gw, "uid=b%20ob&device=web");
    users_online(&gw, 2.0);

    let (status, v) = presence(&gw, "uid=alice&uid=b%20ob&uid=nobody&uid=alice");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ok"], true);
    assert_eq!(devices(&v, "alice"), ["default", "phone"]);
    assert_eq!(devices(&v, "b ob"), ["web"]);
    assert_eq!(v["users"]["nobody"], json!([]));
    assert!(
        v.get("partial").is_none(),
        "a node alone has nobody to miss"
    );
    let e = &v["users"]["b ob"][0];
    assert_eq!(e["node"], "solo");
    assert!(e["conn"].as_str().is_some_and(|c| !c.is_empty()));
    let conns: Vec<&str> = v["users"]["alice"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["conn"].as_str().unwrap())
        .collect();
    assert_ne!(conns[0], conns[1], "each connection has its own ID");
    assert_eq!(
        gw.metric("pushgate_presence_queries_total{result=\"complete\"}"),
        1.0
    );

    // Bounds: at least one uid, no empty one, at most --presence-max-uids.
    for bad in ["", "uid=", "x=1"] {
        assert_eq!(presence(&gw, bad).0, 400, "{bad:?}");
    }
    let many: Vec<String> = (0..101).map(|i| format!("uid=u{i}")).collect();
    assert_eq!(presence(&gw, &many.join("&")).0, 400);
    assert_eq!(presence(&gw, &many[..100].join("&")).0, 200);
    assert_eq!(
        gw.metric("pushgate_presence_queries_total{result=\"bad_request\"}"),
        4.0
    );
    // GET only.
    let (status, _) = post(gw.control_addr, "/v1/presence?uid=a", "", None);
    assert_eq!(status, 405);
}

#[test]
fn presence_max_uids_is_configurable() {
    let gw = Gateway::dev(&["--presence-max-uids", "2"]);
    assert_eq!(presence(&gw, "uid=a&uid=b").0, 200);
    assert_eq!(presence(&gw, "uid=a&uid=b&uid=c").0, 400);
}

#[test]
fn operator_routes_need_the_api_key() {
    let gw = Gateway::dev(&["--api-key", "k3y"]);
    let _a = ws(&gw, "uid=alice");
    assert_eq!(presence(&gw, "uid=alice").0, 401);
    let get = |auth: &str| {
        http(
            gw.control_addr,
            &format!(
                "GET /v1/presence?uid=alice HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
            ),
        )
    };
    assert_eq!(get("Authorization: Bearer nope\r\n").0, 401);
    let (status, body) = get("Authorization: Bearer k3y\r\n");
    assert_eq!(status, 200, "{body}");
    let body = r#"{"uid":"alice","code":4001}"#;
    assert_eq!(post(gw.control_addr, "/v1/disconnect", body, None).0, 401);
    assert_eq!(
        post(gw.control_addr, "/v1/disconnect", body, Some("k3y")).0,
        200
    );
}

#[test]
fn disconnect_closes_with_the_code_and_reason_given() {
    let gw = Gateway::dev(&["--reactors", "2"]);
    let mut phone = ws(&gw, "uid=alice&device=phone");
    let mut web = ws(&gw, "uid=alice&device=web");
    let mut bob = ws(&gw, "uid=bob");
    users_online(&gw, 2.0);

    // One device only.
    let (status, v) = disconnect(
        &gw,
        r#"{"uid":"alice","device":"phone","code":4001,"reason":"logged out élsewhere"}"#,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!({"ok":true,"closed":1,"nodes":[]}));
    assert_eq!(
        phone.close_frame(WAIT),
        (4001, "logged out élsewhere".into())
    );
    // The client answers the close; the connection is gone once it has.
    phone.send_close(4001);
    phone.expect_eof(WAIT);
    assert!(
        matches!(web.read(Duration::from_millis(200)), Read_::Timeout),
        "the other device stays"
    );

    // Every device of the user, with 1008.
    let (status, v) = disconnect(&gw, r#"{"uid":"alice","code":1008}"#);
    assert_eq!((status, &v["closed"]), (200, &json!(1)));
    assert_eq!(web.close_frame(WAIT), (1008, String::new()));
    assert!(matches!(
        bob.read(Duration::from_millis(200)),
        Read_::Timeout
    ));
    // Nobody left to close is not an error.
    let (status, v) = disconnect(&gw, r#"{"uid":"nobody","code":4000}"#);
    assert_eq!((status, &v["closed"]), (200, &json!(0)));
    assert_eq!(
        gw.metric("pushgate_router_closes_total{reason=\"disconnect\"}"),
        2.0
    );
    assert_eq!(
        gw.metric("pushgate_disconnect_requests_total{result=\"ok\"}"),
        3.0
    );
}

#[test]
fn disconnect_refuses_bad_codes_and_bodies() {
    let gw = Gateway::dev(&[]);
    let mut alice = ws(&gw, "uid=alice");
    users_online(&gw, 1.0);
    let long = format!(
        r#"{{"uid":"alice","code":4001,"reason":"{}"}}"#,
        "x".repeat(124)
    );
    let bad = [
        r#"{"uid":"alice","code":1000}"#,
        r#"{"uid":"alice","code":1001}"#,
        r#"{"uid":"alice","code":3999}"#,
        r#"{"uid":"alice","code":5000}"#,
        r#"{"uid":"alice","code":-1}"#,
        r#"{"uid":"alice","code":"4001"}"#,
        r#"{"uid":"alice"}"#,
        r#"{"code":4001}"#,
        r#"{"uid":"","code":4001}"#,
        r#"{"uid":"alice","code":4001,"device":""}"#,
        r#"["alice",4001]"#,
        "not json",
        long.as_str(),
    ];
    for body in bad {
        let (status, v) = disconnect(&gw, body);
        assert_eq!(status, 400, "{body} -> {v}");
        assert_eq!(v["ok"], false, "{v}");
    }
    // 123 bytes of reason is the most a close frame carries: accepted.
    let most = format!(
        r#"{{"uid":"alice","code":4999,"reason":"{}"}}"#,
        "é".repeat(61)
    );
    assert_eq!(disconnect(&gw, &most).0, 200);
    assert_eq!(alice.close_frame(WAIT), (4999, "é".repeat(61)));
    assert_eq!(
        gw.metric("pushgate_disconnect_requests_total{result=\"bad_request\"}"),
        bad.len() as f64
    );
    let (status, _) = gw.control_get("/v1/disconnect");
    assert_eq!(status, 405);
}

#[test]
fn the_per_user_cap_closes_the_oldest_with_4008() {
    // No history: a new connection gets no replay of the push below.
    let gw = Gateway::dev(&[
        "--max-conns-per-user",
        "3",
        "--reactors",
        "2",
        "--history-size",
        "0",
    ]);
    let mut first = ws(&gw, "uid=u");
    let mut second = ws(&gw, "uid=u");
    let mut third = ws(&gw, "uid=u");
    let mut other = ws(&gw, "uid=v");
    users_online(&gw, 2.0);
    assert!(matches!(
        first.read(Duration::from_millis(200)),
        Read_::Timeout
    ));
    let mut fourth = ws(&gw, "uid=u");
    let (code, _) = first.close_frame(WAIT);
    assert_eq!(code, 4008, "the oldest goes");
    for c in [&mut second, &mut third, &mut fourth, &mut other] {
        assert!(matches!(c.read(Duration::from_millis(100)), Read_::Timeout));
    }
    let (_, v) = presence(&gw, "uid=u");
    assert_eq!(v["users"]["u"].as_array().unwrap().len(), 3);
    // Pushes reach the three left, and only them.
    let (status, _) = post(
        gw.control_addr,
        "/v1/push",
        r#"{"to":["u"],"data":"hi"}"#,
        None,
    );
    assert_eq!(status, 200);
    for c in [&mut second, &mut third, &mut fourth] {
        assert_eq!(c.recv_json()["data"], "hi");
    }
    let mut fifth = ws(&gw, "uid=u");
    assert_eq!(second.close_frame(WAIT).0, 4008);
    let r = fifth.read(Duration::from_millis(100));
    assert!(matches!(r, Read_::Timeout), "{r:?}");
    assert_eq!(
        gw.metric("pushgate_router_closes_total{reason=\"over_cap\"}"),
        2.0
    );
}

#[test]
fn a_reconnect_of_the_same_device_replaces_its_connection() {
    let gw = Gateway::dev(&["--max-conns-per-user", "2"]);
    let mut phone = ws(&gw, "uid=u&device=phone");
    let mut web = ws(&gw, "uid=u&device=web");
    users_online(&gw, 1.0);
    // The phone reconnects: its old connection goes, the web one stays although the
    // user is at the cap.
    let mut phone2 = ws(&gw, "uid=u&device=phone");
    let (code, reason) = phone.close_frame(WAIT);
    assert_eq!(code, 4008);
    assert!(reason.contains("same device"), "{reason}");
    assert!(matches!(
        web.read(Duration::from_millis(200)),
        Read_::Timeout
    ));
    let (_, v) = presence(&gw, "uid=u");
    assert_eq!(devices(&v, "u"), ["phone", "web"]);
    // A third device is over the cap: the oldest (web) goes.
    let _tablet = ws(&gw, "uid=u&device=tablet");
    assert_eq!(web.close_frame(WAIT).0, 4008);
    assert!(matches!(
        phone2.read(Duration::from_millis(200)),
        Read_::Timeout
    ));
    let (_, v) = presence(&gw, "uid=u");
    assert_eq!(devices(&v, "u"), ["phone", "tablet"]);
    assert_eq!(
        gw.metric("pushgate_router_closes_total{reason=\"replaced\"}"),
        1.0
    );
    assert_eq!(
        gw.metric("pushgate_router_closes_total{reason=\"over_cap\"}"),
        1.0
    );
}

#[test]
fn max_conns_per_user_must_be_positive() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pushgate"))
        .args([
            "--dev",
            "--max-conns-per-user",
            "0",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_conns_per_user"));
}
