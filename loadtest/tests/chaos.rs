//! The short chaos run (`pushgate-load chaos`, one round of every fault kind, about a
//! minute of load): 3 NATS JetStream servers and 3 gateways in their own network
//! namespaces (deploy/local-cluster.sh), devices resuming on any node, publishers
//! retrying with idempotent ids. Fails on any push answered 200 that a device of its
//! recipient lost, got twice or out of order, and when the clients of a killed node do not
//! come back. Needs root and network namespaces (skipped, saying why, without them) and
//! the pushgate binary (built here if missing).
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Why network namespaces cannot be made here, if they cannot.
fn namespaces_unavailable() -> Option<String> {
    let probe = format!("pgcprobe{}", std::process::id());
    match Command::new("ip").args(["netns", "add", &probe]).output() {
        Err(e) => Some(format!("no ip command: {e}")),
        Ok(out) if !out.status.success() => Some(format!(
            "ip netns add failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).status();
            None
        }
    }
}

/// The gateway binary of this build profile, next to the load tool's. Built as the
/// README's test command builds it (the workspace's tests, so the same features of every
/// dependency): when that command runs this test, the binary is already there and fresh,
/// where `cargo build -p pushgate` would compile the gateway and half its dependencies
/// again with other features.
fn pushgate() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_pushgate-load"))
        .with_file_name(format!("pushgate{}", std::env::consts::EXE_SUFFIX));
    let mut build = Command::new(env!("CARGO"));
    build.args(["test", "--workspace", "--no-run", "--locked"]);
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    let status = build.current_dir(root()).status().unwrap();
    assert!(status.success(), "building the workspace's tests failed");
    assert!(bin.exists(), "no {}", bin.display());
    bin
}

#[test]
fn every_fault_once_loses_duplicates_and_reorders_nothing() {
    if let Some(why) = namespaces_unavailable() {
        println!("SKIPPED: network namespaces are unavailable here ({why})");
        return;
    }
    let bin = pushgate();
    let dir = std::env::temp_dir().join(format!("pushgate-chaos-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_pushgate-load"))
        .arg("chaos")
        .arg("--script")
        .arg(root().join("deploy/local-cluster.sh"))
        .arg("--bin")
        .arg(&bin)
        .arg("--dir")
        .arg(&dir)
        .args([
            "--users",
            "100",
            "--devices",
            "2",
            "--rate",
            "40",
            "--pause",
            "2",
        ])
        .args(["--drain", "10"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chaos run failed:\n{stdout}\n{stderr}\n(rig logs in {})",
        dir.display()
    );
    let summary: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("no JSON summary");
    assert_eq!(
        (
            &summary["lost"],
            &summary["not_back"],
            &summary["duplicated"],
            &summary["reordered"]
        ),
        (&0.into(), &0.into(), &0.into(), &0.into()),
        "{stdout}"
    );
    assert!(
        summary["accepted_messages"].as_u64().unwrap() > 500,
        "{summary}"
    );
    let faults = summary["faults"].as_array().unwrap();
    for kind in [
        "SIGKILL g",
        "SIGKILL n",
        "SIGSTOP g",
        "link down g",
        "clients cut from g",
        "blackhole g",
        "rolling SIGTERM restart",
    ] {
        assert!(
            faults
                .iter()
                .any(|f| f["name"].as_str().unwrap().starts_with(kind)),
            "no {kind} fault ran: {summary}"
        );
    }
    // The clients of a killed node came back, all of them, in seconds.
    let kill = faults
        .iter()
        .find(|f| f["name"].as_str().unwrap().starts_with("SIGKILL g"))
        .unwrap();
    assert!(kill["clients_affected"].as_u64().unwrap() > 0, "{kill}");
    assert!(
        kill["reconnects"].as_u64().unwrap() >= kill["clients_affected"].as_u64().unwrap(),
        "{kill}"
    );
    assert!(
        kill["reconnect_p99_ms"].as_u64().unwrap() < 10_000,
        "{kill}"
    );
    // Everything the rig made is gone.
    let run = std::fs::read_to_string(dir.join("rig/state"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("RUN=").map(str::to_owned))
        .unwrap();
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&netns.stdout).contains(&run));
    let links = Command::new("ip").args(["link", "show"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains(&run));
    let _ = std::fs::remove_dir_all(&dir);
}
