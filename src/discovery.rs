//! The migration map: every request folded into an endpoint (method + template), with its
//! traffic, latency, route and state, and the migration's progress by requests and by endpoints.
//!
//! The request path only pushes a `Sample` (reference-counted clones, no lock shared between
//! workers) into its own thread's buffer. `MapService` drains the buffers every second, folds
//! paths into templates (`template::Folder`), keeps the busiest `max_endpoints` (the rest count
//! as `(other)`), publishes the gauges, and snapshots the map to `state_dir` every minute and at
//! shutdown.

pub mod template;

// Seeded per process and several times faster than SipHash on these short keys; the maps are
// bounded, so a flood of crafted paths can only fill them, not grow them.
use foldhash::{HashMap, HashMapExt};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::Method;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::Mode;
use crate::live::Live;
use crate::metrics::Metrics;
use crate::rules::{PathMatch, Route, RuleSet, Side};
use crate::state::StateDir;
use template::Folder;

/// Samples a worker holds between folds; past it they are counted as dropped.
const BUFFER: usize = 1 << 16;
/// How often the buffers are folded, and how often the map is written to `state_dir`.
pub const FOLD_EVERY: Duration = Duration::from_secs(1);
pub const SAVE_EVERY: Duration = crate::state::SAVE_EVERY;
/// Capabilities tracked for progress; the rest count as `(other)`.
const MAX_CAPABILITIES: usize = 256;
/// The snapshot's file name in `state_dir`.
pub const SNAPSHOT: &str = "endpoints.json";
/// Latency buckets, in seconds (the last is everything slower).
const LATENCY_BUCKETS: [f64; 15] = [
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// The last minute, in 5-second slots; the last hour, in 1-minute slots.
const MINUTE_SLOTS: usize = 12;
const HOUR_SLOTS: usize = 60;

/// One served request, as the request path hands it over. Nothing in it is reference-counted:
/// a sample dropped on the folder's thread releases nothing of the request's.
pub struct Sample {
    pub method: Method,
    /// The path's bytes in its round's `paths`: start and length.
    path: (u32, u32),
    /// The route that took it, by index in the rules of `generation`.
    route: Option<u32>,
    generation: u64,
    side: Side,
    status: u16,
    seconds: f64,
}

/// One worker's samples since the last fold, and their paths, back to back in one buffer.
#[derive(Default)]
pub struct Round {
    samples: Vec<Sample>,
    paths: String,
}

impl Round {
    fn with_capacity(samples: usize) -> Round {
        Round {
            samples: Vec::with_capacity(samples),
            paths: String::with_capacity(samples * 24),
        }
    }

    /// Add one request.
    pub fn push(&mut self, seen: Seen<'_>) {
        let start = self.paths.len() as u32;
        self.paths.push_str(seen.path);
        self.samples.push(Sample {
            method: seen.method.clone(),
            path: (start, seen.path.len() as u32),
            route: seen.route.map(|r| r as u32),
            generation: seen.generation,
            side: seen.side,
            status: seen.status,
            seconds: seen.seconds,
        });
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    fn path(&self, s: &Sample) -> &str {
        let (start, len) = (s.path.0 as usize, s.path.1 as usize);
        &self.paths[start..start + len]
    }

    fn append(&mut self, other: Round) {
        let base = self.paths.len() as u32;
        self.paths.push_str(&other.paths);
        self.samples.extend(other.samples.into_iter().map(|mut s| {
            s.path.0 += base;
            s
        }));
    }
}

/// One request, as the map hears of it: its method, its path (as sent), the route (an index in
/// the rules of `generation`) that took it, the side, the status and the time taken.
pub struct Seen<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub route: Option<usize>,
    pub generation: u64,
    pub side: Side,
    pub status: u16,
    pub seconds: f64,
}

type Buffer = Arc<Mutex<Round>>;

/// Every worker thread's buffer, registered on its first sample.
static BUFFERS: Mutex<Vec<Buffer>> = Mutex::new(Vec::new());
static DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    static MINE: Buffer = {
        let b: Buffer = Arc::new(Mutex::new(Round::with_capacity(256)));
        BUFFERS.lock().unwrap_or_else(|p| p.into_inner()).push(b.clone());
        b
    };
}

