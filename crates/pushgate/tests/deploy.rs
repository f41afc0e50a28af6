//! The operations material in `deploy/` stays true to the gateway: every metric the
//! dashboard and the alert rules use is one a running gateway exports, and each config
//! file passes its own checker (promtool, systemd-analyze, nats-server -t).
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::Gateway;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every `pushgate_*` metric name in `text`, histogram series reduced to their family.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("pushgate_") {
        let start = i + pos;
        let boundary = start == 0 || {
            let b = bytes[start - 1];
            !(b.is_ascii_alphanumeric() || b == b'_')
        };
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            let name = &text[start..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(family.to_owned());
        }
        i = end;
    }
    out
}

/// The metric families a gateway exports, from its `# TYPE` lines.
fn exported(gw: &Gateway) -> BTreeSet<String> {
    let (status, body) = gw.control_get("/metrics");
    assert_eq!(status, 200);
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn dashboard_and_alerts_use_only_exported_metrics() {
    // With TLS, so the families only a wss:// node exports are there too.
    let pki = common::tls::TestPki::new("deploy", "pushgate-test");
    let gw = pki.gateway(&[]);
    let have = exported(&gw);
    assert!(have.contains("pushgate_push_latency_seconds"), "{have:?}");
    let dashboard = read("deploy/grafana/pushgate-dashboard.json");
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() > 10));
    for (file, text) in [
        ("dashboard", dashboard.as_str()),
        ("alerts", read("deploy/prometheus/alerts.yml").as_str()),
        ("operations guide", read("docs/OPERATIONS.md").as_str()),
    ] {
        let used = metric_names(text);
        assert!(!used.is_empty(), "{file} names no metric");
        let missing: Vec<_> = used.difference(&have).collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics the gateway does not export: {missing:?}"
        );
    }
    // And the dashboard shows every area the operators asked for.
    let used = metric_names(&dashboard);
    for m in [
        "pushgate_connections_upgraded",
        "pushgate_users_online",
        "pushgate_rooms",
        "pushgate_push_requests_total",
        "pushgate_push_latency_seconds",
        "pushgate_messages_dropped_total",
        "pushgate_timeouts_total",
        "pushgate_bus_connected",
    ] {
        assert!(used.contains(m), "dashboard lacks {m}");
    }
}

#[test]
fn metric_name_scanner() {
    let names = metric_names(
        "rate(pushgate_a_total[5m]) x_pushgate_b pushgate_c_bucket{le=\"1\"} pushgate_c_sum",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["pushgate_a_total", "pushgate_c"]
    );
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (run scripts/install-test-deps.sh)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn prometheus_files_pass_promtool() {
    let dir = repo().join("deploy/prometheus");
    let (ok, out) = run(Command::new("promtool")
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&dir));
    assert!(ok, "{out}");
    let (ok, out) = run(Command::new("promtool")
        .args(["check", "config", "--syntax-only", "prometheus.yml"])
        .current_dir(&dir));
    assert!(ok, "{out}");
}

#[test]
fn systemd_unit_passes_systemd_analyze() {
    // verify checks that ExecStart exists: point it at the binary under test.
    let unit = read("deploy/systemd/pushgate.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/pushgate "));
    let unit = unit.replace("/usr/local/bin/pushgate", env!("CARGO_BIN_EXE_pushgate"));
    let dir = tempdir("systemd");
    let path = dir.join("pushgate.service");
    std::fs::write(&path, unit).unwrap();
    let (ok, out) = run(Command::new("systemd-analyze").args(["verify", path.to_str().unwrap()]));
    // Warnings about the host (no systemd running in a container) are not the unit's.
    let unit_problems: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("pushgate.service"))
        .collect();
    assert!(ok && unit_problems.is_empty(), "{out}");
    // The stop timeout outlasts the drain the example config sets.
    let stop = number_after(&read("deploy/systemd/pushgate.service"), "TimeoutStopSec=");
    let drain = number_after(&read("deploy/systemd/pushgate.toml"), "shutdown_drain = ");
    assert!(stop > drain + 5.0, "TimeoutStopSec {stop} vs drain {drain}");
}

#[test]
fn example_config_is_accepted_by_the_gateway() {
    // The binary parses the shipped TOML (deny_unknown_fields catches typos) and starts.
    let dir = tempdir("config");
    let cfg = read("deploy/systemd/pushgate.toml")
        .replace("0.0.0.0:8080", "127.0.0.1:0")
        .replace("127.0.0.1:8081", "127.0.0.1:0");
    std::fs::write(dir.join("pushgate.toml"), cfg).unwrap();
    let gw = Gateway::start(&["--config", dir.join("pushgate.toml").to_str().unwrap()]);
    assert_eq!(gw.control_get("/healthz").0, 200);
    // The Kubernetes ConfigMap's TOML too (its NATS names do not resolve here: the node
    // starts, serves and reports the bus down).
    let k8s = read("deploy/k8s/pushgate.yaml");
    let toml = block_scalar(&k8s, "pushgate.toml: |")
        .replace("0.0.0.0:8080", "127.0.0.1:0")
        .replace("0.0.0.0:8081", "127.0.0.1:0");
    std::fs::write(dir.join("k8s.toml"), toml).unwrap();
    let gw = Gateway::start(&["--config", dir.join("k8s.toml").to_str().unwrap()]);
    assert_eq!(gw.control_get("/healthz").0, 200);
    assert_eq!(gw.control_get("/readyz").0, 503);
}

#[test]
fn kubernetes_grace_period_outlasts_prestop_and_drain() {
    let k8s = read("deploy/k8s/pushgate.yaml");
    let grace = number_after(&k8s, "terminationGracePeriodSeconds: ");
    let drain = number_after(&k8s, "shutdown_drain = ");
    let pre_stop = number_after(&k8s, "\"/bin/sleep\", \"");
    assert!(
        grace > pre_stop + drain + 5.0,
        "grace {grace} vs preStop {pre_stop} + drain {drain}"
    );
}

#[test]
fn nats_cluster_config_passes_nats_server_check() {
    let conf = block_scalar(&read("deploy/k8s/nats.yaml"), "nats.conf: |");
    let dir = tempdir("nats");
    let path = dir.join("nats.conf");
    std::fs::write(&path, conf).unwrap();
    let (ok, out) = run(Command::new("nats-server")
        .args(["-t", "-c", path.to_str().unwrap()])
        .env("POD_NAME", "nats-0"));
    assert!(ok, "{out}");
}

#[test]
fn sysctl_keys_exist_in_this_kernel() {
    let conf = read("deploy/sysctl/99-pushgate.conf");
    let mut n = 0;
    for line in conf.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once('=').expect("key = value");
        let key = key.trim();
        assert!(!value.trim().is_empty(), "{key} has no value");
        n += 1;
        if key.starts_with("net.netfilter.") {
            continue; // present only with the conntrack module loaded
        }
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        assert!(path.exists(), "{key}: no {}", path.display());
    }
    assert!(n >= 10);
}

fn number_after(text: &str, marker: &str) -> f64 {
    let at = text.find(marker).unwrap_or_else(|| panic!("no {marker:?}"));
    let rest = &text[at + marker.len()..];
    let digits: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after {marker:?}"))
}

/// The lines of a YAML block scalar (`key: |`), dedented.
fn block_scalar(yaml: &str, header: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| !l.trim_end().ends_with(header));
    let head = lines.next().unwrap_or_else(|| panic!("no {header:?}"));
    let key_indent = head.len() - head.trim_start().len();
    let body: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > key_indent)
        .collect();
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    body.iter()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pushgate-deploy-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
