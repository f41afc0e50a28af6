//! The report of a chaos run: the table per fault (clients affected, time to reconnect and
//! to be delivered again p50/p99/max, lost, duplicated, reordered), the violations found,
//! and a per-second timeline (delivered/s, connections per node, delivery latency p99)
//! as CSV, plotted to PNG with the faults marked when gnuplot is installed.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use super::check::{quantile, Event, Tally, Verdict};
use super::faults::Fault;

/// The markdown table, one row per fault kind (rounds merged) and one for "none".
pub(crate) fn table(v: &Verdict, events: &[Event]) -> String {
    let mut kinds: Vec<(String, Tally)> = Vec::new();
    for (name, t) in &v.per_fault {
        let kind = Fault::kind(name);
        let i = match kinds.iter().position(|(k, _)| *k == kind) {
            Some(i) => i,
            None => {
                kinds.push((kind, Tally::default()));
                kinds.len() - 1
            }
        };
        let all = &mut kinds[i].1;
        all.clients_affected += t.clients_affected;
        all.lost += t.lost;
        all.not_back += t.not_back;
        all.duplicated += t.duplicated;
        all.reordered += t.reordered;
        all.unrecovered += t.unrecovered;
        all.reconnect_ms.extend(&t.reconnect_ms);
        all.redelivered_ms.extend(&t.redelivered_ms);
    }
    let rounds = |kind: &str| {
        events
            .iter()
            .filter(|e| matches!(e, Event::Fault { name, .. } if Fault::kind(name) == kind))
            .count()
    };
    let mut out = String::from(
        "| fault | times | clients affected | reconnect p50 / p99 / max (ms) | delivered again p50 / p99 / max (ms) | lost | not back by the end | duplicated | reordered | resumes not recovered |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (kind, t) in kinds {
        let q = |v: &[u64]| {
            format!(
                "{} / {} / {}",
                quantile(v, 0.5),
                quantile(v, 0.99),
                v.iter().max().copied().unwrap_or(0)
            )
        };
        let _ = writeln!(
            out,
            "| {kind} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            rounds(&kind),
            t.clients_affected,
            q(&t.reconnect_ms),
            q(&t.redelivered_ms),
            t.lost,
            t.not_back,
            t.duplicated,
            t.reordered,
            t.unrecovered
        );
    }
    out
}

/// Writes `timeline.csv` (second, delivered/s, connections on g1..g3, latency p99 ms)
/// and, with gnuplot, `timeline.png`; returns the PNG's path when made.
pub(crate) fn timeline(events: &[Event], out: &Path) -> anyhow::Result<Option<std::path::PathBuf>> {
    let mut sent: HashMap<(&str, u64), u64> = HashMap::new();
    for e in events {
        if let Event::Accepted {
            sent: s, user, seq, ..
        } = e
        {
            sent.insert((user, *seq), *s);
        }
    }
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by_key(|e| match e {
        Event::Accepted { t, .. }
        | Event::Delivered { t, .. }
        | Event::Dropped { t, .. }
        | Event::Welcomed { t, .. }
        | Event::Refused { t, .. }
        | Event::Fault { t, .. } => *t,
    });
    let mut on: HashMap<(&str, &str), usize> = HashMap::new();
    let mut per_node = [0i64; 4];
    let mut rows: BTreeMap<u64, (u64, [i64; 4], Vec<u64>)> = BTreeMap::new();
    for e in sorted {
        match e {
            Event::Delivered {
                t,
                user,
                device,
                seq,
                ..
            } => {
                let row = rows.entry(t / 1000).or_insert((0, per_node, Vec::new()));
                row.0 += 1;
                if let Some(s) = sent.get(&(user.as_str(), *seq)) {
                    row.2.push(t.saturating_sub(*s));
                }
                let _ = device;
            }
            Event::Welcomed {
                t,
                user,
                device,
                node,
                ..
            } => {
                if let Some(old) = on.insert((user, device), *node) {
                    per_node[old.min(3)] -= 1;
                }
                per_node[(*node).min(3)] += 1;
                rows.entry(t / 1000).or_insert((0, per_node, Vec::new())).1 = per_node;
            }
            Event::Dropped { t, user, device } => {
                if let Some(old) = on.remove(&(user.as_str(), device.as_str())) {
                    per_node[old.min(3)] -= 1;
                }
                rows.entry(t / 1000).or_insert((0, per_node, Vec::new())).1 = per_node;
            }
            _ => {}
        }
    }
    let mut csv = String::from("second,delivered,g1,g2,g3,latency_p99_ms\n");
    let (first, last) = match (rows.keys().next(), rows.keys().last()) {
        (Some(a), Some(b)) => (*a, *b),
        _ => return Ok(None),
    };
    let mut conns = [0i64; 4];
    for s in first..=last {
        let (n, c, lat) = rows.get(&s).cloned().unwrap_or((0, conns, Vec::new()));
        conns = c;
        let _ = writeln!(
            csv,
            "{s},{n},{},{},{},{}",
            conns[1],
            conns[2],
            conns[3],
            quantile(&lat, 0.99)
        );
    }
    std::fs::write(out.join("timeline.csv"), csv)?;
    let mut marks = String::new();
    for (i, e) in events.iter().enumerate() {
        if let Event::Fault { t, end, name } = e {
            let _ = writeln!(
                marks,
                "set object {} rect from {:.1}, graph 0 to {:.1}, graph 1 fc rgb '#ffcccc' fs solid 0.5 noborder behind\n\
                 set label {} '{}' at {:.1}, graph 0.98 rotate by 90 right font ',7'",
                i + 1,
                *t as f64 / 1000.0,
                (*end).max(t + 500) as f64 / 1000.0,
                i + 1,
                name.replace('\'', ""),
                *t as f64 / 1000.0 + 0.3
            );
        }
    }
    let png = out.join("timeline.png");
    let script = format!(
        "set terminal pngcairo size 1400,900\nset output '{png}'\nset datafile separator ','\n\
         set multiplot layout 3,1 title 'pushgate chaos run'\nset key top left\n\
         set xrange [0:{last}]\nset lmargin 12\nset rmargin 4\n{marks}\
         set ylabel 'delivered/s'\nplot '{csv}' using 1:2 every ::1 with lines title 'delivered/s'\n\
         set ylabel 'connections'\nplot '{csv}' using 1:3 every ::1 with lines title 'g1', '' using 1:4 every ::1 with lines title 'g2', '' using 1:5 every ::1 with lines title 'g3'\n\
         set ylabel 'latency p99 (ms)'\nset xlabel 'seconds since start'\nset logscale y\nplot '{csv}' using 1:($6 > 0 ? $6 : 1/0) every ::1 with lines title 'p99'\n\
         unset multiplot\n",
        png = png.display(),
        last = last + 1,
        csv = out.join("timeline.csv").display(),
    );
    std::fs::write(out.join("timeline.gp"), &script)?;
    let made = Command::new("gnuplot")
        .arg(out.join("timeline.gp"))
        .status()
        .is_ok_and(|s| s.success());
    Ok(made.then_some(png))
}