/// Hand one request to the map. The lock is this thread's own; the folder takes it once a
/// second. The path is copied (a few bytes): holding the request's own buffers until the fold,
/// and releasing them from another thread, cost more.
pub fn observe(seen: Seen<'_>) {
    MINE.with(|b| {
        let mut b = b.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() < BUFFER {
            b.push(seen);
        } else {
            DROPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
}

/// Every worker's samples. Each worker gets back an empty buffer of the size it last needed,
/// made outside its lock, so that it doesn't grow its buffer again from nothing every round.
fn drain() -> Round {
    let buffers = BUFFERS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut all = Round::default();
    for b in buffers {
        let lock = || b.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = Round::with_capacity(lock().len().clamp(256, BUFFER));
        let taken = std::mem::replace(&mut *lock(), fresh);
        if all.is_empty() {
            all = taken;
        } else {
            all.append(taken);
        }
    }
    all
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A latency histogram of one side.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    counts: [u64; 16],
}

impl Latency {
    fn observe(&mut self, seconds: f64) {
        let i = LATENCY_BUCKETS.iter().position(|&le| seconds <= le).unwrap_or(15);
        self.counts[i] += 1;
    }

    fn add(&mut self, other: &Latency) {
        self.counts.iter_mut().zip(other.counts).for_each(|(a, b)| *a += b);
    }

    /// The `q` quantile in milliseconds, interpolated inside its bucket.
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        let mut cumulative = 0;
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts)
            .map(|(le, n)| {
                cumulative += n;
                (le, cumulative)
            })
            .collect();
        crate::stats::quantile(&buckets, q).map(|s| {
            if s.is_finite() {
                s * 1e3
            } else {
                LATENCY_BUCKETS[14] * 1e3
            }
        })
    }
}

/// The samples of one (path, route, method) in one round.
struct Tally {
    /// The index of its first sample.
    first: usize,
    n: u64,
    status: [u64; 5],
    sides: [u64; 2],
    latency: [Latency; 2],
}

impl Tally {
    fn new(first: usize) -> Tally {
        Tally {
            first,
            n: 0,
            status: [0; 5],
            sides: [0; 2],
            latency: [Latency::default(), Latency::default()],
        }
    }

    fn add(&mut self, s: &Sample) {
        let side = usize::from(s.side == Side::New);
        self.n += 1;
        self.status[(s.status / 100).clamp(1, 5) as usize - 1] += 1;
        self.sides[side] += 1;
        self.latency[side].observe(s.seconds);
    }
}

/// Rolling counts in fixed slots: `slot` is the current slot's number since the epoch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Window {
    slots: Vec<u64>,
    at: u64,
}

impl Window {
    fn add(&mut self, slot: u64, n: u64, len: usize) {
        self.advance(slot, len);
        let i = (slot % len as u64) as usize;
        self.slots[i] += n;
    }

    fn advance(&mut self, slot: u64, len: usize) {
        if self.slots.len() != len {
            self.slots = vec![0; len];
            self.at = slot;
        }
        if slot <= self.at {
            return;
        }
        for s in (self.at + 1)..=slot.min(self.at + len as u64) {
            self.slots[(s % len as u64) as usize] = 0;
        }
        self.at = slot;
    }

    /// The counts of the `len` slots up to `now`.
    fn sum(&self, now: u64, len: usize) -> u64 {
        if self.slots.len() != len {
            return 0;
        }
        let from = (now + 1).saturating_sub(len as u64);
        let to = now.min(self.at);
        if to < from {
            return 0;
        }
        (from..=to).map(|s| self.slots[(s % len as u64) as usize]).sum()
    }
}

/// What the map knows of one endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoint {
    pub method: String,
    pub template: String,
    pub capability: String,
    /// The route that last took it, if any.
    pub route: Option<String>,
    pub requests: u64,
    /// 1xx..5xx.
    pub status: [u64; 5],
    /// Requests served by the monolith and by a new service.
    pub sides: [u64; 2],
    pub latency: [Latency; 2],
    pub first_seen: f64,
    pub last_seen: f64,
    /// The last minute, in 5-second slots.
    recent: Window,
    /// Learned from traffic (false: written in rules.yaml).
    pub learned: bool,
    /// Requests by side folded in this round, not yet counted per capability.
    #[serde(skip)]
    pending: [u64; 2],
}

impl Endpoint {
    fn new(method: &str, template: String, capability: String, learned: bool, now: f64) -> Endpoint {
        Endpoint {
            method: method.to_string(),
            template,
            capability,
            route: None,
            requests: 0,
            status: [0; 5],
            sides: [0; 2],
            latency: [Latency::default(), Latency::default()],
            first_seen: now,
            last_seen: now,
            recent: Window::default(),
            learned,
            pending: [0; 2],
        }
    }

