//! The checker: from the event log of a chaos run, whether every push the API answered 200
//! reached every device of every recipient exactly once and in seq order, and how long
//! clients took to get back after losing their connection. Pure logic over events, so each
//! kind of violation is tested on synthetic logs.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

/// One line of the event log. Times are milliseconds since the run's epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub(crate) enum Event {
    /// The API answered 200 for push `id`: `user` got `seq`.
    Accepted {
        t: u64,
        /// When the first attempt was sent (latency counts from here).
        sent: u64,
        user: String,
        seq: u64,
        id: String,
    },
    /// A device of `user` received a message with a seq.
    Delivered {
        t: u64,
        user: String,
        device: String,
        seq: u64,
        id: String,
    },
    /// A device's connection was lost (EOF, reset, or no pong in time).
    Dropped {
        t: u64,
        user: String,
        device: String,
    },
    /// A device got `welcome` (first connection or a resume).
    Welcomed {
        t: u64,
        user: String,
        device: String,
        node: usize,
        recovered: Option<bool>,
    },
    /// The server sent a device an error (`bad_since`: told to resync, the gap is not
    /// coming; `unavailable`: the replay was incomplete, the device resumes again).
    Refused {
        t: u64,
        user: String,
        device: String,
        code: String,
    },
    /// A fault was applied at `t` and lifted at `end`.
    Fault { t: u64, end: u64, name: String },
}

/// What went wrong on one device, or how one client came back, filed under a fault.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Tally {
    /// Devices that lost their connection while the fault (or its settling time) lasted.
    pub(crate) clients_affected: u64,
    pub(crate) lost: u64,
    /// Pushes missing on a device that was not connected at the end of the run: not
    /// proven lost, but it did not come back in time to get them.
    pub(crate) not_back: u64,
    pub(crate) duplicated: u64,
    pub(crate) reordered: u64,
    /// Resumes whose welcome said `recovered: false`.
    pub(crate) unrecovered: u64,
    /// Milliseconds from a drop to the next welcome, one per drop that came back.
    pub(crate) reconnect_ms: Vec<u64>,
    /// Milliseconds from a drop to the next delivered message after it.
    pub(crate) redelivered_ms: Vec<u64>,
}

/// One violation, for the report's detail (capped there).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Violation {
    pub(crate) kind: &'static str,
    pub(crate) user: String,
    pub(crate) device: String,
    pub(crate) seq: u64,
    pub(crate) id: String,
    /// When it was accepted (lost) or delivered (duplicated, reordered).
    pub(crate) t: u64,
    pub(crate) fault: String,
}

/// The checker's verdict.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Verdict {
    pub(crate) accepted: u64,
    pub(crate) delivered: u64,
    /// Per fault name (and "none" for outside every window), in the order faults ran.
    pub(crate) per_fault: Vec<(String, Tally)>,
    pub(crate) violations: Vec<Violation>,
}

impl Verdict {
    pub(crate) fn total(&self) -> Tally {
        let mut all = Tally::default();
        for (_, t) in &self.per_fault {
            all.clients_affected += t.clients_affected;
            all.lost += t.lost;
            all.not_back += t.not_back;
            all.duplicated += t.duplicated;
            all.reordered += t.reordered;
            all.unrecovered += t.unrecovered;
            all.reconnect_ms.extend(&t.reconnect_ms);
            all.redelivered_ms.extend(&t.redelivered_ms);
        }
        all
    }

    /// No loss, duplication or reordering anywhere, and every device back to get what
    /// was accepted for it.
    pub(crate) fn clean(&self) -> bool {
        let t = self.total();
        t.lost == 0 && t.not_back == 0 && t.duplicated == 0 && t.reordered == 0
    }
}

/// Fault windows: an event at `t` belongs to the latest fault that began at or before
/// `t` and ended no more than `settle` ms before it.
struct Windows {
    faults: Vec<(u64, u64, String)>,
    settle: u64,
}

impl Windows {
    fn name(&self, t: u64) -> &str {
        self.faults
            .iter()
            .rev()
            .find(|(start, end, _)| *start <= t && t <= end + self.settle)
            .map_or("none", |(_, _, n)| n.as_str())
    }
}

