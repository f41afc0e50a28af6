//! A fault-injecting TCP relay: listens on one address, forwards every connection to a
//! target, and applies faults controlled at run time — latency with jitter, stalls (bytes
//! held, then let go), resets (every open connection closed with RST) and one-way
//! blackholes (bytes accepted and never forwarded). This kernel has no netem and no
//! iptables, so faults on the wire between hosts come from here.
//!
//! Each direction of a connection is a reader thread that stamps each chunk with its due
//! time and a writer thread that sends it then, so latency does not cut throughput and
//! order is kept (a due time is never before the previous one).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The faults in force; changed at any time, read per chunk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Faults {
    pub(crate) latency_ms: u64,
    pub(crate) jitter_ms: u64,
    /// Bytes towards the target are dropped.
    pub(crate) blackhole_up: bool,
    /// Bytes towards the client are dropped.
    pub(crate) blackhole_down: bool,
    /// Bytes are held (in order) until the stall is lifted.
    pub(crate) stalled: bool,
}

impl Faults {
    /// Applies one control command: `latency MS [JITTER]`, `blackhole up|down|both|off`,
    /// `stall on|off`, `clear`. `reset` is handled by the relay itself.
    pub(crate) fn apply(&mut self, cmd: &str) -> Result<(), String> {
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let num = |s: Option<&&str>| -> Result<u64, String> {
            s.ok_or("missing number")?
                .parse()
                .map_err(|e| format!("bad number: {e}"))
        };
        match words.as_slice() {
            ["latency", rest @ ..] => {
                self.latency_ms = num(rest.first())?;
                self.jitter_ms = if rest.len() > 1 { num(rest.get(1))? } else { 0 };
            }
            ["blackhole", which] => {
                let (up, down) = match *which {
                    "up" => (true, false),
                    "down" => (false, true),
                    "both" => (true, true),
                    "off" => (false, false),
                    other => return Err(format!("blackhole {other}? (up|down|both|off)")),
                };
                self.blackhole_up = up;
                self.blackhole_down = down;
            }
            ["stall", "on"] => self.stalled = true,
            ["stall", "off"] => self.stalled = false,
            ["clear"] => {
                *self = Faults {
                    latency_ms: self.latency_ms,
                    jitter_ms: self.jitter_ms,
                    ..Faults::default()
                }
            }
            _ => return Err(format!("unknown command {cmd:?}")),
        }
        Ok(())
    }
}

/// A running relay; dropping it stops accepting and closes its connections.
pub(crate) struct Relay {
    pub(crate) addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    faults: Mutex<Faults>,
    /// Bumped by `reset`: connections opened before close themselves.
    generation: AtomicU64,
    stop: AtomicBool,
    conns: Mutex<Vec<(u64, TcpStream, TcpStream)>>,
    /// Bytes forwarded, both ways.
    pub(crate) forwarded: AtomicU64,
}

