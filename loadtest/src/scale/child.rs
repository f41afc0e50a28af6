//! One load process of a `scale` run: opens its slice of the users, then runs each phase
//! the parent names on stdin and reports it as one JSON line on stdout.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::bail;
use mio::{Events, Interest, Poll, Token};
use protocol::Message;

use super::report::{self, Report};
use super::{hist, slice, Args, Slice};
use crate::adapter::{field_u64, now_micros};
use crate::publisher::{self, Publishers};
use crate::wsclient::{Phase, WsConn};

/// Group numbers carried in each push (`"grp"`), one range per phase, so a late message of
/// an earlier phase is never counted in a later one.
const PUSH_GROUPS: u64 = 0;
const STORM_GROUPS: u64 = 1 << 10;
const VERIFY_GROUPS: u64 = 2 << 10;

pub(crate) fn run(args: &Args, index: usize, fd_limit: u64) -> anyhow::Result<()> {
    let s = slice(
        index,
        args.processes,
        args.connections,
        args.targets.len(),
        args.sources,
        args.storm_users,
    );
    let publishing = 2 * s.nodes.len() * args.publishers.max(1) * 3;
    crate::adapter::check_fds(s.users.len() + publishing, fd_limit)?;
    let result = phases(args, &s);
    if let Err(e) = &result {
        emit(&Report::Error {
            message: format!("child {index}: {e:#}"),
        });
    }
    result
}

