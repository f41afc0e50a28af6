//! Latency histograms between processes: a child sends the (value, count) pairs it
//! recorded; the parent adds them into one histogram, so merged percentiles are those of
//! all samples together.

use hdrhistogram::Histogram;

/// Microseconds from 1 µs to 10 minutes, 3 significant digits.
#[allow(clippy::expect_used)] // constant bounds, valid for hdrhistogram; every test builds one
pub(crate) fn new() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Records a latency, clamped into the histogram's range.
pub(crate) fn record(h: &mut Histogram<u64>, micros: u64) {
    let _ = h.record(micros.clamp(1, 600_000_000));
}

/// The recorded values and their counts.
pub(crate) fn to_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// Adds pairs from [`to_pairs`] into `h`.
pub(crate) fn add_pairs(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(value, count) in pairs {
        let _ = h.record_n(value.clamp(1, 600_000_000), count);
    }
}

/// p50, p99, p99.9 and max in milliseconds, for the report.
pub(crate) fn summary(h: &Histogram<u64>) -> serde_json::Value {
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    serde_json::json!({
        "count": h.len(),
        "p50": q(0.5),
        "p90": q(0.9),
        "p99": q(0.99),
        "p99_9": q(0.999),
        "max": h.max() as f64 / 1000.0,
    })
}

/// One line: `count, p50 p99 p99.9 max` in milliseconds.
pub(crate) fn line(h: &Histogram<u64>) -> String {
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    format!(
        "{} samples, ms p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        h.len(),
        q(0.5),
        q(0.99),
        q(0.999),
        h.max() as f64 / 1000.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_percentiles_are_those_of_all_samples() {
        // Two processes with very different latencies: the merged p50 is the whole
        // population's, not the mean of the two medians.
        let (mut a, mut b, mut all) = (new(), new(), new());
        for v in 1..=900u64 {
            record(&mut a, v);
            record(&mut all, v);
        }
        for v in 0..100u64 {
            record(&mut b, 1_000_000 + v);
            record(&mut all, 1_000_000 + v);
        }
        let mut merged = new();
        add_pairs(&mut merged, &to_pairs(&a));
        add_pairs(&mut merged, &to_pairs(&b));
        assert_eq!(merged.len(), 1000);
        for q in [0.5, 0.9, 0.95, 0.99, 0.999] {
            assert_eq!(merged.value_at_quantile(q), all.value_at_quantile(q), "{q}");
        }
        assert_eq!(merged.max(), all.max());
        assert!(merged.value_at_quantile(0.5) < 1000);
    }
}
