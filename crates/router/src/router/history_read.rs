//! Reading a user's or a room's retained messages for the server API
//! (`GET /v1/history`): from this node's memory on a single node, from JetStream on a
//! clustered one. The messages are the JSON the clients got, seqs included.
//!
//! A clustered read is a few round trips to JetStream, so it is carried out on an opener
//! thread and its answer handed to a callback: no reactor and no bus thread waits on it.
//! What the openers may hold of these reads is bounded ([`MAX_QUEUED_READS`]).

use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;

use crate::bus::jetstream;
use crate::bus::Kind;

use super::openers::Job;
use super::{Router, REPLAY_TIMEOUT};

/// History reads queued for the openers at once; past it a read is refused (503).
pub const MAX_QUEUED_READS: usize = 256;

/// A page of retained messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The messages after the asked seq, in seq order, each the JSON its clients got.
    pub messages: Vec<Bytes>,
    /// More retained messages follow the last one (the limit cut the page short).
    pub more: bool,
    /// Every message after the asked seq was retained (none expired or was trimmed
    /// before it could be read), like a welcome's `recovered`.
    pub complete: bool,
}

/// Why a history read got no page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryReadError {
    /// This node keeps no history (`--history-size 0`).
    Off,
    /// JetStream is not there, did not answer in time, or too many reads are waiting
    /// for it.
    Unavailable,
}

/// Told the page of a read, at once or on an opener thread: must not block.
pub type HistoryDone = Box<dyn FnOnce(Result<HistoryPage, HistoryReadError>) + Send>;

impl Router {
    /// Whether a history read answers later ([`Router::history_then`] on an opener).
    pub fn history_is_deferred(&self) -> bool {
        self.history.is_none() && self.clustered().is_some()
    }

    /// The retained messages of a user (`Kind::User`) or a room after seq `since`, at
    /// most `limit`, told to `done`: here and now on a single node, from an opener
    /// thread on a clustered one.
    pub fn history_then(&self, kind: Kind, id: &str, since: u64, limit: usize, done: HistoryDone) {
        if let Some(h) = &self.history {
            let history = match kind {
                Kind::User => &h.users,
                Kind::Room => &h.rooms,
            };
            let l = history.lock(id, Instant::now());
            let latest = l.latest(id);
            let r = l.replay(id, since, latest);
            drop(l);
            let more = r.frames.len() > limit;
            let messages = r.frames.iter().take(limit).map(frame_payload).collect();
            return done(Ok(HistoryPage {
                messages,
                more,
                complete: r.recovered,
            }));
        }
        let Some(c) = self.clustered() else {
            // Clustered with history, JetStream not (yet) there: unavailable, not off.
            return done(Err(if self.clustered.is_some() {
                HistoryReadError::Unavailable
            } else {
                HistoryReadError::Off
            }));
        };
        let queued = &c.openers.history_reads;
        if queued.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED_READS {
            queued.fetch_sub(1, Ordering::Relaxed);
            return done(Err(HistoryReadError::Unavailable));
        }
        let job = Job::History(HistoryJob {
            kind,
            id: id.to_owned(),
            since,
            limit,
            done,
        });
        if let Err(e) = c.openers.tx.send(job) {
            queued.fetch_sub(1, Ordering::Relaxed);
            if let Job::History(j) = e.into_inner() {
                (j.done)(Err(HistoryReadError::Unavailable));
            }
        }
    }

    /// Carries out a history read on an opener thread.
    pub(super) fn read_history(&self, job: HistoryJob) {
        let Some(c) = self.clustered() else {
            return (job.done)(Err(HistoryReadError::Off));
        };
        c.openers.history_reads.fetch_sub(1, Ordering::Relaxed);
        // One more than asked, to know whether more follow.
        let fetched = c.bus.fetch_after(
            job.kind,
            &job.id,
            job.since,
            u64::MAX,
            job.limit.saturating_add(1),
            c.wait(REPLAY_TIMEOUT),
        );
        c.answered(&fetched);
        let page = match fetched {
            Ok(msgs) => Ok(HistoryPage {
                more: msgs.len() > job.limit,
                // The retained messages are a suffix of the chain: nothing is missing
                // when the first one follows the asked seq.
                complete: msgs.first().is_none_or(|m| m.prev <= job.since),
                messages: msgs
                    .iter()
                    .take(job.limit)
                    .map(|m| Bytes::from(jetstream::with_seq(&m.body, m.seq)))
                    .collect(),
            }),
            Err(_) => Err(HistoryReadError::Unavailable),
        };
        (job.done)(page);
    }
}

/// A history read for the openers.
pub(super) struct HistoryJob {
    kind: Kind,
    id: String,
    since: u64,
    limit: usize,
    done: HistoryDone,
}

impl std::fmt::Debug for HistoryJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryJob")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .field("since", &self.since)
            .finish_non_exhaustive()
    }
}

/// The payload of an unmasked server frame as [`Router::text_frame`] makes them (RFC 6455
/// §5.2: a 7-bit length, or 126 and 16 bits, or 127 and 64 bits).
fn frame_payload(frame: &Bytes) -> Bytes {
    let start = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
        None => return Bytes::new(),
    };
    if frame.len() < start {
        return Bytes::new();
    }
    frame.slice(start..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_of_frames_of_every_length_form() {
        for n in [0, 1, 125, 126, 65535, 65536, 70000] {
            let body = vec![b'x'; n];
            let f = Router::text_frame(&body);
            assert_eq!(&frame_payload(&f)[..], &body[..], "{n}");
        }
    }

    #[test]
    fn single_node_pages() {
        let r = Router::new().with_history(crate::HistoryConfig {
            size: 10,
            ..crate::HistoryConfig::default()
        });
        for i in 0..5 {
            r.send(
                &["u"],
                &[] as &[&str],
                "s",
                format!("{i}").as_bytes(),
                None,
                Instant::now(),
            );
        }
        let (tx, rx) = std::sync::mpsc::channel();
        r.history_then(
            Kind::User,
            "u",
            1,
            2,
            Box::new(move |p| tx.send(p).unwrap_or_default()),
        );
        let p = rx.recv().unwrap().unwrap();
        assert!(p.more && p.complete);
        let seqs: Vec<u64> = p
            .messages
            .iter()
            .map(|m| {
                serde_json::from_slice::<serde_json::Value>(m).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs, [2, 3]);
        let (tx, rx) = std::sync::mpsc::channel();
        Router::new().history_then(
            Kind::Room,
            "r",
            0,
            2,
            Box::new(move |p| tx.send(p).unwrap_or_default()),
        );
        assert_eq!(rx.recv().unwrap(), Err(HistoryReadError::Off));
    }
}
