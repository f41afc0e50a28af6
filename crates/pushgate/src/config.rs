//! Configuration: command-line flags, each also read from `PUSHGATE_<NAME>`, over an
//! optional TOML file (`--config`), over the defaults. Every key and default is listed by
//! `pushgate --help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser};
use protocol::deflate::DeflateConfig;
use protocol::{DecoderConfig, Role};
use reactor::{OutboundLimits, ReactorConfig, ServiceConfig, ServiceLimits};
use serde::{Deserialize, Serialize};
use session::{AuthMode, JwtAuth, ReconnectAdvice, SessionConfig};

/// Defaults, in one place: the libraries' own where they have one (their `Default`
/// impls read the same constants), the binary's below. Resolving (`Settings::resolve`)
/// takes them from here, and `--help` states them; a test checks that the stated ones are
/// the ones in force.
pub mod default {
    use reactor::config::default as reactor_default;
    use reactor::{OutboundLimits, ServiceLimits};
    use router::HistoryConfig;
    use session::config::default as session_default;
    use session::ReconnectAdvice;

    pub const LISTEN: &str = "0.0.0.0:8080";
    /// A development node trusts `?uid=`: unless told otherwise, only this machine
    /// reaches it.
    pub const DEV_LISTEN: &str = "127.0.0.1:8080";
    pub const CONTROL: &str = "127.0.0.1:8081";
    pub const HANDSHAKE_TIMEOUT: f64 = session_default::HANDSHAKE_TIMEOUT.as_secs_f64();
    pub const HEARTBEAT: f64 = session_default::HEARTBEAT.as_secs_f64();
    pub const POLL_TIMEOUT: f64 = session_default::POLL_TIMEOUT.as_secs_f64();
    pub const IDLE_TIMEOUT: f64 = session_default::IDLE_TIMEOUT.as_secs_f64();
    pub const CLOSE_TIMEOUT: f64 = session_default::CLOSE_TIMEOUT.as_secs_f64();
    pub const SHUTDOWN_DRAIN: f64 = 10.0;
    pub const BACKLOG: i32 = reactor_default::BACKLOG;
    pub const MAX_CONNECTIONS_PER_IP: u32 = reactor_default::MAX_CONNECTIONS_PER_IP;
    pub const MAX_PENDING_HANDSHAKES: usize = reactor_default::MAX_PENDING_HANDSHAKES;
    pub const HANDSHAKE_PRESSURE_TIMEOUT: f64 =
        reactor_default::PRESSURE_HANDSHAKE_TIMEOUT.as_secs_f64();
    pub const MAX_ACCEPT_RATE: u32 = reactor_default::MAX_ACCEPT_RATE;
    pub const MAX_HEADER_BYTES: usize = protocol::handshake::DEFAULT_MAX_HEADER_BYTES;
    /// Browsers never fragment, so frames may be as large as messages.
    pub const MAX_FRAME_SIZE: usize = 1024 * 1024;
    pub const MAX_MESSAGE_SIZE: usize = 1024 * 1024;
    pub const MAX_OUTBOUND_BYTES: usize = OutboundLimits::DEFAULT.max_bytes;
    pub const MAX_OUTBOUND_MESSAGES: usize = OutboundLimits::DEFAULT.max_messages;
    pub const MAX_PENDING_PONGS: usize = OutboundLimits::DEFAULT.max_pending_pongs;
    pub const INBOX_DEPTH: usize = reactor_default::INBOX_DEPTH;
    pub const INBOX_BYTES: usize = reactor_default::INBOX_BYTES;
    pub const COMPRESS_MIN_BYTES: usize = reactor_default::COMPRESS_MIN_BYTES;
    pub const IO: &str = "auto";
    pub const IO_URING_BUFFERS: u16 = reactor_default::IO_URING_BUFFERS;
    pub const IO_URING_BUFFER_SIZE: usize = reactor_default::IO_URING_BUFFER_SIZE;
    pub const TLS_MAX_HANDSHAKE_BYTES: usize = reactor::tls::stream::DEFAULT_MAX_HANDSHAKE_BYTES;
    pub const CLIENT_RATE: u32 = session_default::CLIENT_RATE;
    pub const MAX_RECIPIENTS: usize = session_default::MAX_RECIPIENTS;
    pub const MAX_BAD_REQUESTS: u32 = session_default::MAX_BAD_REQUESTS;
    pub const CLOSE_ON_TOKEN_EXPIRY: bool = session_default::CLOSE_ON_TOKEN_EXPIRY;
    pub const DEFLATE: bool = true;
    pub const JWT_ALGORITHM: &str = "RS256";
    pub const JWT_LEEWAY: u64 = 30;
    pub const RECONNECT_BASE_MS: u64 = ReconnectAdvice::DEFAULT.base_ms;
    pub const RECONNECT_FACTOR: f64 = ReconnectAdvice::DEFAULT.factor;
    pub const RECONNECT_JITTER: f64 = ReconnectAdvice::DEFAULT.jitter;
    pub const RECONNECT_CAP_MS: u64 = ReconnectAdvice::DEFAULT.cap_ms;
    pub const MAX_CONNS_PER_USER: usize = 16;
    /// Below the contract's 100 ms for a whole presence answer, with room for the rest.
    pub const PRESENCE_TIMEOUT: f64 = 0.08;
    pub const PRESENCE_MAX_UIDS: usize = 100;
    pub const ROOM_PRESENCE_MAX_LIMIT: usize = 1000;
    pub const BATCH_MAX_ITEMS: usize = 10_000;
    pub const BATCH_MAX_BYTES: usize = 8 * 1024 * 1024;
    pub const HISTORY_READ_MAX: usize = 1000;
    /// Room for the JSON around a push's `data` on top of the message limit, so that the
    /// API body limit admits any message the connections may receive.
    pub const BODY_ENVELOPE: usize = 64 * 1024;
    /// Descriptors kept back from the open-files limit for listeners, the control
    /// listener, logs and the bus.
    pub const RESERVED_FDS: u64 = 64;
    pub const BUS_PREFIX: &str = "pushgate";
    pub const BUS_QUEUE_DEPTH: usize = 65536;
    pub const BUS_UNSUBSCRIBE_DELAY: f64 = 5.0;
    pub const CONTROL_MAX_CLIENTS: usize = ServiceLimits::DEFAULT.max_connections;
    pub const CONTROL_MAX_CLIENTS_PER_IP: u32 = ServiceLimits::DEFAULT.max_connections_per_ip;
    pub const CONTROL_IDLE_TIMEOUT: f64 = ServiceLimits::DEFAULT.idle_timeout.as_secs_f64();
    pub const CONTROL_FIRST_REQUEST_TIMEOUT: f64 =
        ServiceLimits::DEFAULT.first_request_timeout.as_secs_f64();
    pub const BUS_PING_TIMEOUT: f64 = 3.0;
    pub const BUS_MAX_LINGERING: usize = 1024;
    pub const HISTORY_SIZE: usize = HistoryConfig::DEFAULT.size;
    pub const HISTORY_TTL: f64 = HistoryConfig::DEFAULT.ttl.as_secs_f64();
    pub const HISTORY_MAX_BYTES: usize = HistoryConfig::DEFAULT.max_bytes;
    pub const IDEMPOTENCY_MAX_BYTES: usize = HistoryConfig::DEFAULT.idempotency_max_bytes;
    pub const HISTORY_REPLICAS: usize = 1;
    pub const LOG_JSON: bool = false;
}

/// pushgate: a WebSocket push gateway for instant messaging.
///
/// It needs a JWT key (--jwt-secret or --jwt-public-key) to start, and an API key
/// (--api-key) when the control listener is beyond loopback. `pushgate --dev` runs a
/// single development node with embedded defaults instead: in-process routing, `?uid=`
/// trusted, `/echo` on.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// TOML file with any of the keys below (snake_case); flags and environment override it.
    #[arg(long, env = "PUSHGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Every other key.
    #[command(flatten)]
    pub keys: Keys,
}

