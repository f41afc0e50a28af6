//! Where a run's pushes spent their time inside pushgate: `/metrics` scraped before and
//! after the run, and the difference of its per-stage histograms
//! (`pushgate_push_stage_seconds{stage}`), of the whole push latency inside the node
//! (`pushgate_push_latency_seconds`) and of the reactors' loop turns
//! (`pushgate_reactor_turn_seconds{reactor}`) printed as count, mean and quantiles
//! interpolated within buckets (as Prometheus' `histogram_quantile` does). A server
//! without those metrics (the peers) gets no breakdown.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The histograms of one scrape: series (metric name and its non-`le` labels) → buckets.
#[derive(Debug, Default, Clone)]
pub(crate) struct Scrape {
    series: BTreeMap<String, Series>,
}

#[derive(Debug, Default, Clone)]
struct Series {
    /// Upper bound (seconds; +Inf as `f64::INFINITY`) → cumulative count.
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

/// The families the breakdown reads, in the order it prints them.
const FAMILIES: [&str; 3] = [
    "pushgate_push_stage_seconds",
    "pushgate_push_latency_seconds",
    "pushgate_reactor_turn_seconds",
];

/// Scrapes `GET /metrics` on `api`: `None` when the server does not answer it with
/// pushgate's histograms.
pub(crate) fn scrape(api: SocketAddr) -> Option<Scrape> {
    let body = get(api, "/metrics").ok()?;
    let s = parse(&body);
    (!s.series.is_empty()).then_some(s)
}

fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Ok(String::new());
    };
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Ok(String::new());
    }
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    Ok(if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Reads the `_bucket`, `_sum` and `_count` samples of [`FAMILIES`] from the text format.
fn parse(text: &str) -> Scrape {
    let mut scrape = Scrape::default();
    for line in text.lines() {
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match name_labels.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (name_labels, ""),
        };
        let Some((family, part)) = FAMILIES.iter().find_map(|f| {
            let rest = name.strip_prefix(f)?;
            Some((*f, rest))
        }) else {
            continue;
        };
        let mut le = None;
        let mut rest = Vec::new();
        for kv in labels.split(',').filter(|kv| !kv.is_empty()) {
            match kv.split_once('=') {
                Some(("le", v)) => le = Some(v.trim_matches('"').to_owned()),
                Some((k, v)) => rest.push(format!("{k}={}", v.trim_matches('"'))),
                None => {}
            }
        }
        let key = if rest.is_empty() {
            family.to_owned()
        } else {
            format!("{family}{{{}}}", rest.join(","))
        };
        let series = scrape.series.entry(key).or_default();
        match (part, le) {
            ("_bucket", Some(le)) => {
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::INFINITY)
                };
                series.buckets.push((bound, value));
            }
            ("_sum", _) => series.sum = value,
            ("_count", _) => series.count = value,
            _ => {}
        }
    }
    for s in scrape.series.values_mut() {
        s.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    scrape
}

/// One series' difference between two scrapes.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Stage {
    pub(crate) series: String,
    pub(crate) count: f64,
    /// Milliseconds.
    pub(crate) mean: f64,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
}

/// What happened between `before` and `after`, per series that saw observations.
pub(crate) fn breakdown(before: &Scrape, after: &Scrape) -> Vec<Stage> {
    let mut out = Vec::new();
    for family in FAMILIES {
        for (key, a) in after.series.range(family.to_owned()..) {
            if !key.starts_with(family) {
                break;
            }
            let b = before.series.get(key);
            let count = a.count - b.map_or(0.0, |b| b.count);
            if count <= 0.0 {
                continue;
            }
            let sum = a.sum - b.map_or(0.0, |b| b.sum);
            let buckets: Vec<(f64, f64)> = a
                .buckets
                .iter()
                .map(|&(bound, c)| {
                    let was = b
                        .and_then(|b| b.buckets.iter().find(|x| x.0 == bound))
                        .map_or(0.0, |x| x.1);
                    (bound, c - was)
                })
                .collect();
            let q = |p| quantile(&buckets, p) * 1e3;
            out.push(Stage {
                series: key.clone(),
                count,
                mean: sum / count * 1e3,
                p50: q(0.5),
                p90: q(0.9),
                p99: q(0.99),
            });
        }
    }
    out
}

/// The `p` quantile of cumulative `buckets`, interpolated linearly within the bucket it
/// falls in (the upper bound of the last finite bucket when it falls in +Inf).
fn quantile(buckets: &[(f64, f64)], p: f64) -> f64 {
    let Some(&(_, total)) = buckets.last() else {
        return 0.0;
    };
    if total <= 0.0 {
        return 0.0;
    }
    let rank = p * total;
    let mut prev = (0.0, 0.0);
    for &(bound, c) in buckets {
        if c >= rank {
            if bound.is_infinite() {
                return prev.0;
            }
            let in_bucket = c - prev.1;
            if in_bucket <= 0.0 {
                return bound;
            }
            return prev.0 + (bound - prev.0) * (rank - prev.1) / in_bucket;
        }
        prev = (bound, c);
    }
    prev.0
}

/// Prints the breakdown as a table.
pub(crate) fn print(stages: &[Stage]) {
    if stages.is_empty() {
        return;
    }
    println!("inside the server (from /metrics; quantiles interpolated within buckets):");
    println!(
        "  {:<52} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "series", "count", "mean ms", "p50 ms", "p90 ms", "p99 ms"
    );
    for s in stages {
        println!(
            "  {:<52} {:>9.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            s.series, s.count, s.mean, s.p50, s.p90, s.p99
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "\
# TYPE pushgate_push_stage_seconds histogram
pushgate_push_stage_seconds_bucket{stage=\"write\",le=\"0.00001\"} 10
pushgate_push_stage_seconds_bucket{stage=\"write\",le=\"0.0001\"} 10
pushgate_push_stage_seconds_bucket{stage=\"write\",le=\"+Inf\"} 10
pushgate_push_stage_seconds_sum{stage=\"write\"} 0.00005
pushgate_push_stage_seconds_count{stage=\"write\"} 10
pushgate_other_total 5
";
    const AFTER: &str = "\
pushgate_push_stage_seconds_bucket{stage=\"write\",le=\"0.00001\"} 60
pushgate_push_stage_seconds_bucket{stage=\"write\",le=\"0.0001\"} 110
pushgate_push_stage_seconds_bucket{stage=\"write\",le=\"+Inf\"} 110
pushgate_push_stage_seconds_sum{stage=\"write\"} 0.00305
pushgate_push_stage_seconds_count{stage=\"write\"} 110
";

    #[test]
    fn breakdown_is_the_difference_of_two_scrapes() {
        let stages = breakdown(&parse(BEFORE), &parse(AFTER));
        assert_eq!(stages.len(), 1);
        let s = &stages[0];
        assert_eq!(s.series, "pushgate_push_stage_seconds{stage=write}");
        assert_eq!(s.count, 100.0);
        assert!((s.mean - 0.03).abs() < 1e-9, "{}", s.mean);
        // Half the new observations are under 10 µs: the median is that bucket's bound.
        assert!((s.p50 - 0.01).abs() < 1e-9, "{}", s.p50);
        // p90: 40 of the 50 in (10, 100] µs.
        assert!((s.p90 - 0.082).abs() < 1e-9, "{}", s.p90);
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }
}
