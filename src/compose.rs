//! `compose:` at work: one JSON answer built from several services' answers (API-gateway
//! aggregation), for a composite route's new side and for its shadow copies.
//!
//! Every part is a GET on the proxy's own client and pools, through the part's upstream's
//! address picking, circuit breaker, bulkhead and timeouts, all within the route's `timeout`.
//! Parts start at once; a `for_each` part starts as soon as the part it reads has answered, and
//! asks once per value (at most `max_fan_out`), concurrently. A part that answers 404 is null; a
//! part that fails is null too, unless it is required, which fails the whole answer.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::{join_all, BoxFuture, FutureExt, Shared};
use http::{HeaderValue, Method};
use pingora_core::connectors::TransportConnector;
use serde_json::{Map, Value};

use crate::client::{self, HeadBuilder, SendError};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::rules::{Compose, ComposePart, JsonStep, PathPiece, RouteId};
use crate::telemetry::Parent;
use crate::upstream::InFlight;

/// A part's answer may be this large.
const MAX_PART_BODY: usize = 4 << 20;

/// Why a part has no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// 404: absent, not broken (null, and not a partial answer).
    NotFound,
    CircuitOpen,
    Overloaded,
    Connect,
    Timeout,
    Status(u16),
    BadJson,
    /// A `for_each` found more values than `max_fan_out`.
    FanOut(usize),
    /// The part it reads has no value.
    Dependency(String),
    /// The route's deadline passed before the part could start.
    Deadline,
    /// The part's upstream has no address (its host name does not resolve).
    NoAddress,
}

impl Failure {
    /// The `result` label, and the reason in errors.
    pub fn as_str(&self) -> &'static str {
        match self {
            Failure::NotFound => "not_found",
            Failure::CircuitOpen => "circuit_open",
            Failure::Overloaded => "overloaded",
            Failure::Connect => "connect_error",
            Failure::Timeout => "timeout",
            Failure::Status(_) => "bad_status",
            Failure::BadJson => "bad_json",
            Failure::FanOut(_) => "fan_out",
            Failure::Dependency(_) => "dependency",
            Failure::Deadline => "deadline",
            Failure::NoAddress => "no_address",
        }
    }

    fn detail(&self, max_fan_out: usize) -> String {
        match self {
            Failure::Status(s) => format!("status {s}"),
            Failure::FanOut(n) => format!("{n} values, more than max_fan_out {max_fan_out}"),
            Failure::Dependency(p) => format!("part {p} has no value"),
            other => other.as_str().replace('_', " "),
        }
    }
}

/// What a composition came to.
#[derive(Debug)]
pub enum Composed {
    /// 200 with this JSON body; the parts left null because they failed.
    Answer { body: Bytes, partial: Vec<String> },
    /// A required part answered 404: so does the whole (with that part's body).
    NotFound { body: Bytes },
    /// A required part failed.
    Failed { part: String, reason: Failure, body: Bytes },
}

impl Composed {
    /// As one HTTP answer (for a shadow copy's comparison).
    pub fn status(&self) -> u16 {
        match self {
            Composed::Answer { .. } => 200,
            Composed::NotFound { .. } => 404,
            Composed::Failed { .. } => 502,
        }
    }

    pub fn body(&self) -> &Bytes {
        match self {
            Composed::Answer { body, .. } | Composed::NotFound { body } | Composed::Failed { body, .. } => body,
        }
    }
}

type PartResult = Arc<Result<Value, Failure>>;

/// What one composition needs.
pub struct Job<'a> {
    pub live: &'a Live,
    pub route: RouteId,
    pub compose: &'a Compose,
    /// The route's `match.path` parameters in the request's path.
    pub params: Vec<(String, String)>,
    pub transport: &'a TransportConnector,
    pub metrics: &'a Metrics,
    pub deadline: Instant,
    /// Sent on to every part.
    pub request_id: Option<HeaderValue>,
    /// Traced: each part is a span under this one, and its request carries its `traceparent`.
    pub trace: Option<&'a Parent>,
}

