//! `pushgate-load chaos`: a chaos run on the multi-host rig of `deploy/local-cluster.sh`
//! (3 NATS JetStream servers and 3 gateways, each in its own network namespace, every
//! gateway's NATS connections through a fault-injecting relay, the devices in a namespace
//! of their own). Devices connect to random nodes and resume with `since`; publishers push
//! at a fixed rate through random nodes' APIs with idempotent ids; faults run one after
//! another while they do; then the checker says whether every push answered 200 reached
//! every device of every recipient exactly once and in order, per fault.
//!
//! The rig is stopped at the end, on errors, and (through the script's own trap) when
//! the run is interrupted.

pub(crate) mod check;
pub(crate) mod clients;
mod faults;
mod log;
mod publish;
mod report;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use check::Event;
use log::EventLog;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// deploy/local-cluster.sh.
    #[arg(long)]
    script: PathBuf,
    /// The pushgate binary the gateways run.
    #[arg(long)]
    bin: PathBuf,
    /// Where the rig's state and logs, the event logs and the report go (must not hold a
    /// running cluster).
    #[arg(long)]
    dir: PathBuf,
    /// Users; each has `--devices` devices.
    #[arg(long, default_value_t = 100)]
    users: usize,
    #[arg(long, default_value_t = 2)]
    devices: usize,
    /// Client processes (each holds at most its open-files limit of connections).
    #[arg(long, default_value_t = 1)]
    client_procs: usize,
    /// Pushes per second in all, each to `--fanout` random users.
    #[arg(long, default_value_t = 40.0)]
    rate: f64,
    #[arg(long, default_value_t = 2)]
    fanout: usize,
    /// Publisher threads, each sending its share of the rate and waiting for each answer
    /// (0: enough that a push stuck 5 s on a stopped node delays only its thread's share,
    /// so the rate holds through faults).
    #[arg(long, default_value_t = 0)]
    publishers: usize,
    /// Rounds of the schedule (every fault kind once per round); at least `--min-secs`
    /// of chaos in all, rounds repeated until then.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    #[arg(long, default_value_t = 0)]
    min_secs: u64,
    /// Seconds between faults (the load settles).
    #[arg(long, default_value_t = 3)]
    pause: u64,
    /// Seconds the devices keep receiving after the last push.
    #[arg(long, default_value_t = 15)]
    drain: u64,
    /// Effects this long after a fault ends are still filed under it (ms).
    #[arg(long, default_value_t = 5000)]
    settle_ms: u64,
}

/// The rig's `up` process; stopped with `local-cluster.sh stop` when dropped.
struct Up {
    child: Child,
    script: PathBuf,
    dir: PathBuf,
    clients: Vec<Child>,
}

