//! Shadow traffic: send the copy (bounded, timed out, off the request path), collect both
//! answers, compare them, learn noise, and keep the last mismatches.
//!
//! The request path only clones `Bytes` into a `Capture` (up to `max_body`). The copy runs in a
//! spawned task that holds a slot of the global in-flight cap; the client never waits for it.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName};
use pingora_core::connectors::TransportConnector;
use prometheus::{Histogram, IntCounter, IntCounterVec};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::client;
use crate::diff::{self, Answer, Difference, Seg};
use crate::resilience::{BreakerConfig, UpstreamState};
use crate::rules::ShadowSpec;

/// Mismatches kept per route for `GET /api/mismatches`.
pub const RING: usize = 100;
/// Distinct mismatch paths per route that get their own metric series; the rest count as `(other)`.
pub const MAX_PATH_LABELS: usize = 50;
/// Learned noise paths kept per route.
pub const MAX_NOISE: usize = 100;
/// Bodies stored with a mismatch are cut to this.
pub const STORED_BODY: usize = 4096;

/// Headers never stored with a mismatch, whatever `redact:` says.
const ALWAYS_REDACTED: [HeaderName; 4] = [
    http::header::AUTHORIZATION,
    http::header::COOKIE,
    http::header::SET_COOKIE,
    http::header::PROXY_AUTHORIZATION,
];

pub const X_STRANGLER_SHADOW: HeaderName = HeaderName::from_static("x-strangler-shadow");

/// Fields of the proxied request that a copy does not take over: it sets its own `host` and
/// `x-strangler-shadow`, frames its (whole, held) body with `content-length`, and keeps its
/// connection alive. Hop-by-hop fields (RFC 9110, section 7.6.1) belong to one connection.
pub const COPY_OWN_FIELDS: [HeaderName; 10] = [
    http::header::HOST,
    X_STRANGLER_SHADOW,
    http::header::CONTENT_LENGTH,
    http::header::TRANSFER_ENCODING,
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TE,
    http::header::TRAILER,
    http::header::UPGRADE,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    SampledOut,
    Method,
    BodyTooLarge,
    Overloaded,
    LegacyError,
    /// The service's circuit is open (or it fails its health checks): copies wait it out.
    CircuitOpen,
}

impl Skip {
    pub const ALL: [Skip; 6] = [
        Skip::SampledOut,
        Skip::Method,
        Skip::BodyTooLarge,
        Skip::Overloaded,
        Skip::LegacyError,
        Skip::CircuitOpen,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::SampledOut => "sampled_out",
            Skip::Method => "method",
            Skip::BodyTooLarge => "body_too_large",
            Skip::Overloaded => "overloaded",
            Skip::LegacyError => "legacy_error",
            Skip::CircuitOpen => "circuit_open",
        }
    }
}

/// `strangler_shadow_*` handles of one route, resolved when the rules are compiled.
#[derive(Clone)]
pub struct ShadowMetrics {
    /// match, mismatch, error, skipped
    pub results: [IntCounter; 4],
    pub skipped: [IntCounter; 6],
    /// legacy, new
    pub latency: [Histogram; 2],
    /// The family, for the bounded per-path series created off the request path.
    pub paths: IntCounterVec,
}

impl ShadowMetrics {
    pub fn skip(&self, why: Skip) {
        self.results[3].inc();
        let i = Skip::ALL.iter().position(|s| *s == why).unwrap_or(0);
        self.skipped[i].inc();
    }
}

/// One stored mismatch.
#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    pub at_unix: f64,
    pub route: String,
    pub method: String,
    pub path: String,
    pub request_id: String,
    pub request_headers: serde_json::Map<String, Value>,
    pub status: Value,
    pub differences: Vec<Difference>,
    /// JSON Patch (RFC 6902) from the legacy body to the new one.
    pub patch: Vec<Value>,
    pub legacy_body: String,
    pub new_body: String,
}

/// What survives a reload for a route name: learned noise, recent mismatches, path labels.
pub struct RouteShadow {
    pub route: String,
    noise: RwLock<Vec<Vec<Seg>>>,
    mismatches: Mutex<VecDeque<Mismatch>>,
    path_labels: Mutex<HashSet<String>>,
}