/// Every configuration key, declared once: clap reads it as a flag or `PUSHGATE_<NAME>`,
/// serde as a TOML key of the same name; [`Keys::layered`] puts the flags over the file.
#[derive(Debug, Default, Clone, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keys {
    /// Client listener [default: 0.0.0.0:8080; 127.0.0.1:8080 with --dev].
    #[arg(long, env = "PUSHGATE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Control listener: metrics, health, server API [default: 127.0.0.1:8081].
    #[arg(long, env = "PUSHGATE_CONTROL")]
    pub control: Option<SocketAddr>,
    /// Reactor threads [default: number of cores].
    #[arg(long, env = "PUSHGATE_REACTORS")]
    pub reactors: Option<usize>,
    /// Connections held before upgrades get 503 [default: from the open-files limit].
    #[arg(long, env = "PUSHGATE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Connections per client address before 429; 0 = no limit [default: 0].
    #[arg(long, env = "PUSHGATE_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<u32>,
    /// Per reactor: handshakes in progress at once; past it the oldest is reset once it
    /// is --handshake-pressure-timeout old [default: 1024].
    #[arg(long, env = "PUSHGATE_MAX_PENDING_HANDSHAKES")]
    pub max_pending_handshakes: Option<usize>,
    /// Seconds a handshake may take while the pending-handshake bound is reached
    /// [default: 0.5].
    #[arg(long, env = "PUSHGATE_HANDSHAKE_PRESSURE_TIMEOUT")]
    pub handshake_pressure_timeout: Option<f64>,
    /// Per reactor: most connections accepted per second; 0 = no limit [default: 0].
    #[arg(long, env = "PUSHGATE_MAX_ACCEPT_RATE")]
    pub max_accept_rate: Option<u32>,
    /// Listen backlog [default: 4096].
    #[arg(long, env = "PUSHGATE_BACKLOG")]
    pub backlog: Option<i32>,
    /// Seconds to complete the HTTP upgrade [default: 10].
    #[arg(long, env = "PUSHGATE_HANDSHAKE_TIMEOUT")]
    pub handshake_timeout: Option<f64>,
    /// Seconds of silence before the server pings [default: 25].
    #[arg(long, env = "PUSHGATE_HEARTBEAT")]
    pub heartbeat: Option<f64>,
    /// Seconds a `GET /poll` is held open before it is answered with no messages
    /// [default: 25].
    #[arg(long, env = "PUSHGATE_POLL_TIMEOUT")]
    pub poll_timeout: Option<f64>,
    /// Seconds of silence before the connection is closed with 1001 [default: 60].
    #[arg(long, env = "PUSHGATE_IDLE_TIMEOUT")]
    pub idle_timeout: Option<f64>,
    /// Seconds to wait for the peer's close frame [default: 5].
    #[arg(long, env = "PUSHGATE_CLOSE_TIMEOUT")]
    pub close_timeout: Option<f64>,
    /// Seconds over which SIGTERM closes all connections [default: 10].
    #[arg(long, env = "PUSHGATE_SHUTDOWN_DRAIN")]
    pub shutdown_drain: Option<f64>,
    /// Largest upgrade request head in bytes, 431 past it [default: 8192].
    #[arg(long, env = "PUSHGATE_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Largest client frame payload in bytes, 1009 past it [default: 1048576].
    #[arg(long, env = "PUSHGATE_MAX_FRAME_SIZE")]
    pub max_frame_size: Option<usize>,
    /// Largest client message in bytes (after inflating), 1009 past it [default: 1048576].
    #[arg(long, env = "PUSHGATE_MAX_MESSAGE_SIZE")]
    pub max_message_size: Option<usize>,
    /// Bytes queued to one connection before it is closed with 1013 [default: 262144].
    #[arg(long, env = "PUSHGATE_MAX_OUTBOUND_BYTES")]
    pub max_outbound_bytes: Option<usize>,
    /// Messages queued to one connection before it is closed with 1013 [default: 256].
    #[arg(long, env = "PUSHGATE_MAX_OUTBOUND_MESSAGES")]
    pub max_outbound_messages: Option<usize>,
    /// Pongs waiting to be sent to one connection; past it a ping's pong replaces the
    /// newest waiting one (RFC 6455 §5.5.3), 1 to 1024 [default: 16].
    #[arg(long, env = "PUSHGATE_MAX_PENDING_PONGS")]
    pub max_pending_pongs: Option<usize>,
    /// Per reactor: commands waiting in its inbox before pushes get 503 [default: 65536].
    #[arg(long, env = "PUSHGATE_INBOX_DEPTH")]
    pub inbox_depth: Option<usize>,
    /// Per reactor: bytes waiting in its inbox before pushes get 503 [default: 67108864].
    #[arg(long, env = "PUSHGATE_INBOX_BYTES")]
    pub inbox_bytes: Option<usize>,
    /// Client requests per second per connection, bursts of twice that; 0 = no limit
    /// [default: 50].
    #[arg(long, env = "PUSHGATE_CLIENT_RATE")]
    pub client_rate: Option<u32>,
    /// Most users one client `send` may name, at most 1000 [default: 100].
    #[arg(long, env = "PUSHGATE_MAX_RECIPIENTS")]
    pub max_recipients: Option<usize>,
    /// Connections one user may hold on this node; past it the oldest is closed with
    /// 4008, and a new one on the same ?device= replaces the old one [default: 16].
    #[arg(long, env = "PUSHGATE_MAX_CONNS_PER_USER")]
    pub max_conns_per_user: Option<usize>,
    /// Seconds a /v1/presence query waits for the other nodes, at most 5 [default: 0.08].
    #[arg(long, env = "PUSHGATE_PRESENCE_TIMEOUT")]
    pub presence_timeout: Option<f64>,
    /// Most users one /v1/presence query may name, at most 1000 [default: 100].
    #[arg(long, env = "PUSHGATE_PRESENCE_MAX_UIDS")]
    pub presence_max_uids: Option<usize>,
    /// Most members one /v1/rooms/presence query may list (its `limit`), at most
    /// 10000 [default: 1000].
    #[arg(long, env = "PUSHGATE_ROOM_PRESENCE_MAX_LIMIT")]
    pub room_presence_max_limit: Option<usize>,
    /// Seconds after which a message to a user that none of the user's devices acked
    /// is reported to the backend (webhook and bus events); needs history. 0 = off
    /// [default: 0].
    #[arg(long, env = "PUSHGATE_UNDELIVERED_AFTER")]
    pub undelivered_after: Option<f64>,
    /// Messages waiting for their undelivered deadline, at most; past it a message is
    /// not tracked (counted as dropped) [default: 1000000].
    #[arg(long, env = "PUSHGATE_UNDELIVERED_MAX_PENDING")]
    pub undelivered_max_pending: Option<usize>,
    /// http:// URL the undelivered notices are POSTed to [default: none].
    #[arg(long, env = "PUSHGATE_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Key of the HMAC-SHA256 signature of each webhook body (required with
    /// --webhook-url).
    #[arg(long, env = "PUSHGATE_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Webhook events waiting to be sent, at most; past it they are dropped
    /// [default: 10000].
    #[arg(long, env = "PUSHGATE_WEBHOOK_QUEUE")]
    pub webhook_queue: Option<usize>,
    /// Events per webhook request, at most [default: 100].
    #[arg(long, env = "PUSHGATE_WEBHOOK_BATCH")]
    pub webhook_batch: Option<usize>,
    /// Seconds one webhook attempt may take (connect, send, answer) [default: 5].
    #[arg(long, env = "PUSHGATE_WEBHOOK_TIMEOUT")]
    pub webhook_timeout: Option<f64>,
    /// Retries of a failed webhook request, with exponential backoff from 0.2 s
    /// [default: 5].
    #[arg(long, env = "PUSHGATE_WEBHOOK_RETRIES")]
    pub webhook_retries: Option<u32>,
    /// Publish connect, disconnect and undelivered events on <bus_prefix>.events
    /// [default: false].
    #[arg(long, env = "PUSHGATE_BUS_EVENTS")]
    pub bus_events: Option<bool>,
    /// Most pushes one /v1/batch request may carry, 413 past it [default: 10000].
    #[arg(long, env = "PUSHGATE_BATCH_MAX_ITEMS")]
    pub batch_max_items: Option<usize>,
    /// Largest /v1/batch request body in bytes, 413 past it; each push in it is also
    /// bound by --max-body-bytes [default: 8388608].
    #[arg(long, env = "PUSHGATE_BATCH_MAX_BYTES")]
    pub batch_max_bytes: Option<usize>,
    /// Most messages one /v1/history read may ask for (`limit`), at most 10000
    /// [default: 1000].
    #[arg(long, env = "PUSHGATE_HISTORY_READ_MAX")]
    pub history_read_max: Option<usize>,
    /// Development mode, the only way to start without a JWT key (then `?uid=` is trusted
    /// as the user ID), to leave the API key unset on a control listener beyond loopback,
    /// and to serve /echo without authentication. Never on a reachable node
    /// [default: false].
    #[arg(long, env = "PUSHGATE_DEV", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub dev: Option<bool>,
    /// Serve the /echo endpoint; outside --dev it takes the same auth as /ws
    /// [default: true with --dev, else false].
    #[arg(long, env = "PUSHGATE_ECHO")]
    pub echo: Option<bool>,
    /// Accept permessage-deflate (without context takeover) [default: true].
    #[arg(long, env = "PUSHGATE_DEFLATE")]
    pub deflate: Option<bool>,
    /// HS256 secret for client JWTs; setting it (or a public key) turns dev mode off.
    #[arg(long, env = "PUSHGATE_JWT_SECRET")]
    pub jwt_secret: Option<String>,
    /// PEM public key file for RS256 or ES256 client JWTs (see --jwt-algorithm).
    #[arg(long, env = "PUSHGATE_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// Algorithm of --jwt-public-key: RS256 or ES256 [default: RS256].
    #[arg(long, env = "PUSHGATE_JWT_ALGORITHM")]
    pub jwt_algorithm: Option<String>,
    /// Seconds of clock skew tolerated on a token's exp [default: 30].
    #[arg(long, env = "PUSHGATE_JWT_LEEWAY")]
    pub jwt_leeway: Option<u64>,
    /// Close a connection with 1008 when its token expires [default: true].
    #[arg(long, env = "PUSHGATE_CLOSE_ON_TOKEN_EXPIRY")]
    pub close_on_token_expiry: Option<bool>,
    /// Comma-separated Origin values allowed to connect (403 otherwise) [default: any].
    #[arg(long, env = "PUSHGATE_ALLOWED_ORIGINS")]
    pub allowed_origins: Option<String>,
    /// Malformed client requests tolerated before closing with 1008 [default: 10].
    #[arg(long, env = "PUSHGATE_MAX_BAD_REQUESTS")]
    pub max_bad_requests: Option<u32>,
    /// Bearer key required on the server API; without it a control listener beyond
    /// loopback refuses to start unless --dev [default: none].
    #[arg(long, env = "PUSHGATE_API_KEY")]
    pub api_key: Option<String>,
    /// Largest server API request body in bytes, 413 past it [default: the message size
    /// plus 65536, so any message a connection may receive can be pushed].
    #[arg(long, env = "PUSHGATE_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Control connections held; one more evicts the idlest [default: 1024].
    #[arg(long, env = "PUSHGATE_CONTROL_MAX_CLIENTS")]
    pub control_max_clients: Option<usize>,
    /// Control connections one client address may hold; past it a new one gets 429 and is
    /// closed; 0 = no limit [default: 0].
    #[arg(long, env = "PUSHGATE_CONTROL_MAX_CLIENTS_PER_IP")]
    pub control_max_clients_per_ip: Option<u32>,
    /// Seconds a control connection may sit silent between requests [default: 60].
    #[arg(long, env = "PUSHGATE_CONTROL_IDLE_TIMEOUT")]
    pub control_idle_timeout: Option<f64>,
    /// Seconds a new control connection has to send its first request [default: 5].
    #[arg(long, env = "PUSHGATE_CONTROL_FIRST_REQUEST_TIMEOUT")]
    pub control_first_request_timeout: Option<f64>,
    /// Pushes smaller than this go uncompressed to deflate clients [default: 256].
    #[arg(long, env = "PUSHGATE_COMPRESS_MIN_BYTES")]
    pub compress_min_bytes: Option<usize>,
    /// I/O backend: auto, epoll or io-uring; auto takes the one that measured better on
    /// this kernel, falling back to epoll [default: auto].
    #[arg(long, env = "PUSHGATE_IO")]
    pub io: Option<String>,
    /// io_uring, per reactor: receive buffers shared by its connections, a power of two
    /// up to 32768 [default: 64].
    #[arg(long, env = "PUSHGATE_IO_URING_BUFFERS")]
    pub io_uring_buffers: Option<u16>,
    /// io_uring: bytes per receive buffer [default: 4096].
    #[arg(long, env = "PUSHGATE_IO_URING_BUFFER_SIZE")]
    pub io_uring_buffer_size: Option<usize>,
    /// PEM certificate chain, leaf first: with --tls-key, the client listener serves
    /// wss:// only (TLS 1.2 and 1.3); SIGHUP reloads both files [default: none, ws://].
    #[arg(long, env = "PUSHGATE_TLS_CERT")]
    pub tls_cert: Option<String>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1) [default: none].
    #[arg(long, env = "PUSHGATE_TLS_KEY")]
    pub tls_key: Option<String>,
    /// Bytes of a TLS handshake held before it completes; a client hello past it fails
    /// the connection [default: 16389, one full record].
    #[arg(long, env = "PUSHGATE_TLS_MAX_HANDSHAKE_BYTES")]
    pub tls_max_handshake_bytes: Option<usize>,
    /// Reconnect backoff advertised in welcome: first delay in ms [default: 1000].
    #[arg(long, env = "PUSHGATE_RECONNECT_BASE_MS")]
    pub reconnect_base_ms: Option<u64>,
    /// Reconnect backoff: growth factor per attempt [default: 2].
    #[arg(long, env = "PUSHGATE_RECONNECT_FACTOR")]
    pub reconnect_factor: Option<f64>,
    /// Reconnect backoff: jitter fraction, 0 to 1 [default: 0.5].
    #[arg(long, env = "PUSHGATE_RECONNECT_JITTER")]
    pub reconnect_jitter: Option<f64>,
    /// Reconnect backoff: largest delay in ms [default: 60000].
    #[arg(long, env = "PUSHGATE_RECONNECT_CAP_MS")]
    pub reconnect_cap_ms: Option<u64>,
    /// This node's name in logs, metrics and on the bus [default: host name + pid].
    #[arg(long, env = "PUSHGATE_NODE_ID")]
    pub node_id: Option<String>,
    /// Cluster bus: NATS server URL(s), comma-separated: nats://host:port, tls://host:port,
    /// with optional credentials (nats://token@host, nats://user:pass@host); the other
    /// servers of the NATS cluster are learned from the servers [default: none, in-process].
    #[arg(long, env = "PUSHGATE_NATS")]
    pub nats: Option<String>,
    /// PEM file of the certificate authorities trusted for TLS to NATS; given, every bus
    /// connection uses TLS [default: the system's roots, TLS for tls:// URLs and servers
    /// that require it].
    #[arg(long, env = "PUSHGATE_NATS_TLS_CA")]
    pub nats_tls_ca: Option<String>,
    /// Subject prefix on the bus, shared by the nodes of one cluster [default: pushgate].
    #[arg(long, env = "PUSHGATE_BUS_PREFIX")]
    pub bus_prefix: Option<String>,
    /// Pushes queued for the bus thread before more are refused (503) [default: 65536].
    #[arg(long, env = "PUSHGATE_BUS_QUEUE_DEPTH")]
    pub bus_queue_depth: Option<usize>,
    /// Seconds a bus subscription outlives its user's or room's last local connection,
    /// so reconnect storms cost no bus traffic [default: 5].
    #[arg(long, env = "PUSHGATE_BUS_UNSUBSCRIBE_DELAY")]
    pub bus_unsubscribe_delay: Option<f64>,
    /// Seconds a round trip to NATS may go unanswered before the node turns unready
    /// (503 on /readyz and pushes); one is made every third of it [default: 3].
    #[arg(long, env = "PUSHGATE_BUS_PING_TIMEOUT")]
    pub bus_ping_timeout: Option<f64>,
    /// Bus subscriptions kept through the unsubscribe delay beyond those of the users and
    /// rooms that left since their recent peak on this node; past it the oldest go at
    /// once, so churn through new IDs cannot pile them up [default: 1024].
    #[arg(long, env = "PUSHGATE_BUS_MAX_LINGERING")]
    pub bus_max_lingering: Option<usize>,
    /// Log as JSON lines instead of text [default: false].
    #[arg(long, env = "PUSHGATE_LOG_JSON")]
    pub log_json: Option<bool>,
    /// Messages retained per user and per room for resume and offline delivery; 0 turns
    /// history (seqs, resume, acks, idempotent pushes) off. With --nats, they are kept in
    /// NATS JetStream (the server needs -js) [default: 100].
    #[arg(long, env = "PUSHGATE_HISTORY_SIZE")]
    pub history_size: Option<usize>,
    /// Seconds a retained message is kept (also how long a push ID is remembered)
    /// [default: 300].
    #[arg(long, env = "PUSHGATE_HISTORY_TTL")]
    pub history_ttl: Option<f64>,
    /// Bytes all retained messages may hold; past it the oldest go first
    /// [default: 268435456].
    #[arg(long, env = "PUSHGATE_HISTORY_MAX_BYTES")]
    pub history_max_bytes: Option<usize>,
    /// Bytes the IDs and answers of idempotent pushes (`"id"`) may take on a single node;
    /// a push's ID is remembered for --history-ttl while they fit, about 300 B each
    /// (past it the oldest are forgotten early and counted) [default: 536870912].
    #[arg(long, env = "PUSHGATE_IDEMPOTENCY_MAX_BYTES")]
    pub idempotency_max_bytes: Option<usize>,
    /// With --nats: copies of the JetStream history stream, 1 to 5; more than 1 needs a
    /// JetStream cluster of at least that many servers [default: 1].
    #[arg(long, env = "PUSHGATE_HISTORY_REPLICAS")]
    pub history_replicas: Option<usize>,
}