fn emit(r: &Report) {
    let line = serde_json::to_string(r)
        .unwrap_or_else(|e| format!(r#"{{"phase":"error","message":"{e}"}}"#));
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn phases(args: &Args, s: &Slice) -> anyhow::Result<()> {
    let mut conns = Conns::new(args, s)?;
    emit(&Report::Connected(conns.connect_all()?));
    for line in std::io::stdin().lock().lines() {
        let report = match line?.trim() {
            "pushes" => Report::Pushes(conns.pushes()?),
            "broadcast" => Report::Broadcast(conns.broadcast()?),
            "storm" => Report::Storm(conns.storm()?),
            "quit" => break,
            other => bail!("unknown command {other:?}"),
        };
        emit(&report);
    }
    Ok(())
}

/// A batch of pushes published on threads while the main thread reads the connections.
struct PushRun {
    threads: Vec<(Group, JoinHandle<anyhow::Result<publisher::Outcome>>)>,
    sent: Arc<AtomicU64>,
}

/// Pushes through one API to a set of users.
#[derive(Debug, Clone)]
struct Group {
    id: u64,
    crossing: bool,
    /// Pushes it was asked to send.
    count: u64,
}

/// Who gets the pushes of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    /// `count` pushes in all, each to a random user of the pool.
    Random(u64),
    /// One push to each user of the pool.
    EachOnce,
}

/// The child's connections.
struct Conns<'a> {
    args: &'a Args,
    slice: Slice,
    poll: Poll,
    events: Events,
    /// Connection `j` is user `slice.users.start + j`; `None` once it failed.
    list: Vec<Option<WsConn>>,
    /// The target node each connection is on.
    node: Vec<usize>,
    /// Held connections the server closed.
    dropped: usize,
    parent: u32,
    msgs: Vec<Message>,
}

/// What one turn of the poll loop changed.
#[derive(Debug, Default, Clone, Copy)]
struct Turn {
    upgraded: usize,
    refused: usize,
}

impl<'a> Conns<'a> {
    fn new(args: &'a Args, s: &Slice) -> anyhow::Result<Self> {
        Ok(Conns {
            args,
            slice: s.clone(),
            poll: Poll::new()?,
            events: Events::with_capacity(4096),
            list: Vec::with_capacity(s.users.len()),
            node: Vec::with_capacity(s.users.len()),
            dropped: 0,
            parent: std::os::unix::process::parent_id(),
            msgs: Vec::new(),
        })
    }

    fn source(&self, j: usize) -> SocketAddr {
        let n = self.slice.sources.len().max(1);
        let host = self.slice.sources.start as usize + j % n;
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host as u8)), 0)
    }

    /// Starts connection `j` to `node`, replacing whatever was there; false if the
    /// connect call itself failed.
    fn start(&mut self, j: usize, node: usize) -> bool {
        let server = self.args.targets[node].client;
        let path = crate::adapter::fill(
            &self.args.subscribe,
            &format!("u{}", self.slice.users.start + j),
            "",
        );
        let conn = WsConn::connect(self.source(j), server, &server.to_string(), &path).and_then(
            |mut c| {
                self.poll.registry().register(
                    &mut c.stream,
                    Token(j),
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                Ok(c)
            },
        );
        let ok = conn.is_ok();
        if j < self.list.len() {
            self.list[j] = conn.ok();
            self.node[j] = node;
        } else {
            self.list.push(conn.ok());
            self.node.push(node);
        }
        ok
    }

    /// One poll; drives the ready connections and hands each text message to `on_text`
    /// with its connection's index.
    fn turn(
        &mut self,
        wait: Duration,
        mut on_text: impl FnMut(usize, &[u8]),
    ) -> anyhow::Result<Turn> {
        if std::os::unix::process::parent_id() != self.parent {
            bail!("the parent process is gone");
        }
        self.poll.poll(&mut self.events, Some(wait))?;
        let mut t = Turn::default();
        for ev in self.events.iter() {
            let j = ev.token().0;
            let Some(c) = self.list.get_mut(j).and_then(Option::as_mut) else {
                continue;
            };
            let before = c.phase;
            c.drive(&mut self.msgs);
            match (before, c.phase) {
                (Phase::Open, Phase::Failed) => self.dropped += 1,
                (Phase::Open, _) => {}
                (_, Phase::Open) => t.upgraded += 1,
                (_, Phase::Failed) => t.refused += 1,
                _ => {}
            }
            if c.phase == Phase::Failed {
                self.list[j] = None;
            }
            for m in self.msgs.drain(..) {
                if let Message::Text(text) = m {
                    on_text(j, &text);
                }
            }
        }
        Ok(t)
    }

    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs_f64(self.args.timeout)
    }

    /// Opens every user of the slice, spread over its nodes, at most
    /// `--connecting-at-once` upgrading at a time.
    fn connect_all(&mut self) -> anyhow::Result<report::Connected> {
        let n = self.slice.users.len();
        let nodes = self.slice.nodes.clone();
        let deadline = self.deadline();
        let start = Instant::now();
        let (mut open, mut failed, mut started) = (0, 0, 0);
        let mut last_note = Instant::now();
        while open + failed < n {
            while started < n && started - (open + failed) < self.args.connecting_at_once.max(1) {
                let node = nodes.start + started % nodes.len();
                if !self.start(started, node) {
                    failed += 1;
                }
                started += 1;
            }
            if Instant::now() > deadline {
                break;
            }
            let t = self.turn(Duration::from_millis(20), |_, _| {})?;
            open += t.upgraded;
            failed += t.refused;
            if last_note.elapsed() > Duration::from_secs(10) {
                eprintln!(
                    "  load process {}: {open}/{n} open, {failed} failed",
                    self.args.child.unwrap_or(0)
                );
                last_note = Instant::now();
            }
        }
        let mut per_node = vec![0; self.args.targets.len()];
        for (c, &node) in self.list.iter().zip(&self.node) {
            if c.as_ref().is_some_and(|c| c.phase == Phase::Open) {
                per_node[node] += 1;
            }
        }
        Ok(report::Connected {
            open,
            failed: n - open,
            secs: start.elapsed().as_secs_f64(),
            per_node,
        })
    }

    /// This child's share of `total`.
    fn share(&self, total: u64) -> u64 {
        let i = self.args.child.unwrap_or(0) as u64;
        let n = self.args.processes as u64;
        (i + 1) * total / n - i * total / n
    }

    /// Starts publishing to the users `pool` (connection indexes): per node holding some
    /// of them, one group through that node's API and one through the next node's, which
    /// does not hold them, so half the pushes cross the bus.
    fn publish(&self, pool: &[usize], pick: Pick, rate: f64, first_group: u64) -> PushRun {
        let targets = &self.args.targets;
        let mut by_node: Vec<Vec<usize>> = vec![Vec::new(); targets.len()];
        for &j in pool {
            by_node[self.node[j]].push(self.slice.users.start + j);
        }
        let mut groups: Vec<(usize, bool, Vec<usize>)> = Vec::new();
        for (node, users) in by_node.into_iter().enumerate() {
            if users.is_empty() {
                continue;
            }
            let other = (node + 1) % targets.len();
            match pick {
                Pick::Random(_) => {
                    groups.push((node, false, users.clone()));
                    groups.push((other, other != node, users));
                }
                Pick::EachOnce => {
                    let (a, b) = users.split_at(users.len() / 2);
                    groups.push((node, false, a.to_vec()));
                    groups.push((other, other != node, b.to_vec()));
                }
            }
        }
        let sent = Arc::new(AtomicU64::new(0));
        let how = Publishers {
            publishers: self.args.publishers.max(1),
            pipelined: false,
            window: 1,
        };
        let per_group_rate = rate / groups.len().max(1) as f64;
        let mut threads = Vec::new();
        let n_groups = groups.len() as u64;
        for (k, (api_node, crossing, users)) in groups.into_iter().enumerate() {
            let k = k as u64;
            let count = match pick {
                Pick::Random(total) => (k + 1) * total / n_groups - k * total / n_groups,
                Pick::EachOnce => users.len() as u64,
            };
            if users.is_empty() || count == 0 {
                continue;
            }
            let id = first_group + k;
            let users = Arc::new(users);
            let make: publisher::MakeRequest = Arc::new(move |i| {
                let user = match pick {
                    Pick::Random(_) => users[fastrand::usize(..users.len())],
                    Pick::EachOnce => users[(i as usize).min(users.len() - 1)],
                };
                let body = format!(
                    r#"{{"to":["u{user}"],"data":{{"ts":{},"grp":{id},"idx":{i}}}}}"#,
                    now_micros()
                );
                ("/v1/push".to_owned(), body)
            });
            let (api, key, how, sent) = (
                targets[api_node].api,
                self.args.api_key.clone(),
                how.clone(),
                Arc::clone(&sent),
            );
            let handle = std::thread::spawn(move || {
                publisher::run(
                    api,
                    &how,
                    count,
                    per_group_rate,
                    key.as_deref(),
                    &make,
                    &sent,
                )
            });
            threads.push((
                Group {
                    id,
                    crossing,
                    count,
                },
                handle,
            ));
        }
        PushRun { threads, sent }
    }

    /// Reads the connections until `run`'s publishers are done and every accepted push
    /// arrived (or the drain time passed); `during` is called every turn (the storm).
    fn collect(
        &mut self,
        run: PushRun,
        mut during: impl FnMut(&mut Self, Turn) -> anyhow::Result<()>,
    ) -> anyhow::Result<report::Pushes> {
        let dropped_before = self.dropped;
        let deadline = self.deadline();
        let ids: Vec<u64> = run.threads.iter().map(|(g, _)| g.id).collect();
        let crossing: HashSet<u64> = run
            .threads
            .iter()
            .filter(|(g, _)| g.crossing)
            .map(|(g, _)| g.id)
            .collect();
        let (lo, hi) = (
            ids.iter().copied().min().unwrap_or(0),
            ids.iter().copied().max().unwrap_or(0),
        );
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let (mut all, mut local, mut cross) = (hist::new(), hist::new(), hist::new());
        let mut received = 0u64;
        let mut p = report::Pushes::default();
        let mut pending = run.threads;
        let mut finished_at: Option<Instant> = None;
        let mut expected = u64::MAX;
        loop {
            let t = self.turn(Duration::from_millis(10), |_, text| {
                let (Some(ts), Some(g), Some(i)) = (
                    field_u64(text, "ts"),
                    field_u64(text, "grp"),
                    field_u64(text, "idx"),
                ) else {
                    return;
                };
                if g < lo || g > hi {
                    return;
                }
                received += 1;
                if seen.insert((g, i)) {
                    let latency = now_micros().saturating_sub(ts);
                    hist::record(&mut all, latency);
                    if crossing.contains(&g) {
                        hist::record(&mut cross, latency);
                    } else {
                        hist::record(&mut local, latency);
                    }
                }
            })?;
            during(self, t)?;
            let mut k = 0;
            while k < pending.len() {
                if pending[k].1.is_finished() {
                    let (g, h) = pending.swap_remove(k);
                    let outcome = h
                        .join()
                        .map_err(|_| anyhow::anyhow!("publisher panicked"))??;
                    p.api_failed += outcome.failed;
                    p.publish_secs = p.publish_secs.max(outcome.secs);
                    if g.crossing {
                        p.crossing_sent += g.count;
                    } else {
                        p.local_sent += g.count;
                    }
                } else {
                    k += 1;
                }
            }
            if pending.is_empty() && finished_at.is_none() {
                finished_at = Some(Instant::now());
                let sent = run.sent.load(std::sync::atomic::Ordering::Relaxed);
                expected = sent.saturating_sub(p.api_failed);
            }
            let drained =
                finished_at.is_some_and(|t| t.elapsed() > Duration::from_secs_f64(self.args.drain));
            if seen.len() as u64 >= expected || drained {
                break;
            }
            if Instant::now() > deadline {
                bail!("pushes did not finish within --timeout");
            }
        }
        p.sent = run.sent.load(std::sync::atomic::Ordering::Relaxed);
        p.received = received;
        p.unique = seen.len() as u64;
        for &(g, _) in &seen {
            if crossing.contains(&g) {
                p.crossing_unique += 1;
            } else {
                p.local_unique += 1;
            }
        }
        p.dropped = self.dropped - dropped_before;
        p.hist = hist::to_pairs(&all);
        p.hist_local = hist::to_pairs(&local);
        p.hist_crossing = hist::to_pairs(&cross);
        Ok(p)
    }

    /// Indexes of the connections that are open.
    fn open_indexes(&self) -> Vec<usize> {
        self.list
            .iter()
            .enumerate()
            .filter(|(_, c)| c.as_ref().is_some_and(|c| c.phase == Phase::Open))
            .map(|(j, _)| j)
            .collect()
    }

    fn pushes(&mut self) -> anyhow::Result<report::Pushes> {
        let total = (self.args.rate as f64 * self.args.push_secs) as u64;
        let pool = self.open_indexes();
        let rate = self.share(self.args.rate) as f64;
        let run = self.publish(&pool, Pick::Random(self.share(total)), rate, PUSH_GROUPS);
        self.collect(run, |_, _| Ok(()))
    }

    fn broadcast(&mut self) -> anyhow::Result<report::Broadcast> {
        let k = self.args.broadcasts as usize;
        let open = self.open_indexes().len();
        let dropped_before = self.dropped;
        let mut count = vec![0u64; k];
        let mut last = vec![0u64; k];
        let mut h = hist::new();
        let mut total = 0usize;
        // Broadcasts still arriving are waited for, however late: a run on a busy
        // machine may back them up behind each other. The phase ends once all arrived,
        // or `--drain` seconds pass without any after the last one was due, or at
        // `--timeout`.
        let start = Instant::now();
        let last_due = Duration::from_secs_f64(self.args.broadcast_interval * k as f64 + 1.0);
        let deadline = self.deadline();
        let quiet = Duration::from_secs_f64(self.args.drain);
        let mut last_arrival = Instant::now();
        while total < open * k && Instant::now() < deadline {
            if start.elapsed() > last_due && last_arrival.elapsed() > quiet {
                break;
            }
            let before = total;
            self.turn(Duration::from_millis(10), |_, text| {
                let (Some(ts), Some(b)) = (field_u64(text, "ts"), field_u64(text, "bc")) else {
                    return;
                };
                let Some(b) = usize::try_from(b).ok().filter(|&b| b < k) else {
                    return;
                };
                let latency = now_micros().saturating_sub(ts);
                hist::record(&mut h, latency);
                count[b] += 1;
                last[b] = last[b].max(latency);
                total += 1;
            })?;
            if total > before {
                last_arrival = Instant::now();
            }
        }
        Ok(report::Broadcast {
            open,
            count,
            last,
            dropped: self.dropped - dropped_before,
            hist: hist::to_pairs(&h),
        })
    }

    /// The storm: pushes to the users staying online go on for the whole phase; a second
    /// in, this child's storm users drop together and reconnect, paced over one second, to
    /// the next node; once all are back (and a second for their subscriptions), each gets
    /// one push.
    fn storm(&mut self) -> anyhow::Result<report::Storm> {
        let open = self.open_indexes();
        let n = self.slice.storm_users.min(open.len());
        let (stay, storm) = open.split_at(open.len() - n);
        let mut ctl = StormCtl {
            users: storm.to_vec(),
            begin: Instant::now(),
            dropped_at: Instant::now(),
            started: None,
            reopened: 0,
            failed: 0,
            reconnect_secs: 0.0,
        };
        let secs = 5.0_f64.max(self.args.drain.min(8.0));
        let total = (self.args.rate as f64 * secs) as u64;
        let rate = self.share(self.args.rate) as f64;
        let run = self.publish(stay, Pick::Random(self.share(total)), rate, STORM_GROUPS);
        let pushes = self.collect(run, |c, t| {
            c.storm_step(&mut ctl, t);
            Ok(())
        })?;
        // Finish the storm if the pushes ended first.
        let deadline = self.deadline();
        while !ctl.done() && Instant::now() < deadline {
            let t = self.turn(Duration::from_millis(10), |_, _| {})?;
            self.storm_step(&mut ctl, t);
        }
        // The new subscriptions reach the bus asynchronously after the upgrade.
        let settle = Instant::now();
        while settle.elapsed() < Duration::from_secs(1) {
            self.turn(Duration::from_millis(10), |_, _| {})?;
        }
        let back: Vec<usize> = ctl
            .users
            .iter()
            .copied()
            .filter(|&j| {
                self.list[j]
                    .as_ref()
                    .is_some_and(|c| c.phase == Phase::Open)
            })
            .collect();
        let run = self.publish(&back, Pick::EachOnce, rate.max(1.0), VERIFY_GROUPS);
        let verify = self.collect(run, |_, _| Ok(()))?;
        Ok(report::Storm {
            users: n,
            reopened: ctl.reopened,
            // Users not back by the deadline count as failed too.
            failed: n - ctl.reopened.min(n),
            reconnect_secs: ctl.reconnect_secs,
            pushes,
            verify,
        })
    }

    /// One step of the storm, after a poll turn: a second in, drop every storm user; then
    /// reconnect them to the next node at a pace that spreads them over one second.
    fn storm_step(&mut self, ctl: &mut StormCtl, t: Turn) {
        let n = ctl.users.len();
        let Some(started) = ctl.started else {
            if ctl.begin.elapsed() >= Duration::from_secs(1) {
                for &j in &ctl.users {
                    self.list[j] = None;
                }
                ctl.dropped_at = Instant::now();
                ctl.started = Some(0);
            }
            return;
        };
        if ctl.done() {
            return;
        }
        ctl.reopened += t.upgraded;
        ctl.failed += t.refused;
        let due = ((ctl.dropped_at.elapsed().as_secs_f64() * n as f64) as usize + 1).min(n);
        let targets = self.args.targets.len();
        for k in started..due {
            let j = ctl.users[k];
            if !self.start(j, (self.node[j] + 1) % targets) {
                ctl.failed += 1;
            }
        }
        ctl.started = Some(due.max(started));
        if ctl.done() {
            ctl.reconnect_secs = ctl.dropped_at.elapsed().as_secs_f64();
        }
    }
}

/// Where the storm is.
#[derive(Debug)]
struct StormCtl {
    /// Connection indexes of the storm users.
    users: Vec<usize>,
    begin: Instant,
    dropped_at: Instant,
    /// Reconnects started, once the users were dropped.
    started: Option<usize>,
    reopened: usize,
    failed: usize,
    reconnect_secs: f64,
}

impl StormCtl {
    fn done(&self) -> bool {
        self.started.is_some() && self.reopened + self.failed >= self.users.len()
    }
}