impl RouteShadow {
    pub fn new(route: &str) -> RouteShadow {
        RouteShadow {
            route: route.to_string(),
            noise: RwLock::new(Vec::new()),
            mismatches: Mutex::new(VecDeque::with_capacity(RING)),
            path_labels: Mutex::new(HashSet::new()),
        }
    }

    pub fn learned_noise(&self) -> Vec<String> {
        self.noise
            .read()
            .map(|n| n.iter().map(|p| diff::render(p)).collect())
            .unwrap_or_default()
    }

    pub fn mismatches(&self, limit: usize) -> Vec<Mismatch> {
        self.mismatches
            .lock()
            .map(|m| m.iter().rev().take(limit).cloned().collect())
            .unwrap_or_default()
    }

    fn learn(&self, diffs: &[Difference]) {
        let Ok(mut noise) = self.noise.write() else { return };
        for at in diffs.iter().filter_map(|d| d.at.as_deref()) {
            if noise.len() >= MAX_NOISE {
                break;
            }
            let general = diff::generalize(at);
            if !noise.contains(&general) {
                tracing::info!(route = %self.route, path = %diff::render(&general), "shadow: learned a non-deterministic field");
                noise.push(general);
            }
        }
    }

    /// The mismatch paths that have their own metric series.
    pub fn path_labels(&self) -> Vec<String> {
        self.path_labels
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn path_label(&self, pattern: &str) -> String {
        let Ok(mut labels) = self.path_labels.lock() else {
            return "(other)".into();
        };
        if labels.contains(pattern) {
            return pattern.to_string();
        }
        if labels.len() < MAX_PATH_LABELS {
            labels.insert(pattern.to_string());
            return pattern.to_string();
        }
        "(other)".into()
    }
}

/// The global side of shadowing: the connector for new connections (idle ones are kept per
/// thread, see `client`), the in-flight cap, and the thread large comparisons run on.
pub struct Shadower {
    transport: TransportConnector,
    in_flight: AtomicUsize,
    /// A one-thread runtime of its own for comparisons past `INLINE_COMPARE`: a 1 MiB diff
    /// never stalls the requests of a worker thread, and all of them together use one core at most.
    runtime: tokio::runtime::Handle,
}

impl Default for Shadower {
    fn default() -> Self {
        Shadower {
            transport: TransportConnector::new(None),
            in_flight: AtomicUsize::new(0),
            runtime: compare_runtime(),
        }
    }
}

/// Start the thread large comparisons run on, and its runtime; it lives as long as the process.
fn compare_runtime() -> tokio::runtime::Handle {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("strangler-shadow".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build the shadow runtime");
            let _ = tx.send(rt.handle().clone());
            rt.block_on(std::future::pending::<()>());
        })
        .expect("start the shadow thread");
    rx.recv().expect("the shadow runtime's handle")
}

impl Shadower {
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    fn acquire(self: &Arc<Self>, max: usize) -> Option<Slot> {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(self.clone()))
    }
}

