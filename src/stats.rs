//! Live figures for the admin API and the dashboard: the route counters sampled every 5 s into
//! a 10-minute ring, so "the last minute" and the charts come from differences of samples.
//!
//! Sampling reads the same counters Prometheus scrapes; nothing is added to the request path.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use prometheus::core::Metric;
use prometheus::Histogram;
use serde_json::{json, Value};

use crate::fallback::Reason;
use crate::live::Live;
use crate::metrics::{RouteMetric, SideMetric};

pub const EVERY: Duration = Duration::from_secs(5);
/// 10 minutes of samples.
pub const KEEP: usize = 120;

/// Cumulative counts of one route at one moment.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// Requests by side: [legacy, new].
    pub requests: [u64; 2],
    pub errors_5xx: u64,
    pub fallbacks: [u64; crate::fallback::Reason::ALL.len()],
    /// match, mismatch, error, skipped
    pub shadow: [u64; 4],
    /// Cumulative latency buckets per side: (upper bound in seconds, count).
    pub latency: [Vec<(f64, u64)>; 2],
}

impl Counts {
    fn read(m: &RouteMetric) -> Counts {
        let side = |s: &SideMetric| (s.total(), s.errors_5xx(), buckets(s.histogram()));
        let (legacy, legacy_errors, legacy_buckets) = side(&m.legacy);
        let (new, new_errors, new_buckets) = m.new.as_ref().map(side).unwrap_or_default();
        Counts {
            requests: [legacy, new],
            errors_5xx: legacy_errors + new_errors,
            fallbacks: m.resilience.as_ref().map(|r| r.fallback_counts()).unwrap_or_default(),
            shadow: m.shadow.as_ref().map(|s| s.results()).unwrap_or_default(),
            latency: [legacy_buckets, new_buckets],
        }
    }

    /// `self - earlier`, counter by counter (a reset counter counts from zero).
    fn since(&self, earlier: &Counts) -> Counts {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        let lat = |i: usize| {
            self.latency[i]
                .iter()
                .map(|(le, c)| {
                    (
                        *le,
                        d(*c, earlier.latency[i].iter().find(|(l, _)| l == le).map_or(0, |x| x.1)),
                    )
                })
                .collect()
        };
        Counts {
            requests: [
                d(self.requests[0], earlier.requests[0]),
                d(self.requests[1], earlier.requests[1]),
            ],
            errors_5xx: d(self.errors_5xx, earlier.errors_5xx),
            fallbacks: std::array::from_fn(|i| d(self.fallbacks[i], earlier.fallbacks[i])),
            shadow: std::array::from_fn(|i| d(self.shadow[i], earlier.shadow[i])),
            latency: [lat(0), lat(1)],
        }
    }

    /// Add another route's counts (latency buckets are per route and are not summed).
    fn add(&mut self, other: &Counts) {
        for i in 0..2 {
            self.requests[i] += other.requests[i];
        }
        self.errors_5xx += other.errors_5xx;
        for (a, b) in self.fallbacks.iter_mut().zip(other.fallbacks) {
            *a += b;
        }
        for (a, b) in self.shadow.iter_mut().zip(other.shadow) {
            *a += b;
        }
    }

    fn total(&self) -> u64 {
        self.requests[0] + self.requests[1]
    }

    /// The figures a person reads, over `seconds`.
    pub fn view(&self, seconds: f64) -> Value {
        let total = self.total();
        let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        let compared = self.shadow[0] + self.shadow[1];
        let fallbacks: serde_json::Map<String, Value> = Reason::ALL
            .iter()
            .zip(self.fallbacks)
            .map(|(r, n)| (r.as_str().to_string(), n.into()))
            .collect();
        let latency = |i: usize| json!({"p50_ms": quantile(&self.latency[i], 0.5).map(|s| s * 1e3), "p99_ms": quantile(&self.latency[i], 0.99).map(|s| s * 1e3)});
        json!({
            "requests": {"legacy": self.requests[0], "new": self.requests[1], "total": total},
            "rate_per_s": if seconds > 0.0 { total as f64 / seconds } else { 0.0 },
            "new_share": ratio(self.requests[1], total),
            "error_rate": ratio(self.errors_5xx, total),
            "fallbacks": fallbacks,
            "fallback_rate": ratio(self.fallbacks.iter().sum(), total),
            "shadow": {"compared": compared, "match": self.shadow[0], "mismatch": self.shadow[1], "errors": self.shadow[2], "skipped": self.shadow[3], "match_rate": ratio(self.shadow[0], compared)},
            "latency": {"legacy": latency(0), "new": latency(1)},
        })
    }
}

fn buckets(h: &Histogram) -> Vec<(f64, u64)> {
    h.metric()
        .get_histogram()
        .get_bucket()
        .iter()
        .map(|b| (b.upper_bound(), b.cumulative_count()))
        .collect()
}