/// Checks `events` (any order). `settle`: how long after a fault ends its effects are
/// still filed under it.
pub(crate) fn check(events: &[Event], settle: u64) -> Verdict {
    let mut faults: Vec<(u64, u64, String)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Fault { t, end, name } => Some((*t, *end, name.clone())),
            _ => None,
        })
        .collect();
    faults.sort();
    let windows = Windows { faults, settle };
    let mut per_fault: BTreeMap<String, Tally> = BTreeMap::new();
    let mut violations = Vec::new();
    let mut verdict = Verdict::default();

    // Accepted pushes per user: seq -> (id, time accepted). A retry answered 200 again
    // carries the same seq; two seqs for one id and user would itself be a duplicate.
    let mut accepted: HashMap<&str, BTreeMap<u64, (&str, u64)>> = HashMap::new();
    let mut ids: HashMap<(&str, &str), u64> = HashMap::new();
    let mut devices: HashMap<&str, HashSet<&str>> = HashMap::new();
    for e in events {
        match e {
            Event::Accepted {
                t, user, seq, id, ..
            } => {
                if let Some(&other) = ids.get(&(user.as_str(), id.as_str())) {
                    if other != *seq {
                        // The API stored one push twice for the same user.
                        per_fault
                            .entry(windows.name(*t).into())
                            .or_default()
                            .duplicated += 1;
                        violations.push(Violation {
                            kind: "stored twice",
                            user: user.clone(),
                            device: String::new(),
                            seq: *seq,
                            id: id.clone(),
                            t: *t,
                            fault: windows.name(*t).into(),
                        });
                    }
                    continue;
                }
                ids.insert((user, id), *seq);
                accepted.entry(user).or_default().insert(*seq, (id, *t));
            }
            Event::Delivered { user, device, .. }
            | Event::Dropped { user, device, .. }
            | Event::Welcomed { user, device, .. } => {
                devices.entry(user).or_default().insert(device);
            }
            Event::Fault { .. } | Event::Refused { .. } => {}
        }
    }
    verdict.accepted = accepted.values().map(|m| m.len() as u64).sum();

    // Each device's own history, in time order (stable: the log's order breaks ties).
    let mut per_device: HashMap<(&str, &str), Vec<&Event>> = HashMap::new();
    for e in events {
        match e {
            Event::Delivered { user, device, .. }
            | Event::Dropped { user, device, .. }
            | Event::Welcomed { user, device, .. } => {
                per_device.entry((user, device)).or_default().push(e)
            }
            _ => {}
        }
    }
    let time = |e: &Event| match e {
        Event::Accepted { t, .. }
        | Event::Delivered { t, .. }
        | Event::Dropped { t, .. }
        | Event::Welcomed { t, .. }
        | Event::Refused { t, .. }
        | Event::Fault { t, .. } => *t,
    };
    let mut keys: Vec<_> = per_device.keys().copied().collect();
    keys.sort();
    for key in keys {
        let (user, device) = key;
        let log = per_device
            .get_mut(&key)
            .map(std::mem::take)
            .unwrap_or_default();
        let mut log = log;
        log.sort_by_key(|e| time(e));
        let mut seen: HashSet<u64> = HashSet::new();
        let mut seen_ids: HashSet<&str> = HashSet::new();
        let mut last = 0u64;
        let mut dropped_at: Option<u64> = None;
        let mut welcomed_after_drop = false;
        let mut affected_in: HashSet<String> = HashSet::new();
        for e in log {
            match e {
                Event::Delivered { t, seq, id, .. } => {
                    verdict.delivered += 1;
                    let fault = windows.name(*t).to_owned();
                    let kind = if !seen.insert(*seq) || !seen_ids.insert(id.as_str()) {
                        per_fault.entry(fault.clone()).or_default().duplicated += 1;
                        Some("duplicated")
                    } else if *seq < last {
                        per_fault.entry(fault.clone()).or_default().reordered += 1;
                        Some("reordered")
                    } else {
                        None
                    };
                    last = last.max(*seq);
                    if let Some(kind) = kind {
                        violations.push(Violation {
                            kind,
                            user: user.into(),
                            device: device.into(),
                            seq: *seq,
                            id: id.clone(),
                            t: *t,
                            fault,
                        });
                    }
                    if let Some(d) = dropped_at.take() {
                        per_fault
                            .entry(windows.name(d).into())
                            .or_default()
                            .redelivered_ms
                            .push(t - d);
                    }
                }
                Event::Dropped { t, .. } => {
                    let fault = windows.name(*t).to_owned();
                    if affected_in.insert(fault.clone()) {
                        per_fault.entry(fault).or_default().clients_affected += 1;
                    }
                    // A second drop before any delivery counts from the first.
                    if dropped_at.is_none() || welcomed_after_drop {
                        dropped_at = Some(*t);
                    }
                    welcomed_after_drop = false;
                }
                Event::Welcomed { t, recovered, .. } => {
                    if let Some(d) = dropped_at {
                        if !welcomed_after_drop {
                            let tally = per_fault.entry(windows.name(d).into()).or_default();
                            tally.reconnect_ms.push(t - d);
                            if *recovered == Some(false) {
                                tally.unrecovered += 1;
                            }
                        }
                        welcomed_after_drop = true;
                    }
                }
                _ => {}
            }
        }
        // Every push accepted for the user must have reached this device; one that is
        // offline at the end may still get it on its next resume.
        let online = dropped_at.is_none() || welcomed_after_drop;
        if let Some(pushes) = accepted.get(user) {
            for (seq, (id, t)) in pushes {
                if !seen.contains(seq) {
                    let fault = windows.name(*t).to_owned();
                    let tally = per_fault.entry(fault.clone()).or_default();
                    if online {
                        tally.lost += 1;
                    } else {
                        tally.not_back += 1;
                    }
                    violations.push(Violation {
                        kind: if online { "lost" } else { "not back" },
                        user: user.into(),
                        device: device.into(),
                        seq: *seq,
                        id: (*id).into(),
                        t: *t,
                        fault,
                    });
                }
            }
        }
    }
    // Faults in the order they ran, then "none".
    let mut order: Vec<String> = Vec::new();
    for (_, _, n) in &windows.faults {
        if !order.contains(n) {
            order.push(n.clone());
        }
    }
    order.push("none".into());
    verdict.per_fault = order
        .into_iter()
        .map(|n| {
            let t = per_fault.remove(&n).unwrap_or_default();
            (n, t)
        })
        .collect();
    violations.sort_by_key(|v| v.t);
    verdict.violations = violations;
    verdict
}

