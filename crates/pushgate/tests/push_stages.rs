//! Where a push's time goes: `pushgate_push_stage_seconds{stage}` observes every stage of
//! every push once, and `pushgate_reactor_turn_seconds{reactor}` every reactor's turns.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::time::Duration;

use common::{post, users_online, Client, Gateway};

const USERS: usize = 8;

#[test]
fn every_push_is_observed_once_in_every_stage() {
    // Two reactors, so pushes may cross from the one that read the request to the one
    // that holds the recipient; timers that are not the subject are out of the way.
    let gw = Gateway::dev(&[
        "--reactors",
        "2",
        "--heartbeat",
        "300",
        "--idle-timeout",
        "600",
        "--control-first-request-timeout",
        "60",
    ]);
    let mut clients: Vec<Client> = (0..USERS)
        .map(|i| {
            let mut c = Client::connect(gw.client_addr, &format!("/ws?uid=u{i}"));
            assert_eq!(c.recv_json()["type"], "welcome");
            c
        })
        .collect();
    users_online(&gw, USERS as f64);
    for (i, c) in clients.iter_mut().enumerate() {
        let body = format!(r#"{{"to":["u{i}"],"data":{i}}}"#);
        let (status, resp) = post(gw.control_addr, "/v1/push", &body, None);
        assert_eq!(status, 200, "{resp}");
        assert_eq!(c.recv_json()["data"], i);
    }
    let count = |gw: &Gateway, stage: &str| {
        gw.metric(&format!(
            "pushgate_push_stage_seconds_count{{stage=\"{stage}\"}}"
        ))
    };
    let n = USERS as f64;
    // A frame can reach the client before its reactor records the write: wait for it.
    assert!(
        gw.eventually(Duration::from_secs(30), |gw| count(gw, "write") >= n),
        "write stage: {} of {n}",
        count(&gw, "write")
    );
    assert_eq!(count(&gw, "write"), n);
    assert_eq!(count(&gw, "route"), n);
    assert_eq!(count(&gw, "handoff_local") + count(&gw, "handoff_cross"), n);
    // Every control request read counts (the scrapes too), the pushes among them.
    assert!(count(&gw, "read") >= n);
    for reactor in ["0", "1"] {
        let turns = gw.metric(&format!(
            "pushgate_reactor_turn_seconds_count{{reactor=\"{reactor}\"}}"
        ));
        assert!(turns >= 1.0, "reactor {reactor}: {turns} turns");
    }
}
