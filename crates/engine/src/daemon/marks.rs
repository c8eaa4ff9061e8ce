//! The daemon's clock and its expiring marks.
//!
//! Every timer of the daemon (orphan and duplicate grace, `scale_down_after`,
//! unavailable offerings, the image schedule, backoff) reads one [`Clock`],
//! anchored to tokio's clock: on tokio's paused clock in tests, advancing
//! time moves wall-clock comparisons (an instance's launch time against the
//! grace period) as well.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// Wall-clock time that advances with tokio's clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall: SystemTime,
    at: Instant,
    real: std::time::Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// A clock reading the system time now and advancing with tokio's clock.
    pub fn new() -> Self {
        Self::starting_at(SystemTime::now())
    }

    /// A clock that reads `wall` now (a host whose clock is off, in tests).
    pub fn starting_at(wall: SystemTime) -> Self {
        Self {
            wall,
            at: Instant::now(),
            real: std::time::Instant::now(),
        }
    }

    /// How far tokio's clock has been moved ahead of real time since this
    /// clock started, in milliseconds: zero but in tests on a paused clock.
    /// Lease times come from the database's clock plus this, never from the
    /// host's wall clock (two hosts' clocks may disagree by any amount).
    pub fn offset_ms(&self) -> i64 {
        let moved = self.at.elapsed().as_millis() as i64;
        let real = self.real.elapsed().as_millis() as i64;
        moved - real
    }

    /// Wall-clock now.
    pub fn now(&self) -> SystemTime {
        self.wall + self.at.elapsed()
    }

    /// How long ago `t` was (zero for times in the future).
    pub fn since(&self, t: SystemTime) -> Duration {
        self.now().duration_since(t).unwrap_or_default()
    }
}

/// A set whose members expire: offerings avoided after an interruption or a
/// refusal, pools whose spot quota ran out.
#[derive(Debug)]
pub struct Expiring<K> {
    until: HashMap<K, Instant>,
}

impl<K> Default for Expiring<K> {
    fn default() -> Self {
        Self {
            until: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Expiring<K> {
    /// Adds `key` until `until` (a later mark extends it).
    pub fn insert(&mut self, key: K, until: Instant) {
        let e = self.until.entry(key).or_insert(until);
        if *e < until {
            *e = until;
        }
    }

    /// The members still marked at `now`; expired ones are dropped.
    pub fn active(&mut self, now: Instant) -> HashSet<K> {
        self.until.retain(|_, until| *until > now);
        self.until.keys().cloned().collect()
    }

    /// Whether `key` is still marked at `now`.
    pub fn contains(&mut self, key: &K, now: Instant) -> bool {
        self.until.retain(|_, until| *until > now);
        self.until.contains_key(key)
    }
}

/// The pause after `failures` failed passes in a row: doubling from two
/// seconds up to `cap`, each drawn at random between half and the whole
/// (jitter: daemons and boxes that failed together do not retry together).
pub fn backoff(failures: u32, cap: Duration) -> Duration {
    let exp = Duration::from_secs(2).saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let full = exp.min(cap);
    full.mul_f64(0.5 + fastrand::f64() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_clock_advances_with_tokio_time() {
        let clock = Clock::new();
        let t0 = clock.now();
        tokio::time::advance(Duration::from_secs(600)).await;
        assert!(clock.since(t0) >= Duration::from_secs(600));
    }

    #[tokio::test(start_paused = true)]
    async fn marks_expire() {
        let mut m = Expiring::default();
        m.insert("a", Instant::now() + Duration::from_secs(10));
        assert!(m.contains(&"a", Instant::now()));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(m.active(Instant::now()).is_empty());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let cap = Duration::from_secs(300);
        for n in 1..40 {
            let d = backoff(n, cap);
            let full = Duration::from_secs(2)
                .saturating_mul(1 << (n - 1).min(16))
                .min(cap);
            assert!(d >= full / 2 && d <= full, "{n}: {d:?} of {full:?}");
        }
    }
}
