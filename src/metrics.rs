//! Every Prometheus metric, in one registry; per-route handles are resolved at rule-compile time.
//!
//! Label values come only from the rules (route, upstream, mode) and fixed sets (side, status
//! class, reason), never from request data, so cardinality is bounded by the rules file.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::config::Mode;
use crate::fallback::{Reason, SkipReason};
use crate::upstream::UpstreamState;
use std::collections::HashMap;

use crate::rules::{Route, RuleSet, Side, NO_ROUTE};

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
    fallbacks: IntCounterVec,
    fallbacks_skipped: IntCounterVec,
    retries: IntCounterVec,
    circuit_state: IntGaugeVec,
    upstream_up: IntGaugeVec,
    upstream_addresses: IntGaugeVec,
    dns_lookups: IntCounterVec,
    in_flight: IntGaugeVec,
    shadow_total: IntCounterVec,
    shadow_skipped: IntCounterVec,
    shadow_paths: IntCounterVec,
    shadow_latency: HistogramVec,
    shadow_in_flight: IntGauge,
    legacy_up: IntGauge,
    connections: IntGauge,
    connections_refused: IntCounter,
    reloads: IntCounterVec,
    generation: IntGauge,
    config_info: IntGaugeVec,
    rollout_step: IntGaugeVec,
    rollout_paused: IntGaugeVec,
    rollout_transitions: IntCounterVec,
    endpoints: IntGaugeVec,
    progress: GaugeVec,
    capability_requests: IntCounterVec,
    forced: IntCounterVec,
    compose_parts: IntCounterVec,
    compose_latency: HistogramVec,
    compose_partial: IntCounterVec,
    /// Spans the collector took, and spans lost (a full queue, a failed export).
    pub trace_exported: IntCounter,
    pub trace_dropped: IntCounter,
    /// `strangler_rejected_requests_total` by reason, resolved once for every known reason.
    rejected_by: HashMap<&'static str, IntCounter>,
    last_reload_ok: IntGauge,
    last_success: Gauge,
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry.register(Box::new(c.clone())).expect("metric names are unique");
    c
}

