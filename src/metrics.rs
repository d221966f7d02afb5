//! Every Prometheus metric, in one registry; per-route handles are resolved at rule-compile time.
//!
//! Label values come only from the rules (route, upstream, mode) and fixed sets (side, status
//! class), never from request data, so cardinality is bounded by the rules file.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::config::Mode;
use crate::rules::{RuleSet, Side, NO_ROUTE};

/// Latency buckets from 0.25 ms to 10 s.
const DURATION_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The process-wide metric families. One per server, so tests can run several in one process.
pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    route_info: IntGaugeVec,
    routes: IntGaugeVec,
    rejected: IntCounterVec,
    reloads: IntCounterVec,
    generation: IntGauge,
    last_reload_ok: IntGauge,
    last_success: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "strangler_requests_total",
                "Requests proxied, by route, upstream, side and status class.",
            ),
            &["route", "upstream", "side", "status"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "strangler_request_duration_seconds",
                "Time from request start to the last byte sent downstream, by route and side.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["route", "side"],
        )
        .expect("valid metric");
        let route_info = IntGaugeVec::new(
            Opts::new(
                "strangler_route_info",
                "One series per route in force: its mode and service.",
            ),
            &["route", "mode", "service"],
        )
        .expect("valid metric");
        let routes = IntGaugeVec::new(Opts::new("strangler_routes", "Routes in force, by mode."), &["mode"])
            .expect("valid metric");
        let rejected = IntCounterVec::new(
            Opts::new(
                "strangler_rejected_requests_total",
                "Requests refused by the proxy before routing, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let reloads = IntCounterVec::new(
            Opts::new(
                "strangler_config_reloads_total",
                "Reloads of the rules file, by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let generation = IntGauge::new(
            "strangler_config_generation",
            "Generation of the rules in force; +1 per applied reload.",
        )
        .expect("valid metric");
        let last_reload_ok = IntGauge::new(
            "strangler_config_last_reload_successful",
            "1 if the last reload attempt was applied, 0 if it was refused.",
        )
        .expect("valid metric");
        let last_success = Gauge::new(
            "strangler_config_last_reload_success_timestamp_seconds",
            "Unix time of the last applied load of the rules file.",
        )
        .expect("valid metric");
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(route_info.clone()),
            Box::new(routes.clone()),
            Box::new(rejected.clone()),
            Box::new(reloads.clone()),
            Box::new(generation.clone()),
            Box::new(last_reload_ok.clone()),
            Box::new(last_success.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("process collector registers once");
        Metrics {
            registry,
            requests,
            duration,
            route_info,
            routes,
            rejected,
            reloads,
            generation,
            last_reload_ok,
            last_success,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec can't fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }

    /// Record a load of the rules file: the first at start, then every reload attempt.
    pub fn config_loaded(&self, ok: bool, generation: u64, last_success_unix: f64) {
        if generation > 0 {
            self.reloads
                .with_label_values(&[if ok { "success" } else { "failure" }])
                .inc();
        }
        self.generation.set(generation as i64);
        self.last_reload_ok.set(i64::from(ok));
        self.last_success.set(last_success_unix);
    }

    /// Drop the series of routes that `new` no longer has, so a removed or renamed route
    /// disappears from /metrics. Routes that keep their name keep their counters.
    pub fn forget_removed(&self, old: &RuleSet, new: &RuleSet) {
        let legacy = old.upstreams[old.legacy].name.as_str();
        for r in old
            .routes
            .iter()
            .filter(|r| !new.routes.iter().any(|n| n.name == r.name))
        {
            let mut sides = vec![(legacy, Side::Legacy)];
            if let Some(s) = r.service {
                sides.push((old.upstreams[s].name.as_str(), Side::New));
            }
            for (upstream, side) in sides {
                for status in STATUS_CLASSES {
                    let _ = self
                        .requests
                        .remove_label_values(&[&r.name, upstream, side.as_str(), status]);
                }
                let _ = self.duration.remove_label_values(&[&r.name, side.as_str()]);
            }
        }
    }

    pub fn rejected(&self, reason: &str) {
        self.rejected.with_label_values(&[reason]).inc();
    }

    /// Resolve every handle a request on these rules may touch, and publish the route gauges.
    pub fn handles(&self, rules: &RuleSet) -> RouteHandles {
        self.route_info.reset();
        for r in &rules.routes {
            let service = r.service.map_or("", |s| rules.upstreams[s].name.as_str());
            self.route_info
                .with_label_values(&[&r.name, r.mode.as_str(), service])
                .set(1);
        }
        let counts = rules.mode_counts();
        for (mode, n) in Mode::ALL.iter().zip(counts) {
            self.routes.with_label_values(&[mode.as_str()]).set(n as i64);
        }
        let legacy = rules.upstreams[rules.legacy].name.as_str();
        let per_route = rules
            .routes
            .iter()
            .map(|r| RouteMetric {
                legacy: self.side(&r.name, legacy, Side::Legacy),
                new: r
                    .service
                    .map(|s| self.side(&r.name, &rules.upstreams[s].name, Side::New)),
            })
            .collect();
        let none = RouteMetric {
            legacy: self.side(NO_ROUTE, legacy, Side::Legacy),
            new: None,
        };
        RouteHandles { per_route, none }
    }

    fn side(&self, route: &str, upstream: &str, side: Side) -> SideMetric {
        SideMetric {
            by_status: STATUS_CLASSES.map(|s| self.requests.with_label_values(&[route, upstream, side.as_str(), s])),
            duration: self.duration.with_label_values(&[route, side.as_str()]),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The handles of one route and side.
pub struct SideMetric {
    by_status: [IntCounter; 5],
    duration: Histogram,
}

impl SideMetric {
    pub fn observe(&self, status: u16, seconds: f64) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.by_status[class].inc();
        self.duration.observe(seconds);
    }
}

pub struct RouteMetric {
    pub legacy: SideMetric,
    pub new: Option<SideMetric>,
}

impl RouteMetric {
    pub fn side(&self, side: Side) -> &SideMetric {
        match (side, &self.new) {
            (Side::New, Some(m)) => m,
            _ => &self.legacy,
        }
    }
}

/// Per-route handles, indexed like `RuleSet::routes`, plus the `(none)` route.
pub struct RouteHandles {
    per_route: Vec<RouteMetric>,
    none: RouteMetric,
}

impl RouteHandles {
    pub fn route(&self, id: Option<usize>) -> &RouteMetric {
        id.and_then(|i| self.per_route.get(i)).unwrap_or(&self.none)
    }
}