/// Build the answer.
pub async fn run(job: &Job<'_>) -> Composed {
    let parts = &job.compose.parts;
    let mut futures: Vec<Shared<BoxFuture<'_, PartResult>>> = Vec::with_capacity(parts.len());
    for part in parts {
        // The part it reads is earlier in the list (the compiler ordered them).
        let dep = part
            .for_each
            .as_ref()
            .map(|f| (futures[f.part].clone(), &parts[f.part].name));
        let fut = async move {
            let started = Instant::now();
            let r = match (dep, &part.for_each) {
                (Some((dep, dep_name)), Some(fe)) => match &*dep.await {
                    Err(_) => Err(Failure::Dependency(dep_name.clone())),
                    Ok(value) => {
                        let values = values_at(value, &fe.steps);
                        if values.len() > job.compose.max_fan_out {
                            Err(Failure::FanOut(values.len()))
                        } else {
                            let asks = values.iter().map(|v| {
                                let mut params = job.params.clone();
                                params.push((fe.var.clone(), v.clone()));
                                ask(job, part, params)
                            });
                            join_all(asks)
                                .await
                                .into_iter()
                                .collect::<Result<Vec<Value>, Failure>>()
                                .map(Value::Array)
                        }
                    }
                },
                _ => ask(job, part, job.params.clone()).await,
            };
            let route = &job.live.rules.routes[job.route].name;
            let result = r.as_ref().map_or_else(Failure::as_str, |_| "ok");
            job.metrics
                .compose_part(route, &part.name, result, started.elapsed().as_secs_f64());
            Arc::new(r)
        };
        futures.push(fut.boxed().shared());
    }
    let results = join_all(futures).await;

    let mut out = Map::new();
    let mut partial = Vec::new();
    for (part, result) in parts.iter().zip(results) {
        match (&*result, part.required) {
            (Ok(v), _) => {
                out.insert(part.name.clone(), v.clone());
            }
            (Err(Failure::NotFound), true) => {
                let body = error_body("not_found", &part.name, "the required part answered 404");
                return Composed::NotFound { body };
            }
            (Err(Failure::NotFound), false) => {
                out.insert(part.name.clone(), Value::Null);
            }
            (Err(e), true) => {
                let body = error_body("part_failed", &part.name, &e.detail(job.compose.max_fan_out));
                return Composed::Failed {
                    part: part.name.clone(),
                    reason: e.clone(),
                    body,
                };
            }
            (Err(_), false) => {
                out.insert(part.name.clone(), Value::Null);
                partial.push(part.name.clone());
            }
        }
    }
    if !partial.is_empty() {
        job.metrics.compose_partial(&job.live.rules.routes[job.route].name);
    }
    let mut body = serde_json::to_vec(&Value::Object(out)).unwrap_or_default();
    body.push(b'\n');
    Composed::Answer {
        body: body.into(),
        partial,
    }
}

fn error_body(error: &str, part: &str, detail: &str) -> Bytes {
    let mut body = serde_json::json!({"error": error, "part": part, "detail": detail}).to_string();
    body.push('\n');
    body.into()
}

/// The values at `steps` in `v` (one `Each` among them), as path segments: strings as they are,
/// numbers and booleans written out; anything else is left out.
pub fn values_at(v: &Value, steps: &[JsonStep]) -> Vec<String> {
    let mut at = vec![v];
    for step in steps {
        at = match step {
            JsonStep::Key(k) => at.into_iter().filter_map(|v| v.get(k.as_str())).collect(),
            JsonStep::Each => at.into_iter().filter_map(Value::as_array).flatten().collect(),
        };
    }
    at.into_iter()
        .filter_map(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        })
        .collect()
}

/// The part's path with `params` filled in, each value percent-encoded as one segment.
fn fill(part: &ComposePart, params: &[(String, String)]) -> String {
    let mut out = String::with_capacity(64);
    for piece in &part.path {
        match piece {
            PathPiece::Text(t) => out.push_str(t),
            PathPiece::Param(name) => {
                let v = params
                    .iter()
                    .rev()
                    .find(|(k, _)| k == name)
                    .map_or("", |(_, v)| v.as_str());
                for b in v.bytes() {
                    if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                        out.push(b as char);
                    } else {
                        out.push_str(&format!("%{b:02X}"));
                    }
                }
            }
        }
    }
    out
}