    fn merge(&mut self, other: Endpoint) {
        self.requests += other.requests;
        self.status.iter_mut().zip(other.status).for_each(|(a, b)| *a += b);
        self.sides.iter_mut().zip(other.sides).for_each(|(a, b)| *a += b);
        self.latency[0].add(&other.latency[0]);
        self.latency[1].add(&other.latency[1]);
        self.first_seen = self.first_seen.min(other.first_seen);
        if other.last_seen > self.last_seen {
            self.last_seen = other.last_seen;
            self.route = other.route.or(self.route.take());
        }
    }
}

/// Requests per capability and side over the last hour, for progress by requests.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CapabilityTraffic {
    sides: [Window; 2],
}

/// Which settings the map folds with (from rules.yaml's `discovery:`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_endpoints: usize,
    pub fold_after: usize,
}

/// The map itself. Only the folder and the admin API lock it, never the request path.
pub struct Map {
    state: Mutex<State>,
    /// Where the snapshot is written (or memory only).
    keep: StateDir,
}

struct State {
    settings: Settings,
    folder: Folder,
    /// Keyed by "METHOD template".
    endpoints: HashMap<String, Endpoint>,
    other: Endpoint,
    capabilities: HashMap<String, CapabilityTraffic>,
}

/// What is written to `state_dir`.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    endpoints: Vec<Endpoint>,
    other: Endpoint,
    capabilities: HashMap<String, CapabilityTraffic>,
}

