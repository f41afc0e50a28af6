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
fn systemd_unit_documentation_is_installed_by_its_steps() {
    let unit = read("deploy/systemd/pushgate.service");
    let docs: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("Documentation=file://"))
        .collect();
    assert!(!docs.is_empty());
    let installs: Vec<&str> = unit
        .lines()
        .filter(|l| l.starts_with("#   install "))
        .collect();
    for doc in docs {
        let step = installs
            .iter()
            .find(|l| l.trim_end().ends_with(doc))
            .unwrap_or_else(|| panic!("no install step puts {doc} there"));
        let source = step.split_whitespace().rev().nth(1).unwrap();
        assert!(repo().join(source).is_file(), "{step}: no {source}");
    }
    // The keys come from the environment file the steps write.
    let env_file = line_of(&unit, "EnvironmentFile=");
    let env_file = env_file
        .trim_start_matches("EnvironmentFile=")
        .trim_start_matches('-');
    let writes = unit
        .lines()
        .find(|l| l.starts_with('#') && l.contains(&format!(">{env_file}")))
        .unwrap_or_else(|| panic!("no step writes {env_file}"));
    assert!(writes.contains("PUSHGATE_JWT_SECRET=") && writes.contains("PUSHGATE_API_KEY="));
    assert!(
        writes.contains("umask 077") && writes.contains("rand"),
        "{writes}"
    );
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

/// What the systemd unit's environment file and the Kubernetes Secret give the node.
const KEYS: [(&str, &str); 2] = [
    ("PUSHGATE_JWT_SECRET", "test-jwt-secret"),
    ("PUSHGATE_API_KEY", "test-api-key"),
];

