//! The reactor's time in timer-wheel ticks.

use std::time::{Duration, Instant};

/// Converts between instants and ticks of a fixed length since an epoch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticks {
    epoch: Instant,
    tick_nanos: u128,
}

impl Ticks {
    pub(crate) fn new(epoch: Instant, tick: Duration) -> Self {
        Ticks {
            epoch,
            tick_nanos: tick.as_nanos().max(1),
        }
    }

    #[allow(clippy::unused_self)] // Kept a method so that a virtual clock can replace it.
    pub(crate) fn now(&self) -> Instant {
        Instant::now()
    }

    /// The tick `t` falls in.
    pub(crate) fn tick_of(&self, t: Instant) -> u64 {
        let ticks = t.saturating_duration_since(self.epoch).as_nanos() / self.tick_nanos;
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }

    /// The first tick at or after `t`.
    pub(crate) fn tick_after(&self, t: Instant) -> u64 {
        let ticks = t
            .saturating_duration_since(self.epoch)
            .as_nanos()
            .div_ceil(self.tick_nanos);
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }

    /// When `tick` begins; `None` past what `Instant` can hold. Computed in u128
    /// nanoseconds: a `u32` tick count would wrap after 497 days at 10 ms ticks, and the
    /// reactor would then spin.
    pub(crate) fn instant_of(&self, tick: u64) -> Option<Instant> {
        let nanos = u64::try_from(u128::from(tick) * self.tick_nanos).ok()?;
        self.epoch.checked_add(Duration::from_nanos(nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: the poll timeout converted the tick count with `as u32`, which wraps
    /// after about 497 days of uptime at 10 ms ticks; the deadline then lay in the past
    /// and the reactor spun.
    #[test]
    fn tick_instants_do_not_wrap_after_497_days() {
        let epoch = Instant::now();
        let ticks = Ticks::new(epoch, Duration::from_millis(10));
        let day = 24 * 3600 * 100u64;
        for days in [1u64, 497, 498, 10_000] {
            let at = ticks.instant_of(days * day).unwrap();
            assert_eq!(at - epoch, Duration::from_secs(days * 24 * 3600));
            assert_eq!(ticks.tick_of(at), days * day);
            assert_eq!(
                ticks.tick_after(at + Duration::from_nanos(1)),
                days * day + 1
            );
        }
        // Far past what `Instant` holds: no deadline rather than a wrong one.
        assert_eq!(ticks.instant_of(u64::MAX), None);
    }
}
