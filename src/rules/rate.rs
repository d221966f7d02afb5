//! A route's `rate_limit:`, compiled: the quota and what keys it. The limiter's state lives in
//! ratelimit.rs.

use crate::config::Spanned;
use http::HeaderName;

use super::compile::Compiler;
use crate::config::RateLimitFile;

const MAX_RATE: f64 = 1e6;
const MAX_BURST: u64 = 1_000_000;

/// Who shares one budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    Route,
    /// The client's address, through `trusted_proxies`.
    Ip,
    Header(HeaderName),
    Cookie(String),
}

impl LimitKey {
    pub fn describe(&self) -> String {
        match self {
            LimitKey::Route => "route".into(),
            LimitKey::Ip => "ip".into(),
            LimitKey::Header(h) => format!("header:{h}"),
            LimitKey::Cookie(c) => format!("cookie:{c}"),
        }
    }
}

/// The compiled `rate_limit:`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
    pub key: LimitKey,
}

impl Compiler<'_> {
    pub(super) fn rate_limit(
        &mut self,
        f: Option<&Spanned<RateLimitFile>>,
        route: Option<&str>,
        has_service: bool,
    ) -> Option<RateLimit> {
        let f = f?;
        if !has_service {
            self.err(
                &f.referenced,
                route,
                "rate_limit caps the new side; give the route a service".into(),
            );
            return None;
        }
        let rate = f.value.per_second.value;
        if !(rate > 0.0 && rate <= MAX_RATE) {
            self.err(
                &f.value.per_second.referenced,
                route,
                format!("rate_limit.per_second must be above 0 and at most {MAX_RATE}, got {rate}"),
            );
            return None;
        }
        let burst = match &f.value.burst {
            None => rate.ceil() as u64,
            Some(b) if (1..=MAX_BURST).contains(&b.value) => b.value,
            Some(b) => {
                self.err(
                    &b.referenced,
                    route,
                    format!("rate_limit.burst must be within 1..={MAX_BURST}, got {}", b.value),
                );
                return None;
            }
        };
        let key = match &f.value.key {
            None => LimitKey::Route,
            Some(k) => {
                let v = k.value.trim();
                let key = match v.split_once(':') {
                    None if v == "route" => Some(LimitKey::Route),
                    None if v == "ip" => Some(LimitKey::Ip),
                    Some(("header", name)) => HeaderName::from_bytes(name.trim().as_bytes())
                        .ok()
                        .map(LimitKey::Header),
                    Some(("cookie", name)) if !name.trim().is_empty() => {
                        Some(LimitKey::Cookie(name.trim().to_string()))
                    }
                    _ => None,
                };
                match key {
                    Some(key) => key,
                    None => {
                        self.err(
                            &k.referenced,
                            route,
                            format!("rate_limit.key \"{v}\" must be route, ip, header:NAME or cookie:NAME"),
                        );
                        return None;
                    }
                }
            }
        };
        Some(RateLimit {
            per_second: rate,
            burst: burst as u32,
            key,
        })
    }
}