#[test]
fn example_configs_start_the_gateway_with_their_keys_and_refuse_without() {
    // The binary parses the shipped TOML (deny_unknown_fields catches typos) and starts
    // with the keys the unit's environment file holds; without them it refuses.
    let dir = tempdir("config");
    let cfg = read("deploy/systemd/pushgate.toml")
        .replace("0.0.0.0:8080", "127.0.0.1:0")
        .replace("127.0.0.1:8081", "127.0.0.1:0");
    let path = dir.join("pushgate.toml");
    std::fs::write(&path, cfg).unwrap();
    let args = ["--config", path.to_str().unwrap()];
    let (ok, out) = run(Command::new(env!("CARGO_BIN_EXE_pushgate")).args(args));
    assert!(!ok && out.contains("no JWT key"), "{out}");
    let gw = Gateway::start_env(&args, &KEYS);
    assert_eq!(gw.control_get("/healthz").0, 200);
    // The Kubernetes ConfigMap's TOML too, with the Secret's keys as the Deployment passes
    // them (its NATS names do not resolve here: the node starts, serves and reports the
    // bus down). Its control listener stays on all interfaces (port 0), which needs the
    // API key.
    let k8s = read("deploy/k8s/pushgate.yaml");
    let toml = block_scalar(&k8s, "pushgate.toml: |")
        .replace("0.0.0.0:8080", "127.0.0.1:0")
        .replace("0.0.0.0:8081", "0.0.0.0:0");
    let path = dir.join("k8s.toml");
    std::fs::write(&path, toml).unwrap();
    let args = ["--config", path.to_str().unwrap()];
    let (ok, out) = run(Command::new(env!("CARGO_BIN_EXE_pushgate"))
        .args(args)
        .env("PUSHGATE_JWT_SECRET", "k"));
    assert!(!ok && out.contains("has no API key"), "{out}");
    let gw = Gateway::start_env(&args, &KEYS);
    let control = ([127, 0, 0, 1], gw.control_addr.port()).into();
    assert_eq!(
        common::http(
            control,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .0,
        200
    );
    assert_eq!(
        common::http(
            control,
            "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .0,
        503
    );
    let push = r#"{"to":["a"],"data":1}"#;
    assert_eq!(common::post(control, "/v1/push", push, None).0, 401);
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

/// The documents of a YAML file (or text), parsed by PyYAML (kubernetes-validate's own
/// dependency) into JSON.
fn yaml_docs(text: &str) -> Vec<serde_json::Value> {
    let dir = tempdir("yaml");
    let path = dir.join(format!("{:x}.yaml", text.len()));
    std::fs::write(&path, text).unwrap();
    let (ok, out) = run(Command::new("python3").args([
        "-c",
        "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        path.to_str().unwrap(),
    ]));
    assert!(ok, "{out}");
    serde_json::from_str(&out).unwrap()
}

fn doc<'a>(docs: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The Secret that `deploy/k8s/secret.sh` prints.
fn generated_secret() -> String {
    let (ok, out) = run(&mut Command::new(repo().join("deploy/k8s/secret.sh")));
    assert!(ok, "{out}");
    out
}

#[test]
fn kubernetes_manifests_pass_kubernetes_validate() {
    // Strict (no unknown fields) against the schemas bundled with kubernetes-validate, so
    // no network is needed. The ServiceMonitor is a CRD it has no schema for: checked by
    // kubernetes_files_agree.
    let dir = tempdir("k8s");
    let secret = dir.join("secret.yaml");
    std::fs::write(&secret, generated_secret()).unwrap();
    let mut files = vec![secret];
    for entry in std::fs::read_dir(repo().join("deploy/k8s")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            files.push(path);
        }
    }
    assert!(files.len() >= 4, "{files:?}");
    let (ok, out) = run(Command::new("kubernetes-validate")
        .args(["--strict", "--no-warn"])
        .args(&files));
    assert!(ok, "{out}");
    let passed = out.matches(" passed for resource ").count();
    let resources: usize = files
        .iter()
        .map(|f| yaml_docs(&std::fs::read_to_string(f).unwrap()).len())
        .sum();
    assert_eq!(passed, resources - 1, "all but the ServiceMonitor: {out}");
    // And it does refuse a bad manifest, offline.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {portz: 1}\n",
    )
    .unwrap();
    let (ok, out) = run(Command::new("kubernetes-validate")
        .args(["--strict"])
        .arg(&bad));
    assert!(!ok && out.contains("portz"), "{out}");
}

#[test]
fn kubernetes_files_agree() {
    let nats = yaml_docs(&read("deploy/k8s/nats.yaml"));
    let pg = yaml_docs(&read("deploy/k8s/pushgate.yaml"));
    let conf = block_scalar(&read("deploy/k8s/nats.yaml"), "nats.conf: |");
    let toml: toml::Table = toml::from_str(&block_scalar(
        &read("deploy/k8s/pushgate.yaml"),
        "pushgate.toml: |",
    ))
    .unwrap();
    // The history stream has a copy on every NATS server, and every server is listed.
    let sts = doc(&nats, "StatefulSet", "nats");
    let servers = sts["spec"]["replicas"].as_i64().unwrap();
    assert!(servers >= 3, "{servers}");
    assert_eq!(
        toml["history_replicas"].as_integer(),
        Some(servers),
        "history_replicas"
    );
    let history_size = toml.get("history_size").and_then(|v| v.as_integer());
    assert!(history_size.unwrap_or(100) > 0, "history on");
    let routes = conf.matches("nats://nats-").count() as i64;
    assert_eq!(routes, servers, "cluster routes");
    let urls = toml["nats"].as_str().unwrap();
    assert_eq!(
        urls.split(',').count() as i64,
        servers,
        "pushgate's NATS URLs"
    );
    // JetStream stores its files on the server's volume.
    let js = conf.find("jetstream {").expect("JetStream is on");
    let store = value_after(&conf[js..], "store_dir:");
    let pod = &sts["spec"]["template"]["spec"];
    let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
    let mount_of = |path: &str| {
        mounts
            .iter()
            .filter(|m| path.starts_with(m["mountPath"].as_str().unwrap()))
            .map(|m| m["name"].as_str().unwrap().to_owned())
            .next_back()
            .unwrap_or_else(|| panic!("{path} is on no volume"))
    };
    let data = mount_of(&store);
    let claims = sts["spec"]["volumeClaimTemplates"].as_array().unwrap();
    assert!(
        claims
            .iter()
            .any(|c| c["metadata"]["name"] == data.as_str()),
        "store_dir {store} is on {data}, not a PersistentVolumeClaim"
    );
    assert!(
        conf.contains("server_name: $POD_NAME"),
        "JetStream needs unique names"
    );
    // The NATS release the tests run (major.minor).
    let tested = value_after(&read("scripts/install-test-deps.sh"), "nats_version=");
    let minor = tested.rsplit_once('.').map_or(tested.as_str(), |(m, _)| m);
    let image = pod["containers"][0]["image"].as_str().unwrap();
    assert_eq!(image, format!("nats:{minor}-alpine"));
    // The pid file nats.conf writes is the one preStop signals, on a writable volume.
    let pid_file = value_after(&conf, "pid_file:");
    let pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"].to_string();
    assert!(
        pre_stop.contains(&format!("ldm={pid_file}")),
        "{pre_stop} vs {pid_file}"
    );
    let pid_volume = mount_of(&pid_file);
    assert!(pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["name"] == pid_volume.as_str() && v["emptyDir"].is_object()));
    // Lame duck fits in the grace period.
    let lame_duck = number_after(&conf, "lame_duck_duration: \"");
    let grace = pod["terminationGracePeriodSeconds"].as_f64().unwrap();
    assert!(
        grace > lame_duck + 5.0,
        "grace {grace} vs lame duck {lame_duck}"
    );
    // Every Secret reference is to what deploy/k8s/secret.sh makes, and the script makes
    // new keys each time.
    let secret = yaml_docs(&generated_secret());
    let secret = doc(&secret, "Secret", "pushgate");
    let dep = doc(&pg, "Deployment", "pushgate");
    let container = &dep["spec"]["template"]["spec"]["containers"][0];
    let mut refs = 0;
    for env in container["env"].as_array().unwrap() {
        let r = &env["valueFrom"]["secretKeyRef"];
        if r.is_object() {
            refs += 1;
            assert_eq!(r["name"], secret["metadata"]["name"], "{env}");
            let key = r["key"].as_str().unwrap();
            let value = secret["stringData"][key]
                .as_str()
                .unwrap_or_else(|| panic!("{key}"));
            assert!(value.len() >= 32, "{key} is a real random key");
        }
    }
    assert_eq!(refs, 2, "JWT secret and API key");
    assert_ne!(
        yaml_docs(&generated_secret())[0]["stringData"],
        secret["stringData"],
        "keys are generated, never fixed"
    );
    // Probes and ports: named ports exist, the control port is the listener's.
    let ports: Vec<(String, i64)> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["containerPort"].as_i64().unwrap(),
            )
        })
        .collect();
    let port = |name: &str| ports.iter().find(|p| p.0 == name).map(|p| p.1);
    let control_listen = toml["control"].as_str().unwrap();
    assert_eq!(
        port("control").map(|p| format!("0.0.0.0:{p}")).as_deref(),
        Some(control_listen)
    );
    let listen = toml["listen"].as_str().unwrap();
    assert_eq!(
        port("ws").map(|p| format!("0.0.0.0:{p}")).as_deref(),
        Some(listen)
    );
    // The control port is behind the NetworkPolicy, the client port open.
    let policy = doc(&pg, "NetworkPolicy", "pushgate-control");
    assert_eq!(
        policy["spec"]["podSelector"], dep["spec"]["selector"],
        "the policy selects the pushgate pods"
    );
    for rule in policy["spec"]["ingress"].as_array().unwrap() {
        let ports = rule["ports"].to_string();
        if ports.contains("\"control\"") {
            assert!(
                rule["from"].as_array().is_some_and(|f| !f.is_empty()),
                "{rule}"
            );
        } else {
            assert!(ports.contains("\"ws\""), "{rule}");
        }
    }
    // The ServiceMonitor scrapes the control Service's port.
    let monitor = yaml_docs(&read("deploy/k8s/servicemonitor.yaml"));
    let monitor = doc(&monitor, "ServiceMonitor", "pushgate");
    let control_svc = doc(&pg, "Service", "pushgate-control");
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&control_svc["metadata"]["labels"][k], v, "{k}");
    }
    let scraped = &monitor["spec"]["endpoints"][0];
    assert!(control_svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == scraped["port"]));
}