/// Linear interpolation inside the bucket that holds the quantile, like PromQL's histogram_quantile.
pub fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut prev = (0.0, 0u64);
    for &(le, count) in buckets {
        if count as f64 >= rank {
            let in_bucket = (count - prev.1) as f64;
            let frac = if in_bucket > 0.0 {
                (rank - prev.1 as f64) / in_bucket
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, count);
    }
    Some(prev.0)
}

struct Sample {
    at: Instant,
    routes: HashMap<String, Counts>,
}

/// The ring of samples, newest last.
#[derive(Default)]
pub struct Stats {
    ring: Mutex<VecDeque<Sample>>,
}

impl Stats {
    pub fn sample(&self, live: &Live) {
        let mut routes: HashMap<String, Counts> = live
            .rules
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.clone(), Counts::read(live.handles.route(Some(i)))))
            .collect();
        routes.insert(
            crate::rules::NO_ROUTE.to_string(),
            Counts::read(live.handles.route(None)),
        );
        let Ok(mut ring) = self.ring.lock() else { return };
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back(Sample {
            at: Instant::now(),
            routes,
        });
    }

    /// Since start, the last minute, and a per-sample history, for one route (`None` before any sample).
    pub fn route(&self, live: &Live, id: Option<usize>, name: &str) -> Value {
        let now = Counts::read(live.handles.route(id));
        let Ok(ring) = self.ring.lock() else { return Value::Null };
        let (minute, seconds) = last_minute(&ring, &now, name);
        let history: Vec<Value> = ring
            .iter()
            .zip(ring.iter().skip(1))
            .filter_map(|(a, b)| {
                let d = b.routes.get(name)?.since(a.routes.get(name)?);
                let compared = d.shadow[0] + d.shadow[1];
                Some(json!({
                    "ago_s": b.at.elapsed().as_secs(),
                    "rate_per_s": d.total() as f64 / (b.at - a.at).as_secs_f64().max(0.001),
                    "new_share": (d.total() > 0).then(|| d.requests[1] as f64 / d.total() as f64),
                    "match_rate": (compared > 0).then(|| d.shadow[0] as f64 / compared as f64),
                }))
            })
            .collect();
        json!({"since_start": now.view(0.0), "last_minute": minute.view(seconds), "history": history})
    }

    /// The last minute over every route and unrouted requests together.
    pub fn totals(&self, live: &Live) -> Value {
        let Ok(ring) = self.ring.lock() else { return Value::Null };
        let mut sum = Counts::default();
        let routes = live
            .rules
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| (Some(i), r.name.as_str()));
        for (id, name) in routes.chain([(None, crate::rules::NO_ROUTE)]) {
            sum.add(&last_minute(&ring, &Counts::read(live.handles.route(id)), name).0);
        }
        let total = sum.total();
        let compared = sum.shadow[0] + sum.shadow[1];
        let by_reason: serde_json::Map<String, Value> = Reason::ALL
            .iter()
            .zip(sum.fallbacks)
            .map(|(r, n)| (r.as_str().to_string(), n.into()))
            .collect();
        json!({
            "requests": total,
            "new_share": (total > 0).then(|| sum.requests[1] as f64 / total as f64),
            "shadow_compared": compared,
            "shadow_match_rate": (compared > 0).then(|| sum.shadow[0] as f64 / compared as f64),
            "fallbacks": sum.fallbacks.iter().sum::<u64>(),
            "fallbacks_by_reason": by_reason,
        })
    }
}

/// `now` minus the sample about a minute old (or the oldest), and the seconds between them.
fn last_minute(ring: &VecDeque<Sample>, now: &Counts, name: &str) -> (Counts, f64) {
    let then = ring
        .iter()
        .rev()
        .find(|s| s.at.elapsed() >= Duration::from_secs(55))
        .or(ring.front());
    match then.and_then(|s| Some((s.at.elapsed(), s.routes.get(name)?))) {
        Some((age, then)) => (now.since(then), age.as_secs_f64()),
        None => (now.clone(), 0.0),
    }
}

/// Samples every 5 s.
pub struct StatsService {
    pub live: Arc<ArcSwap<Live>>,
    pub stats: Arc<Stats>,
}

#[async_trait]
impl BackgroundService for StatsService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    let live = self.live.load();
                    self.stats.sample(&live);
                    // Housekeeping on the same tick: rate-limit keys that are idle again.
                    live.tidy();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let b = [(0.001, 0), (0.01, 50), (0.1, 90), (1.0, 100), (f64::INFINITY, 100)];
        let cases = [
            (0.5, Some(0.01)),
            (0.25, Some(0.0055)),
            (0.9, Some(0.1)),
            (0.99, Some(0.91)),
        ];
        for (q, want) in cases {
            let got = quantile(&b, q);
            assert!((got.unwrap() - want.unwrap()).abs() < 1e-9, "q={q}: {got:?}");
        }
        assert_eq!(quantile(&[(0.1, 0), (f64::INFINITY, 0)], 0.5), None);
    }
}
