//! The pushgate binary: configuration, listeners, startup and shutdown.

use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use pushgate::config::{Cli, Settings};
use pushgate::control::{ApiStats, ControlService, ControlState, OperatorStats};
use pushgate::limits;
use pushgate::metrics::{Metrics, Sources};
use reactor::Server;
use router::{NatsBus, NatsConfig, Router, RouterHooks};
use session::AuthMode;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "token") {
        return pushgate::token::main(std::env::args_os().skip(1));
    }
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("pushgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PUSHGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// `SIGHUP`: the certificate and key are read again for new connections; connections
/// already made keep theirs. A pair that fails to load leaves the old one in service.
fn reload_tls(tls: Option<&reactor::tls::TlsAcceptor>) {
    let Some(tls) = tls else {
        tracing::info!("SIGHUP: no TLS configured, nothing to reload");
        return;
    };
    match tls.reload() {
        Ok(()) => match tls.validity_problem() {
            Some(problem) => {
                tracing::warn!(
                    "TLS certificate reloaded, but it is {problem}: clients will refuse it"
                )
            }
            None => tracing::info!(cert = %tls.files().cert.display(), "TLS certificate reloaded"),
        },
        Err(e) => tracing::error!("TLS reload failed, still serving the previous certificate: {e}"),
    }
}

/// The undelivered hook (its deadlines' thread, the webhook's) and the bus events, as
/// configured; returns the webhook's counters. Before the bus thread starts: the acks'
/// subscription is among its first.
fn start_events(
    settings: &Settings,
    router: &Arc<Router>,
    nats: Option<&NatsBus>,
    node_id: &str,
) -> anyhow::Result<Option<Arc<pushgate::webhook::WebhookStats>>> {
    use pushgate::webhook::{Events, Webhook};
    let ev = &settings.events;
    if ev.undelivered_after.is_none() && !ev.bus_events {
        if ev.webhook.is_some() {
            tracing::warn!(
                "webhook_url is set but undelivered_after is not: nothing will be posted"
            );
        }
        return Ok(None);
    }
    let webhook = match (&ev.webhook, ev.undelivered_after) {
        (Some(w), Some(_)) => Some(Webhook::start(w.clone(), node_id.to_owned())?),
        _ => None,
    };
    let stats = webhook.as_ref().map(|w| Arc::clone(w.stats()));
    let events = Arc::new(Events {
        webhook,
        router: Arc::downgrade(router),
        bus_events: ev.bus_events && nats.is_some(),
        node: node_id.to_owned(),
        bus_dropped: Default::default(),
    });
    if ev.bus_events && nats.is_some() {
        router.set_conn_events(Arc::clone(&events) as _);
    }
    if let Some(after) = ev.undelivered_after {
        if settings.history.size == 0 {
            anyhow::bail!("undelivered_after needs history (history_size > 0): acks are per seq");
        }
        let deadlines = router::undelivered::Deadlines::new(after, ev.undelivered_max_pending);
        router.set_undelivered(Arc::clone(&deadlines));
        deadlines
            .start(events)
            .context("starting the undelivered hook thread")?;
        if let Some(bus) = nats {
            bus.watch_acks();
        }
    }
    Ok(stats)
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let fd_limit = limits::raise_nofile().context("raising the open-files limit")?;
    let settings = Settings::resolve(cli, fd_limit)?;
    init_logging(settings.log_json);
    let node_id = settings.node_id.clone();

    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("installing signal handlers")?;
    let tls = settings.reactor.tls.clone();
    if let Some(problem) = tls.as_ref().and_then(|t| t.validity_problem()) {
        tracing::warn!(cert = %tls.as_ref().map_or_else(Default::default, |t| t.files().cert.display().to_string()), "the TLS certificate is {problem}: clients will refuse it");
    }
    let nats = match &settings.bus {
        Some(bus) => Some(Arc::new(
            NatsBus::new(NatsConfig {
                url: bus.url.clone(),
                tls_ca: bus.tls_ca.clone(),
                prefix: bus.prefix.clone(),
                node_id: node_id.clone(),
                queue_depth: bus.queue_depth,
                unsubscribe_delay: bus.unsubscribe_delay,
                ping_timeout: bus.ping_timeout,
                max_lingering: bus.max_lingering,
                history: (settings.history.size > 0).then_some(router::JsConfig {
                    size: settings.history.size,
                    ttl: settings.history.ttl,
                    replicas: bus.history_replicas,
                }),
            })
            .map_err(anyhow::Error::msg)?,
        )),
        None => None,
    };
    let router = Arc::new(
        match &nats {
            Some(bus) => Router::with_bus(Box::new(Arc::clone(bus)))
                .with_cluster_history(Arc::clone(bus), settings.history),
            None => Router::new().with_history(settings.history),
        }
        .with_max_conns_per_user(settings.max_conns_per_user),
    );
    let webhook_stats = start_events(&settings, &router, nats.as_deref(), &node_id)?;
    let hooks_router = Arc::clone(&router);
    // The reactors serve the control listener too; its routes need the reactors' handles,
    // so they get the state once the reactors are bound.
    let control_state = Arc::new(OnceLock::new());
    let service = ControlService::new(Arc::clone(&control_state));
    let mut server = Server::bind_with_service(
        settings.reactor.clone(),
        move |_, stats| {
            Box::new(RouterHooks::new(
                Arc::clone(&hooks_router),
                Arc::clone(stats),
            ))
        },
        |_| Some(Box::new(service.clone())),
    )
    .context("starting the listeners")?;
    // The router knows the reactors before the first client is accepted: a push or an
    // error reply to that client has somewhere to go.
    router.attach(server.reactors().to_vec());
    let api_stats = Arc::new(ApiStats::default());
    let operator_stats = Arc::new(OperatorStats::default());
    let metrics = Metrics::new(Sources {
        reactors: server.reactors().to_vec(),
        admission: Arc::clone(server.admission()),
        router: Arc::clone(&router),
        api: Arc::clone(&api_stats),
        operator: Arc::clone(&operator_stats),
        tls: tls.clone(),
        node_id: node_id.clone(),
        webhook: webhook_stats,
    })
    .context("registering the metrics")?;
    let _ = control_state.set(Arc::new(ControlState {
        reactors: server.reactors().to_vec(),
        admission: Arc::clone(server.admission()),
        router: Arc::clone(&router),
        node_id: node_id.clone(),
        api_key: settings.api_key.clone(),
        max_body_bytes: settings.max_body_bytes,
        api_stats,
        metrics,
        operator_limits: settings.operator,
        operator_stats,
        batch_limits: settings.batch,
        history_max_limit: settings.history_read_max,
    }));
    server.run().context("starting the reactor threads")?;
    if let Some(bus) = &nats {
        NatsBus::start(bus, Arc::clone(&router)).context("starting the bus thread")?;
        router
            .start_history()
            .context("starting the history fill thread")?;
    }
    let control_addr = server
        .service_addr()
        .context("the control listener was not bound")?;

    let dev = matches!(settings.reactor.session.auth, AuthMode::Dev);
    if settings.dev {
        tracing::warn!(
            "DEV MODE (--dev){}{}. Do not expose this node.",
            if dev {
                ": /ws trusts ?uid= as the user ID, /echo needs no auth"
            } else {
                ""
            },
            if settings.api_key.is_none() {
                "; the control API has no key"
            } else {
                ""
            }
        );
    }
    if settings.api_key.is_none() {
        tracing::warn!("no API key configured: anyone who reaches the control listener can push");
    }
    tracing::info!(
        listen = %server.local_addr(),
        control = %control_addr,
        reactors = settings.reactor.reactors,
        max_connections = settings.reactor.max_connections,
        open_files_limit = fd_limit,
        capacity_from = if settings.capacity_from_fd_limit { "open-files limit" } else { "configuration" },
        mode = if dev { "dev" } else { "jwt" },
        dev = settings.dev,
        echo = settings.reactor.session.echo,
        node = %node_id,
        bus = settings.bus.as_ref().map_or("in-process", |b| b.url.as_str()),
        history_size = settings.history.size,
        io = server.io_backend(),
        tls = tls.is_some(),
        "pushgate started"
    );

    // Wait for a signal, watching the reactors meanwhile.
    let mut failed = false;
    loop {
        let pending: Vec<i32> = signals.pending().collect();
        if pending.contains(&SIGHUP) {
            reload_tls(tls.as_ref());
        }
        if let Some(&sig) = pending.iter().find(|&&s| s != SIGHUP) {
            tracing::info!(
                signal = sig,
                drain_secs = settings.shutdown_drain.as_secs_f64(),
                "draining"
            );
            break;
        }
        if !server.is_running() {
            tracing::error!("a reactor thread stopped; shutting down");
            failed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let result = server.shutdown(settings.shutdown_drain);
    if let Some(bus) = &nats {
        bus.stop();
    }
    result.context("reactor failed")?;
    if failed {
        anyhow::bail!("a reactor thread stopped unexpectedly");
    }
    tracing::info!("drained; exiting");
    Ok(())
}
