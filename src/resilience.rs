//! Per-upstream protection, as settings and state machines: circuit breaker, retry backoff and
//! health-check settings.
//!
//! All of it is lock-free (atomics) because it sits on the request path, and the clock is a
//! parameter so the state machines are tested with synthetic time. The state each upstream
//! carries across reloads (its addresses, their breakers and health, its bulkhead) is in
//! upstream.rs.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::*};
use std::time::{Duration, Instant};

/// Circuit breaker settings (`circuit_breaker:` on an upstream).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Open when failures / requests in the window reach this.
    pub failure_ratio: f64,
    /// ...and the window holds at least this many requests.
    pub min_requests: u32,
    pub window: Duration,
    /// How long the circuit stays open before letting probes through.
    pub open_for: Duration,
    /// Probes let through while half-open; that many successes close the circuit.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_ratio: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(15),
            half_open_probes: 3,
        }
    }
}

/// Exported as `strangler_circuit_state`: 0 closed, 1 half-open, 2 open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

const BUCKETS: usize = 10;

#[derive(Default)]
struct Bucket {
    /// Which window slot this bucket currently counts (`now / bucket_len`).
    slot: AtomicU64,
    ok: AtomicU32,
    failed: AtomicU32,
}

/// A closed → open → half-open → closed breaker over a rolling window of 10 buckets.
pub struct Breaker {
    origin: Instant,
    state: AtomicU8,
    /// Milliseconds since `origin` when the circuit last opened.
    opened_at: AtomicU64,
    probes_sent: AtomicU32,
    probes_ok: AtomicU32,
    buckets: [Bucket; BUCKETS],
}

impl Breaker {
    pub fn new(origin: Instant) -> Breaker {
        Breaker {
            origin,
            state: AtomicU8::new(CircuitState::Closed as u8),
            opened_at: AtomicU64::new(0),
            probes_sent: AtomicU32::new(0),
            probes_ok: AtomicU32::new(0),
            buckets: Default::default(),
        }
    }

    pub fn state(&self) -> CircuitState {
        match self.state.load(Acquire) {
            0 => CircuitState::Closed,
            1 => CircuitState::HalfOpen,
            _ => CircuitState::Open,
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_millis() as u64
    }

    /// May a request go to the upstream now? While half-open, only `half_open_probes` may.
    pub fn allow(&self, cfg: &BreakerConfig, now: Instant) -> bool {
        match self.state() {
            CircuitState::Closed => true,
            CircuitState::Open => {
                let since = self.ms(now).saturating_sub(self.opened_at.load(Acquire));
                if since < cfg.open_for.as_millis() as u64 {
                    return false;
                }
                // One caller wins the move to half-open and resets the probe counts.
                if self
                    .state
                    .compare_exchange(CircuitState::Open as u8, CircuitState::HalfOpen as u8, AcqRel, Acquire)
                    .is_ok()
                {
                    self.probes_ok.store(0, Release);
                    self.probes_sent.store(0, Release);
                }
                self.take_probe(cfg)
            }
            CircuitState::HalfOpen => self.take_probe(cfg),
        }
    }

    fn take_probe(&self, cfg: &BreakerConfig) -> bool {
        self.probes_sent.fetch_add(1, AcqRel) < cfg.half_open_probes
    }

    /// Record the outcome of a request that reached (or tried to reach) the upstream.
    pub fn record(&self, cfg: &BreakerConfig, ok: bool, now: Instant) {
        match self.state() {
            CircuitState::HalfOpen => {
                if !ok {
                    self.open(now);
                } else if self.probes_ok.fetch_add(1, AcqRel) + 1 >= cfg.half_open_probes {
                    self.clear_window();
                    self.state.store(CircuitState::Closed as u8, Release);
                }
            }
            CircuitState::Open => {}
            CircuitState::Closed => {
                self.count(cfg, ok, now);
                if !ok {
                    let (total, failed) = self.totals(cfg, now);
                    if total >= cfg.min_requests && failed as f64 >= cfg.failure_ratio * total as f64 {
                        self.open(now);
                    }
                }
            }
        }
    }

    fn open(&self, now: Instant) {
        self.opened_at.store(self.ms(now), Release);
        self.state.store(CircuitState::Open as u8, Release);
    }

    fn bucket_ms(cfg: &BreakerConfig) -> u64 {
        (cfg.window.as_millis() as u64 / BUCKETS as u64).max(1)
    }

    fn count(&self, cfg: &BreakerConfig, ok: bool, now: Instant) {
        let slot = self.ms(now) / Self::bucket_ms(cfg);
        let b = &self.buckets[slot as usize % BUCKETS];
        let seen = b.slot.load(Acquire);
        if seen != slot && b.slot.compare_exchange(seen, slot, AcqRel, Acquire).is_ok() {
            // This bucket last counted an older slot: start it over.
            b.ok.store(0, Release);
            b.failed.store(0, Release);
        }
        if ok {
            b.ok.fetch_add(1, AcqRel);
        } else {
            b.failed.fetch_add(1, AcqRel);
        }
    }

    /// (requests, failures) in the rolling window ending now.
    fn totals(&self, cfg: &BreakerConfig, now: Instant) -> (u32, u32) {
        let slot = self.ms(now) / Self::bucket_ms(cfg);
        let oldest = slot.saturating_sub(BUCKETS as u64 - 1);
        self.buckets
            .iter()
            .filter(|b| (oldest..=slot).contains(&b.slot.load(Acquire)))
            .fold((0, 0), |(t, f), b| {
                let (ok, failed) = (b.ok.load(Acquire), b.failed.load(Acquire));
                (t + ok + failed, f + failed)
            })
    }

    fn clear_window(&self) {
        for b in &self.buckets {
            b.ok.store(0, Release);
            b.failed.store(0, Release);
        }
    }
}

/// Retry settings (`retries:` on an upstream).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Tries of the service including the first; 1 means no retry.
    pub attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 1,
            base: Duration::from_millis(20),
            max: Duration::from_millis(200),
        }
    }
}