impl Map {
    /// An empty map, or the one saved in `state` (memory only when `state` is).
    pub fn open(state: &StateDir, settings: Settings) -> Map {
        let max_positions = settings.max_endpoints * 2;
        let mut st = State {
            folder: Folder::new(settings.fold_after, max_positions),
            settings,
            endpoints: HashMap::new(),
            other: Endpoint::new("*", "(other)".into(), "(other)".into(), true, now_unix()),
            capabilities: HashMap::new(),
        };
        if let Some(s) = state.read_json::<Snapshot>(SNAPSHOT, "an endpoint map") {
            let n = s.endpoints.len();
            for e in s.endpoints {
                st.endpoints.insert(format!("{} {}", e.method, e.template), e);
            }
            st.other = s.other;
            st.capabilities = s.capabilities;
            let dir = state.dir().map(|d| d.display().to_string()).unwrap_or_default();
            tracing::info!("endpoint map: {n} endpoints loaded from {dir}/{SNAPSHOT}");
        }
        Map {
            state: Mutex::new(st),
            keep: state.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fold the samples gathered since the last call. Returns the requests per capability
    /// label (a capability the rules name, else `(other)`) and side, for the counters.
    ///
    /// Samples are first tallied by (path, route, method): a sample costs one lookup in that
    /// tally. Each distinct path is then folded into its template once per round, weighted by
    /// its count, and its tally merged into its endpoint. Per-capability counts are settled once
    /// per endpoint touched.
    pub fn fold(&self, rules: &RuleSet, known: &[(&RuleSet, u64)], round: Round) -> HashMap<(String, Side), u64> {
        let mut counted: HashMap<(String, Side), u64> = HashMap::new();
        if round.is_empty() {
            return counted;
        }
        let mut tallies: Vec<Tally> = Vec::new();
        let mut seen: HashMap<(&str, Option<u32>, u64, &Method), usize> = HashMap::with_capacity(64);
        for (n, s) in round.samples.iter().enumerate() {
            let key = (round.path(s), s.route, s.generation, &s.method);
            let i = *seen.entry(key).or_insert_with(|| {
                tallies.push(Tally::new(n));
                tallies.len() - 1
            });
            tallies[i].add(s);
        }
        let now = now_unix();
        let (five_s, minute) = ((now / 5.0) as u64, (now / 60.0) as u64);
        let mut guard = self.lock();
        let st = &mut *guard;
        st.settings.max_endpoints = rules.discovery.max_endpoints;
        let routes: HashMap<&str, &Route> = rules.routes.iter().map(|r| (r.name.as_str(), r)).collect();
        // A sample names its route by index in the rules it was served under: those rules, or
        // (across a reload) the route of the same name in these.
        let route_of = |s: &Sample| -> Option<&Route> {
            let id = s.route? as usize;
            let (then, _) = known.iter().find(|(_, g)| *g == s.generation)?;
            let name = then.routes.get(id)?.name.as_str();
            routes.get(name).copied()
        };
        let mut renamed = Vec::new();
        let mut key = String::with_capacity(128);
        for t in &tallies {
            let s = &round.samples[t.first];
            let route = route_of(s);
            key.clear();
            key.push_str(s.method.as_str());
            key.push(' ');
            let learned = endpoint_template(rules, route, round.path(s), t.n, &mut st.folder, &mut renamed, &mut key);
            let e = match st.endpoints.get_mut(key.as_str()) {
                Some(e) => e,
                None => {
                    let template = key[s.method.as_str().len() + 1..].to_string();
                    let capability = route
                        .and_then(|r| r.capability.clone())
                        .unwrap_or_else(|| crate::rules::default_capability(&template));
                    let e = Endpoint::new(s.method.as_str(), template, capability, learned, now);
                    st.endpoints.entry(key.clone()).or_insert(e)
                }
            };
            e.requests += t.n;
            e.status.iter_mut().zip(t.status).for_each(|(a, b)| *a += b);
            e.sides.iter_mut().zip(t.sides).for_each(|(a, b)| *a += b);
            e.pending.iter_mut().zip(t.sides).for_each(|(a, b)| *a += b);
            e.latency[0].add(&t.latency[0]);
            e.latency[1].add(&t.latency[1]);
            e.last_seen = now;
            let name = route.map(|r| r.name.as_str());
            if e.route.as_deref() != name {
                e.route = name.map(str::to_string);
            }
            e.recent.add(five_s, t.n, MINUTE_SLOTS);
        }
        // Per capability, once per endpoint touched.
        for e in st.endpoints.values_mut().filter(|e| e.pending != [0, 0]) {
            let pending = std::mem::take(&mut e.pending);
            let known = st.capabilities.contains_key(&e.capability);
            let cap_key = if known || st.capabilities.len() < MAX_CAPABILITIES {
                e.capability.as_str()
            } else {
                "(other)"
            };
            let label = if rules.discovery.capabilities.contains(cap_key) {
                cap_key
            } else {
                "(other)"
            };
            let traffic = match st.capabilities.get_mut(cap_key) {
                Some(t) => t,
                None => st.capabilities.entry(cap_key.to_string()).or_default(),
            };
            for (side, n) in pending.into_iter().enumerate().filter(|(_, n)| *n > 0) {
                traffic.sides[side].add(minute, n, HOUR_SLOTS);
                let side = if side == 1 { Side::New } else { Side::Legacy };
                *counted.entry((label.to_string(), side)).or_default() += n;
            }
        }
        for r in renamed {
            st.rename(&r);
        }
        st.evict();
        counted
    }

    /// The map as `GET /api/endpoints` shows it, filtered by state and capability.
    pub fn view(&self, rules: &RuleSet, state: Option<&str>, capability: Option<&str>) -> Value {
        let now = now_unix();
        let five_s = (now / 5.0) as u64;
        let minute = (now / 60.0) as u64;
        let st = self.lock();
        let routes: HashMap<&str, &Route> = rules.routes.iter().map(|r| (r.name.as_str(), r)).collect();
        let mut list: Vec<(&Endpoint, &'static str, Option<&Route>)> = st
            .endpoints
            .values()
            .map(|e| {
                let route = e.route.as_deref().and_then(|n| routes.get(n).copied());
                (e, state_of(route), route)
            })
            .collect();
        list.sort_by(|a, b| {
            b.0.requests
                .cmp(&a.0.requests)
                .then_with(|| a.0.template.cmp(&b.0.template))
        });
        let progress = progress(&list, &st.capabilities, minute);
        let endpoints: Vec<Value> = list
            .iter()
            .filter(|(e, s, _)| state.is_none_or(|want| want == *s) && capability.is_none_or(|c| c == e.capability))
            .map(|(e, s, route)| {
                json!({
                    "method": e.method,
                    "template": e.template,
                    "capability": e.capability,
                    "requests": e.requests,
                    "rate_per_s": e.recent.sum(five_s, MINUTE_SLOTS) as f64 / 60.0,
                    "status": {"1xx": e.status[0], "2xx": e.status[1], "3xx": e.status[2], "4xx": e.status[3], "5xx": e.status[4]},
                    "latency_ms": {
                        "legacy": {"p50": e.latency[0].quantile_ms(0.5), "p99": e.latency[0].quantile_ms(0.99)},
                        "new": {"p50": e.latency[1].quantile_ms(0.5), "p99": e.latency[1].quantile_ms(0.99)},
                    },
                    "first_seen": e.first_seen,
                    "last_seen": e.last_seen,
                    "state": s,
                    "route": route.map(|r| r.name.as_str()),
                    "mode": route.map(|r| r.mode.as_str()),
                    "service": route.and_then(|r| r.service).map(|id| rules.upstreams[id].name.as_str()),
                    "new_share": if e.requests > 0 { e.sides[1] as f64 / e.requests as f64 } else { 0.0 },
                    "learned": e.learned,
                })
            })
            .collect();
        // The monolith's documented operations that nobody has called: `unseen`, code nobody
        // needs to migrate. Left out of progress.
        let no_headers = http::HeaderMap::new();
        let unseen = rules
            .discovery
            .openapi
            .iter()
            .filter(|(m, t)| !st.endpoints.contains_key(format!("{m} {t}").as_str()))
            .filter_map(|(m, t)| {
                let method = Method::from_bytes(m.as_bytes()).ok()?;
                let route = rules
                    .lookup(&crate::rules::Request::new(&method, t, &no_headers))
                    .map(|id| &rules.routes[id]);
                let cap = route
                    .and_then(|r| r.capability.clone())
                    .unwrap_or_else(|| crate::rules::default_capability(t));
                let keep = state.is_none_or(|want| want == UNSEEN) && capability.is_none_or(|c| c == cap);
                keep.then(|| {
                    json!({
                        "method": m,
                        "template": t,
                        "capability": cap,
                        "requests": 0,
                        "rate_per_s": 0.0,
                        "status": {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0},
                        "latency_ms": {"legacy": {"p50": null, "p99": null}, "new": {"p50": null, "p99": null}},
                        "first_seen": null,
                        "last_seen": null,
                        "state": UNSEEN,
                        "route": route.map(|r| r.name.as_str()),
                        "mode": route.map(|r| r.mode.as_str()),
                        "service": route.and_then(|r| r.service).map(|id| rules.upstreams[id].name.as_str()),
                        "new_share": 0.0,
                        "learned": false,
                    })
                })
            });
        let endpoints: Vec<Value> = endpoints.into_iter().chain(unseen).collect();
        json!({
            "endpoints": endpoints,
            "other": {"requests": st.other.requests},
            "dropped_samples": DROPPED.load(std::sync::atomic::Ordering::Relaxed),
            "progress": progress,
        })
    }

    /// Publish `strangler_endpoints{state}` and `strangler_migration_progress_ratio{by}`.
    fn publish(&self, rules: &RuleSet, metrics: &Metrics) {
        let view = self.view(rules, None, None);
        let mut counts = [0i64; 5];
        for e in view["endpoints"].as_array().into_iter().flatten() {
            if let Some(i) = ALL_STATES.iter().position(|s| e["state"] == *s) {
                counts[i] += 1;
            }
        }
        let p = &view["progress"];
        metrics.endpoint_map(
            ALL_STATES.iter().copied().zip(counts).collect::<Vec<_>>().as_slice(),
            p["by_requests"].as_f64().unwrap_or(0.0),
            p["by_endpoints"].as_f64().unwrap_or(0.0),
            p["by_endpoints_weighted"].as_f64().unwrap_or(0.0),
        );
    }

    /// Write the map to `state_dir` (atomically: `StateDir::write`).
    pub fn save(&self) {
        if self.keep.dir().is_none() {
            return;
        }
        let text = {
            let st = self.lock();
            let snapshot = Snapshot {
                version: 1,
                endpoints: st.endpoints.values().cloned().collect(),
                other: st.other.clone(),
                capabilities: st.capabilities.clone(),
            };
            match serde_json::to_vec(&snapshot) {
                Ok(t) => t,
                Err(e) => return tracing::warn!("endpoint map not saved: {e}"),
            }
        };
        if let Err(e) = self.keep.write(SNAPSHOT, &text) {
            tracing::warn!("endpoint map not saved to {SNAPSHOT} in state_dir: {e}");
        }
    }

    pub fn len(&self) -> usize {
        self.lock().endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl State {
    /// Endpoints learned under names that are now `{param}` merge into the new name.
    fn rename(&mut self, r: &template::Renamed) {
        let moved: Vec<String> = self
            .endpoints
            .iter()
            .filter(|(_, e)| e.learned && template::rename(&e.template, r).is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for key in moved {
            let Some(mut e) = self.endpoints.remove(&key) else {
                continue;
            };
            let Some(new) = template::rename(&e.template, r) else {
                continue;
            };
            let new_key = format!("{} {new}", e.method);
            // A capability taken from the old name follows the new one; a route's own stays.
            if e.capability == crate::rules::default_capability(&e.template) {
                e.capability = crate::rules::default_capability(&new);
            }
            e.template = new;
            match self.endpoints.get_mut(&new_key) {
                Some(existing) => existing.merge(e),
                None => {
                    self.endpoints.insert(new_key, e);
                }
            }
        }
    }

    /// Keep the busiest `max_endpoints`; the others' counts go to `(other)`.
    fn evict(&mut self) {
        while self.endpoints.len() > self.settings.max_endpoints {
            let Some(key) = self
                .endpoints
                .iter()
                .filter(|(_, e)| e.learned)
                .min_by(|a, b| {
                    a.1.requests
                        .cmp(&b.1.requests)
                        .then(a.1.last_seen.total_cmp(&b.1.last_seen))
                })
                .map(|(k, _)| k.clone())
            else {
                return;
            };
            if let Some(e) = self.endpoints.remove(&key) {
                self.other.merge(e);
            }
        }
    }
}

const STATES: [&str; 4] = ["legacy", "shadow", "canary", "migrated"];
/// A documented operation (`discovery.openapi`) that no request has reached.
const UNSEEN: &str = "unseen";
/// Every state an endpoint can be in, for filters.
pub const ALL_STATES: [&str; 5] = ["legacy", "shadow", "canary", "migrated", UNSEEN];

/// An endpoint's stage: its route's mode, or `legacy` when no route takes it.
fn state_of(route: Option<&Route>) -> &'static str {
    match route.map(|r| r.mode) {
        Some(Mode::Shadow) => "shadow",
        Some(Mode::Canary) => "canary",
        Some(Mode::Migrated) => "migrated",
        Some(Mode::Legacy) | None => "legacy",
    }
}

/// Append the template of a request to `out`: the route's own path when the route names one (a
/// literal or a template), then a template written in `discovery.templates`, else one learned
/// from the path, seen `hits` times. True when learned.
fn endpoint_template(
    rules: &RuleSet,
    route: Option<&Route>,
    raw_path: &str,
    hits: u64,
    folder: &mut Folder,
    renamed: &mut Vec<template::Renamed>,
    out: &mut String,
) -> bool {
    if let Some(PathMatch::Literal(p) | PathMatch::Template(p)) = route.map(|r| &r.path) {
        out.push_str(p);
        return false;
    }
    let path = crate::path::normalize_with(raw_path, rules.allow_semicolons).unwrap_or(std::borrow::Cow::Borrowed("/"));
    if let Some(t) = rules.discovery.written_template(&path) {
        out.push_str(t);
        return false;
    }
    folder.template_into(&path, hits, renamed, out);
    true
}

/// Progress by requests (the last hour) and by endpoints, overall and per capability.
fn progress(
    list: &[(&Endpoint, &'static str, Option<&Route>)],
    traffic: &HashMap<String, CapabilityTraffic>,
    minute: u64,
) -> Value {
    #[derive(Default)]
    struct Tally {
        endpoints: u64,
        migrated: u64,
        requests: u64,
        migrated_requests: u64,
        states: [u64; 4],
        hour: [u64; 2],
    }
    let mut all = Tally::default();
    let mut per: std::collections::BTreeMap<&str, Tally> = std::collections::BTreeMap::new();
    for (e, state, _) in list {
        let migrated = *state == "migrated";
        let i = STATES.iter().position(|s| s == state).unwrap_or(0);
        for t in [&mut all, per.entry(e.capability.as_str()).or_default()] {
            t.endpoints += 1;
            t.requests += e.requests;
            t.states[i] += 1;
            if migrated {
                t.migrated += 1;
                t.migrated_requests += e.requests;
            }
        }
    }
    for (name, t) in traffic {
        let hour = [0, 1].map(|s| t.sides[s].sum(minute, HOUR_SLOTS));
        for tally in [&mut all, per.entry(name.as_str()).or_default()] {
            tally.hour[0] += hour[0];
            tally.hour[1] += hour[1];
        }
    }
    let ratio = |a: u64, b: u64| if b > 0 { a as f64 / b as f64 } else { 0.0 };
    let show = |t: &Tally| {
        json!({
            "by_requests": ratio(t.hour[1], t.hour[0] + t.hour[1]),
            "by_endpoints": ratio(t.migrated, t.endpoints),
            "by_endpoints_weighted": ratio(t.migrated_requests, t.requests),
            "endpoints": t.endpoints,
            "requests_last_hour": t.hour[0] + t.hour[1],
            "states": {"legacy": t.states[0], "shadow": t.states[1], "canary": t.states[2], "migrated": t.states[3]},
        })
    };
    let mut out = show(&all);
    out["capabilities"] = per.iter().map(|(name, t)| (name.to_string(), show(t))).collect();
    out
}

/// Folds the workers' samples every second, and saves the map every minute and at shutdown.
pub struct MapService {
    pub map: Arc<Map>,
    pub live: Arc<ArcSwap<Live>>,
    pub metrics: Arc<Metrics>,
    /// The rules of the last fold, for samples served before a reload.
    pub previous: Mutex<Option<Arc<Live>>>,
}

impl MapService {
    fn fold_now(&self) {
        let live = self.live.load_full();
        let mut previous = self.previous.lock().unwrap_or_else(|p| p.into_inner());
        // Samples served just before a reload name their route in the rules before it.
        let mut known = vec![(&live.rules, live.generation)];
        if let Some(p) = previous.as_ref().filter(|p| p.generation != live.generation) {
            known.push((&p.rules, p.generation));
        }
        for ((capability, side), n) in self.map.fold(&live.rules, &known, drain()) {
            self.metrics.capability_requests(&capability, side, n);
        }
        self.map.publish(&live.rules, &self.metrics);
        drop(known);
        *previous = Some(live);
    }
}

#[async_trait]
impl BackgroundService for MapService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut fold = tokio::time::interval(FOLD_EVERY);
        let mut save = tokio::time::interval(SAVE_EVERY);
        save.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    self.fold_now();
                    self.map.save();
                    return;
                }
                _ = fold.tick() => self.fold_now(),
                _ = save.tick() => self.map.save(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_window_counts_only_its_span() {
        let mut w = Window::default();
        w.add(100, 3, 12);
        w.add(101, 2, 12);
        assert_eq!(w.sum(101, 12), 5);
        assert_eq!(w.sum(111, 12), 5);
        assert_eq!(w.sum(112, 12), 2);
        assert_eq!(w.sum(113, 12), 0);
        w.add(130, 1, 12);
        assert_eq!(w.sum(130, 12), 1);
    }

    fn rules() -> RuleSet {
        let text = "legacy: mono\nupstreams:\n  mono: { url: \"http://127.0.0.1:1\" }\n  svc: { url: \"http://127.0.0.1:2\" }\nroutes:\n  - { name: orders, match: { path: \"/api/orders/{order}\" }, mode: shadow, service: svc }\n";
        let file = Path::new("rules.yaml");
        crate::rules::compile(file, &crate::config::parse(file, text).unwrap()).unwrap()
    }

    /// A round of GETs, each (path, the index of the route that took it), served under
    /// generation 0.
    fn round<P: AsRef<str>>(samples: impl IntoIterator<Item = (P, Option<usize>)>) -> Round {
        let mut r = Round::default();
        for (path, route) in samples {
            r.push(Seen {
                method: &Method::GET,
                path: path.as_ref(),
                route,
                generation: 0,
                side: Side::Legacy,
                status: 200,
                seconds: 0.002,
            });
        }
        r
    }

    fn fold(map: &Map, rules: &RuleSet, r: Round) {
        map.fold(rules, &[(rules, 0)], r);
    }

    fn templates(map: &Map) -> Vec<String> {
        let mut t: Vec<String> = map.lock().endpoints.values().map(|e| e.template.clone()).collect();
        t.sort();
        t
    }

    #[test]
    fn a_hundred_thousand_ids_make_one_template() {
        let rules = rules();
        let map = Map::open(
            &StateDir::memory(),
            Settings {
                max_endpoints: 100,
                fold_after: 25,
            },
        );
        fold(
            &map,
            &rules,
            round((0..100_000).map(|i| (format!("/api/users/{i}/cart"), None))),
        );
        assert_eq!(templates(&map), ["/api/users/{id}/cart"]);
        assert_eq!(map.lock().endpoints.values().next().unwrap().requests, 100_000);
    }

    #[test]
    fn a_sample_served_before_a_reload_keeps_its_route() {
        let before = rules();
        let text = "legacy: mono\nupstreams:\n  mono: { url: \"http://127.0.0.1:1\" }\n  svc: { url: \"http://127.0.0.1:2\" }\nroutes:\n  - { name: cart, match: { prefix: /api/cart }, mode: legacy }\n  - { name: orders, match: { path: \"/api/orders/{order}\" }, mode: shadow, service: svc }\n";
        let file = Path::new("rules.yaml");
        let after = crate::rules::compile(file, &crate::config::parse(file, text).unwrap()).unwrap();
        let map = Map::open(
            &StateDir::memory(),
            Settings {
                max_endpoints: 100,
                fold_after: 25,
            },
        );
        // Served under generation 0, where "orders" was route 0; folded under generation 1,
        // where route 0 is "cart".
        map.fold(
            &after,
            &[(&after, 1), (&before, 0)],
            round([("/api/orders/7", Some(0))]),
        );
        let st = map.lock();
        let e = &st.endpoints["GET /api/orders/{order}"];
        assert_eq!(e.route.as_deref(), Some("orders"));
    }

    #[test]
    fn a_path_repeated_in_one_round_counts_each_request_and_weighs_its_name() {
        let map = Map::open(
            &StateDir::memory(),
            Settings {
                max_endpoints: 100,
                fold_after: 5,
            },
        );
        // One round: a busy real name, and then more names seen once than `fold_after` allows.
        let busy = (0..1_000).map(|_| ("/products/blue-mug".to_string(), None));
        let once = (0..10).map(|i| (format!("/products/junk-{i}"), None));
        fold(&map, &rules(), round(busy.chain(once)));
        assert_eq!(templates(&map), ["/products/blue-mug", "/products/{param}"]);
        let st = map.lock();
        assert_eq!(st.endpoints["GET /products/blue-mug"].requests, 1_000);
        assert_eq!(st.endpoints["GET /products/{param}"].requests, 10);
    }

    #[test]
    fn a_hundred_thousand_junk_paths_leave_the_real_endpoints_in_a_bounded_map() {
        let rules = rules();
        let map = Map::open(
            &StateDir::memory(),
            Settings {
                max_endpoints: 50,
                fold_after: 25,
            },
        );
        let real = ["/api/catalog/products", "/products/7", "/account/3", "/"];
        let mut samples = Vec::new();
        for i in 0..200 {
            for p in real {
                samples.push((p.to_string(), None));
            }
            samples.push((format!("/api/orders/{i}"), Some(0)));
        }
        fold(&map, &rules, round(samples));
        // Random junk: letters only (no identifier), up to three segments deep.
        let mut seed = 7u64;
        let mut word = || {
            (0..8)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (b'a' + (seed >> 33) as u8 % 26) as char
                })
                .collect::<String>()
        };
        for _ in 0..10 {
            let junk: Vec<(String, Option<usize>)> = (0..10_000)
                .map(|i| {
                    let depth = 1 + i % 3;
                    ((0..depth).map(|_| format!("/{}", word())).collect(), None)
                })
                .collect();
            fold(&map, &rules, round(junk));
        }
        let t = templates(&map);
        for want in [
            "/",
            "/account/{id}",
            "/api/catalog/products",
            "/api/orders/{order}",
            "/products/{id}",
        ] {
            assert!(t.contains(&want.to_string()), "{want} was pushed out: {t:?}");
        }
        let st = map.lock();
        assert!(st.endpoints.len() <= 50, "{} endpoints", st.endpoints.len());
        // The stated bound: at most 2 x max_endpoints parents tracked, each with at most
        // fold_after + 1 names.
        assert!(st.folder.positions() <= 100, "{} positions", st.folder.positions());
        assert!(st.other.requests + st.endpoints.values().map(|e| e.requests).sum::<u64>() == 101_000);
    }

    #[test]
    fn latency_quantiles() {
        let mut l = Latency::default();
        for _ in 0..99 {
            l.observe(0.002);
        }
        l.observe(2.0);
        let p50 = l.quantile_ms(0.5).unwrap();
        assert!((1.0..=2.5).contains(&p50), "{p50}");
        assert!(l.quantile_ms(0.999).unwrap() > 1000.0);
        assert_eq!(Latency::default().quantile_ms(0.5), None);
    }
}