fn counters(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn gauges(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        registry,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "strangler_request_duration_seconds",
                "Time from request start to the last byte sent downstream, by route and side.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["route", "side"],
        )
        .expect("valid metric");
        let shadow_latency = HistogramVec::new(
            HistogramOpts::new(
                "strangler_shadow_latency_seconds",
                "Latency of both sides of shadowed requests: legacy (the answer the client got) and new (the copy).",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["route", "side"],
        )
        .expect("valid metric");
        let compose_latency = HistogramVec::new(
            HistogramOpts::new(
                "strangler_compose_part_duration_seconds",
                "Time each part of a composed answer took (a for_each part: all its requests), by route and part.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["route", "part"],
        )
        .expect("valid metric");
        let m = Metrics {
            shadow_total: counters(
                &r,
                "strangler_shadow_total",
                "Shadowed requests by result: match, mismatch, error, skipped.",
                &["route", "result"],
            ),
            shadow_skipped: counters(
                &r,
                "strangler_shadow_skipped_total",
                "Requests on shadowed routes that were not compared, by reason.",
                &["route", "reason"],
            ),
            shadow_paths: counters(
                &r,
                "strangler_shadow_mismatch_paths_total",
                "Differences by path (indices as [*]; at most 50 paths per route, then (other)).",
                &["route", "path"],
            ),
            shadow_latency: register(&r, shadow_latency),
            legacy_up: register(
                &r,
                IntGauge::new(
                    "strangler_legacy_upstream_up",
                    "1 if the legacy upstream passes its health checks (what /readyz reports).",
                )
                .expect("valid metric"),
            ),
            connections: register(
                &r,
                IntGauge::new("strangler_client_connections", "Client connections open now.").expect("valid metric"),
            ),
            connections_refused: register(
                &r,
                IntCounter::new(
                    "strangler_client_connections_refused_total",
                    "Client connections closed at once because limits.max_connections were open.",
                )
                .expect("valid metric"),
            ),
            shadow_in_flight: register(
                &r,
                IntGauge::new(
                    "strangler_shadow_in_flight",
                    "Shadow copies in flight (capped by shadow_max_in_flight).",
                )
                .expect("valid metric"),
            ),
            requests: counters(
                &r,
                "strangler_requests_total",
                "Requests proxied, by route, the upstream that answered, side and status class.",
                &["route", "upstream", "side", "status"],
            ),
            duration: register(&r, duration),
            route_info: gauges(
                &r,
                "strangler_route_info",
                "One series per route in force: its mode and service.",
                &["route", "mode", "service"],
            ),
            routes: gauges(&r, "strangler_routes", "Routes in force, by mode.", &["mode"]),
            rejected: counters(
                &r,
                "strangler_rejected_requests_total",
                "Requests refused by the proxy before routing, by reason.",
                &["reason"],
            ),
            fallbacks: counters(
                &r,
                "strangler_fallbacks_total",
                "Requests for the new service that the legacy upstream served instead, by route and reason.",
                &["route", "reason"],
            ),
            fallbacks_skipped: counters(
                &r,
                "strangler_fallbacks_skipped_total",
                "Failed requests that could not fall back because sending them twice was unsafe, by route and reason.",
                &["route", "reason"],
            ),
            retries: counters(
                &r,
                "strangler_retries_total",
                "Retries of a request to the new service, by route.",
                &["route"],
            ),
            circuit_state: gauges(
                &r,
                "strangler_circuit_state",
                "Circuit breaker state per upstream: 0 closed, 1 half-open, 2 open.",
                &["upstream"],
            ),
            upstream_up: gauges(
                &r,
                "strangler_upstream_up",
                "1 if any address of the upstream passes its health checks, else 0.",
                &["upstream"],
            ),
            upstream_addresses: gauges(
                &r,
                "strangler_upstream_addresses",
                "Addresses an upstream has now (its host name's DNS answer), and how many are healthy.",
                &["upstream", "health"],
            ),
            trace_exported: register(
                &r,
                IntCounter::new(
                    "strangler_trace_spans_exported_total",
                    "Spans the OTLP collector took.",
                )
                .expect("valid metric"),
            ),
            trace_dropped: register(
                &r,
                IntCounter::new(
                    "strangler_trace_spans_dropped_total",
                    "Spans lost: the export queue was full, or the collector did not take them (down, slow, refusing).",
                )
                .expect("valid metric"),
            ),
            dns_lookups: counters(
                &r,
                "strangler_dns_lookups_total",
                "Lookups of upstream host names; a failed one keeps the last good addresses.",
                &["upstream", "result"],
            ),
            in_flight: gauges(
                &r,
                "strangler_upstream_in_flight",
                "Requests in flight to the upstream (the bulkhead's count).",
                &["upstream"],
            ),
            reloads: counters(
                &r,
                "strangler_config_reloads_total",
                "Reloads of the rules file, by result.",
                &["result"],
            ),
            generation: register(
                &r,
                IntGauge::new(
                    "strangler_config_generation",
                    "Generation of the rules in force; +1 per applied reload.",
                )
                .expect("valid metric"),
            ),
            config_info: gauges(
                &r,
                "strangler_config_info",
                "1 for the hash of the rules file in force (replicas on the same file agree).",
                &["hash"],
            ),
            rejected_by: HashMap::new(),
            rollout_step: gauges(
                &r,
                "strangler_rollout_step",
                "The rollout step a route is at (0 = its first step; -1 = not one of its steps).",
                &["route"],
            ),
            rollout_paused: gauges(
                &r,
                "strangler_rollout_paused",
                "1 while a route's rollout is paused (by a person, or after a rollback).",
                &["route"],
            ),
            rollout_transitions: counters(
                &r,
                "strangler_rollout_transitions_total",
                "Rollout moves by route, direction (promote, rollback, pause, resume, adopt) and reason.",
                &["route", "direction", "reason"],
            ),
            endpoints: gauges(
                &r,
                "strangler_endpoints",
                "Endpoints in the migration map, by state (legacy, shadow, canary, migrated).",
                &["state"],
            ),
            progress: register(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "strangler_migration_progress_ratio",
                        "Migration progress, 0..1: by=requests (last hour's requests served by new services), by=endpoints (endpoints migrated), by=endpoints_weighted (weighted by requests).",
                    ),
                    &["by"],
                )
                .expect("valid metric"),
            ),
            capability_requests: counters(
                &r,
                "strangler_capability_requests_total",
                "Requests by capability (the capabilities the rules name; the rest are (other)) and side.",
                &["capability", "side"],
            ),
            forced: counters(
                &r,
                "strangler_forced_total",
                "Requests whose side a trusted tester chose (force_side), by route and side.",
                &["route", "side"],
            ),
            compose_parts: counters(
                &r,
                "strangler_compose_parts_total",
                "Parts of composed answers by route, part and result: ok, not_found, or why it failed.",
                &["route", "part", "result"],
            ),
            compose_latency: register(&r, compose_latency),
            compose_partial: counters(
                &r,
                "strangler_compose_partial_total",
                "Composed answers sent with a part left null because it failed (x-strangler-partial), by route.",
                &["route"],
            ),
            last_reload_ok: register(
                &r,
                IntGauge::new(
                    "strangler_config_last_reload_successful",
                    "1 if the last reload attempt was applied, 0 if it was refused.",
                )
                .expect("valid metric"),
            ),
            last_success: register(
                &r,
                Gauge::new(
                    "strangler_config_last_reload_success_timestamp_seconds",
                    "Unix time of the last applied load of the rules file.",
                )
                .expect("valid metric"),
            ),
            registry: r,
        };
        for result in ["success", "failure"] {
            m.reloads.with_label_values(&[result]);
        }
        #[cfg(target_os = "linux")]
        m.registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("process collector registers once");
        m
    }

    /// One lookup of an upstream's host name.
    pub fn dns_lookup(&self, upstream: &str, ok: bool) {
        self.dns_lookups
            .with_label_values(&[upstream, if ok { "ok" } else { "failed" }])
            .inc();
    }

    /// The text exposition of every metric. Upstream gauges are read from the live state now,
    /// so the request path never touches them.
    pub fn render(
        &self,
        upstreams: &[std::sync::Arc<UpstreamState>],
        legacy: usize,
        shadow_in_flight: usize,
    ) -> Vec<u8> {
        self.shadow_in_flight.set(shadow_in_flight as i64);
        self.legacy_up
            .set(upstreams.get(legacy).map_or(0, |u| i64::from(u.healthy())));
        self.circuit_state.reset();
        self.upstream_up.reset();
        self.upstream_addresses.reset();
        self.in_flight.reset();
        for u in upstreams {
            self.circuit_state.with_label_values(&[&u.name]).set(u.circuit() as i64);
            let targets = u.targets();
            let healthy = targets.iter().filter(|t| t.healthy()).count();
            for (health, n) in [("healthy", healthy), ("unhealthy", targets.len() - healthy)] {
                self.upstream_addresses
                    .with_label_values(&[&u.name, health])
                    .set(n as i64);
            }
            self.upstream_up
                .with_label_values(&[&u.name])
                .set(i64::from(u.healthy()));
            self.in_flight.with_label_values(&[&u.name]).set(u.in_flight() as i64);
        }
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
    /// `mismatch_paths(i)` lists old route `i`'s per-path mismatch series.
    pub fn forget_removed(&self, old: &RuleSet, new: &RuleSet, mismatch_paths: impl Fn(usize) -> Vec<String>) {
        let legacy = old.upstreams[old.legacy].name.as_str();
        let kept: std::collections::HashSet<&str> = new.routes.iter().map(|r| r.name.as_str()).collect();
        for (i, r) in old
            .routes
            .iter()
            .enumerate()
            .filter(|(_, r)| !kept.contains(r.name.as_str()))
        {
            let name = r.name.as_str();
            let mut sides = vec![(legacy, Side::Legacy)];
            if let Some(s) = r.service {
                sides.push((old.upstreams[s].name.as_str(), Side::New));
            }
            for (upstream, side) in sides {
                for status in STATUS_CLASSES {
                    let _ = self
                        .requests
                        .remove_label_values(&[name, upstream, side.as_str(), status]);
                }
                let _ = self.duration.remove_label_values(&[name, side.as_str()]);
            }
            if r.service.is_some() {
                for reason in Reason::ALL {
                    let _ = self.fallbacks.remove_label_values(&[name, reason.as_str()]);
                }
                for reason in SkipReason::ALL {
                    let _ = self.fallbacks_skipped.remove_label_values(&[name, reason.as_str()]);
                }
                let _ = self.retries.remove_label_values(&[name]);
            }
            if r.shadow.is_some() {
                for result in ShadowMetrics::RESULTS {
                    let _ = self.shadow_total.remove_label_values(&[name, result]);
                }
                for skip in CopySkip::ALL {
                    let _ = self.shadow_skipped.remove_label_values(&[name, skip.as_str()]);
                }
                for side in ["legacy", "new"] {
                    let _ = self.shadow_latency.remove_label_values(&[name, side]);
                }
                for path in mismatch_paths(i) {
                    let _ = self.shadow_paths.remove_label_values(&[name, &path]);
                }
            }
        }
    }

    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// Count an open client connection until the returned guard drops.
    pub fn connection_opened(&self) -> impl Drop + '_ {
        struct Open<'a>(&'a IntGauge);
        impl Drop for Open<'_> {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        self.connections.inc();
        Open(&self.connections)
    }

    /// Resolve the refusal counters of these reasons now, so counting one is a map lookup.
    pub fn with_refusals(mut self, reasons: impl IntoIterator<Item = &'static str>) -> Metrics {
        for reason in reasons {
            let counter = self.rejected.with_label_values(&[reason]);
            self.rejected_by.insert(reason, counter);
        }
        self
    }

    pub fn rejected(&self, reason: &'static str) {
        match self.rejected_by.get(reason) {
            Some(c) => c.inc(),
            None => self.rejected.with_label_values(&[reason]).inc(),
        }
    }

    /// A route's rollout step and whether it is paused.
    pub fn rollout_state(&self, route: &str, step: i64, paused: bool) {
        self.rollout_step.with_label_values(&[route]).set(step);
        self.rollout_paused.with_label_values(&[route]).set(i64::from(paused));
    }

    pub fn rollout_transition(&self, route: &str, direction: &str, reason: &str) {
        self.rollout_transitions
            .with_label_values(&[route, direction, reason])
            .inc();
    }

    /// Publish the endpoint map's gauges: endpoints by state and the progress ratios.
    pub fn endpoint_map(&self, states: &[(&str, i64)], by_requests: f64, by_endpoints: f64, weighted: f64) {
        for (state, n) in states {
            self.endpoints.with_label_values(&[state]).set(*n);
        }
        for (by, v) in [
            ("requests", by_requests),
            ("endpoints", by_endpoints),
            ("endpoints_weighted", weighted),
        ] {
            self.progress.with_label_values(&[by]).set(v);
        }
    }

    /// Count `n` requests of a capability on a side (off the request path, by the map's folder).
    pub fn capability_requests(&self, capability: &str, side: Side, n: u64) {
        self.capability_requests
            .with_label_values(&[capability, side.as_str()])
            .inc_by(n);
    }

    /// One part of a composed answer: its result and how long it took.
    pub fn compose_part(&self, route: &str, part: &str, result: &str, seconds: f64) {
        self.compose_parts.with_label_values(&[route, part, result]).inc();
        self.compose_latency.with_label_values(&[route, part]).observe(seconds);
    }

    /// A composed answer went out with failed parts left null.
    pub fn compose_partial(&self, route: &str) {
        self.compose_partial.with_label_values(&[route]).inc();
    }

    /// Count a request whose side a trusted tester chose (rare: testers only).
    pub fn forced(&self, route: &str, side: Side) {
        self.forced.with_label_values(&[route, side.as_str()]).inc();
    }

    /// Publish the hash of the rules file in force as `strangler_config_info{hash}`.
    pub fn config_identity(&self, hash: u64) {
        self.config_info.reset();
        self.config_info
            .with_label_values(&[&crate::rules::show_hash(hash)])
            .set(1);
    }

    /// Resolve every handle a request on these rules may touch, and publish the route gauges.
    /// Handles of routes that keep their name and upstreams are carried over from `previous`,
    /// so a reload of a large file does not look up every series again.
    pub fn handles(&self, rules: &RuleSet, previous: Option<(&RuleSet, &RouteHandles)>) -> RouteHandles {
        let mut before: HashMap<&str, (&Route, &RuleSet, &RouteMetric)> = HashMap::new();
        if let Some((old_rules, old_handles)) = previous {
            for (i, r) in old_rules.routes.iter().enumerate() {
                before.insert(r.name.as_str(), (r, old_rules, &old_handles.per_route[i]));
            }
            // Info series of routes that are gone or changed mode or service.
            let now: HashMap<&str, &Route> = rules.routes.iter().map(|r| (r.name.as_str(), r)).collect();
            for r in &old_rules.routes {
                let same = now
                    .get(r.name.as_str())
                    .is_some_and(|n| n.mode == r.mode && upstream(rules, n.service) == upstream(old_rules, r.service));
                if !same {
                    let _ = self.route_info.remove_label_values(&[
                        &r.name,
                        r.mode.as_str(),
                        upstream(old_rules, r.service),
                    ]);
                }
            }
        } else {
            self.route_info.reset();
        }
        for r in &rules.routes {
            let unchanged = before.get(r.name.as_str()).is_some_and(|(old, old_rules, _)| {
                old.mode == r.mode && upstream(old_rules, old.service) == upstream(rules, r.service)
            });
            if !unchanged {
                self.route_info
                    .with_label_values(&[&r.name, r.mode.as_str(), upstream(rules, r.service)])
                    .set(1);
            }
        }
        for (mode, n) in Mode::ALL.iter().zip(rules.mode_counts()) {
            self.routes.with_label_values(&[mode.as_str()]).set(n as i64);
        }
        let legacy = rules.upstreams[rules.legacy].name.as_str();
        let per_route = rules
            .routes
            .iter()
            .map(|r| {
                let kept = before.get(r.name.as_str()).filter(|(old, old_rules, _)| {
                    old_rules.upstreams[old_rules.legacy].name == legacy
                        && upstream(old_rules, old.service) == upstream(rules, r.service)
                        && old.shadow.is_some() == r.shadow.is_some()
                        && old.compose.is_some() == r.compose.is_some()
                });
                if let Some((_, _, m)) = kept {
                    return (*m).clone();
                }
                // A composite route's new side is its composition (`x-strangler-upstream: compose`).
                let new_side = r
                    .service
                    .map(|s| rules.upstreams[s].name.as_str())
                    .or(r.compose.as_ref().map(|_| "compose"));
                RouteMetric {
                    legacy: self.side(&r.name, legacy, Side::Legacy),
                    new: new_side.map(|u| self.side(&r.name, u, Side::New)),
                    resilience: new_side.map(|_| Resilience {
                        fallbacks: Reason::ALL.map(|x| self.fallbacks.with_label_values(&[&r.name, x.as_str()])),
                        skipped: SkipReason::ALL
                            .map(|x| self.fallbacks_skipped.with_label_values(&[&r.name, x.as_str()])),
                        retries: self.retries.with_label_values(&[&r.name]),
                    }),
                    shadow: r.shadow.as_ref().map(|_| {
                        let result = |x: &str| self.shadow_total.with_label_values(&[&r.name, x]);
                        let latency = |x: &str| self.shadow_latency.with_label_values(&[&r.name, x]);
                        std::sync::Arc::new(ShadowMetrics {
                            matched: result("match"),
                            mismatched: result("mismatch"),
                            failed: result("error"),
                            skipped: result("skipped"),
                            skipped_by: CopySkip::ALL
                                .map(|x| self.shadow_skipped.with_label_values(&[&r.name, x.as_str()])),
                            legacy_latency: latency("legacy"),
                            new_latency: latency("new"),
                            paths: self.shadow_paths.clone(),
                        })
                    }),
                }
            })
            .collect();
        let none = RouteMetric {
            legacy: self.side(NO_ROUTE, legacy, Side::Legacy),
            new: None,
            resilience: None,
            shadow: None,
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

/// The name of a route's service upstream, or "" for none.
fn upstream(rules: &RuleSet, id: Option<usize>) -> &str {
    id.map_or("", |s| rules.upstreams[s].name.as_str())
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The handles of one route and side.
#[derive(Clone)]
pub struct SideMetric {
    by_status: [IntCounter; 5],
    duration: Histogram,
}

impl SideMetric {
    pub fn total(&self) -> u64 {
        self.by_status.iter().map(|c| c.get()).sum()
    }

    pub fn errors_5xx(&self) -> u64 {
        self.by_status[4].get()
    }

    pub fn histogram(&self) -> &Histogram {
        &self.duration
    }

    pub fn observe(&self, status: u16, seconds: f64) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.by_status[class].inc();
        self.duration.observe(seconds);
    }
}

/// Fallback, skip and retry counters of a route that has a service.
#[derive(Clone)]
pub struct Resilience {
    fallbacks: [IntCounter; Reason::ALL.len()],
    skipped: [IntCounter; 2],
    pub retries: IntCounter,
}

impl Resilience {
    /// Fallbacks so far, in `Reason::ALL` order.
    pub fn fallback_counts(&self) -> [u64; Reason::ALL.len()] {
        self.fallbacks.each_ref().map(|c| c.get())
    }

    pub fn fallback(&self, reason: Reason) {
        let i = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.fallbacks[i].inc();
    }

    pub fn skipped(&self, reason: SkipReason) {
        let i = SkipReason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.skipped[i].inc();
    }
}

#[derive(Clone)]
pub struct RouteMetric {
    pub legacy: SideMetric,
    pub new: Option<SideMetric>,
    pub resilience: Option<Resilience>,
    pub shadow: Option<std::sync::Arc<ShadowMetrics>>,
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

/// Why a shadow copy was not compared (`strangler_shadow_skipped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopySkip {
    SampledOut,
    Method,
    BodyTooLarge,
    Overloaded,
    LegacyError,
    /// The service's circuit is open (or it fails its health checks): copies wait it out.
    CircuitOpen,
    /// The route's `rate_limit:` for the new side was used up.
    RateLimited,
}

impl CopySkip {
    pub const ALL: [CopySkip; 7] = [
        CopySkip::SampledOut,
        CopySkip::Method,
        CopySkip::BodyTooLarge,
        CopySkip::Overloaded,
        CopySkip::LegacyError,
        CopySkip::CircuitOpen,
        CopySkip::RateLimited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CopySkip::SampledOut => "sampled_out",
            CopySkip::Method => "method",
            CopySkip::BodyTooLarge => "body_too_large",
            CopySkip::Overloaded => "overloaded",
            CopySkip::LegacyError => "legacy_error",
            CopySkip::CircuitOpen => "circuit_open",
            CopySkip::RateLimited => "rate_limited",
        }
    }
}

/// `strangler_shadow_*` handles of one route, resolved when the rules are compiled.
pub struct ShadowMetrics {
    /// `strangler_shadow_requests_total{result}`: match, mismatch, error, skipped.
    pub matched: IntCounter,
    pub mismatched: IntCounter,
    pub failed: IntCounter,
    pub skipped: IntCounter,
    /// `strangler_shadow_skipped_total{reason}`, in `CopySkip::ALL` order.
    skipped_by: [IntCounter; CopySkip::ALL.len()],
    pub legacy_latency: Histogram,
    pub new_latency: Histogram,
    /// The family, for the bounded per-path series created off the request path.
    pub paths: IntCounterVec,
}

impl ShadowMetrics {
    const RESULTS: [&str; 4] = ["match", "mismatch", "error", "skipped"];

    /// Copies so far by result: match, mismatch, error, skipped.
    pub fn results(&self) -> [u64; 4] {
        [&self.matched, &self.mismatched, &self.failed, &self.skipped].map(|c| c.get())
    }

    pub fn skip(&self, why: CopySkip) {
        self.skipped.inc();
        let i = CopySkip::ALL.iter().position(|s| *s == why).unwrap_or(0);
        self.skipped_by[i].inc();
    }
}
