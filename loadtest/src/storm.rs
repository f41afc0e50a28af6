//! A connection storm beside a `fanout` run: N extra users connect within a second, hold,
//! all drop and reconnect within a second, hold, and leave. The fan-out's deliveries are
//! classified by whether they arrived before, during or after the storm, so the report
//! says whether the storm stalled deliveries to the users already online.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use mio::{Events, Interest, Poll, Token};

use crate::adapter;
use crate::wsclient::{Phase, WsConn};

/// What the storm does.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) server: SocketAddr,
    /// Subscribe path template (users s0, s1, …).
    pub(crate) subscribe: String,
    pub(crate) users: usize,
    pub(crate) start_after: Duration,
    pub(crate) sources: u8,
}

/// Storm start and end, microseconds since the Unix epoch (0 until set).
#[derive(Debug, Default)]
pub(crate) struct Marks {
    pub(crate) start: AtomicU64,
    pub(crate) end: AtomicU64,
}

/// What the storm achieved.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Report {
    /// Seconds to open all N the first time, and to reopen them.
    pub(crate) connect_secs: f64,
    pub(crate) reconnect_secs: f64,
    pub(crate) failed: usize,
}

/// Runs the storm; blocking, bounded by `deadline`.
pub(crate) fn run(spec: &Spec, marks: &Arc<Marks>, deadline: Instant) -> anyhow::Result<Report> {
    std::thread::sleep(spec.start_after);
    marks
        .start
        .store(crate::adapter::now_micros(), Ordering::Relaxed);
    let mut report = Report::default();
    let (conns, secs, failed) = open_all(spec, deadline)?;
    report.connect_secs = secs;
    report.failed += failed;
    std::thread::sleep(Duration::from_secs(1));
    drop(conns);
    let (conns, secs, failed) = open_all(spec, deadline)?;
    report.reconnect_secs = secs;
    report.failed += failed;
    std::thread::sleep(Duration::from_secs(1));
    drop(conns);
    marks
        .end
        .store(crate::adapter::now_micros(), Ordering::Relaxed);
    Ok(report)
}

/// Opens `spec.users` connections as users s0..., paced over one second; returns them
/// once all are upgraded (or failed), with the seconds it took.
fn open_all(spec: &Spec, deadline: Instant) -> anyhow::Result<(Vec<WsConn>, f64, usize)> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let host = spec.server.to_string();
    let start = Instant::now();
    let mut conns: Vec<WsConn> = Vec::with_capacity(spec.users);
    let mut done = 0;
    let mut failed = 0;
    let mut scratch = Vec::new();
    while done < spec.users {
        if Instant::now() > deadline {
            bail!("storm: only {done} of {} connections done", spec.users);
        }
        // Open as many as the one-second pace allows by now.
        let due =
            ((start.elapsed().as_secs_f64() * spec.users as f64) as usize + 1).min(spec.users);
        while conns.len() < due {
            let i = conns.len();
            let path = adapter::fill(&spec.subscribe, &format!("s{i}"), "");
            let mut c = WsConn::connect(
                adapter::source(1, i, spec.sources),
                spec.server,
                &host,
                &path,
            )?;
            poll.registry().register(
                &mut c.stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            conns.push(c);
        }
        poll.poll(&mut events, Some(Duration::from_millis(5)))?;
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            let before = c.phase;
            c.drive(&mut scratch);
            if matches!(before, Phase::Connecting | Phase::Upgrading) && before != c.phase {
                match c.phase {
                    Phase::Open => done += 1,
                    Phase::Failed => {
                        done += 1;
                        failed += 1;
                    }
                    _ => {}
                }
            }
        }
        scratch.clear();
    }
    Ok((conns, start.elapsed().as_secs_f64(), failed))
}