/// One GET of a part, with its upstream's protection.
async fn ask(job: &Job<'_>, part: &ComposePart, params: Vec<(String, String)>) -> Result<Value, Failure> {
    let live = job.live;
    let up = &live.rules.upstreams[part.upstream];
    let state = &live.states[part.upstream];
    let now = Instant::now();
    let left = job.deadline.saturating_duration_since(now);
    if left.is_zero() {
        return Err(Failure::Deadline);
    }
    let target = match state.pick(up.breaker.as_ref(), now) {
        Some(t) => t,
        None if state.targets().is_empty() => return Err(Failure::NoAddress),
        None => return Err(Failure::CircuitOpen),
    };
    let _slot = InFlight::acquire(state, up.max_in_flight).ok_or(Failure::Overloaded)?;
    let mut span = job.trace.map(|p| p.child("compose part", &up.name));
    let r = send_part(
        job,
        part,
        &params,
        &target,
        span.as_ref().map(|s| s.traceparent()),
        left,
    )
    .await;
    if let Some(s) = span.as_mut() {
        s.set("strangler.part", part.name.clone());
        s.set("strangler.outcome", r.as_ref().map_or_else(Failure::as_str, |_| "ok"));
        match &r {
            Err(Failure::NotFound) | Ok(_) => {}
            Err(e) => s.fail(e.as_str()),
        }
    }
    r
}

/// The part's request, sent, and its answer read as JSON.
async fn send_part(
    job: &Job<'_>,
    part: &ComposePart,
    params: &[(String, String)],
    target: &crate::upstream::Target,
    traceparent: Option<HeaderValue>,
    left: std::time::Duration,
) -> Result<Value, Failure> {
    let up = &job.live.rules.upstreams[part.upstream];
    let path = fill(part, params);
    let mut head = HeadBuilder::new(&Method::GET, path.as_bytes());
    let host = target.host(up.host.as_ref());
    head.field(&http::header::HOST, &host);
    head.field(&http::header::ACCEPT, &HeaderValue::from_static("application/json"));
    if let Some(id) = &job.request_id {
        head.field(&crate::headers::X_REQUEST_ID, id);
    }
    if let Some(tp) = &traceparent {
        head.field(&crate::headers::TRACEPARENT, tp);
    }
    let request = head.finish(0);
    let limit = (up.connect_timeout + up.response_timeout).min(left);
    let sent = client::send(job.transport, &target.peer(), &request, &[], MAX_PART_BODY, &[], limit).await;
    if let Some(cfg) = &up.breaker {
        let ok = sent.as_ref().is_ok_and(|(a, _)| a.status < 500);
        target.breaker.record(cfg, ok, Instant::now());
    }
    let (answer, cut) = sent.map_err(|e| match e {
        SendError::Timeout(_) => Failure::Timeout,
        SendError::Connect(_) => Failure::Connect,
        SendError::BadStatus(s) => Failure::Status(s),
        _ => Failure::Connect,
    })?;
    match answer.status {
        404 => Err(Failure::NotFound),
        200..=299 if !cut => serde_json::from_slice(&answer.body).map_err(|_| Failure::BadJson),
        200..=299 => Err(Failure::BadJson),
        s => Err(Failure::Status(s)),
    }
}

/// A composition that owns what it needs, for a shadow copy's task.
pub struct Owned {
    pub live: Arc<Live>,
    pub route: RouteId,
    pub compose: Arc<Compose>,
    pub params: Vec<(String, String)>,
    pub metrics: Arc<Metrics>,
    pub request_id: Option<HeaderValue>,
    /// The copy's span, when traced: the parts hang under it.
    pub trace: Option<Parent>,
}

impl Owned {
    /// As a shadow copy's new side.
    pub fn into_copy(self) -> crate::shadow::ComposeFn {
        Box::new(move |transport, deadline| Box::pin(async move { self.answer(transport, deadline).await }))
    }

    /// The composed answer as one HTTP answer, for the comparison: 200, 404 or 502, JSON.
    pub async fn answer(
        &self,
        transport: &TransportConnector,
        deadline: Instant,
    ) -> Result<(crate::diff::Answer, bool), SendError> {
        let job = Job {
            live: &self.live,
            route: self.route,
            compose: &self.compose,
            params: self.params.clone(),
            transport,
            metrics: &self.metrics,
            deadline,
            request_id: self.request_id.clone(),
            trace: self.trace.as_ref(),
        };
        let composed = run(&job).await;
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok((
            crate::diff::Answer {
                status: composed.status(),
                headers,
                body: composed.body().clone(),
            },
            false,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_under_a_path() {
        let order = json!({"items": [{"sku": "SKU-1"}, {"sku": "SKU-2"}, {"qty": 3}, {"sku": 7}]});
        let steps = [
            JsonStep::Key("items".into()),
            JsonStep::Each,
            JsonStep::Key("sku".into()),
        ];
        assert_eq!(values_at(&order, &steps), ["SKU-1", "SKU-2", "7"]);
        assert!(values_at(&json!({"items": 5}), &steps).is_empty());
        assert!(values_at(&json!(null), &steps).is_empty());
    }
}