struct Slot(Arc<Shadower>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The legacy answer, handed from the request path to the comparing task.
pub struct LegacyAnswer {
    pub answer: Answer,
    pub truncated: bool,
    pub latency: Duration,
    /// The request's access line, written once the comparison has a result.
    pub access: Option<AccessLine>,
}

/// One access log line (target `access`). A copied request's line waits for the comparison, so
/// it can carry `shadow_result`.
#[derive(Debug)]
pub struct AccessLine {
    pub method: String,
    pub path: String,
    pub route: String,
    pub side: &'static str,
    pub upstream: String,
    pub status: u16,
    pub duration_ms: f64,
    pub fallback: &'static str,
    /// `copied`, `not_copied` or `-`.
    pub shadow: &'static str,
    pub request_id: String,
    pub trace_id: String,
}

impl AccessLine {
    /// Write the line; `shadow_result` is `match`, `mismatch`, `error`, `skipped` or `-`.
    pub fn emit(&self, shadow_result: &str) {
        tracing::info!(
            target: "access",
            method = %self.method,
            path = %self.path,
            route = %self.route,
            side = self.side,
            upstream = %self.upstream,
            status = self.status,
            duration_ms = self.duration_ms,
            fallback = self.fallback,
            shadow = self.shadow,
            shadow_result,
            request_id = %self.request_id,
            trace_id = %self.trace_id,
        );
    }
}

/// Per-request capture, kept in the CTX while the request runs.
pub struct Capture {
    pub spec: Arc<ShadowSpec>,
    /// The copy's request head, once built; finished and taken when the copy starts.
    pub header: Option<client::HeadBuilder>,
    /// The copy waits for the request body before it starts.
    pub wants_body: bool,
    /// Request body chunks (cheap `Bytes` clones), `body_len` bytes in all.
    pub body: Vec<Bytes>,
    pub body_len: usize,
    pub started: bool,
    /// Legacy answer so far.
    pub status: u16,
    pub headers: HeaderMap,
    /// Response body chunks (`Bytes` clones, no copy), `response_len` bytes in all.
    pub response: Vec<Bytes>,
    pub response_len: usize,
    pub response_truncated: bool,
    pub to_task: Option<oneshot::Sender<LegacyAnswer>>,
}

impl Capture {
    pub fn new(spec: Arc<ShadowSpec>) -> Capture {
        Capture {
            spec,
            header: None,
            wants_body: false,
            body: Vec::new(),
            body_len: 0,
            started: false,
            status: 0,
            headers: HeaderMap::new(),
            response: Vec::new(),
            response_len: 0,
            response_truncated: false,
            to_task: None,
        }
    }

    /// Append a response chunk, up to `max_body`.
    pub fn response_chunk(&mut self, chunk: &Bytes) {
        if self.response_truncated {
            return;
        }
        if self.response_len + chunk.len() > self.spec.max_body {
            self.response_truncated = true;
            self.response = Vec::new();
        } else {
            self.response_len += chunk.len();
            self.response.push(chunk.clone());
        }
    }

    /// Hand the legacy answer to the task (or drop the channel if the request failed).
    /// Returns the access line back when no comparison will write it.
    pub fn finish(&mut self, ok: bool, latency: Duration, access: Option<AccessLine>) -> Option<AccessLine> {
        let Some(tx) = self.to_task.take() else { return access };
        if !ok {
            return access;
        }
        let answer = Answer {
            status: self.status,
            headers: std::mem::take(&mut self.headers),
            body: concat(std::mem::take(&mut self.response), self.response_len),
        };
        let legacy = LegacyAnswer {
            answer,
            truncated: self.response_truncated,
            latency,
            access,
        };
        // The task is gone only if it could not start; then nobody else writes the line.
        tx.send(legacy).err().and_then(|l| l.access)
    }
}

/// One `Bytes` from body chunks: the chunk itself when there is one (the usual small answer).
fn concat(chunks: Vec<Bytes>, len: usize) -> Bytes {
    match <[Bytes; 1]>::try_from(chunks) {
        Ok([one]) => one,
        Err(chunks) => {
            let mut all = BytesMut::with_capacity(len);
            chunks.iter().for_each(|c| all.extend_from_slice(c));
            all.freeze()
        }
    }
}

/// Everything the comparing task needs.
pub struct Job {
    pub shadower: Arc<Shadower>,
    pub max_in_flight: usize,
    pub state: Arc<RouteShadow>,
    pub metrics: Arc<ShadowMetrics>,
    pub spec: Arc<ShadowSpec>,
    pub service: client::UpstreamPeer,
    pub service_timeout: Duration,
    /// The service's breaker: copies that fail count against it, like proxied requests do.
    pub breaker: Option<(Arc<UpstreamState>, BreakerConfig)>,
    /// The legacy upstream, when this request also asks it a second time to learn noise.
    pub noise_copy: Option<client::UpstreamPeer>,
    pub request: client::Request,
    pub body: Vec<Bytes>,
}

/// Answers larger than this together are compared on the comparison thread, not on the worker.
/// Smaller ones (10 KiB take 6–31 µs, see BENCHMARKS.md) cost less there than the hand-over.
pub const INLINE_COMPARE: usize = 32 * 1024;

/// Start the copy now. Returns the sender for the legacy answer, or `None` if the cap is reached
/// (counted as skipped `overloaded`).
///
/// The copy's exchange runs on the worker thread of the request that made it (no cross-thread
/// wake per copy); a large comparison moves to the `Shadower`'s own thread.
pub fn start(job: Job) -> Option<oneshot::Sender<LegacyAnswer>> {
    let Some(slot) = job.shadower.acquire(job.max_in_flight) else {
        job.metrics.skip(Skip::Overloaded);
        return None;
    };
    let (tx, rx) = oneshot::channel();
    // Boxed, so the spawn moves a pointer and not the whole exchange's state machine.
    tokio::spawn(Box::pin(async move {
        if let Some((job, legacy, new, again)) = exchange(job, rx).await {
            if legacy.answer.body.len() + new.body.len() > INLINE_COMPARE {
                let runtime = job.shadower.runtime.clone();
                runtime.spawn(async move {
                    let _slot = slot;
                    judge(&job, legacy, new, again);
                });
            } else {
                judge(&job, legacy, new, again);
                drop(slot);
            }
        }
    }));
    Some(tx)
}

/// Send the copy (and the noise copy), and wait for the legacy answer. `None` when the
/// comparison is already settled (legacy failed, copy failed, a body too large).
async fn exchange(
    job: Job,
    legacy_rx: oneshot::Receiver<LegacyAnswer>,
) -> Option<(Job, LegacyAnswer, Answer, Option<Answer>)> {
    let started = Instant::now();
    let new = client::send(
        &job.shadower.transport,
        &job.service,
        &job.request,
        &job.body,
        job.spec.max_body,
        &job.spec.compare.compare_headers,
        job.service_timeout,
    );
    let again = async {
        let legacy = job.noise_copy.as_ref()?;
        let r = client::send(
            &job.shadower.transport,
            legacy,
            &job.request,
            &job.body,
            job.spec.max_body,
            &job.spec.compare.compare_headers,
            job.service_timeout,
        )
        .await;
        // Only a complete second answer can say which fields are non-deterministic.
        r.ok().filter(|(_, cut)| !cut).map(|(a, _)| a)
    };
    let (new, again) = tokio::join!(async { (new.await, started.elapsed()) }, again);
    let (new, new_latency) = new;
    if let Some((state, cfg)) = &job.breaker {
        let ok = new.as_ref().is_ok_and(|(a, _)| a.status < 500);
        state.breaker.record(cfg, ok, Instant::now());
    }
    let m = &job.metrics;
    let Ok(legacy) = legacy_rx.await else {
        m.skip(Skip::LegacyError);
        return None;
    };
    m.latency[0].observe(legacy.latency.as_secs_f64());
    let access = |result: &str| legacy.access.as_ref().inspect(|a| a.emit(result));
    let new = match new {
        Ok(n) => n,
        Err(e) => {
            tracing::debug!(route = %job.state.route, "shadow copy failed: {e}");
            m.results[2].inc();
            access("error");
            return None;
        }
    };
    m.latency[1].observe(new_latency.as_secs_f64());
    if legacy.truncated || new.1 {
        m.skip(Skip::BodyTooLarge);
        access("skipped");
        return None;
    }
    Some((job, legacy, new.0, again))
}

/// Compare the two answers (learning noise from a second legacy answer first), count the
/// result, write the access line, and keep a mismatch.
fn judge(job: &Job, legacy: LegacyAnswer, new: Answer, again: Option<Answer>) {
    let m = &job.metrics;
    let access = |result: &str| legacy.access.as_ref().inspect(|a| a.emit(result));
    // Two legacy answers to one request differ only where legacy is non-deterministic.
    if let Some(second) = &again {
        job.state
            .learn(&diff::compare(&job.spec.compare, &[], &legacy.answer, second));
    }
    let diffs = match job.state.noise.read() {
        Ok(noise) => diff::compare(&job.spec.compare, &noise, &legacy.answer, &new),
        Err(_) => diff::compare(&job.spec.compare, &[], &legacy.answer, &new),
    };
    if diffs.is_empty() {
        m.results[0].inc();
        access("match");
        return;
    }
    m.results[1].inc();
    access("mismatch");
    let request = job.request.parts();
    let paths: Vec<&str> = diffs.iter().map(|d| d.path.as_str()).collect();
    tracing::info!(target: "shadow", route = %job.state.route, request_id = request.request_id.as_str(), paths = ?paths, "mismatch");
    for d in &diffs {
        m.paths
            .with_label_values(&[&job.state.route, &job.state.path_label(&d.pattern)])
            .inc();
    }
    record(job, request, &legacy.answer, &new, diffs);
}

fn record(job: &Job, request: client::RequestParts, legacy: &Answer, new: &Answer, mut diffs: Vec<Difference>) {
    let redacted = |name: &HeaderName| ALWAYS_REDACTED.contains(name) || job.spec.redact.contains(name);
    for d in &mut diffs {
        if let Some(h) = d.path.strip_prefix("header:") {
            if HeaderName::from_bytes(h.as_bytes()).is_ok_and(|n| redacted(&n)) {
                d.legacy = d.legacy.as_ref().map(|_| Value::String("[redacted]".into()));
                d.new = d.new.as_ref().map(|_| Value::String("[redacted]".into()));
            }
        }
    }
    let mut request_headers = serde_json::Map::new();
    for (name, value) in request.headers.iter().filter(|(n, _)| !redacted(n)) {
        request_headers.insert(
            name.as_str().to_string(),
            Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        );
    }
    let patch: Vec<Value> = diffs
        .iter()
        .filter_map(|d| {
            let path = d.pointer.as_ref()?;
            Some(match (&d.legacy, &d.new) {
                (None, Some(v)) => json!({"op": "add", "path": path, "value": v}),
                (Some(_), None) => json!({"op": "remove", "path": path}),
                (_, v) => json!({"op": "replace", "path": path, "value": v}),
            })
        })
        .collect();
    // A service that echoes a credential must not get it stored either: scrub the values of the
    // redacted request headers (and their parts: a cookie's value, a bearer token) everywhere.
    let secrets = secret_values(request.headers.iter().filter(|(n, _)| redacted(n)).map(|(_, v)| v));
    let mut patch = patch;
    if !secrets.is_empty() {
        for d in &mut diffs {
            d.legacy
                .iter_mut()
                .chain(d.new.iter_mut())
                .for_each(|v| scrub_value(v, &secrets));
        }
        patch.iter_mut().for_each(|v| scrub_value(v, &secrets));
    }
    let cut = |b: &Bytes| scrub(&String::from_utf8_lossy(&b[..b.len().min(STORED_BODY)]), &secrets);
    let entry = Mismatch {
        at_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        route: job.state.route.clone(),
        method: request.method,
        path: request.target,
        request_id: request.request_id,
        request_headers,
        status: json!({"legacy": legacy.status, "new": new.status}),
        differences: diffs,
        patch,
        legacy_body: cut(&legacy.body),
        new_body: cut(&new.body),
    };
    if let Ok(mut ring) = job.state.mismatches.lock() {
        if ring.len() == RING {
            ring.pop_front();
        }
        ring.push_back(entry);
    }
}

/// The strings a stored sample must not contain: each redacted header's value, and its parts
/// (`Bearer TOKEN` → TOKEN, `a=1; b=2` → 1 and 2). Parts shorter than 4 bytes are left alone.
fn secret_values<'a>(values: impl Iterator<Item = &'a http::HeaderValue>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in values {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        let parts = v
            .split([';', ',', ' '])
            .map(|p| p.split_once('=').map_or(p, |(_, val)| val).trim())
            .map(str::to_string)
            .collect::<Vec<_>>();
        out.push(v);
        out.extend(parts);
    }
    out.retain(|s| s.len() >= 4);
    // Longest first, so a whole value is replaced before its parts.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

fn scrub(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_string();
    for s in secrets {
        if text.contains(s.as_str()) {
            text = text.replace(s.as_str(), "[redacted]");
        }
    }
    text
}

fn scrub_value(v: &mut Value, secrets: &[String]) {
    match v {
        Value::String(s) => *s = scrub(s, secrets),
        Value::Array(a) => a.iter_mut().for_each(|v| scrub_value(v, secrets)),
        Value::Object(o) => o.values_mut().for_each(|v| scrub_value(v, secrets)),
        _ => {}
    }
}
