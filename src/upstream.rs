//! An upstream's live state, carried across reloads: its addresses (`Target`s, each with its
//! own circuit breaker and health), the round robin between them, and its bulkhead.
//!
//! Lock-free on the request path: atomics, and an `ArcSwap` for the address list, which a DNS
//! answer replaces whole. `Live` keeps one `UpstreamState` per upstream, by name and URL.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::*};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::HeaderValue;

use crate::resilience::{Breaker, BreakerConfig, CircuitState, HealthConfig};
use crate::rules::UpstreamPeer;

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

    /// The `Host` a request of the proxy's own (a health probe, a composite part) sends here:
    /// the upstream's `host:` if set, else its TLS name, else this address.
    pub fn host(&self, configured: Option<&HeaderValue>) -> HeaderValue {
        if let Some(h) = configured {
            return h.clone();
        }
        let peer = self.peer.load();
        let name = if peer.sni.is_empty() {
            self.addr.to_string()
        } else {
            peer.sni.clone()
        };
        HeaderValue::from_str(&name).unwrap_or(HeaderValue::from_static("localhost"))
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