/// The `q` quantile (0..=1) of `v`, 0 when empty.
pub(crate) fn quantile(v: &[u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let i = ((s.len() as f64 - 1.0) * q).round() as usize;
    s[i.min(s.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(t: u64, user: &str, seq: u64, id: &str) -> Event {
        Event::Accepted {
            t,
            sent: t,
            user: user.into(),
            seq,
            id: id.into(),
        }
    }
    fn del(t: u64, user: &str, device: &str, seq: u64, id: &str) -> Event {
        Event::Delivered {
            t,
            user: user.into(),
            device: device.into(),
            seq,
            id: id.into(),
        }
    }
    fn drop_(t: u64, user: &str, device: &str) -> Event {
        Event::Dropped {
            t,
            user: user.into(),
            device: device.into(),
        }
    }
    fn welcome(t: u64, user: &str, device: &str, recovered: bool) -> Event {
        Event::Welcomed {
            t,
            user: user.into(),
            device: device.into(),
            node: 1,
            recovered: Some(recovered),
        }
    }
    fn fault(t: u64, end: u64, name: &str) -> Event {
        Event::Fault {
            t,
            end,
            name: name.into(),
        }
    }
    fn tally<'a>(v: &'a Verdict, name: &str) -> &'a Tally {
        &v.per_fault.iter().find(|(n, _)| n == name).unwrap().1
    }

    #[test]
    fn a_clean_run_with_a_resume_is_clean() {
        let log = vec![
            welcome(0, "u", "d", true),
            acc(10, "u", 3, "a"),
            del(12, "u", "d", 3, "a"),
            fault(20, 30, "kill-g1"),
            drop_(21, "u", "d"),
            acc(22, "u", 7, "b"),
            welcome(400, "u", "d", true),
            del(401, "u", "d", 7, "b"),
        ];
        let v = check(&log, 100);
        assert!(v.clean(), "{v:?}");
        assert_eq!((v.accepted, v.delivered), (2, 2));
        let t = tally(&v, "kill-g1");
        assert_eq!(t.clients_affected, 1);
        assert_eq!(t.reconnect_ms, vec![379]);
        assert_eq!(t.redelivered_ms, vec![380]);
    }

    #[test]
    fn a_push_missing_on_one_device_is_lost_under_its_fault() {
        let log = vec![
            fault(5, 50, "blackhole"),
            acc(10, "u", 3, "a"),
            del(12, "u", "phone", 3, "a"),
            del(13, "u", "laptop", 4, "other"),
        ];
        let v = check(&log, 0);
        assert_eq!(tally(&v, "blackhole").lost, 1);
        assert_eq!(v.violations.len(), 1);
        assert_eq!(v.violations[0].kind, "lost");
        assert_eq!(v.violations[0].device, "laptop");
        assert!(!v.clean());
    }

    #[test]
    fn a_seq_or_an_id_delivered_twice_is_a_duplicate() {
        let log = vec![
            acc(10, "u", 3, "a"),
            acc(11, "u", 4, "b"),
            del(12, "u", "d", 3, "a"),
            del(13, "u", "d", 3, "a"),
            // The same push under a new seq: stored again, delivered twice.
            del(14, "u", "d", 4, "b"),
            del(15, "u", "d", 9, "b"),
        ];
        let v = check(&log, 0);
        assert_eq!(tally(&v, "none").duplicated, 2);
        assert_eq!(tally(&v, "none").lost, 0);
        assert_eq!(tally(&v, "none").reordered, 0);
    }

    #[test]
    fn two_seqs_accepted_for_one_id_is_a_duplicate() {
        let log = vec![
            acc(10, "u", 3, "a"),
            acc(11, "u", 5, "a"),
            del(12, "u", "d", 3, "a"),
        ];
        let v = check(&log, 0);
        assert_eq!(tally(&v, "none").duplicated, 1);
        assert_eq!(v.violations[0].kind, "stored twice");
    }

    #[test]
    fn a_lower_seq_after_a_higher_one_is_reordered() {
        let log = vec![
            acc(10, "u", 3, "a"),
            acc(11, "u", 4, "b"),
            fault(0, 100, "rolling"),
            del(12, "u", "d", 4, "b"),
            del(13, "u", "d", 3, "a"),
        ];
        let v = check(&log, 0);
        let t = tally(&v, "rolling");
        assert_eq!((t.reordered, t.lost, t.duplicated), (1, 0, 0));
    }

    #[test]
    fn a_gap_after_a_resume_is_lost_and_the_unrecovered_resume_counted() {
        let log = vec![
            welcome(0, "u", "d", true),
            acc(10, "u", 3, "a"),
            del(11, "u", "d", 3, "a"),
            drop_(20, "u", "d"),
            acc(21, "u", 5, "b"),
            acc(22, "u", 6, "c"),
            welcome(30, "u", "d", false),
            del(31, "u", "d", 6, "c"),
        ];
        let v = check(&log, 0);
        let t = tally(&v, "none");
        assert_eq!((t.lost, t.unrecovered, t.reordered), (1, 1, 0));
        assert_eq!(v.violations[0].seq, 5);
    }

    #[test]
    fn settling_time_files_late_effects_under_the_fault() {
        let log = vec![
            fault(0, 10, "sigstop"),
            fault(1000, 1010, "later"),
            drop_(15, "u", "d"),
            welcome(50, "u", "d", true),
            drop_(500, "u", "d"),
            welcome(520, "u", "d", true),
        ];
        let v = check(&log, 100);
        assert_eq!(tally(&v, "sigstop").reconnect_ms, vec![35]);
        assert_eq!(tally(&v, "none").reconnect_ms, vec![20]);
        assert_eq!(tally(&v, "later").clients_affected, 0);
    }

    #[test]
    fn a_device_offline_at_the_end_is_not_back_rather_than_lost() {
        let log = vec![
            welcome(0, "u", "d", true),
            welcome(0, "u", "e", true),
            drop_(5, "u", "d"),
            acc(10, "u", 3, "a"),
            del(11, "u", "e", 3, "a"),
        ];
        let v = check(&log, 0);
        let t = tally(&v, "none");
        assert_eq!((t.lost, t.not_back), (0, 1));
        assert_eq!(v.violations[0].kind, "not back");
        assert!(!v.clean());
    }

    #[test]
    fn quantiles() {
        assert_eq!(quantile(&[], 0.5), 0);
        assert_eq!(quantile(&[5, 1, 3], 0.5), 3);
        assert_eq!(quantile(&[5, 1, 3], 1.0), 5);
    }
}