#[test]
fn kubernetes_probes_answer_on_the_gateway() {
    let pg = yaml_docs(&read("deploy/k8s/pushgate.yaml"));
    let container =
        &doc(&pg, "Deployment", "pushgate")["spec"]["template"]["spec"]["containers"][0];
    let gw = Gateway::dev(&[]);
    let mut paths = BTreeSet::new();
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["port"], "control", "{probe}");
        let path = get["path"].as_str().unwrap();
        let (status, body) = gw.control_get(path);
        assert_eq!(status, 200, "{probe} {path}: {body}");
        paths.insert(path.to_owned());
    }
    assert_eq!(paths, BTreeSet::from(["/healthz".into(), "/readyz".into()]));
    let docker = read("deploy/docker/Dockerfile");
    assert!(docker.contains("GET /healthz HTTP/1.1"), "HEALTHCHECK");
}

/// Every `PUSHGATE_*` variable and every flag the deploy material gives the binary is one
/// it has (`pushgate --help` lists each flag with its variable).
#[test]
fn every_flag_and_variable_in_deploy_exists_in_the_binary() {
    let (ok, help) = run(Command::new(env!("CARGO_BIN_EXE_pushgate")).arg("--help"));
    assert!(ok, "{help}");
    let files = [
        "deploy/k8s/pushgate.yaml",
        "deploy/docker/Dockerfile",
        "deploy/systemd/pushgate.service",
        "deploy/local-cluster.sh",
    ];
    let mut vars = 0;
    for file in files {
        let text = read(file);
        for var in words(&text, "PUSHGATE_") {
            // PUSHGATE_LOG is the log filter, read beside clap; the cluster script's own
            // settings are PUSHGATE_BIN and the like, not the gateway's.
            if var == "PUSHGATE_LOG" || (file.ends_with(".sh") && var == "PUSHGATE_BIN") {
                continue;
            }
            vars += 1;
            assert!(help.contains(&format!("[env: {var}=")), "{file}: {var}");
        }
    }
    assert!(vars >= 6, "{vars}");
    // Flags: the Deployment's args, the unit's ExecStart, the documented docker runs and
    // the cluster script's gateway command line.
    let pg = yaml_docs(&read("deploy/k8s/pushgate.yaml"));
    let args = doc(&pg, "Deployment", "pushgate")["spec"]["template"]["spec"]["containers"][0]
        ["args"]
        .to_string();
    let mut flags = words(&args, "--");
    let unit = read("deploy/systemd/pushgate.service");
    flags.extend(words(&line_of(&unit, "ExecStart="), "--"));
    for run_line in read("deploy/docker/Dockerfile")
        .lines()
        .filter(|l| l.contains("docker run"))
    {
        let after_image = run_line.rsplit_once(" pushgate").map_or("", |(_, a)| a);
        flags.extend(words(after_image, "--"));
    }
    let script = read("deploy/local-cluster.sh");
    let gateway = &script[script
        .find("gateway_args=(")
        .expect("gateway_args in the script")..];
    flags.extend(words(&gateway[..gateway.find(')').unwrap()], "--"));
    assert!(flags.len() >= 8, "{flags:?}");
    for flag in flags {
        assert!(
            help.contains(&format!("{flag} "))
                || help.contains(&format!("{flag}="))
                || help.contains(&format!("{flag}\n")),
            "{flag}"
        );
    }
}