impl Keys {
    /// The flags (and their environment variables) over the `--config` file: both are
    /// turned into TOML tables (a flag not given is absent, not null), the flags' table is
    /// laid over the file's, and the result is read back, so a key unknown to the file or a
    /// value of the wrong type is refused with the file's name.
    pub fn layered(cli: &Cli) -> anyhow::Result<Keys> {
        let Some(path) = &cli.config else {
            return Ok(cli.keys.clone());
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut table: toml::Table =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        match toml::Value::try_from(&cli.keys).context("flags as TOML")? {
            toml::Value::Table(flags) => table.extend(flags),
            other => bail!("flags as TOML: expected a table, got {}", other.type_str()),
        }
        toml::Value::Table(table)
            .try_into()
            .with_context(|| format!("parsing {}", path.display()))
    }
}

/// The cluster bus settings.
#[derive(Debug, Clone)]
pub struct BusSettings {
    /// NATS server URL(s).
    pub url: String,
    /// CA file for TLS to NATS.
    pub tls_ca: Option<String>,
    /// Subject prefix.
    pub prefix: String,
    /// Queue to the bus thread.
    pub queue_depth: usize,
    /// Subscription linger after the last local connection.
    pub unsubscribe_delay: Duration,
    /// Unanswered round trip before the node is unready.
    pub ping_timeout: Duration,
    /// Lingering subscriptions beyond the recent drop in local users and rooms.
    pub max_lingering: usize,
    /// Copies of the JetStream history stream.
    pub history_replicas: usize,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Client listener and reactors.
    pub reactor: ReactorConfig,
    /// Control listener.
    pub control: SocketAddr,
    /// SIGTERM drain window.
    pub shutdown_drain: Duration,
    /// Connection capacity came from the open-files limit, not from configuration.
    pub capacity_from_fd_limit: bool,
    /// This node's name.
    pub node_id: String,
    /// Development mode (`--dev`).
    pub dev: bool,
    /// Bearer key for the server API.
    pub api_key: Option<String>,
    /// Server API body limit.
    pub max_body_bytes: usize,
    /// The cluster bus, if any (`None`: a single node routing in-process).
    pub bus: Option<BusSettings>,
    /// JSON logs.
    pub log_json: bool,
    /// Retained messages (single node; a size of 0 is off).
    pub history: router::HistoryConfig,
    /// Connections one user may hold on this node.
    pub max_conns_per_user: usize,
    /// Bounds of `/v1/presence`.
    pub operator: crate::control::OperatorLimits,
    /// Bounds of `/v1/batch`.
    pub batch: crate::control::BatchLimits,
    /// Most messages one `/v1/history` read returns.
    pub history_read_max: usize,
    /// The undelivered hook and the events, when on.
    pub events: EventSettings,
}

/// The undelivered hook and the node's events.
#[derive(Debug, Clone)]
pub struct EventSettings {
    /// Deadline of a message (`None`: the hook is off).
    pub undelivered_after: Option<Duration>,
    /// Deadlines pending, at most.
    pub undelivered_max_pending: usize,
    /// The webhook, when configured.
    pub webhook: Option<crate::webhook::WebhookConfig>,
    /// Publish events on `<prefix>.events`.
    pub bus_events: bool,
}

fn secs(name: &str, v: f64) -> anyhow::Result<Duration> {
    if !v.is_finite() || v <= 0.0 || v > 86_400.0 {
        bail!("{name} must be between 0 and 86400 seconds, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

/// How long NATS may leave a round trip unanswered: shorter than a few PING intervals of
/// a busy server is noise, longer than a minute is not noticing at all.
fn bus_ping_timeout(v: f64) -> anyhow::Result<Duration> {
    if !v.is_finite() || !(0.3..=60.0).contains(&v) {
        bail!("bus_ping_timeout must be between 0.3 and 60 seconds, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

/// The client listener's TLS, when a certificate and key are configured: read now, so a
/// bad or missing file stops the node at start with the reason.
fn tls_acceptor(
    cert: &Option<String>,
    key: &Option<String>,
) -> anyhow::Result<Option<reactor::tls::TlsAcceptor>> {
    let given = |p: &Option<String>| p.clone().filter(|p| !p.is_empty());
    match (given(cert), given(key)) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => {
            let files = reactor::tls::TlsFiles {
                cert: cert.into(),
                key: key.into(),
            };
            let acceptor =
                reactor::tls::TlsAcceptor::new(files).map_err(|e| anyhow!("TLS: {e}"))?;
            Ok(Some(acceptor))
        }
        _ => bail!("tls_cert and tls_key go together: give both or neither"),
    }
}

impl Settings {
    /// Resolves flags over the file over the defaults. `fd_limit` is the open-files limit
    /// after raising it, from which the default capacity is derived.
    pub fn resolve(cli: &Cli, fd_limit: u64) -> anyhow::Result<Settings> {
        let k = Keys::layered(cli)?;
        macro_rules! pick {
            ($key:ident, $default:expr) => {
                k.$key.clone().unwrap_or($default)
            };
        }
        let dev = pick!(dev, false);
        let listen = match k.listen {
            Some(a) => a,
            None if dev => default::DEV_LISTEN.parse()?,
            None => default::LISTEN.parse()?,
        };
        let control = match k.control {
            Some(a) => a,
            None => default::CONTROL.parse()?,
        };
        let api_key = k.api_key.clone().filter(|k| !k.is_empty());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let reactors = pick!(reactors, cores);
        if reactors == 0 || reactors > 1024 {
            bail!("reactors must be between 1 and 1024, got {reactors}");
        }
        let fd_capacity = fd_limit.saturating_sub(default::RESERVED_FDS).max(1) as usize;
        let configured = k.max_connections;
        let max_connections = configured.unwrap_or(fd_capacity);
        if max_connections == 0 {
            bail!("max_connections must be at least 1");
        }
        let max_frame_size = pick!(max_frame_size, default::MAX_FRAME_SIZE);
        let max_message_size = pick!(max_message_size, default::MAX_MESSAGE_SIZE);
        if max_frame_size == 0 || max_message_size == 0 {
            bail!("max_frame_size and max_message_size must be positive");
        }
        let heartbeat = secs("heartbeat", pick!(heartbeat, default::HEARTBEAT))?;
        let session = SessionConfig {
            handshake_timeout: secs(
                "handshake_timeout",
                pick!(handshake_timeout, default::HANDSHAKE_TIMEOUT),
            )?,
            heartbeat,
            idle_timeout: secs("idle_timeout", pick!(idle_timeout, default::IDLE_TIMEOUT))?,
            close_timeout: secs(
                "close_timeout",
                pick!(close_timeout, default::CLOSE_TIMEOUT),
            )?,
            max_header_bytes: pick!(max_header_bytes, default::MAX_HEADER_BYTES).max(64),
            decoder: DecoderConfig {
                role: Role::Server,
                max_frame_size,
                max_message_size,
            },
            deflate: DeflateConfig {
                enabled: pick!(deflate, default::DEFLATE),
                ..DeflateConfig::default()
            },
            echo: pick!(echo, dev),
            auth: auth_mode(&k, dev)?,
            allowed_origins: k.allowed_origins.as_ref().map(|list| {
                list.split(',')
                    .map(|o| o.trim().to_owned())
                    .filter(|o| !o.is_empty())
                    .collect()
            }),
            close_on_token_expiry: pick!(close_on_token_expiry, default::CLOSE_ON_TOKEN_EXPIRY),
            max_bad_requests: pick!(max_bad_requests, default::MAX_BAD_REQUESTS),
            reconnect: ReconnectAdvice {
                base_ms: pick!(reconnect_base_ms, default::RECONNECT_BASE_MS),
                factor: pick!(reconnect_factor, default::RECONNECT_FACTOR),
                jitter: pick!(reconnect_jitter, default::RECONNECT_JITTER).clamp(0.0, 1.0),
                cap_ms: pick!(reconnect_cap_ms, default::RECONNECT_CAP_MS),
            },
            client_rate: pick!(client_rate, default::CLIENT_RATE),
            max_recipients: match pick!(max_recipients, default::MAX_RECIPIENTS) {
                n @ 1..=session::client_protocol::MAX_RECIPIENTS => n,
                n => bail!(
                    "max_recipients must be between 1 and {}, got {n}",
                    session::client_protocol::MAX_RECIPIENTS
                ),
            },
            poll_timeout: secs("poll_timeout", pick!(poll_timeout, default::POLL_TIMEOUT))?,
        };
        let reactor = ReactorConfig {
            listen,
            reactors,
            backlog: pick!(backlog, default::BACKLOG),
            max_connections,
            max_connections_per_ip: pick!(max_connections_per_ip, default::MAX_CONNECTIONS_PER_IP),
            max_pending_handshakes: pick!(max_pending_handshakes, default::MAX_PENDING_HANDSHAKES)
                .max(1),
            pressure_handshake_timeout: secs(
                "handshake_pressure_timeout",
                pick!(
                    handshake_pressure_timeout,
                    default::HANDSHAKE_PRESSURE_TIMEOUT
                ),
            )?,
            max_accept_rate: pick!(max_accept_rate, default::MAX_ACCEPT_RATE),
            outbound: OutboundLimits {
                max_bytes: pick!(max_outbound_bytes, default::MAX_OUTBOUND_BYTES),
                max_messages: pick!(max_outbound_messages, default::MAX_OUTBOUND_MESSAGES),
                max_pending_pongs: match pick!(max_pending_pongs, default::MAX_PENDING_PONGS) {
                    n @ 1..=1024 => n,
                    n => bail!("max_pending_pongs must be between 1 and 1024, got {n}"),
                },
            },
            inbox_depth: pick!(inbox_depth, default::INBOX_DEPTH).max(1),
            inbox_bytes: pick!(inbox_bytes, default::INBOX_BYTES).max(1),
            tick: Duration::from_millis(10),
            compress_min_bytes: pick!(compress_min_bytes, default::COMPRESS_MIN_BYTES),
            io: {
                let name = pick!(io, default::IO.to_owned());
                match reactor::IoBackend::parse(&name) {
                    Some(b) => b,
                    None => bail!("io must be auto, epoll or io-uring, got {name}"),
                }
            },
            io_uring_buffers: match pick!(io_uring_buffers, default::IO_URING_BUFFERS) {
                n if n.is_power_of_two() && n <= 32_768 => n,
                n => bail!("io_uring_buffers must be a power of two up to 32768, got {n}"),
            },
            io_uring_buffer_size: match pick!(io_uring_buffer_size, default::IO_URING_BUFFER_SIZE) {
                n @ 64..=1_048_576 => n,
                n => bail!("io_uring_buffer_size must be between 64 and 1048576, got {n}"),
            },
            tls: tls_acceptor(&k.tls_cert, &k.tls_key)?,
            tls_max_handshake_bytes: match pick!(
                tls_max_handshake_bytes,
                default::TLS_MAX_HANDSHAKE_BYTES
            ) {
                n @ 1024.. => n,
                n => bail!("tls_max_handshake_bytes must be at least 1024, got {n}"),
            },
            session,
            service: Some(ServiceConfig {
                listen: control,
                limits: ServiceLimits {
                    max_connections: match pick!(control_max_clients, default::CONTROL_MAX_CLIENTS)
                    {
                        0 => bail!("control_max_clients must be at least 1"),
                        n => n,
                    },
                    idle_timeout: secs(
                        "control_idle_timeout",
                        pick!(control_idle_timeout, default::CONTROL_IDLE_TIMEOUT),
                    )?,
                    first_request_timeout: secs(
                        "control_first_request_timeout",
                        pick!(
                            control_first_request_timeout,
                            default::CONTROL_FIRST_REQUEST_TIMEOUT
                        ),
                    )?,
                    max_connections_per_ip: pick!(
                        control_max_clients_per_ip,
                        default::CONTROL_MAX_CLIENTS_PER_IP
                    ),
                    ..ServiceLimits::default()
                },
            }),
        };
        if api_key.is_none() && !dev && !control.ip().is_loopback() {
            bail!("{}", refusal::open_control(control));
        }
        Ok(Settings {
            reactor,
            control,
            shutdown_drain: secs(
                "shutdown_drain",
                pick!(shutdown_drain, default::SHUTDOWN_DRAIN),
            )?,
            capacity_from_fd_limit: configured.is_none(),
            node_id: match k.node_id.clone() {
                Some(id) if id.trim().is_empty() => bail!("node_id must not be empty"),
                Some(id) => id,
                None => default_node_id(),
            },
            dev,
            api_key,
            max_body_bytes: pick!(
                max_body_bytes,
                max_message_size.saturating_add(default::BODY_ENVELOPE)
            )
            .max(64),
            bus: match k.nats.clone().filter(|u| !u.trim().is_empty()) {
                None => None,
                Some(url) => {
                    Some(BusSettings {
                        url,
                        tls_ca: k.nats_tls_ca.clone().filter(|p| !p.is_empty()),
                        prefix: k
                            .bus_prefix
                            .clone()
                            .unwrap_or_else(|| default::BUS_PREFIX.to_owned()),
                        queue_depth: pick!(bus_queue_depth, default::BUS_QUEUE_DEPTH).max(1),
                        unsubscribe_delay: {
                            let v = pick!(bus_unsubscribe_delay, default::BUS_UNSUBSCRIBE_DELAY);
                            if !v.is_finite() || !(0.0..=3600.0).contains(&v) {
                                bail!("bus_unsubscribe_delay must be between 0 and 3600 seconds, got {v}");
                            }
                            Duration::from_secs_f64(v)
                        },
                        ping_timeout: bus_ping_timeout(pick!(
                            bus_ping_timeout,
                            default::BUS_PING_TIMEOUT
                        ))?,
                        max_lingering: pick!(bus_max_lingering, default::BUS_MAX_LINGERING),
                        history_replicas: {
                            let r = pick!(history_replicas, default::HISTORY_REPLICAS);
                            if !(1..=5).contains(&r) {
                                bail!("history_replicas must be between 1 and 5, got {r}");
                            }
                            r
                        },
                    })
                }
            },
            log_json: pick!(log_json, default::LOG_JSON),
            max_conns_per_user: match pick!(max_conns_per_user, default::MAX_CONNS_PER_USER) {
                0 => bail!("max_conns_per_user must be at least 1"),
                n => n,
            },
            operator: crate::control::OperatorLimits {
                presence_timeout: {
                    let v = pick!(presence_timeout, default::PRESENCE_TIMEOUT);
                    if !v.is_finite() || !(0.001..=5.0).contains(&v) {
                        bail!("presence_timeout must be between 0.001 and 5 seconds, got {v}");
                    }
                    Duration::from_secs_f64(v)
                },
                presence_max_uids: match pick!(presence_max_uids, default::PRESENCE_MAX_UIDS) {
                    n @ 1..=1000 => n,
                    n => bail!("presence_max_uids must be between 1 and 1000, got {n}"),
                },
                room_presence_max_limit: match pick!(
                    room_presence_max_limit,
                    default::ROOM_PRESENCE_MAX_LIMIT
                ) {
                    n @ 1..=router::room_presence::MAX_LISTED => n,
                    n => bail!("room_presence_max_limit must be between 1 and 10000, got {n}"),
                },
            },
            events: EventSettings {
                undelivered_after: {
                    let v = pick!(undelivered_after, 0.0);
                    // 0 turns the hook off; anything else is a deadline.
                    (v != 0.0)
                        .then(|| secs("undelivered_after", v))
                        .transpose()?
                },
                undelivered_max_pending: pick!(undelivered_max_pending, 1_000_000).max(1),
                webhook: match k.webhook_url.clone().filter(|u| !u.is_empty()) {
                    None => None,
                    Some(url) => Some(crate::webhook::WebhookConfig {
                        url,
                        secret: match k.webhook_secret.clone().filter(|s| !s.is_empty()) {
                            Some(s) => s,
                            None => bail!("webhook_url needs webhook_secret (the body's HMAC key)"),
                        },
                        queue: pick!(webhook_queue, 10_000).max(1),
                        batch: pick!(webhook_batch, 100).clamp(1, 10_000),
                        timeout: secs("webhook_timeout", pick!(webhook_timeout, 5.0))?,
                        retries: pick!(webhook_retries, 5),
                    }),
                },
                bus_events: pick!(bus_events, false),
            },
            batch: crate::control::BatchLimits {
                max_items: match pick!(batch_max_items, default::BATCH_MAX_ITEMS) {
                    0 => bail!("batch_max_items must be at least 1"),
                    n => n,
                },
                max_bytes: pick!(batch_max_bytes, default::BATCH_MAX_BYTES).max(64),
            },
            history_read_max: match pick!(history_read_max, default::HISTORY_READ_MAX) {
                n @ 1..=10_000 => n,
                n => bail!("history_read_max must be between 1 and 10000, got {n}"),
            },
            history: router::HistoryConfig {
                size: pick!(history_size, default::HISTORY_SIZE),
                ttl: secs("history_ttl", pick!(history_ttl, default::HISTORY_TTL))?,
                max_bytes: pick!(history_max_bytes, default::HISTORY_MAX_BYTES),
                idempotency_max_bytes: pick!(idempotency_max_bytes, default::IDEMPOTENCY_MAX_BYTES),
            },
        })
    }
}

/// Why a node refuses to start unsafe: one line each, naming the flags that fix it.
pub mod refusal {
    use std::net::SocketAddr;

    /// Neither a JWT key nor `--dev`.
    pub const NO_JWT_KEY: &str = "no JWT key: set --jwt-secret (PUSHGATE_JWT_SECRET) or \
        --jwt-public-key (PUSHGATE_JWT_PUBLIC_KEY), or pass --dev (PUSHGATE_DEV=true) to \
        trust ?uid= on a development node";

    /// A control listener beyond loopback with no API key and no `--dev`.
    pub fn open_control(control: SocketAddr) -> String {
        format!(
            "the control listener {control} is not on loopback and has no API key: set \
             --api-key (PUSHGATE_API_KEY), listen on 127.0.0.1 with --control, or pass --dev \
             (PUSHGATE_DEV=true) on a development node"
        )
    }
}

/// JWT verification from a secret or a public key; with neither, `?uid=` is trusted in
/// dev mode and the node refuses to start otherwise.
fn auth_mode(k: &Keys, dev: bool) -> anyhow::Result<AuthMode> {
    let leeway = Duration::from_secs(k.jwt_leeway.unwrap_or(default::JWT_LEEWAY));
    let secret = k.jwt_secret.clone().filter(|s| !s.is_empty());
    let key_file = k.jwt_public_key.clone();
    match (secret, key_file) {
        (Some(_), Some(_)) => bail!("set either jwt_secret or jwt_public_key, not both"),
        (Some(secret), None) => Ok(AuthMode::Jwt(
            JwtAuth::hs256(secret.as_bytes()).with_leeway(leeway),
        )),
        (None, Some(path)) => {
            let pem =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let algorithm = k
                .jwt_algorithm
                .clone()
                .unwrap_or_else(|| default::JWT_ALGORITHM.into());
            let auth = match algorithm.to_ascii_uppercase().as_str() {
                "RS256" => JwtAuth::rs256_pem(&pem)?,
                "ES256" => JwtAuth::es256_pem(&pem)?,
                other => bail!("jwt_algorithm must be RS256 or ES256, got {other}"),
            };
            Ok(AuthMode::Jwt(auth.with_leeway(leeway)))
        }
        (None, None) if dev => Ok(AuthMode::Dev),
        (None, None) => bail!("{}", refusal::NO_JWT_KEY),
    }
}

/// Host name and process ID: unique among the nodes of a cluster, stable for the process.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "node".to_owned(), |h| h.trim().to_owned());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("pushgate").chain(args.iter().copied())).unwrap()
    }

    /// A development node: most tests here are about other keys.
    fn dev(args: &[&str]) -> Cli {
        Cli::try_parse_from(
            ["pushgate", "--dev"]
                .into_iter()
                .chain(args.iter().copied()),
        )
        .unwrap()
    }

    /// Every default `--help` states is the one in force: giving a key the value its help
    /// states as default resolves to the same settings as leaving the key out. Defaults
    /// stated in words (the number of cores, "none") are named here, so that a stated
    /// value that does not parse fails too.
    #[test]
    fn every_default_stated_in_help_is_the_one_in_force() {
        use clap::CommandFactory;
        const IN_WORDS: &[&str] = &[
            "reactors",
            "max_connections",
            "webhook_url",
            "echo",
            "allowed_origins",
            "api_key",
            "max_body_bytes",
            "tls_cert",
            "tls_key",
            "node_id",
            "nats",
            "nats_tls_ca",
        ];
        let resolved = |extra: &[&str]| -> String {
            let args: Vec<&str> = ["--jwt-secret", "k"].iter().chain(extra).copied().collect();
            format!("{:?}", Settings::resolve(&cli(&args), 100).unwrap())
        };
        let defaults = resolved(&[]);
        let (mut checked, mut in_words) = (0, Vec::new());
        for arg in Cli::command().get_arguments() {
            let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
                continue;
            };
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let Some(stated) = help.split("[default: ").nth(1) else {
                continue;
            };
            if IN_WORDS.contains(&id) {
                in_words.push(id.to_owned());
                continue;
            }
            // A key the environment sets (PUSHGATE_IO in the README's io_uring pass) is not
            // at its default here.
            if arg
                .get_env()
                .is_some_and(|var| std::env::var_os(var).is_some())
            {
                continue;
            }
            // "0.0.0.0:8080; 127.0.0.1:8080 with --dev", "16389, one full record".
            let value = stated.split([']', ',', ';']).next().unwrap_or_default();
            let flag = format!("--{long}={value}");
            assert_eq!(
                resolved(&[&flag]),
                defaults,
                "{flag}: --help states a default that is not the one in force"
            );
            checked += 1;
        }
        assert_eq!(
            in_words, IN_WORDS,
            "a key of IN_WORDS is gone or states no default"
        );
        assert!(checked >= 45, "{checked}");
    }

    /// The libraries' defaults are the binary's: a library used on its own (tests,
    /// benchmarks, another binary) behaves as the gateway does out of the box.
    #[test]
    fn the_libraries_defaults_are_the_binarys() {
        let s = Settings::resolve(&cli(&["--jwt-secret", "k"]), 100).unwrap();
        let service = s.reactor.service.unwrap().limits;
        assert_eq!(service, ServiceLimits::default());
        assert_eq!(s.reactor.outbound, OutboundLimits::default());
        let r = ReactorConfig::default();
        let (ours, lib) = (&s.reactor, &r);
        assert_eq!(
            (
                ours.backlog,
                ours.max_connections_per_ip,
                ours.max_pending_handshakes
            ),
            (
                lib.backlog,
                lib.max_connections_per_ip,
                lib.max_pending_handshakes
            )
        );
        assert_eq!(
            (
                ours.pressure_handshake_timeout,
                ours.max_accept_rate,
                ours.inbox_depth
            ),
            (
                lib.pressure_handshake_timeout,
                lib.max_accept_rate,
                lib.inbox_depth
            )
        );
        assert_eq!(
            (ours.inbox_bytes, ours.compress_min_bytes),
            (lib.inbox_bytes, lib.compress_min_bytes)
        );
        if std::env::var_os("PUSHGATE_IO").is_none() {
            assert_eq!(ours.io, lib.io);
        }
        assert_eq!(
            (
                ours.io_uring_buffers,
                ours.io_uring_buffer_size,
                ours.tls_max_handshake_bytes
            ),
            (
                lib.io_uring_buffers,
                lib.io_uring_buffer_size,
                lib.tls_max_handshake_bytes
            )
        );
        let (ours, lib) = (&s.reactor.session, &SessionConfig::default());
        assert_eq!(
            format!(
                "{:?}",
                (ours.handshake_timeout, ours.heartbeat, ours.idle_timeout)
            ),
            format!(
                "{:?}",
                (lib.handshake_timeout, lib.heartbeat, lib.idle_timeout)
            )
        );
        assert_eq!(
            (ours.close_timeout, ours.max_header_bytes, ours.poll_timeout),
            (lib.close_timeout, lib.max_header_bytes, lib.poll_timeout)
        );
        assert_eq!(
            (
                ours.close_on_token_expiry,
                ours.max_bad_requests,
                ours.client_rate
            ),
            (
                lib.close_on_token_expiry,
                lib.max_bad_requests,
                lib.client_rate
            )
        );
        assert_eq!(ours.max_recipients, lib.max_recipients);
        assert_eq!(
            format!("{:?}", ours.reconnect),
            format!("{:?}", lib.reconnect)
        );
        assert_eq!(format!("{:?}", ours.deflate), format!("{:?}", lib.deflate));
        assert_eq!(
            format!("{:?}", s.history),
            format!("{:?}", router::HistoryConfig::default())
        );
    }

    #[test]
    fn without_a_jwt_key_only_dev_mode_starts() {
        let err = format!("{:#}", Settings::resolve(&cli(&[]), 100).unwrap_err());
        assert_eq!(err, refusal::NO_JWT_KEY);
        for flag in ["--jwt-secret", "--jwt-public-key", "--dev"] {
            assert!(err.contains(flag), "{err}");
        }
        assert!(!err.contains('\n'), "one line: {err}");
        let s = Settings::resolve(&dev(&[]), 100).unwrap();
        assert!(s.dev && matches!(s.reactor.session.auth, AuthMode::Dev));
        assert!(s.reactor.session.echo, "dev mode serves /echo");
        // --dev takes an optional value; the file key and PUSHGATE_DEV say the same.
        assert!(Settings::resolve(&cli(&["--dev", "false"]), 100).is_err());
        assert!(Settings::resolve(&cli(&["--dev=1"]), 100).unwrap().dev);
        let dir = std::env::temp_dir().join(format!("pushgate-dev-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.toml");
        std::fs::write(&path, "dev = true\n").unwrap();
        assert!(
            Settings::resolve(&cli(&["--config", path.to_str().unwrap()]), 100)
                .unwrap()
                .dev
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn with_a_jwt_key_echo_is_off_unless_enabled() {
        let s = Settings::resolve(&cli(&["--jwt-secret", "k"]), 100).unwrap();
        assert!(!s.dev && matches!(s.reactor.session.auth, AuthMode::Jwt(_)));
        assert!(!s.reactor.session.echo);
        let on = Settings::resolve(&cli(&["--jwt-secret", "k", "--echo", "true"]), 100).unwrap();
        assert!(on.reactor.session.echo);
        // With --dev a key still decides /ws: dev mode only allows what is otherwise refused.
        let both = Settings::resolve(&dev(&["--jwt-secret", "k"]), 100).unwrap();
        assert!(matches!(both.reactor.session.auth, AuthMode::Jwt(_)));
    }

    #[test]
    fn a_control_listener_beyond_loopback_needs_an_api_key() {
        let jwt = ["--jwt-secret", "k"];
        for control in ["0.0.0.0:8081", "10.1.2.3:8081", "[::]:8081"] {
            let args = [&jwt[..], &["--control", control]].concat();
            let err = format!("{:#}", Settings::resolve(&cli(&args), 100).unwrap_err());
            assert_eq!(err, refusal::open_control(control.parse().unwrap()));
            assert!(err.contains("--api-key") && err.contains("--dev"), "{err}");
            assert!(!err.contains('\n'), "one line: {err}");
            let keyed = [&args[..], &["--api-key", "a"]].concat();
            assert!(Settings::resolve(&cli(&keyed), 100).is_ok(), "{control}");
            assert!(Settings::resolve(&dev(&args), 100).is_ok(), "{control}");
        }
        for control in ["127.0.0.1:8081", "127.0.0.2:9", "[::1]:8081"] {
            let args = [&jwt[..], &["--control", control]].concat();
            assert!(Settings::resolve(&cli(&args), 100).is_ok(), "{control}");
        }
        // An empty key is no key.
        let empty = [&jwt[..], &["--control", "0.0.0.0:1", "--api-key", ""]].concat();
        assert!(Settings::resolve(&cli(&empty), 100).is_err());
    }

    #[test]
    fn defaults_follow_the_contract() {
        let s = Settings::resolve(&dev(&[]), 20_000).unwrap();
        assert_eq!(
            s.reactor.listen.to_string(),
            "127.0.0.1:8080",
            "a dev node: loopback"
        );
        let keyed = Settings::resolve(&cli(&["--jwt-secret", "k"]), 20_000).unwrap();
        assert_eq!(keyed.reactor.listen.to_string(), "0.0.0.0:8080");
        let told = Settings::resolve(&dev(&["--listen", "0.0.0.0:9000"]), 20_000).unwrap();
        assert_eq!(told.reactor.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(s.control.to_string(), "127.0.0.1:8081");
        assert_eq!(s.reactor.session.handshake_timeout, Duration::from_secs(10));
        assert_eq!(s.reactor.session.heartbeat, Duration::from_secs(25));
        assert_eq!(s.reactor.session.idle_timeout, Duration::from_secs(60));
        assert_eq!(s.shutdown_drain, Duration::from_secs(10));
        assert_eq!(s.reactor.max_connections, 20_000 - 64);
        assert!(s.capacity_from_fd_limit);
        assert!(s.reactor.session.echo);
        assert!(s.node_id.ends_with(&format!("-{}", std::process::id())));
        let named = Settings::resolve(&dev(&["--node-id", "edge-7"]), 100).unwrap();
        assert_eq!(named.node_id, "edge-7");
    }

    #[test]
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("pushgate-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.toml");
        std::fs::write(
            &path,
            "heartbeat = 5\nidle_timeout = 7.5\nmax_connections = 100\necho = false\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let s = Settings::resolve(&dev(&["--config", p, "--heartbeat", "3"]), 20_000).unwrap();
        assert_eq!(s.reactor.session.heartbeat, Duration::from_secs(3));
        assert_eq!(s.reactor.session.idle_timeout, Duration::from_millis(7500));
        assert_eq!(s.reactor.max_connections, 100);
        assert!(!s.capacity_from_fd_limit);
        assert!(!s.reactor.session.echo);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn control_limits_from_defaults_file_and_flags() {
        let limits = |s: Settings| s.reactor.service.unwrap().limits;
        let d = limits(Settings::resolve(&dev(&[]), 100).unwrap());
        assert_eq!(
            (d.max_connections, d.idle_timeout, d.first_request_timeout),
            (1024, Duration::from_secs(60), Duration::from_secs(5))
        );
        let dir = std::env::temp_dir().join(format!("pushgate-control-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.toml");
        std::fs::write(
            &path,
            "control_max_clients = 10\ncontrol_idle_timeout = 7\ncontrol_first_request_timeout = 0.5\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let f = limits(Settings::resolve(&dev(&["--config", p]), 100).unwrap());
        assert_eq!(
            (f.max_connections, f.idle_timeout, f.first_request_timeout),
            (10, Duration::from_secs(7), Duration::from_millis(500))
        );
        let over = limits(
            Settings::resolve(&dev(&["--config", p, "--control-max-clients", "3"]), 100).unwrap(),
        );
        assert_eq!(over.max_connections, 3);
        assert_eq!(d.max_connections_per_ip, 0);
        let per_ip =
            limits(Settings::resolve(&dev(&["--control-max-clients-per-ip", "8"]), 100).unwrap());
        assert_eq!(per_ip.max_connections_per_ip, 8);
        std::fs::remove_dir_all(&dir).ok();
        for bad in [
            "--control-max-clients=0",
            "--control-idle-timeout=0",
            "--control-first-request-timeout=-1",
        ] {
            assert!(Settings::resolve(&dev(&[bad]), 100).is_err(), "{bad}");
        }
    }

    #[test]
    fn history_keys_from_defaults_file_flags_and_environment() {
        let d = Settings::resolve(&dev(&[]), 100).unwrap().history;
        assert_eq!(
            (d.size, d.ttl, d.max_bytes),
            (100, Duration::from_secs(300), default::HISTORY_MAX_BYTES)
        );
        let dir = std::env::temp_dir().join(format!("pushgate-history-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.toml");
        std::fs::write(
            &path,
            "history_size = 7\nhistory_ttl = 2.5\nhistory_max_bytes = 4096\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let f = Settings::resolve(&dev(&["--config", p]), 100)
            .unwrap()
            .history;
        assert_eq!(
            (f.size, f.ttl, f.max_bytes),
            (7, Duration::from_millis(2500), 4096)
        );
        let o = Settings::resolve(&dev(&["--config", p, "--history-size", "0"]), 100)
            .unwrap()
            .history;
        assert_eq!((o.size, o.max_bytes), (0, 4096));
        assert_eq!(
            d.idempotency_max_bytes,
            router::idempotency::DEFAULT_MAX_BYTES
        );
        let i = Settings::resolve(&dev(&["--idempotency-max-bytes", "1000000"]), 100)
            .unwrap()
            .history;
        assert_eq!(i.idempotency_max_bytes, 1_000_000);
        std::fs::remove_dir_all(&dir).ok();
        assert!(Settings::resolve(&dev(&["--history-ttl", "0"]), 100).is_err());
        let nats = ["--nats", "nats://127.0.0.1:4222"];
        let bus = |extra: &[&str]| {
            Settings::resolve(&dev(&[&nats[..], extra].concat()), 100).map(|s| s.bus.unwrap())
        };
        assert_eq!(bus(&[]).unwrap().history_replicas, 1);
        assert_eq!(
            bus(&["--history-replicas", "3"]).unwrap().history_replicas,
            3
        );
        assert!(bus(&["--history-replicas", "0"]).is_err());
        assert!(bus(&["--history-replicas", "6"]).is_err());
        // Each key is also an environment variable (clap reads it; no process-wide
        // variable is set here, other tests run in parallel).
        let help = <Cli as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        for env in [
            "PUSHGATE_HISTORY_SIZE",
            "PUSHGATE_HISTORY_TTL",
            "PUSHGATE_HISTORY_MAX_BYTES",
            "PUSHGATE_HISTORY_REPLICAS",
        ] {
            assert!(help.contains(env), "{env}");
        }
    }

    #[test]
    fn every_flag_is_a_file_key_and_an_environment_variable() {
        let command = <Cli as clap::CommandFactory>::command();
        let mut keys = 0;
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "config" | "help" | "version") {
                continue;
            }
            keys += 1;
            let key = long.replace('-', "_");
            // A value of the wrong type: the key must be known and the value refused.
            let err = toml::from_str::<Keys>(&format!("{key} = [[]]"))
                .unwrap_err()
                .to_string();
            assert!(!err.contains("unknown field"), "{key}: {err}");
            let env = format!("PUSHGATE_{}", key.to_ascii_uppercase());
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(env.as_str()));
        }
        assert!(keys >= 50, "only {keys} keys");
        let err = toml::from_str::<Keys>("no_such_key = 1").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn a_file_value_of_the_wrong_type_names_the_file() {
        let dir = std::env::temp_dir().join(format!("pushgate-config-type-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.toml");
        std::fs::write(&path, "heartbeat = \"soon\"\n").unwrap();
        let p = path.to_str().unwrap();
        let err = Settings::resolve(&dev(&["--config", p]), 100).unwrap_err();
        assert!(format!("{err:#}").contains("p.toml"), "{err:#}");
        // A flag replaces the file's value before it is read, as it would a good one.
        let s = Settings::resolve(&dev(&["--config", p, "--heartbeat", "3"]), 100).unwrap();
        assert_eq!(s.reactor.session.heartbeat, Duration::from_secs(3));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn operator_keys_from_defaults_file_flags_and_environment() {
        let d = Settings::resolve(&dev(&[]), 100).unwrap();
        assert_eq!(d.max_conns_per_user, 16);
        assert_eq!(d.operator.presence_timeout, Duration::from_millis(80));
        assert_eq!(d.operator.presence_max_uids, 100);
        assert_eq!(d.operator.room_presence_max_limit, 1000);
        let dir = std::env::temp_dir().join(format!("pushgate-operator-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.toml");
        std::fs::write(
            &path,
            "max_conns_per_user = 4\npresence_timeout = 0.25\npresence_max_uids = 9\n\
             room_presence_max_limit = 7\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let f = Settings::resolve(&dev(&["--config", p]), 100).unwrap();
        assert_eq!(f.max_conns_per_user, 4);
        assert_eq!(f.operator.presence_timeout, Duration::from_millis(250));
        assert_eq!(f.operator.presence_max_uids, 9);
        assert_eq!(f.operator.room_presence_max_limit, 7);
        let o =
            Settings::resolve(&dev(&["--config", p, "--max-conns-per-user", "1"]), 100).unwrap();
        assert_eq!(o.max_conns_per_user, 1);
        std::fs::remove_dir_all(&dir).ok();
        for bad in [
            "--max-conns-per-user=0",
            "--presence-timeout=0",
            "--presence-timeout=6",
            "--presence-max-uids=0",
            "--presence-max-uids=1001",
            "--room-presence-max-limit=0",
            "--room-presence-max-limit=10001",
            "--batch-max-items=0",
            "--history-read-max=0",
            "--history-read-max=10001",
        ] {
            assert!(Settings::resolve(&dev(&[bad]), 100).is_err(), "{bad}");
        }
        let help = <Cli as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        for env in [
            "PUSHGATE_MAX_CONNS_PER_USER",
            "PUSHGATE_PRESENCE_TIMEOUT",
            "PUSHGATE_PRESENCE_MAX_UIDS",
            "PUSHGATE_ROOM_PRESENCE_MAX_LIMIT",
            "PUSHGATE_BATCH_MAX_ITEMS",
            "PUSHGATE_BATCH_MAX_BYTES",
            "PUSHGATE_HISTORY_READ_MAX",
        ] {
            assert!(help.contains(env), "{env}");
        }
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Settings::resolve(&dev(&["--heartbeat=-1"]), 100).is_err());
        assert!(Settings::resolve(&dev(&["--heartbeat", "0"]), 100).is_err());
        assert!(Settings::resolve(&dev(&["--reactors", "0"]), 100).is_err());
        assert!(Settings::resolve(&dev(&["--max-pending-pongs", "0"]), 100).is_err());
        assert!(Settings::resolve(&dev(&["--max-pending-pongs", "1025"]), 100).is_err());
        let pongs = |a: &[&str]| {
            Settings::resolve(&dev(a), 100)
                .unwrap()
                .reactor
                .outbound
                .max_pending_pongs
        };
        assert_eq!(pongs(&[]), 16);
        assert_eq!(pongs(&["--max-pending-pongs", "1"]), 1);
        assert!(Cli::try_parse_from(["pushgate", "--listen", "nope"]).is_err());
        let dir = std::env::temp_dir().join(format!("pushgate-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.toml");
        std::fs::write(&path, "no_such_key = 1\n").unwrap();
        assert!(Settings::resolve(&dev(&["--config", path.to_str().unwrap()]), 100).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
