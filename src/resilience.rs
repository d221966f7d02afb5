//! Per-upstream protection: circuit breaker, bulkhead, retry backoff and health state, and the
//! upstream's addresses (`Target`s), each with its own circuit and health.
//!
//! All of it is lock-free (atomics, and an `ArcSwap` for the address list) because it sits on
//! the request path, and the clock is a parameter so the state machines are tested with
//! synthetic time. `UpstreamState` lives outside the compiled rules and is carried across
//! reloads by upstream name while its URL stays the same.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::*};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::rules::UpstreamPeer;

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

/// One address of an upstream, with its own circuit and health: a host name may resolve to
/// several, and one bad pod must not take the others down with it.
pub struct Target {
    pub addr: SocketAddr,
    /// The upstream's peer with this address; replaced when a reload changes the upstream's
    /// settings but not its URL.
    peer: ArcSwap<UpstreamPeer>,
    pub breaker: Breaker,
    healthy: AtomicBool,
    consecutive_ok: AtomicU32,
    consecutive_failed: AtomicU32,
}

impl Target {
    pub fn new(addr: SocketAddr, template: &UpstreamPeer) -> Target {
        Target {
            addr,
            peer: ArcSwap::from_pointee(template.with_address(addr)),
            breaker: Breaker::new(Instant::now()),
            healthy: AtomicBool::new(true),
            consecutive_ok: AtomicU32::new(0),
            consecutive_failed: AtomicU32::new(0),
        }
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Acquire)
    }

    /// The peer to send to at this address.
    pub fn peer(&self) -> UpstreamPeer {
        UpstreamPeer::clone(&self.peer.load())
    }

    /// Healthy, and its circuit lets this request through (a half-open circuit counts it as a probe).
    fn admits(&self, breaker: Option<&BreakerConfig>, now: Instant) -> bool {
        self.healthy() && breaker.is_none_or(|cfg| self.breaker.allow(cfg, now))
    }

    /// Record one health probe; flips `healthy` after enough consecutive results. Returns the new state.
    pub fn probe_result(&self, cfg: &HealthConfig, ok: bool) -> bool {
        if ok {
            self.consecutive_failed.store(0, Release);
            if self.consecutive_ok.fetch_add(1, AcqRel) + 1 >= cfg.healthy_after {
                self.healthy.store(true, Release);
            }
        } else {
            self.consecutive_ok.store(0, Release);
            if self.consecutive_failed.fetch_add(1, AcqRel) + 1 >= cfg.unhealthy_after {
                self.healthy.store(false, Release);
            }
        }
        self.healthy()
    }
}

/// The live, reload-surviving state of one upstream: its addresses (each with its circuit and
/// health) and its bulkhead.
pub struct UpstreamState {
    pub name: String,
    /// What the addresses were made from: a reload that changes the URL starts afresh.
    pub url: String,
    in_flight: AtomicUsize,
    targets: ArcSwap<Vec<Arc<Target>>>,
    next: AtomicUsize,
}

impl UpstreamState {
    /// An upstream with these addresses (none yet for a host name that didn't resolve).
    pub fn new(name: &str, url: &str, addrs: &[SocketAddr], template: &UpstreamPeer) -> UpstreamState {
        let state = UpstreamState {
            name: name.to_string(),
            url: url.to_string(),
            in_flight: AtomicUsize::new(0),
            targets: ArcSwap::from_pointee(Vec::new()),
            next: AtomicUsize::new(0),
        };
        state.set_addresses(addrs, template);
        state
    }

    /// A reload kept this upstream (same name and URL) with new settings: every address gets
    /// the new peer, and keeps its circuit and health.
    pub fn rebase(&self, template: &UpstreamPeer) {
        for t in self.targets.load().iter() {
            t.peer.store(Arc::new(template.with_address(t.addr)));
        }
    }

    /// The addresses now.
    pub fn targets(&self) -> Arc<Vec<Arc<Target>>> {
        self.targets.load_full()
    }

    /// Replace the addresses (a DNS answer). An address kept keeps its circuit and health.
    /// True when the set changed.
    pub fn set_addresses(&self, addrs: &[SocketAddr], template: &UpstreamPeer) -> bool {
        let old = self.targets.load();
        let mut addrs = addrs.to_vec();
        addrs.sort();
        addrs.dedup();
        if old.len() == addrs.len() && old.iter().zip(&addrs).all(|(t, a)| t.addr == *a) {
            return false;
        }
        let new = addrs
            .iter()
            .map(|a| {
                old.iter()
                    .find(|t| t.addr == *a)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Target::new(*a, template)))
            })
            .collect();
        self.targets.store(Arc::new(new));
        true
    }

    /// The next address, round robin, that is healthy and whose circuit lets the request
    /// through; `None` when there is none.
    pub fn pick(&self, breaker: Option<&BreakerConfig>, now: Instant) -> Option<Arc<Target>> {
        let targets = self.targets.load();
        match targets.len() {
            0 => None,
            1 => targets[0].admits(breaker, now).then(|| targets[0].clone()),
            n => {
                let start = self.next.fetch_add(1, Relaxed);
                (0..n)
                    .map(|i| &targets[(start + i) % n])
                    .find(|t| t.admits(breaker, now))
                    .cloned()
            }
        }
    }

    /// `pick` without a circuit, for the monolith: when no address is healthy it is tried
    /// anyway (the next one round robin), since there is nothing else to send to.
    pub fn pick_any(&self, now: Instant) -> Option<Arc<Target>> {
        self.pick(None, now).or_else(|| {
            let targets = self.targets.load();
            (!targets.is_empty()).then(|| targets[self.next.fetch_add(1, Relaxed) % targets.len()].clone())
        })
    }

    /// Any address healthy.
    pub fn healthy(&self) -> bool {
        self.targets.load().iter().any(|t| t.healthy())
    }

    /// The best circuit among the addresses: closed if any is closed.
    pub fn circuit(&self) -> CircuitState {
        self.targets
            .load()
            .iter()
            .map(|t| t.breaker.state())
            .min_by_key(|s| *s as u8)
            .unwrap_or(CircuitState::Open)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Acquire)
    }
}