/// Every `prefix`-led word (`PUSHGATE_X`, `--flag`) in `text`.
fn words(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let tail = &rest[at..];
        let end = tail[prefix.len()..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .map_or(tail.len(), |e| e + prefix.len());
        let word = &tail[..end];
        if word.len() > prefix.len() {
            out.insert(word.to_owned());
        }
        rest = &tail[end.max(1)..];
    }
    out
}

fn line_of(text: &str, start: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no {start}"))
        .to_owned()
}

/// The (unquoted) value after `key` on its line.
fn value_after(text: &str, key: &str) -> String {
    let at = text.find(key).unwrap_or_else(|| panic!("no {key}"));
    let line = text[at + key.len()..].lines().next().unwrap();
    line.trim().trim_matches('"').to_owned()
}

#[test]
fn the_image_refuses_to_start_open_and_its_documented_runs_are_safe() {
    let docker = read("deploy/docker/Dockerfile");
    // The image's environment, ports made free.
    let env_block = &docker[docker.find("ENV ").expect("ENV")..];
    let env_block = &env_block[..env_block.find("\nEXPOSE").unwrap()];
    let mut image_env: Vec<(String, String)> = Vec::new();
    for (k, v) in env_block
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
    {
        let v = v.replace(":8080", ":0").replace(":8081", ":0");
        image_env.push((k.to_owned(), v));
    }
    assert!(image_env
        .iter()
        .any(|(k, v)| k == "PUSHGATE_CONTROL" && v == "0.0.0.0:0"));
    let refused = |extra: &[(&str, &str)], args: &[&str]| {
        let (ok, out) = run(Command::new(env!("CARGO_BIN_EXE_pushgate"))
            .envs(image_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra.iter().copied())
            .args(args));
        assert!(!ok, "started: {out}");
        out
    };
    // As is, and with only a JWT key: the open control listener is refused.
    assert!(refused(&[], &[]).contains("no JWT key"));
    assert!(refused(&[("PUSHGATE_JWT_SECRET", "k")], &[]).contains("has no API key"));
    // The documented runs: production with both keys, development with --dev; neither
    // publishes the control port beyond the host's loopback.
    let runs: Vec<&str> = docker
        .lines()
        .filter(|l| l.contains("docker run"))
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    for line in runs {
        assert!(
            !line.contains("-p 8081") && !line.contains("0.0.0.0:8081"),
            "{line}"
        );
        let dev = line.trim_end().ends_with(" --dev");
        let mut env: Vec<(&str, &str)> = Vec::new();
        for var in words(line, "PUSHGATE_") {
            let value = KEYS.iter().find(|(k, _)| *k == var).map_or("x", |(_, v)| v);
            env.push((Box::leak(var.into_boxed_str()), value));
        }
        assert!(dev || env.len() == 2, "{line}");
        let args: &[&str] = if dev { &["--dev"] } else { &[] };
        let all: Vec<(&str, &str)> = image_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(env.iter().copied())
            .collect();
        let gw = Gateway::start_env(
            &[
                &["--listen", "127.0.0.1:0", "--control", "0.0.0.0:0"][..],
                args,
            ]
            .concat(),
            &all,
        );
        let control = ([127, 0, 0, 1], gw.control_addr.port()).into();
        let status = common::http(
            control,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .0;
        assert_eq!(status, 200, "{line}");
        if dev {
            assert!(
                line.contains("-p 127.0.0.1:8080:8080"),
                "dev publishes loopback only: {line}"
            );
        }
    }
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