impl RetryConfig {
    /// The wait before try `attempt` (2 = the first retry): exponential, capped, full jitter.
    pub fn backoff(&self, attempt: u32, jitter: f64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.saturating_sub(2).min(16));
        exp.min(self.max).mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// Active health check settings (`health:` on an upstream).
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// HTTP path to GET (a 2xx is healthy); `None` checks that a TCP connect succeeds.
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            path: None,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            unhealthy_after: 3,
            healthy_after: 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_ratio: 0.5,
            min_requests: 4,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
            half_open_probes: 2,
        }
    }

    #[test]
    fn breaker_walks_closed_open_half_open_closed() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_millis(s);
        let c = cfg();
        let b = Breaker::new(t0);
        // (time ms, outcome, state after)
        let steps: &[(u64, bool, CircuitState)] = &[
            (0, false, CircuitState::Closed), // 1 req, below min_requests
            (10, true, CircuitState::Closed), // 2
            (20, true, CircuitState::Closed), // 3
            (30, false, CircuitState::Open),  // 4 requests, 2 failed: ratio 0.5 reached
        ];
        for (t, ok, want) in steps {
            assert!(b.allow(&c, at(*t)));
            b.record(&c, *ok, at(*t));
            assert_eq!(b.state(), *want, "at {t} ms");
        }
        assert!(!b.allow(&c, at(1_000)), "open: nothing goes through");
        assert!(!b.allow(&c, at(5_029)));
        assert!(b.allow(&c, at(5_030)), "after open_for: a probe");
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert!(b.allow(&c, at(5_031)), "second probe");
        assert!(!b.allow(&c, at(5_032)), "only half_open_probes probes");
        b.record(&c, true, at(5_040));
        assert_eq!(b.state(), CircuitState::HalfOpen);
        b.record(&c, true, at(5_050));
        assert_eq!(b.state(), CircuitState::Closed);
        assert!(b.allow(&c, at(5_060)));
    }

    #[test]
    fn a_failed_probe_opens_again() {
        let t0 = Instant::now();
        let c = cfg();
        let b = Breaker::new(t0);
        for i in 0..4 {
            b.record(&c, false, t0 + Duration::from_millis(i));
        }
        assert_eq!(b.state(), CircuitState::Open);
        let later = t0 + Duration::from_secs(6);
        assert!(b.allow(&c, later));
        b.record(&c, false, later);
        assert_eq!(b.state(), CircuitState::Open);
        assert!(!b.allow(&c, later + Duration::from_secs(1)), "open_for starts over");
        assert!(b.allow(&c, later + Duration::from_secs(5)));
    }

    #[test]
    fn old_failures_leave_the_window() {
        let t0 = Instant::now();
        let c = cfg();
        let b = Breaker::new(t0);
        for i in 0..3 {
            b.record(&c, false, t0 + Duration::from_millis(i));
        }
        // 11 s later those three are out of the 10 s window: one more failure is 1 of 1.
        b.record(&c, false, t0 + Duration::from_secs(11));
        assert_eq!(b.state(), CircuitState::Closed);
        for i in 1..4 {
            b.record(&c, false, t0 + Duration::from_secs(11) + Duration::from_millis(i));
        }
        assert_eq!(b.state(), CircuitState::Open);
    }

    #[test]
    fn backoff_is_exponential_capped_and_jittered() {
        let r = RetryConfig {
            attempts: 5,
            base: Duration::from_millis(20),
            max: Duration::from_millis(200),
        };
        let cases = [
            (2, 1.0, 20),
            (3, 1.0, 40),
            (4, 1.0, 80),
            (5, 1.0, 160),
            (6, 1.0, 200),
            (30, 1.0, 200),
            (3, 0.5, 20),
            (3, 0.0, 0),
        ];
        for (attempt, jitter, want_ms) in cases {
            assert_eq!(
                r.backoff(attempt, jitter),
                Duration::from_millis(want_ms),
                "attempt {attempt} jitter {jitter}"
            );
        }
    }
}