impl Drop for Up {
    fn drop(&mut self) {
        for c in &mut self.clients {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn run(args: &Args, fd_limit: u64) -> anyhow::Result<()> {
    let me = std::env::current_exe()?;
    std::fs::create_dir_all(&args.dir)?;
    let dir = args.dir.canonicalize()?;
    let rig_dir = dir.join("rig");
    let per_proc = (args.users * args.devices).div_ceil(args.client_procs.max(1));
    anyhow::ensure!(
        (per_proc as u64) + 100 < fd_limit,
        "{per_proc} connections per client process, open-files limit {fd_limit}: more --client-procs"
    );
    let up = Command::new(&args.script)
        .arg("up")
        .arg("--dir")
        .arg(&rig_dir)
        .arg("--bin")
        .arg(&args.bin)
        .arg("--load-ns")
        .arg("--relay")
        .arg(&me)
        .stdout(std::fs::File::create(dir.join("up.out"))?)
        .stderr(std::fs::File::create(dir.join("up.err"))?)
        .spawn()?;
    let mut up = Up {
        child: up,
        script: args.script.clone(),
        dir: rig_dir.clone(),
        clients: Vec::new(),
    };
    let ready_by = Instant::now() + Duration::from_secs(90);
    let rig = loop {
        let rig = faults::Rig::read(&args.script, &rig_dir);
        if rig.state.get("READY").is_some_and(|r| r == "1") {
            break rig;
        }
        if let Some(status) = up.child.try_wait()? {
            anyhow::bail!(
                "local-cluster.sh up exited ({status}): {}",
                std::fs::read_to_string(dir.join("up.err")).unwrap_or_default()
            );
        }
        anyhow::ensure!(Instant::now() < ready_by, "the rig was not up in 90 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    let nodes: Vec<_> = (1..=3)
        .map(|k| rig.addr(&format!("GATEWAY_{k}_ADDR"), 8080))
        .collect::<Result<_, _>>()?;
    let apis: Vec<_> = (1..=3)
        .map(|k| rig.addr(&format!("GATEWAY_{k}_ADDR"), 8081))
        .collect::<Result<_, _>>()?;
    let key = rig.get("API_KEY")?.to_owned();
    let load_ns = rig.get("LOAD_NS")?.to_owned();

    let epoch = log::unix_ms();
    let log = EventLog::create(&dir.join("driver.jsonl"), epoch)?;
    let devices = args.users * args.devices;
    let connect_rate = 2000u64;
    let warmup_ms = 3000 + 1000 * devices as u64 / connect_rate;
    // The schedule's length is not known ahead (restarts wait for readiness): devices
    // run until told otherwise, bounded at a generous ceiling.
    let ceiling_ms = warmup_ms + 1000 * (args.min_secs.max(1) + 200 * args.rounds as u64 + 600);
    let nodes_arg = nodes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let users_per_proc = args.users.div_ceil(args.client_procs.max(1));
    let stop_file = dir.join("stop-clients");
    let _ = std::fs::remove_file(&stop_file);
    let mut client_logs = Vec::new();
    for p in 0..args.client_procs.max(1) {
        let first = p * users_per_proc;
        let users = users_per_proc.min(args.users.saturating_sub(first));
        if users == 0 {
            break;
        }
        let path = dir.join(format!("clients-{p}.jsonl"));
        let child = Command::new("ip")
            .args(["netns", "exec", &load_ns])
            .arg(&me)
            .arg("chaos-clients")
            .args(["--nodes", &nodes_arg])
            .args(["--users", &users.to_string(), "--first", &first.to_string()])
            .args(["--devices", &args.devices.to_string()])
            .args([
                "--connect-rate",
                &(connect_rate / args.client_procs.max(1) as u64).to_string(),
            ])
            .args(["--epoch-ms", &epoch.to_string()])
            .args(["--until-ms", &ceiling_ms.to_string()])
            .arg("--stop-file")
            .arg(&stop_file)
            .arg("--log")
            .arg(&path)
            .stdout(std::fs::File::create(dir.join(format!("clients-{p}.out")))?)
            .stderr(std::fs::File::create(dir.join(format!("clients-{p}.err")))?)
            .spawn()?;
        up.clients.push(child);
        client_logs.push(path);
    }
    std::thread::sleep(Duration::from_millis(warmup_ms));

    // Faults on this thread while the publishers push; they stop together.
    let chaos_start = log.now();
    let publish_until = std::sync::atomic::AtomicU64::new(u64::MAX);
    let (published, fault_result) = std::thread::scope(|s| {
        let publishers = s.spawn(|| {
            publish::run(
                &publish::Plan {
                    apis: &apis,
                    key: &key,
                    users: args.users,
                    fanout: args.fanout,
                    rate: args.rate,
                    threads: if args.publishers > 0 {
                        args.publishers
                    } else {
                        ((args.rate * 6.0) as usize).clamp(8, 512)
                    },
                    until_ms: &publish_until,
                    retry_for: Duration::from_secs(30),
                },
                &log,
            )
        });
        let result = (|| -> anyhow::Result<usize> {
            std::thread::sleep(Duration::from_secs(args.pause));
            let mut r = 0;
            while r < args.rounds.max(1) || log.now() - chaos_start < 1000 * args.min_secs {
                for fault in faults::round(r) {
                    eprintln!(
                        "chaos: {:>6.1}s {}",
                        log.now() as f64 / 1000.0,
                        fault.name()
                    );
                    rig.apply(fault, &log)?;
                    std::thread::sleep(Duration::from_secs(args.pause));
                }
                r += 1;
            }
            Ok(r)
        })();
        rig.heal();
        publish_until.store(log.now(), std::sync::atomic::Ordering::SeqCst);
        (publishers.join(), result)
    });
    let published = published.map_err(|_| anyhow::anyhow!("publishers panicked"))?;
    let rounds = fault_result?;
    let chaos_secs = (log.now() - chaos_start) as f64 / 1000.0;
    eprintln!(
        "chaos: {rounds} rounds in {chaos_secs:.0} s; draining {} s",
        args.drain
    );
    std::thread::sleep(Duration::from_secs(args.drain));
    std::fs::write(&stop_file, b"")?;
    let mut client_outs = Vec::new();
    for (p, c) in up.clients.iter_mut().enumerate() {
        let _ = c.wait();
        client_outs.push(
            std::fs::read_to_string(dir.join(format!("clients-{p}.out"))).unwrap_or_default(),
        );
    }
    log.flush()?;
    drop(up);

    let mut events: Vec<Event> = log::read(&dir.join("driver.jsonl"))?;
    for p in &client_logs {
        events.extend(log::read(p)?);
    }
    let verdict = check::check(&events, args.settle_ms);
    let table = report::table(&verdict, &events);
    let mut refusals: std::collections::BTreeMap<String, u64> = Default::default();
    for e in &events {
        if let Event::Refused { code, .. } = e {
            *refusals.entry(code.clone()).or_default() += 1;
        }
    }
    let png = report::timeline(&events, &dir)?;
    let total = verdict.total();
    let summary = serde_json::json!({
        "scenario": "chaos",
        "users": args.users,
        "devices": devices,
        "rate": args.rate,
        "fanout": args.fanout,
        "rounds": rounds,
        "chaos_secs": chaos_secs,
        "published": published,
        "accepted_messages": verdict.accepted,
        "delivered": verdict.delivered,
        "lost": total.lost,
        "not_back": total.not_back,
        "duplicated": total.duplicated,
        "reordered": total.reordered,
        "unrecovered_resumes": total.unrecovered,
        "errors_to_devices": refusals,
        "faults": verdict.per_fault.iter().map(|(name, t)| serde_json::json!({
            "name": name,
            "clients_affected": t.clients_affected,
            "reconnects": t.reconnect_ms.len(),
            "reconnect_p50_ms": check::quantile(&t.reconnect_ms, 0.5),
            "reconnect_p99_ms": check::quantile(&t.reconnect_ms, 0.99),
            "reconnect_max_ms": t.reconnect_ms.iter().max().copied().unwrap_or(0),
            "redelivered_p99_ms": check::quantile(&t.redelivered_ms, 0.99),
            "lost": t.lost,
            "not_back": t.not_back,
            "duplicated": t.duplicated,
            "reordered": t.reordered,
        })).collect::<Vec<_>>(),
        "clients": client_outs.iter().map(|o| o.trim()).collect::<Vec<_>>(),
    });
    let mut md = format!(
        "chaos run: {} users x {} devices, {} pushes/s to {} users each, {rounds} round(s) of \
         every fault, {chaos_secs:.0} s of chaos\n\n{table}\n",
        args.users, args.devices, args.rate, args.fanout
    );
    md.push_str(&format!("errors sent to devices: {refusals:?}\n\n"));
    for v in verdict.violations.iter().take(50) {
        md.push_str(&format!(
            "- {} at {:.3}s ({}): user {} device {} seq {} id {}\n",
            v.kind,
            v.t as f64 / 1000.0,
            v.fault,
            v.user,
            v.device,
            v.seq,
            v.id
        ));
    }
    std::fs::write(dir.join("report.md"), &md)?;
    println!("{md}");
    if let Some(png) = png {
        println!("timeline: {}", png.display());
    }
    println!("{summary}");
    anyhow::ensure!(
        verdict.clean(),
        "{} lost, {} missing on devices not back by the end, {} duplicated, {} reordered (report: {})",
        total.lost,
        total.not_back,
        total.duplicated,
        total.reordered,
        dir.join("report.md").display()
    );
    anyhow::ensure!(
        verdict.accepted > 0 && verdict.delivered > 0,
        "nothing accepted or delivered: the run did not test anything"
    );
    Ok(())
}