impl Relay {
    /// Listens on `listen` (port 0: any) and forwards to `target`.
    pub(crate) fn start(listen: SocketAddr, target: SocketAddr) -> std::io::Result<Relay> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            faults: Mutex::new(Faults::default()),
            generation: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            forwarded: AtomicU64::new(0),
        });
        let s = shared.clone();
        listener.set_nonblocking(true)?;
        std::thread::Builder::new()
            .name(format!("relay-{addr}"))
            .spawn(move || accept_loop(&listener, target, &s))?;
        Ok(Relay { addr, shared })
    }

    /// Applies a control command (see [`Faults::apply`]) or `reset`.
    pub(crate) fn control(&self, cmd: &str) -> Result<(), String> {
        if cmd.trim() == "reset" {
            self.reset();
            return Ok(());
        }
        let mut f = self.shared.faults.lock().map_err(|_| "poisoned")?;
        f.apply(cmd)
    }

    /// Closes every open connection with RST (both sides see a reset).
    pub(crate) fn reset(&self) {
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        let conns = std::mem::take(&mut *lock(&self.shared.conns));
        for (_, a, b) in conns {
            for s in [a, b] {
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    pub(crate) fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.reset();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn accept_loop(listener: &TcpListener, target: SocketAddr, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let _ = client.set_nonblocking(false);
                // A connect to a dead target is a refused connection to the client too.
                let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
                    let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let gen = shared.generation.load(Ordering::SeqCst);
                if let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) {
                    lock(&shared.conns).push((gen, c2, s2));
                }
                for (from, to, up) in [
                    (client.try_clone(), server.try_clone(), true),
                    (server.try_clone(), client.try_clone(), false),
                ] {
                    if let (Ok(from), Ok(to)) = (from, to) {
                        let s = shared.clone();
                        let _ = std::thread::Builder::new()
                            .name("relay-pump".into())
                            .spawn(move || pump(from, to, up, gen, &s));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// One direction: read, stamp with a due time, hand to the writer.
fn pump(mut from: TcpStream, to: TcpStream, up: bool, gen: u64, shared: &Arc<Shared>) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let s = shared.clone();
    let writer = std::thread::Builder::new()
        .name("relay-write".into())
        .spawn(move || write_due(to, &rx, up, gen, &s));
    let mut buf = vec![0u8; 32 * 1024];
    let mut last_due = Instant::now();
    let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
    loop {
        if shared.stop.load(Ordering::SeqCst) || shared.generation.load(Ordering::SeqCst) != gen {
            break;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let f = lock(&shared.faults).clone();
                let jitter = if f.jitter_ms > 0 {
                    fastrand::u64(0..=f.jitter_ms)
                } else {
                    0
                };
                let due = Instant::now() + Duration::from_millis(f.latency_ms + jitter);
                last_due = last_due.max(due);
                if tx.send((last_due, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut
                    || e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    drop(tx);
    if let Ok(w) = writer {
        let _ = w.join();
    }
    let _ = from.shutdown(Shutdown::Both);
}

fn write_due(
    mut to: TcpStream,
    rx: &mpsc::Receiver<(Instant, Vec<u8>)>,
    up: bool,
    gen: u64,
    shared: &Arc<Shared>,
) {
    while let Ok((due, bytes)) = rx.recv() {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        loop {
            if shared.generation.load(Ordering::SeqCst) != gen || shared.stop.load(Ordering::SeqCst)
            {
                return;
            }
            let f = lock(&shared.faults).clone();
            if !f.stalled {
                if (up && f.blackhole_up) || (!up && f.blackhole_down) {
                    break;
                }
                if to.write_all(&bytes).is_err() {
                    let _ = to.shutdown(Shutdown::Both);
                    return;
                }
                shared
                    .forwarded
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// `pushgate-load relay`: relays from the command line, faults from a control socket.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// LISTEN=TARGET, repeatable, e.g. 10.64.1.254:14222=10.64.1.11:4222.
    #[arg(long = "route", required = true)]
    routes: Vec<String>,
    /// Control address: one command per line (`latency MS [JITTER]`, `blackhole
    /// up|down|both|off`, `stall on|off`, `reset`, `clear`), optionally prefixed by the
    /// route's index (`1 blackhole up`); answered `ok` or `error: ...`; `stats` answers
    /// the bytes each route forwarded.
    #[arg(long, default_value = "127.0.0.1:0")]
    control: SocketAddr,
    /// Latency and jitter for every route from the start, in ms.
    #[arg(long, default_value_t = 0)]
    latency: u64,
    #[arg(long, default_value_t = 0)]
    jitter: u64,
    /// Stop after this many seconds (0: never).
    #[arg(long, default_value_t = 0)]
    duration: u64,
}

/// Runs `pushgate-load relay` until `--duration` ends (or forever).
pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let mut relays = Vec::new();
    for r in &args.routes {
        let (l, t) = r
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--route LISTEN=TARGET, got {r}"))?;
        let relay = Relay::start(l.parse()?, t.parse()?)?;
        relay
            .control(&format!("latency {} {}", args.latency, args.jitter))
            .map_err(anyhow::Error::msg)?;
        println!("relay {} -> {t}", relay.addr);
        relays.push(relay);
    }
    let control = TcpListener::bind(args.control)?;
    println!("control {}", control.local_addr()?);
    control.set_nonblocking(true)?;
    let end = (args.duration > 0).then(|| Instant::now() + Duration::from_secs(args.duration));
    while end.is_none_or(|e| Instant::now() < e) {
        match control.accept() {
            Ok((mut s, _)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut text = String::new();
                let _ = s.read_to_string(&mut text);
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    if line.trim() == "stats" {
                        let bytes: Vec<String> =
                            relays.iter().map(|r| r.forwarded().to_string()).collect();
                        let _ = writeln!(s, "forwarded {}", bytes.join(" "));
                        continue;
                    }
                    let answer = control_line(&relays, line);
                    let _ = writeln!(
                        s,
                        "{}",
                        answer.err().map_or("ok".into(), |e| format!("error: {e}"))
                    );
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    Ok(())
}

fn control_line(relays: &[Relay], line: &str) -> Result<(), String> {
    let (targets, cmd): (Vec<&Relay>, &str) = match line.split_once(' ') {
        Some((i, rest)) if i.parse::<usize>().is_ok() => {
            let i: usize = i.parse().map_err(|_| "index")?;
            (vec![relays.get(i).ok_or("no such route")?], rest)
        }
        _ => (relays.iter().collect(), line),
    };
    for r in targets {
        r.control(cmd)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// An echo server on loopback; returns its address.
    fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let mut w = s;
                    let _ = std::io::copy(&mut r, &mut w);
                });
            }
        });
        addr
    }

    fn roundtrip(s: &mut TcpStream, what: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(what)?;
        let mut got = vec![0u8; what.len()];
        s.read_exact(&mut got)?;
        Ok(got)
    }

    #[test]
    fn control_commands_parse_and_bad_ones_are_refused() {
        let mut f = Faults::default();
        f.apply("latency 5 2").unwrap();
        f.apply("blackhole up").unwrap();
        f.apply("stall on").unwrap();
        assert_eq!(
            f,
            Faults {
                latency_ms: 5,
                jitter_ms: 2,
                blackhole_up: true,
                blackhole_down: false,
                stalled: true
            }
        );
        f.apply("clear").unwrap();
        assert_eq!((f.latency_ms, f.blackhole_up, f.stalled), (5, false, false));
        assert!(f.apply("blackhole sideways").is_err());
        assert!(f.apply("latency x").is_err());
        assert!(f.apply("fly").is_err());
    }

    #[test]
    fn forwards_with_latency_stalls_blackholes_and_resets() {
        let relay = Relay::start("127.0.0.1:0".parse().unwrap(), echo()).unwrap();
        let mut s = TcpStream::connect(relay.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(roundtrip(&mut s, b"hello").unwrap(), b"hello");

        // 100 ms each way.
        relay.control("latency 100 0").unwrap();
        let t = Instant::now();
        assert_eq!(roundtrip(&mut s, b"slow").unwrap(), b"slow");
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        relay.control("latency 0").unwrap();

        // A stall holds bytes, in order, until lifted.
        relay.control("stall on").unwrap();
        s.write_all(b"held").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut b = [0u8; 4];
        assert!(s.read_exact(&mut b).is_err(), "nothing passes a stall");
        relay.control("stall off").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"held");

        // One-way blackhole: bytes to the target vanish for good.
        relay.control("blackhole up").unwrap();
        s.write_all(b"gone").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        relay.control("blackhole off").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert!(
            s.read_exact(&mut b).is_err(),
            "blackholed bytes never come back"
        );
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(roundtrip(&mut s, b"back").unwrap(), b"back");

        // Reset: the client sees its connection end; a new one works.
        relay.reset();
        let mut end = [0u8; 1];
        let r = s.read(&mut end);
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        let mut s2 = TcpStream::connect(relay.addr).unwrap();
        s2.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(roundtrip(&mut s2, b"again").unwrap(), b"again");
        assert!(relay.forwarded() > 0);
    }
}
