//! Rate limits on a route's new side: one GCRA budget per route, client IP, header or cookie
//! value (`governor`), kept per replica and carried across reloads while the route's
//! `rate_limit:` stays the same.
//!
//! Keys are hashed to 64 bits with a per-process seed, so a key costs the same few bytes however
//! long the value. Requests without the key (no such header or cookie) share one budget, so
//! leaving it out is no way around the limit. Keys idle long enough to be full again are
//! dropped every five seconds (`Live::tidy`, on the stats tick).

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use http::HeaderMap;

use crate::rules::{cookie_value, LimitKey, RateLimit};

enum Budget {
    Route(DefaultDirectRateLimiter),
    Keyed(DefaultKeyedRateLimiter<u64>),
}

/// One route's limiter.
pub struct Limiter {
    pub spec: RateLimit,
    budget: Budget,
    seed: foldhash::fast::RandomState,
    clock: DefaultClock,
}

impl Limiter {
    pub fn new(spec: &RateLimit) -> Limiter {
        let period = Duration::from_secs_f64(1.0 / spec.per_second).max(Duration::from_nanos(1));
        let burst = NonZeroU32::new(spec.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .expect("a positive period")
            .allow_burst(burst);
        let budget = match spec.key {
            LimitKey::Route => Budget::Route(DefaultDirectRateLimiter::direct(quota)),
            _ => Budget::Keyed(DefaultKeyedRateLimiter::keyed(quota)),
        };
        Limiter {
            spec: spec.clone(),
            budget,
            seed: foldhash::fast::RandomState::default(),
            clock: DefaultClock::default(),
        }
    }

    /// Take one request from the budget, or say how long until one is free. `client` (the
    /// client's address, through `trusted_proxies`) is asked only when the budget is per IP.
    pub fn check(&self, headers: &HeaderMap, client: impl FnOnce() -> Option<IpAddr>) -> Result<(), Duration> {
        let outcome = match &self.budget {
            Budget::Route(l) => l.check(),
            Budget::Keyed(l) => l.check_key(&self.key(headers, client)),
        };
        outcome.map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    fn key(&self, headers: &HeaderMap, client: impl FnOnce() -> Option<IpAddr>) -> u64 {
        match &self.spec.key {
            LimitKey::Route => 0,
            LimitKey::Ip => self.seed.hash_one(client()),
            LimitKey::Header(name) => self.seed.hash_one(headers.get(name).map(|v| v.as_bytes())),
            LimitKey::Cookie(name) => self.seed.hash_one(
                headers
                    .get_all(http::header::COOKIE)
                    .iter()
                    .find_map(|v| cookie_value(v.as_bytes(), name.as_bytes())),
            ),
        }
    }

    /// Forget the keys whose budget is full again, and give their memory back.
    pub fn tidy(&self) {
        if let Budget::Keyed(l) = &self.budget {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Keys tracked now.
    pub fn keys(&self) -> usize {
        match &self.budget {
            Budget::Route(_) => 1,
            Budget::Keyed(l) => l.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn limiter(key: LimitKey) -> Limiter {
        Limiter::new(&RateLimit {
            per_second: 0.001,
            burst: 3,
            key,
        })
    }

    #[test]
    fn a_route_budget_lets_the_burst_through_then_says_how_long_to_wait() {
        let l = limiter(LimitKey::Route);
        let h = HeaderMap::new();
        for _ in 0..3 {
            assert!(l.check(&h, || None).is_ok());
        }
        let wait = l.check(&h, || None).unwrap_err();
        assert!(
            wait > Duration::from_secs(900) && wait <= Duration::from_secs(1000),
            "{wait:?}"
        );
    }

    #[test]
    fn keyed_budgets_are_apart_and_a_missing_key_shares_one() {
        let l = limiter(LimitKey::Header(http::HeaderName::from_static("x-user")));
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-user", HeaderValue::from_str(v).unwrap());
            h
        };
        for _ in 0..3 {
            assert!(l.check(&with("a"), || None).is_ok());
        }
        assert!(l.check(&with("a"), || None).is_err());
        assert!(l.check(&with("b"), || None).is_ok(), "another key has its own budget");
        let none = HeaderMap::new();
        for _ in 0..3 {
            assert!(l.check(&none, || None).is_ok());
        }
        assert!(
            l.check(&none, || None).is_err(),
            "requests without the key share one budget"
        );
        assert_eq!(l.keys(), 3);

        let ip = limiter(LimitKey::Ip);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            assert!(ip.check(&none, || Some(a)).is_ok());
        }
        assert!(ip.check(&none, || Some(a)).is_err());
        assert!(ip.check(&none, || Some(b)).is_ok());

        let cookie = limiter(LimitKey::Cookie("sid".into()));
        let mut h = HeaderMap::new();
        h.insert("cookie", HeaderValue::from_static("a=1; sid=xyz"));
        for _ in 0..3 {
            assert!(cookie.check(&h, || None).is_ok());
        }
        assert!(cookie.check(&h, || None).is_err());
        assert!(cookie.check(&none, || None).is_ok());
    }

    #[test]
    fn tidy_forgets_keys_whose_budget_is_full_again() {
        let l = Limiter::new(&RateLimit {
            per_second: 1000.0,
            burst: 1,
            key: LimitKey::Ip,
        });
        for i in 0..100u8 {
            let _ = l.check(&HeaderMap::new(), || Some(IpAddr::from([10, 0, 0, i])));
        }
        assert_eq!(l.keys(), 100);
        std::thread::sleep(Duration::from_millis(20));
        l.tidy();
        assert_eq!(l.keys(), 0);
    }
}
