//! The shadow copy's life: capture it on the request path, send it (bounded, timed out, off the
//! request path), and judge it against the legacy answer, learning noise as it goes.
//!
//! The request path only clones `Bytes` into a `Capture` (up to `max_body`). The copy runs in a
//! spawned task that holds a slot of the global in-flight cap; the client never waits for it.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::future::{BoxFuture, Either};
use http::{HeaderMap, HeaderName};
use pingora_core::connectors::TransportConnector;
use tokio::sync::oneshot;

use crate::access::AccessLine;
use crate::client;
use crate::diff::{self, Answer, Difference, Seg};
use crate::headers::X_STRANGLER_SHADOW;
use crate::metrics::{CopySkip, ShadowMetrics};
use crate::resilience::BreakerConfig;
use crate::rules::{ShadowSpec, UpstreamPeer};
use crate::telemetry::ChildSpan;
use crate::upstream::Target;

mod mismatch;
pub mod saved;

pub use mismatch::{Mismatch, RequestParts, RING as MISMATCHES_KEPT};

/// Distinct mismatch paths per route that get their own metric series; the rest count as `(other)`.
pub const MAX_PATH_LABELS: usize = 50;
/// Learned noise paths kept per route.
pub const MAX_NOISE: usize = 100;
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
            mismatches: Mutex::new(VecDeque::with_capacity(mismatch::RING)),
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

    /// Store a mismatch, dropping the oldest past `mismatch::RING`.
    fn keep(&self, entry: Mismatch) {
        if let Ok(mut ring) = self.mismatches.lock() {
            if ring.len() == mismatch::RING {
                ring.pop_front();
            }
            ring.push_back(entry);
        }
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
    pub transport: TransportConnector,
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
    /// The copy's span, when tracing is on; the copy's request carries its `traceparent`.
    /// Boxed: the capture sits in every request's CTX, which Pingora moves several times.
    pub span: Option<Box<ChildSpan>>,
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
            span: None,
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
    /// Where the copy goes: the route's service, or its composition.
    pub new_side: NewSide,
    pub service_timeout: Duration,
    /// The service's breaker: copies that fail count against it, like proxied requests do.
    pub breaker: Option<(Arc<Target>, BreakerConfig)>,
    /// The legacy upstream, when this request also asks it a second time to learn noise.
    pub noise_copy: Option<UpstreamPeer>,
    pub request: client::Request,
    pub body: Vec<Bytes>,
    /// The copy's span: ended with the comparison's result when the job is done.
    pub span: Option<Box<ChildSpan>>,
}

/// A copy's span says it is a shadow copy and how its comparison came out.
fn outcome(span: Option<&mut ChildSpan>, result: &'static str, differences: usize, skip: Option<CopySkip>) {
    let Some(span) = span else { return };
    span.set("strangler.shadow", true);
    span.set("strangler.shadow.result", result);
    span.set("strangler.shadow.differences", differences as i64);
    if let Some(why) = skip {
        span.set("strangler.shadow.skip_reason", why.as_str());
    }
    if result == "error" {
        span.fail("the copy failed");
    }
}

/// A copy that never compared: its span says why.
pub fn skipped(span: &mut ChildSpan, why: CopySkip) {
    outcome(Some(span), "skipped", 0, Some(why));
}

/// A composite route's copy: given the connector and the deadline, the composed answer.
pub type ComposeFn = Box<
    dyn for<'a> FnOnce(&'a TransportConnector, Instant) -> BoxFuture<'a, Result<(Answer, bool), client::SendError>>
        + Send,
>;

/// A shadowed route's new side.
pub enum NewSide {
    Service(UpstreamPeer),
    /// A composite route: its parts are asked, and the composed answer is compared.
    Compose(ComposeFn),
    /// Already on its way.
    Sent,
}

/// Answers larger than this together are compared on the comparison thread, not on the worker.
/// Smaller ones (10 KiB take 6–31 µs, see BENCHMARKS.md) cost less there than the hand-over.
pub const INLINE_COMPARE: usize = 32 * 1024;

