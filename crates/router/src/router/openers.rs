//! The openers: threads that read a clustered node's history for connection openings,
//! `resume` and `join` with `since`, so that no reactor waits on JetStream for them.
//!
//! A reactor hands an opening over and answers its `Hooks::open` with "pending"; an
//! opener registers the connection (under the user's shard lock, as a reactor did),
//! reads the replay from the stream and sends the welcome through the reactor's
//! never-refused welcome queue; what the connection is delivered meanwhile waits at the
//! reactor behind it. A `since` ahead of what this node delivered is not waited for by
//! sleeping: the job is looked at again every [`RECHECK`] until the node caught up or
//! its time ran out, the opener serving other jobs meanwhile.
//!
//! A connection that closes, or a room left, before its job registered it is taken out
//! of [`Pending`] (under the same shard lock the opener registers under), and the job
//! then registers nothing.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use reactor::ConnRef;

use super::{Opened, Router};

/// Opener threads: each reads one job's history at a time (a few round trips to
/// JetStream), so a reconnect storm is read this many at once.
pub(super) const OPENERS: usize = 4;
/// How often an opening whose `since` is ahead of this node is looked at again.
const RECHECK: Duration = Duration::from_millis(2);

/// Work for the openers.
#[derive(Debug)]
pub(super) enum Job {
    /// A connection opening: register it, read its replay, send its welcome.
    Open {
        uid: Arc<str>,
        conn: ConnRef,
        device: Option<Arc<str>>,
        since: Option<u64>,
        /// Until when a `since` ahead of this node is waited for.
        until: Instant,
    },
    /// A `resume` request.
    Resume {
        uid: Arc<str>,
        conn: ConnRef,
        since: u64,
        opened: Opened,
    },
    /// A `join` with `since`.
    Join {
        room: Arc<str>,
        conn: ConnRef,
        since: u64,
    },
    /// A read of the server API's `GET /v1/history`.
    History(super::history_read::HistoryJob),
}

/// Openings and joins handed to the openers and not registered yet.
#[derive(Debug, Default)]
pub(super) struct Pending {
    pub(super) opens: Mutex<HashSet<ConnRef>>,
    pub(super) joins: Mutex<HashSet<(ConnRef, Arc<str>)>>,
}

/// The openers' queue.
#[derive(Debug)]
pub(super) struct Openers {
    pub(super) tx: Sender<Job>,
    pub(super) rx: Mutex<Option<Receiver<Job>>>,
    pub(super) pending: Pending,
    /// [`Job::History`] reads queued and not started.
    pub(super) history_reads: std::sync::atomic::AtomicUsize,
}

impl Default for Openers {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Openers {
            tx,
            rx: Mutex::new(Some(rx)),
            pending: Pending::default(),
            history_reads: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

/// Starts the opener threads on `rx` (once).
pub(super) fn start(router: Weak<Router>, rx: Receiver<Job>) -> std::io::Result<()> {
    for i in 0..OPENERS {
        let (router, rx) = (router.clone(), rx.clone());
        std::thread::Builder::new()
            .name(format!("pushgate-opener-{i}"))
            .spawn(move || run(&router, &rx))?;
    }
    Ok(())
}

fn run(router: &Weak<Router>, rx: &Receiver<Job>) {
    // Jobs to look at again, and when.
    let mut later: Vec<(Instant, Job)> = Vec::new();
    loop {
        let wait = later
            .iter()
            .map(|(at, _)| at.saturating_duration_since(Instant::now()))
            .min()
            .unwrap_or(Duration::from_secs(1));
        let got = rx.recv_timeout(wait);
        let Some(r) = router.upgrade() else {
            return;
        };
        match got {
            Ok(job) => later.extend(r.run_job(job)),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        let mut i = 0;
        while i < later.len() {
            if later[i].0 <= now {
                let (_, job) = later.swap_remove(i);
                later.extend(r.run_job(job));
            } else {
                i += 1;
            }
        }
    }
}

impl Router {
    /// Carries out one job; `Some` to look at it again then.
    fn run_job(&self, job: Job) -> Option<(Instant, Job)> {
        let c = self.clustered.as_ref()?;
        match job {
            Job::Open {
                uid,
                conn,
                device,
                since,
                until,
            } => {
                let registered = {
                    let mut shard = c.users.lock(&uid);
                    let behind = since.is_some_and(|s| {
                        shard
                            .get(&*uid)
                            .and_then(crate::cluster_history::UserSeq::last)
                            .is_some_and(|l| l < s)
                    });
                    let mut pending = c.openers.pending.opens.lock();
                    if !pending.contains(&conn) {
                        // Closed meanwhile.
                        return None;
                    }
                    if behind && Instant::now() < until {
                        // The client saw seqs on another node that this one has not
                        // delivered yet (its live copy is a few ms behind): not
                        // registered until it has, so nothing reaches it twice.
                        drop(pending);
                        drop(shard);
                        let job = Job::Open {
                            uid,
                            conn,
                            device,
                            since,
                            until,
                        };
                        return Some((Instant::now() + RECHECK, job));
                    }
                    pending.remove(&conn);
                    drop(pending);
                    let id = self.add_user_on(&uid, conn, device.as_deref());
                    let u = shard.entry(Arc::clone(&id)).or_default();
                    u.last()
                };
                let (welcome, opened) =
                    self.open_registered(c, &uid, device.as_deref(), since, registered);
                if let Some(r) = self.reactor(conn) {
                    r.welcome(conn, welcome, opened.replayed_from);
                }
                None
            }
            Job::Resume {
                uid,
                conn,
                since,
                opened,
            } => {
                if let Err(e) = self.resume_clustered(c, &uid, conn, since, opened) {
                    self.reply_error(conn, e);
                }
                None
            }
            Job::Join { room, conn, since } => {
                if let Err(e) = self.join_clustered(c, &room, conn, since) {
                    self.reply_error(conn, e);
                }
                None
            }
            Job::History(job) => {
                self.read_history(job);
                None
            }
        }
    }

    /// The reactor holding `conn`.
    fn reactor(&self, conn: ConnRef) -> Option<&reactor::ReactorHandle> {
        self.reactors.get()?.get(usize::from(conn.reactor))
    }

    /// `{"type":"error",...}` to one connection, through its inbox.
    fn reply_error(&self, conn: ConnRef, e: session::client_protocol::RequestError) {
        let body = session::client_protocol::error_json(e);
        self.deliver_to(conn, Router::text_frame(&body));
    }
}