/// A bulkhead slot; the in-flight count drops when it is dropped.
pub struct InFlight(Arc<UpstreamState>);

impl InFlight {
    /// Take a slot if fewer than `limit` requests are in flight.
    pub fn acquire(state: &Arc<UpstreamState>, limit: usize) -> Option<InFlight> {
        let before = state.in_flight.fetch_add(1, AcqRel);
        if before >= limit {
            state.in_flight.fetch_sub(1, AcqRel);
            return None;
        }
        Some(InFlight(state.clone()))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, AcqRel);
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

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 8080))
    }

    fn template() -> UpstreamPeer {
        UpstreamPeer::new(pingora_core::upstreams::peer::HttpPeer::new(
            addr(0),
            false,
            String::new(),
        ))
    }

    fn state(addrs: &[u8]) -> UpstreamState {
        let addrs: Vec<SocketAddr> = addrs.iter().map(|&n| addr(n)).collect();
        UpstreamState::new("svc", "http://svc:8080", &addrs, &template())
    }

    #[test]
    fn addresses_take_turns_and_a_bad_one_is_passed_over() {
        let s = state(&[3, 1, 2]);
        let now = Instant::now();
        let ones = (0..6).filter(|_| s.pick(None, now).unwrap().addr == addr(1)).count();
        assert_eq!(ones, 2, "each address in turn");
        let targets = s.targets();
        let down = &targets[0];
        assert_eq!(down.addr, addr(1), "sorted");
        assert_eq!(down.peer()._address, addr(1).into(), "each address has its own peer");
        let cfg = HealthConfig {
            unhealthy_after: 1,
            ..HealthConfig::default()
        };
        down.probe_result(&cfg, false);
        for _ in 0..9 {
            assert_ne!(
                s.pick(None, now).unwrap().addr,
                addr(1),
                "an unhealthy address is passed over"
            );
        }
        // Its circuit is its own: the others' stay closed.
        let b = BreakerConfig {
            min_requests: 1,
            ..BreakerConfig::default()
        };
        targets[1].breaker.record(&b, false, now);
        assert_eq!(targets[1].breaker.state(), CircuitState::Open);
        for _ in 0..9 {
            assert_eq!(s.pick(Some(&b), now).unwrap().addr, addr(3));
        }
        assert_eq!(s.circuit(), CircuitState::Closed);
        assert!(s.healthy());
        // Every address down: the monolith is tried anyway; a service is not.
        targets[2].probe_result(&cfg, false);
        targets[1].probe_result(&cfg, false);
        assert!(!s.healthy());
        assert!(s.pick(None, now).is_none());
        assert!(s.pick_any(now).is_some());
    }

    #[test]
    fn a_new_answer_keeps_the_state_of_the_addresses_it_keeps() {
        let s = state(&[1, 2]);
        let cfg = HealthConfig {
            unhealthy_after: 1,
            ..HealthConfig::default()
        };
        s.targets()[1].probe_result(&cfg, false);
        assert!(
            !s.set_addresses(&[addr(2), addr(1)], &template()),
            "same set, any order"
        );
        assert!(s.set_addresses(&[addr(2), addr(3)], &template()));
        let t = s.targets();
        assert_eq!(t.iter().map(|t| t.addr).collect::<Vec<_>>(), [addr(2), addr(3)]);
        assert!(!t[0].healthy(), "10.0.0.2 kept its health");
        assert!(t[1].healthy());
        assert!(s.set_addresses(&[], &template()));
        assert!(s.pick_any(Instant::now()).is_none(), "no address: nothing to send to");
    }

    #[test]
    fn bulkhead_sheds_past_the_limit() {
        let s = Arc::new(state(&[1]));
        let a = InFlight::acquire(&s, 2).expect("first");
        let b = InFlight::acquire(&s, 2).expect("second");
        assert!(InFlight::acquire(&s, 2).is_none(), "third is shed");
        assert_eq!(s.in_flight(), 2);
        drop(a);
        let _c = InFlight::acquire(&s, 2).expect("a slot came free");
        drop(b);
        assert_eq!(s.in_flight(), 1);
    }

    #[test]
    fn health_flips_after_consecutive_results() {
        let cfg = HealthConfig {
            unhealthy_after: 2,
            healthy_after: 3,
            ..HealthConfig::default()
        };
        let s = Target::new(addr(1), &template());
        let seq = [
            (false, true),
            (false, false),
            (true, false),
            (true, false),
            (false, false),
            (true, false),
            (true, false),
            (true, true),
        ];
        for (i, (ok, want)) in seq.iter().enumerate() {
            assert_eq!(s.probe_result(&cfg, *ok), *want, "probe {i}");
        }
    }
}