/// Start the copy now. Returns the sender for the legacy answer, or `None` if the cap is reached
/// (counted as skipped `overloaded`).
///
/// The copy's exchange runs on the worker thread of the request that made it (no cross-thread
/// wake per copy); a large comparison moves to the `Shadower`'s own thread.
pub fn start(mut job: Job) -> Option<oneshot::Sender<LegacyAnswer>> {
    let Some(slot) = job.shadower.acquire(job.max_in_flight) else {
        job.metrics.skip(CopySkip::Overloaded);
        outcome(job.span.as_deref_mut(), "skipped", 0, Some(CopySkip::Overloaded));
        return None;
    };
    let (tx, rx) = oneshot::channel();
    // Boxed, so the spawn moves a pointer and not the whole exchange's state machine.
    tokio::spawn(Box::pin(async move {
        if let Some((mut job, legacy, new, again)) = send_copy(job, rx).await {
            if legacy.answer.body.len() + new.body.len() > INLINE_COMPARE {
                let runtime = job.shadower.runtime.clone();
                runtime.spawn(async move {
                    let _slot = slot;
                    judge(&mut job, legacy, new, again);
                });
            } else {
                judge(&mut job, legacy, new, again);
                drop(slot);
            }
        }
    }));
    Some(tx)
}

/// Send the copy (and the noise copy), and wait for the legacy answer. `None` when the
/// comparison is already settled (legacy failed, copy failed, a body too large).
async fn send_copy(
    mut job: Job,
    legacy_rx: oneshot::Receiver<LegacyAnswer>,
) -> Option<(Job, LegacyAnswer, Answer, Option<Answer>)> {
    let started = Instant::now();
    let (peer, compose) = match std::mem::replace(&mut job.new_side, NewSide::Sent) {
        NewSide::Service(p) => (Some(p), None),
        NewSide::Compose(f) => (None, Some(f)),
        NewSide::Sent => (None, None),
    };
    let new = match (&peer, compose) {
        (_, Some(compose)) => Either::Right(compose(&job.shadower.transport, started + job.service_timeout)),
        (peer, None) => Either::Left(client::send(
            &job.shadower.transport,
            peer.as_ref()?,
            &job.request,
            &job.body,
            job.spec.max_body,
            &job.spec.compare.compare_headers,
            job.service_timeout,
        )),
    };
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
        m.skip(CopySkip::LegacyError);
        outcome(job.span.as_deref_mut(), "skipped", 0, Some(CopySkip::LegacyError));
        return None;
    };
    m.legacy_latency.observe(legacy.latency.as_secs_f64());
    let access = |result: &str| legacy.access.as_ref().inspect(|a| a.emit(result));
    let new = match new {
        Ok(n) => n,
        Err(e) => {
            tracing::debug!(route = %job.state.route, "shadow copy failed: {e}");
            m.failed.inc();
            access("error");
            outcome(job.span.as_deref_mut(), "error", 0, None);
            return None;
        }
    };
    m.new_latency.observe(new_latency.as_secs_f64());
    if legacy.truncated || new.1 {
        m.skip(CopySkip::BodyTooLarge);
        access("skipped");
        outcome(job.span.as_deref_mut(), "skipped", 0, Some(CopySkip::BodyTooLarge));
        return None;
    }
    Some((job, legacy, new.0, again))
}

/// Compare the two answers (learning noise from a second legacy answer first), count the
/// result, write the access line, and keep a mismatch.
fn judge(job: &mut Job, legacy: LegacyAnswer, new: Answer, again: Option<Answer>) {
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
        m.matched.inc();
        access("match");
        outcome(job.span.as_deref_mut(), "match", 0, None);
        return;
    }
    m.mismatched.inc();
    access("mismatch");
    outcome(job.span.as_deref_mut(), "mismatch", diffs.len(), None);
    let request = RequestParts::read(job.request.head());
    let paths: Vec<&str> = diffs.iter().map(|d| d.path.as_str()).collect();
    tracing::info!(target: "shadow", route = %job.state.route, request_id = request.request_id.as_str(), paths = ?paths, "mismatch");
    for d in &diffs {
        m.paths
            .with_label_values(&[&job.state.route, &job.state.path_label(&d.pattern)])
            .inc();
    }
    job.state.keep(mismatch::build(
        &job.state.route,
        &job.spec.redact,
        request,
        &legacy.answer,
        &new,
        diffs,
    ));
}
