//! The request path: `impl ProxyHttp`, readable top to bottom.
//!
//! request_filter: normalize the path, match a route, pick a side  (one rule-set snapshot);
//!                 on the new side: health, circuit and bulkhead admit it, or it falls back
//! upstream_peer:  the chosen upstream's prebuilt peer, timeouts clamped to the route deadline
//! fail_to_connect / error_while_proxy / upstream_response_filter (5xx):
//!                 retry the service, fall back to legacy, or give up (`fallback::decide`)
//! response_filter: x-strangler-* headers
//! logging: count the request against handles resolved at load time

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::HOST;
use http::{HeaderName, HeaderValue, Method};

use crate::compose::Composed;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::access::AccessLine;
use crate::client;
use crate::fallback::{self, Decision, Reason};
use crate::headers::*;
use crate::live::Live;
use crate::metrics::{CopySkip, Metrics};
use crate::rules::{RouteId, RuleSet, Side, UpstreamId, DEFAULT_ROUTE_TIMEOUT};
use crate::shadow::{self, Capture, Job, NewSide, Shadower};
use crate::telemetry::{Finish, Parent, RequestTrace, Telemetry, Try};
use crate::upstream::{InFlight, Target};

pub struct Strangler {
    pub live: Arc<ArcSwap<Live>>,
    pub metrics: Arc<Metrics>,
    pub shadower: Arc<Shadower>,
    pub access_log: bool,
    /// OpenTelemetry spans, when a collector is configured.
    pub telemetry: Option<Arc<Telemetry>>,
}

/// Per-request state. `live` pins one rule set for the whole request, even across a reload.
pub struct Ctx {
    live: Option<Arc<Live>>,
    route: Option<RouteId>,
    side: Side,
    /// A trusted tester chose the side (`force_side`).
    forced: bool,
    target: UpstreamId,
    /// The normalized path and the original query, when they differ from what the client sent.
    rewritten: Option<http::Uri>,
    started: Instant,
    /// Retries and fallback together end by this time.
    deadline: Instant,
    /// Tries of the new service so far.
    attempt: u32,
    /// Safe to send twice: idempotent method, `Idempotency-Key`, or `fallback_writes`.
    replayable: bool,
    /// Set once the request falls back; also the `x-strangler-fallback` header.
    fallback: Option<Reason>,
    /// The bulkhead slot held while the request is on the new service.
    slot: Option<InFlight>,
    /// A composite route's `match.path` parameters in this request's path.
    compose_params: Option<Vec<(String, String)>>,
    /// The address `admit` chose for the first try of the service.
    pick: Option<Arc<Target>>,
    /// The address of the try in flight: its circuit hears how it went.
    tried: Option<Arc<Target>>,
    /// The response header went downstream: nothing may be retried after this.
    responded: bool,
    /// `upstream_response_filter` already decided what a 5xx leads to.
    decided: bool,
    /// The request's id (the client's or a new one), echoed on the response.
    request_id: Option<HeaderValue>,
    /// The client sent no id: `upstream_request_filter` adds ours.
    new_request_id: bool,
    /// The client asked (`x-strangler-debug: 1`) for the generation and config hash.
    debug: bool,
    /// The shadow copy's capture, when this request is copied.
    shadow: Option<Capture>,
    /// Request body bytes allowed (the route's `max_body` or `limits.max_body`), and seen so far.
    body_limit: u64,
    body_seen: u64,
    /// The request's spans, when tracing is on (boxed: a pointer in the CTX when it is off).
    trace: Option<Box<RequestTrace>>,
}

#[async_trait]
impl ProxyHttp for Strangler {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        let now = Instant::now();
        Ctx {
            live: None,
            route: None,
            side: Side::Legacy,
            target: 0,
            forced: false,
            rewritten: None,
            started: now,
            deadline: now + DEFAULT_ROUTE_TIMEOUT,
            attempt: 0,
            replayable: false,
            fallback: None,
            slot: None,
            compose_params: None,
            pick: None,
            tried: None,
            responded: false,
            decided: false,
            request_id: None,
            new_request_id: false,
            debug: false,
            shadow: None,
            body_limit: u64::MAX,
            body_seen: 0,
            trace: None,
        }
    }

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        crate::limits::head_read(session);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let live = self.live.load_full();
        if let Some(t) = &self.telemetry {
            ctx.trace = Some(Box::new(t.request(&session.req_header().headers)));
        }
        if let Err(no) = crate::limits::check_head(session, &live.rules.settings.limits) {
            return self.refuse(session, no).await;
        }
        let req = session.req_header();
        // Pingora reads a target like `admin` (no '/', no scheme) as "/": refuse it instead.
        let raw = req.raw_path();
        let absolute_form = raw.first() != Some(&b'/');
        let target_ok = !absolute_form || raw.starts_with(b"http://") || raw.starts_with(b"https://");
        let path = match crate::path::normalize_with(req.uri.path(), live.rules.allow_semicolons).and_then(|p| {
            if target_ok {
                Ok(p)
            } else {
                Err(crate::path::PathError::NotAbsolute)
            }
        }) {
            Ok(p) => p,
            Err(e) => return self.refuse(session, e.into()).await,
        };
        let route = live.rules.lookup(&crate::rules::Request {
            method: &req.method,
            path: &path,
            query: req.uri.query(),
            headers: &req.headers,
            authority: req.uri.authority().map(|a| a.as_str()),
        });
        let r = route.map(|id| &live.rules.routes[id]);
        ctx.side = r.map_or(Side::Legacy, |r| r.side(&req.headers));
        // A composite route composes GETs; its parameters are read before the path moves on.
        let compose = r.and_then(|r| r.compose.clone()).filter(|_| req.method == Method::GET);
        if r.is_some_and(|r| r.compose.is_some()) && compose.is_none() {
            ctx.side = Side::Legacy;
        }
        let compose_params = r.and_then(|r| r.compose.as_ref()).map(|c| c.params(&path));
        // Testers first: a trusted request may choose its side on any route with a service.
        if let (Some(force), Some(r)) = (&live.rules.force_side, r.filter(|r| r.service.is_some())) {
            if let Some(side) = force.side(&req.headers, client_ip(session, &live.rules)) {
                ctx.side = side;
                ctx.forced = true;
                self.metrics.forced(&r.name, side);
            }
        }
        ctx.target = live.rules.target(r, ctx.side);
        ctx.route = route;
        // The upstream gets the path that was matched, in origin form (`GET http://host/x` too).
        if matches!(path, std::borrow::Cow::Owned(_)) || absolute_form {
            let pq = match req.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.into_owned(),
            };
            ctx.rewritten = pq.parse().ok();
        }
        ctx.body_limit = r
            .and_then(|r| r.max_body)
            .unwrap_or(live.rules.settings.limits.max_body);
        if let Err(no) = crate::limits::check_declared_body(session, ctx.body_limit) {
            return self.refuse(session, no).await;
        }
        let req = session.req_header();
        if let Some(r) = r {
            ctx.deadline = ctx.started + r.timeout;
            // An upgraded connection can't be replayed; otherwise idempotent or declared so.
            ctx.replayable = !session.is_upgrade_req()
                && (fallback::idempotent_method(&req.method)
                    || r.fallback_writes
                    || req.headers.contains_key(&IDEMPOTENCY_KEY));
        }
        if ctx.side == Side::New {
            let limited = route
                .and_then(|id| live.limiters[id].as_ref())
                .and_then(|l| l.check(&req.headers, || client_ip(session, &live.rules)).err());
            let refused = match limited {
                Some(wait) => Some((Reason::RateLimited, wait)),
                // A composite route admits each part on its own upstream.
                None if compose.is_some() => None,
                // Open circuit or full bulkhead: a moment later may well work.
                None => admit(&live, ctx).map(|r| (r, Duration::from_secs(1))),
            };
            if let Some((reason, wait)) = refused {
                if !fall_back(&live, ctx, reason) {
                    let (status, error) = match reason {
                        Reason::RateLimited => (429, "rate_limited"),
                        _ => (503, "service_unavailable"),
                    };
                    let body = serde_json::json!({"error": error, "reason": reason.as_str()}).to_string() + "\n";
                    let retry_after = wait.as_secs_f64().ceil().max(1.0).to_string();
                    respond_with(
                        session,
                        status,
                        body.into(),
                        &[(http::header::RETRY_AFTER, &retry_after)],
                    )
                    .await?;
                    return Ok(true);
                }
            }
        }
        ctx.compose_params = compose_params;
        if let (Some(id), Some(c), Some(params), Side::New) = (route, &compose, ctx.compose_params.clone(), ctx.side) {
            let trace_parent = ctx
                .trace
                .as_ref()
                .zip(self.telemetry.as_ref())
                .map(|(t, tel)| t.parent(tel));
            let job = crate::compose::Job {
                live: &live,
                route: id,
                compose: c,
                params,
                transport: &self.shadower.transport,
                metrics: &self.metrics,
                deadline: ctx.deadline,
                request_id: req.headers.get(&X_REQUEST_ID).cloned(),
                trace: trace_parent.as_ref(),
            };
            let composed = crate::compose::run(&job).await;
            // The composed answer is the route's: counted, logged and traced as one.
            ctx.live = Some(live.clone());
            let route_name = live.route_headers[id].to_str().unwrap_or_default().to_string();
            match composed {
                Composed::Answer { body, partial } => {
                    let partial = partial.join(", ");
                    respond_composed(session, 200, body, &live, &route_name, &partial).await?;
                    return Ok(true);
                }
                Composed::NotFound { body } => {
                    respond_composed(session, 404, body, &live, &route_name, "").await?;
                    return Ok(true);
                }
                Composed::Failed { part, reason, body } => {
                    tracing::warn!(route = %route_name, part = %part, reason = reason.as_str(), "compose: a required part failed");
                    if !fall_back(&live, ctx, Reason::PartFailed) {
                        respond_composed(session, 502, body, &live, &route_name, "").await?;
                        return Ok(true);
                    }
                }
            }
        }
        let req = session.req_header();
        if let (Some(id), Some(spec)) = (route, r.and_then(|r| r.shadow.as_ref())) {
            // Shadow routes, and the legacy share of canary routes, send a copy to the service.
            if ctx.side == Side::Legacy && ctx.fallback.is_none() {
                let m = live.handles.route(Some(id)).shadow.as_ref();
                if !spec.copies(&req.method) || session.is_upgrade_req() {
                    m.inspect(|m| m.skip(CopySkip::Method));
                } else if spec.sample < 1.0 && rand::random::<f64>() >= spec.sample {
                    m.inspect(|m| m.skip(CopySkip::SampledOut));
                } else if live.limiters[id]
                    .as_ref()
                    .is_some_and(|l| l.check(&req.headers, || client_ip(session, &live.rules)).is_err())
                {
                    // Copies count against the new side's budget too.
                    m.inspect(|m| m.skip(CopySkip::RateLimited));
                } else {
                    ctx.shadow = Some(Capture::new(spec.clone()));
                }
            }
        }
        ctx.debug = req
            .headers
            .get(&X_STRANGLER_DEBUG)
            .is_some_and(|v| v.as_bytes() == b"1");
        ctx.live = Some(live);
        // Every request carries an id: the client's, or a new one. The upstream and the
        // client's response both see it.
        ctx.request_id = match session.req_header().headers.get(&X_REQUEST_ID) {
            Some(id) => Some(id.clone()),
            None => {
                ctx.new_request_id = true;
                Some(new_request_id())
            }
        };
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let live = ctx.live.clone().expect("request_filter sets live");
        let up = &live.rules.upstreams[ctx.target];
        if ctx.side == Side::New {
            ctx.attempt += 1;
            if ctx.attempt > 1 {
                let wait = up.retry.backoff(ctx.attempt, rand::random::<f64>());
                tokio::time::sleep(wait.min(ctx.deadline.saturating_duration_since(Instant::now()))).await;
            }
        }
        // The address: the one `admit` chose, a retry's own (any whose circuit allows), or the
        // monolith's next one.
        let now = Instant::now();
        let state = &live.states[ctx.target];
        let target = match ctx.pick.take() {
            Some(t) => Some(t),
            None if ctx.side == Side::New => state.pick(up.breaker.as_ref(), now).or_else(|| state.pick_any(now)),
            None => state.pick_any(now),
        };
        let Some(target) = target else {
            return Error::e_explain(
                ErrorType::HTTPStatus(502),
                "the upstream has no address: its host name does not resolve",
            );
        };
        let mut peer = HttpPeer::clone(&target.peer());
        if let (Some(trace), Some(telemetry)) = (ctx.trace.as_mut(), &self.telemetry) {
            let kind = match (ctx.side, ctx.fallback) {
                (Side::Legacy, Some(_)) => Try::Fallback,
                (Side::New, _) if ctx.attempt > 1 => Try::Retry,
                _ => Try::First,
            };
            trace.attempt(telemetry, &up.name, target.addr, ctx.attempt.max(1), kind);
        }
        ctx.tried = Some(target);
        if ctx.route.is_some_and(|id| live.rules.routes[id].service.is_some()) {
            // Every try, and the fallback, must end by the route's deadline.
            let left = ctx.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Error::e_explain(ErrorType::HTTPStatus(504), "the route's timeout passed");
            }
            let o = &mut peer.options;
            o.connection_timeout = Some(up.connect_timeout.min(left));
            o.read_timeout = Some(up.response_timeout.min(left));
            o.write_timeout = Some(up.response_timeout.min(left));
        }
        Ok(Box::new(peer))
    }

    fn fail_to_connect(&self, session: &mut Session, _peer: &HttpPeer, ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
        if let Some(t) = ctx.trace.as_mut() {
            t.end_attempt(None, Some(e.etype().as_str()));
        }
        if ctx.side == Side::New {
            return on_failure(session, ctx, Reason::ConnectError, e, true);
        }
        e.set_retry(false);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        if std::mem::take(&mut ctx.decided) {
            return e;
        }
        if let Some(t) = ctx.trace.as_mut() {
            t.end_attempt(None, Some(e.etype().as_str()));
        }
        if ctx.side == Side::New && !ctx.responded {
            let reason = match e.etype() {
                ErrorType::ReadTimedout | ErrorType::WriteTimedout | ErrorType::ConnectTimedout => Reason::Timeout,
                _ => Reason::Reset,
            };
            return on_failure(session, ctx, reason, e, true);
        }
        // Legacy side (nothing behind it): Pingora's own rule, a stale pooled connection may be
        // retried once if the request is safe to send again.
        let mut e = e.more_context(format!("peer: {peer}"));
        if ctx.responded || !ctx.replayable_on_legacy(session) {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if ctx.side != Side::New || resp.status.is_informational() {
            return Ok(());
        }
        let live = ctx.live.clone().expect("request_filter sets live");
        let status = resp.status.as_u16();
        feed_breaker(&live, ctx, status < 500);
        let route = &live.rules.routes[ctx.route.expect("the new side has a route")];
        if !route.falls_back_on(status) {
            return Ok(());
        }
        let e = Error::explain(
            ErrorType::HTTPStatus(status),
            "the service answered with a fallback status",
        );
        if let Some(t) = ctx.trace.as_mut() {
            t.end_attempt(Some(status), Some("fallback status"));
        }
        let e = on_failure(session, ctx, Reason::Status5xx, e, false);
        if e.retry() {
            // Nothing has gone downstream yet: the retry loop tries again elsewhere.
            ctx.decided = true;
            return Err(e);
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let live = ctx.live.as_ref().expect("request_filter sets live");
        // Each attempt (a retry, the fallback) starts again from the client's request.
        if let Some(uri) = &ctx.rewritten {
            up.set_uri(uri.clone());
        }
        // The new side's own path (`rewrite:`); the monolith always gets the client's.
        let route = ctx.route.map(|id| &live.rules.routes[id]);
        if let Some(rw) = route
            .filter(|r| r.service == Some(ctx.target))
            .and_then(|r| r.rewrite.as_ref())
        {
            if let Some(uri) = rw.apply(up.uri.path(), up.uri.query()).and_then(|pq| pq.parse().ok()) {
                up.set_uri(uri);
            }
        }
        if !live.rules.preserve_header_case {
            // Room for what follows: the request id, x-forwarded-for, -proto and -host, host,
            // and traceparent.
            lowercase_with_room(up, 5 + usize::from(ctx.trace.is_some()));
        }
        if let Some(t) = &ctx.trace {
            // The upstream's span hangs under this attempt's.
            up.insert_header(TRACE_PARENT, t.upstream_header())?;
        }
        if ctx.new_request_id {
            up.insert_header(REQUEST_ID, ctx.request_id.clone().expect("request_filter sets it"))?;
        }
        // Our own headers mean something to the services (x-strangler-shadow: "this is a copy,
        // don't send the e-mail"); a client must not be able to forge them.
        let forged: Vec<HeaderName> = up
            .headers
            .keys()
            .filter(|n| n.as_str().starts_with("x-strangler-"))
            .cloned()
            .collect();
        for name in forged {
            up.remove_header(&name);
        }
        // The tester's headers, under whatever names the rules gave them, stay here.
        if let Some(force) = &live.rules.force_side {
            up.remove_header(&force.header);
            up.remove_header(&force.token_header);
        }
        // The client's own x-forwarded-* headers are believed only from a trusted proxy;
        // from anyone else they are replaced, so a client can't pose as another address.
        let peer = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let trusted = peer.is_some_and(|ip| live.rules.trusted(ip));
        if let Some(ip) = peer {
            let prev = if trusted {
                up.headers.get(&X_FORWARDED_FOR)
            } else {
                None
            };
            let xff = match prev.and_then(|v| v.to_str().ok()) {
                Some(prev) => HeaderValue::try_from(format!("{prev}, {ip}")).expect("a header value and an address"),
                None => ip_header(ip),
            };
            up.insert_header(FORWARDED_FOR, xff)?;
        }
        if !trusted || !up.headers.contains_key(&X_FORWARDED_PROTO) {
            let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
            up.insert_header(FORWARDED_PROTO, if tls { "https" } else { "http" })?;
        }
        if !trusted || !up.headers.contains_key(&X_FORWARDED_HOST) {
            match session.req_header().headers.get(HOST).cloned() {
                Some(host) => up.insert_header(FORWARDED_HOST, host)?,
                None => {
                    up.remove_header(&X_FORWARDED_HOST);
                }
            }
        }
        if let Some(host) = &live.rules.upstreams[ctx.target].host {
            up.insert_header(HOST, host.clone())?;
        }
        if ctx.shadow.as_ref().is_some_and(|c| c.header.is_none()) {
            self.prepare_copy(session, up, ctx)?;
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.body_seen += body.as_ref().map_or(0, |b| b.len() as u64);
        if ctx.body_seen > ctx.body_limit {
            // A chunked body past the limit: the upstream's request is cut off, the client gets 413.
            self.metrics.rejected(crate::limits::body_too_large().reason);
            ctx.shadow = None;
            return Error::e_explain(ErrorType::HTTPStatus(413), "request body past max_body");
        }
        let Some(cap) = ctx.shadow.as_mut().filter(|c| c.wants_body && !c.started) else {
            return Ok(());
        };
        if let Some(b) = body {
            if cap.body_len + b.len() > cap.spec.max_body {
                // Held only up to max_body: past it the copy is cancelled.
                ctx.shadow = None;
                if let Some(m) = ctx
                    .live
                    .as_ref()
                    .and_then(|l| l.handles.route(ctx.route).shadow.as_ref())
                {
                    m.skip(CopySkip::BodyTooLarge);
                }
                return Ok(());
            }
            cap.body_len += b.len();
            cap.body.push(b.clone());
        }
        if end_of_stream {
            self.start_copy(ctx);
        }
        Ok(())
    }

    async fn response_filter(&self, _session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        ctx.responded = true;
        if let Some(cap) = ctx.shadow.as_mut().filter(|c| c.to_task.is_some()) {
            cap.status = resp.status.as_u16();
            // Only the headers the comparison reads, not the whole map.
            cap.headers = crate::diff::read_headers(&resp.headers, &cap.spec.compare.compare_headers);
        }
        let live = ctx.live.as_ref().expect("request_filter sets live");
        let echo_id = ctx
            .request_id
            .as_ref()
            .filter(|_| !resp.headers.contains_key(&X_REQUEST_ID));
        let room = if live.rules.response_headers { 3 } else { 0 }
            + usize::from(echo_id.is_some())
            + 2 * usize::from(ctx.debug);
        if room > 0 && !live.rules.preserve_header_case {
            lowercase_response_with_room(resp, room)?;
        }
        if live.rules.response_headers {
            let route = ctx.route.unwrap_or(live.route_headers.len() - 1);
            resp.insert_header(STRANGLER_ROUTE, live.route_headers[route].clone())?;
            resp.insert_header(STRANGLER_UPSTREAM, live.upstream_headers[ctx.target].clone())?;
            if let Some(reason) = ctx.fallback {
                resp.insert_header(STRANGLER_FALLBACK, reason.as_str())?;
            }
        }
        if let Some(id) = echo_id {
            resp.insert_header(REQUEST_ID, id.clone())?;
        }
        if ctx.debug {
            resp.insert_header(STRANGLER_GENERATION, live.generation_header.clone())?;
            resp.insert_header(STRANGLER_CONFIG, live.config_header.clone())?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => 0,
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code == 413 && !ctx.responded {
            let _ = respond(session, code, crate::limits::body_too_large().body()).await;
        } else if code > 0 && !ctx.responded {
            let upstream = ctx
                .live
                .as_ref()
                .map_or("", |l| l.rules.upstreams[ctx.target].name.as_str());
            // Built by serde_json, so an upstream name is escaped like any other string.
            let body = serde_json::json!({
                "error": "upstream_failed",
                "upstream": upstream,
                "status": code,
                "detail": e.etype().as_str(),
            });
            let _ = respond(session, code, (body.to_string() + "\n").into()).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let (Some(cap), Some(b)) = (ctx.shadow.as_mut().filter(|c| c.to_task.is_some()), body.as_ref()) {
            cap.response_chunk(b);
        }
        Ok(None)
    }

    async fn logging(&self, session: &mut Session, e: Option<&pingora_error::Error>, ctx: &mut Ctx) {
        ctx.slot = None;
        let status = session.response_written().map_or(502, |r| r.status.as_u16());
        let seconds = ctx.started.elapsed().as_secs_f64();
        let access = match (&ctx.live, self.access_log) {
            (Some(live), true) => {
                let req = session.req_header();
                let route = ctx.route.unwrap_or(live.route_headers.len() - 1);
                Some(AccessLine {
                    method: req.method.clone(),
                    uri: req.uri.clone(),
                    route: live.route_headers[route].clone(),
                    side: ctx.side.as_str(),
                    upstream: live.upstream_headers[ctx.target].clone(),
                    status,
                    duration_ms: (seconds * 1e6).round() / 1e3,
                    fallback: ctx.fallback.map_or("-", Reason::as_str),
                    shadow: match ctx.shadow.as_ref().map(|c| c.to_task.is_some()) {
                        Some(true) => "copied",
                        Some(false) => "not_copied",
                        None => "-",
                    },
                    // Found or made once, in request_filter.
                    request_id: ctx.request_id.clone(),
                    traceparent: match &ctx.trace {
                        Some(t) => Some(t.server_header()),
                        None => req.headers.get(&TRACEPARENT).cloned(),
                    },
                    forced: ctx.forced,
                })
            }
            _ => None,
        };
        // A copied request's line is written by the comparison, with its result.
        let access = match ctx.shadow.as_mut() {
            Some(cap) => cap.finish(
                e.is_none() && session.response_written().is_some(),
                ctx.started.elapsed(),
                access,
            ),
            None => access,
        };
        if let Some(line) = access {
            line.emit("-");
        }
        if let Some(trace) = ctx.trace.take() {
            finish_trace(*trace, session, ctx, status);
        }
        if let Some(live) = ctx.live.as_ref() {
            live.handles.route(ctx.route).side(ctx.side).observe(status, seconds);
            if live.rules.discovery.enabled {
                let req = session.req_header();
                crate::discovery::observe(crate::discovery::Seen {
                    method: &req.method,
                    path: req.uri.path(),
                    route: ctx.route,
                    generation: live.generation,
                    side: ctx.side,
                    status,
                    seconds,
                });
            }
        }
    }
}

impl Strangler {
    /// Build the copy's request header from what the legacy upstream is sent; start the copy now
    /// unless it has to wait for a request body.
    fn prepare_copy(&self, session: &mut Session, up: &RequestHeader, ctx: &mut Ctx) -> Result<()> {
        let live = ctx.live.clone().expect("request_filter sets live");
        let route = ctx.route.map(|id| &live.rules.routes[id]);
        if route.is_some_and(|r| r.compose.is_some()) {
            // A composite route's copy is its composition: no request of its own to build.
            let span = ctx
                .trace
                .as_ref()
                .zip(self.telemetry.as_ref())
                .map(|(t, tel)| t.child(tel, "shadow copy", "compose"));
            let Some(cap) = ctx.shadow.as_mut() else { return Ok(()) };
            cap.header = Some(client::HeadBuilder::new(&up.method, up.raw_path()));
            cap.span = span.map(Box::new);
            cap.wants_body = false;
            self.start_copy(ctx);
            return Ok(());
        }
        let Some(service) = route.and_then(|r| r.service) else {
            ctx.shadow = None;
            return Ok(());
        };
        // Serialized once, here: the copy task writes these bytes as they are. Framing and
        // hop-by-hop fields are the copy's own; credentials go only if the route says so.
        let forward_credentials = ctx.shadow.as_ref().is_some_and(|c| c.spec.forward_credentials);
        // The copy goes to the service: its path is the service's (`rewrite:`).
        let rewritten = ctx
            .route
            .and_then(|id| live.rules.routes[id].rewrite.as_ref())
            .and_then(|rw| rw.apply(up.uri.path(), up.uri.query()));
        let path = rewritten.as_deref().map_or(up.raw_path(), str::as_bytes);
        let mut copy = client::HeadBuilder::new(&up.method, path);
        // Traced, the copy is a span of its own: the service's span hangs under it.
        let span = ctx
            .trace
            .as_ref()
            .zip(self.telemetry.as_ref())
            .map(|(t, tel)| t.child(tel, "shadow copy", &live.rules.upstreams[service].name));
        for (name, value) in up.headers.iter() {
            let own = shadow::COPY_OWN_FIELDS.contains(name)
                || (span.is_some() && name == TRACEPARENT)
                || (!forward_credentials && (name == http::header::AUTHORIZATION || name == http::header::COOKIE));
            if !own {
                copy.field(name, value);
            }
        }
        // The service's own host, else the client's (an HTTP/2 client's `:authority` is in the
        // `host` Pingora gave the upstream request).
        let host = live.rules.upstreams[service]
            .host
            .as_ref()
            .or_else(|| session.req_header().headers.get(HOST))
            .or_else(|| up.headers.get(HOST));
        if let Some(host) = host {
            copy.field(&HOST, host);
        }
        copy.field(&X_STRANGLER_SHADOW, &http::HeaderValue::from_static("1"));
        if let Some(span) = &span {
            copy.field(&TRACEPARENT, &span.traceparent());
        }
        // Pingora knows for HTTP/1 (content-length, chunked) and HTTP/2 (end of stream) alike.
        let has_body = !session.is_body_empty();
        let Some(cap) = ctx.shadow.as_mut() else { return Ok(()) };
        cap.header = Some(copy);
        cap.span = span.map(Box::new);
        cap.wants_body = has_body;
        if !has_body {
            self.start_copy(ctx);
        }
        Ok(())
    }

    fn start_copy(&self, ctx: &mut Ctx) {
        let (Some(live), Some(id)) = (ctx.live.clone(), ctx.route) else {
            return;
        };
        let route = &live.rules.routes[id];
        let (Some(state), Some(metrics)) = (
            live.shadow_states[id].clone(),
            live.handles.route(Some(id)).shadow.clone(),
        ) else {
            return;
        };
        if route.compose.is_none() && route.service.is_none() {
            return;
        }
        let Some(cap) = ctx.shadow.as_mut() else { return };
        let Some(head) = cap.header.take() else { return };
        let request = head.finish(cap.body_len);
        cap.started = true;
        let now = Instant::now();
        // Where the copy goes: a composite route's parts (compared as one answer), or the
        // service's next address whose circuit lets it through. A service that keeps failing its
        // copies opens its circuit; copies then wait it out instead of piling up timeouts.
        let (new_side, breaker, service_timeout) = match (&route.compose, route.service) {
            (Some(c), _) => {
                let owned = crate::compose::Owned {
                    live: live.clone(),
                    route: id,
                    compose: c.clone(),
                    params: ctx.compose_params.take().unwrap_or_default(),
                    metrics: self.metrics.clone(),
                    request_id: ctx.request_id.clone(),
                    trace: cap
                        .span
                        .as_ref()
                        .zip(self.telemetry.as_ref())
                        .map(|(s, tel)| Parent::under(tel, s)),
                };
                (NewSide::Compose(owned.into_copy()), None, route.timeout)
            }
            (None, Some(service)) => {
                let up = &live.rules.upstreams[service];
                let Some(target) = live.states[service].pick(up.breaker.as_ref(), now) else {
                    cap.to_task = None;
                    metrics.skip(CopySkip::CircuitOpen);
                    if let Some(mut span) = cap.span.take() {
                        shadow::skipped(&mut span, CopySkip::CircuitOpen);
                    }
                    return;
                };
                let breaker = up.breaker.clone().map(|cfg| (target.clone(), cfg));
                (
                    NewSide::Service(target.peer()),
                    breaker,
                    up.connect_timeout + up.response_timeout,
                )
            }
            (None, None) => return,
        };
        // Noise is learned by asking the monolith twice; a composition has no single service to
        // learn it for.
        let noise_copy = (route.compose.is_none()
            && cap.spec.noise_sample.is_some_and(|p| rand::random::<f64>() < p)
            && request.idempotent())
        .then(|| live.states[live.rules.legacy].pick_any(now).map(|t| t.peer()))
        .flatten();
        cap.to_task = shadow::start(Job {
            new_side,
            breaker,
            shadower: self.shadower.clone(),
            max_in_flight: live.rules.shadow_max_in_flight,
            state,
            metrics,
            spec: cap.spec.clone(),
            service_timeout,
            noise_copy,
            request,
            body: std::mem::take(&mut cap.body),
            span: cap.span.take(),
        });
    }
}

/// End the request's span with what it became: route, mode, side, status, fallback.
fn finish_trace(trace: RequestTrace, session: &Session, ctx: &Ctx, status: u16) {
    if !trace.recording() {
        // Not sampled: nothing to say, and nothing is sent.
        return;
    }
    let req = session.req_header();
    let route = ctx.live.as_ref().zip(ctx.route).map(|(l, id)| &l.rules.routes[id]);
    let template = route.map(|r| r.path.route_text());
    let path = ctx.rewritten.as_ref().map_or(req.uri.path(), |u| u.path());
    trace.finish(Finish {
        method: req.method.as_str(),
        path,
        status,
        route: route.map_or("(none)", |r| r.name.as_str()),
        template: template.as_deref(),
        mode: route.map(|r| r.mode.as_str()),
        side: ctx.side.as_str(),
        fallback: ctx.fallback.map(Reason::as_str),
    });
}

impl Ctx {
    fn replayable_on_legacy(&self, session: &Session) -> bool {
        fallback::idempotent_method(&session.req_header().method) && !session.as_ref().retry_buffer_truncated()
    }
}

/// Health, circuit and bulkhead: may this request go to its service? `Some` says why not.
fn admit(live: &Live, ctx: &mut Ctx) -> Option<Reason> {
    let state = &live.states[ctx.target];
    let up = &live.rules.upstreams[ctx.target];
    // An address that is healthy and whose circuit is closed (or lets a probe through).
    let Some(target) = state.pick(up.breaker.as_ref(), Instant::now()) else {
        return Some(Reason::CircuitOpen);
    };
    match InFlight::acquire(state, up.max_in_flight) {
        Some(slot) => {
            ctx.slot = Some(slot);
            ctx.pick = Some(target);
            None
        }
        None => Some(Reason::Overloaded),
    }
}

/// Send the request to the legacy upstream instead, if the route allows it. Counts the fallback.
fn fall_back(live: &Live, ctx: &mut Ctx, reason: Reason) -> bool {
    let Some(id) = ctx.route else { return false };
    if !live.rules.routes[id].fallback {
        return false;
    }
    ctx.side = Side::Legacy;
    ctx.target = live.rules.legacy;
    ctx.fallback = Some(reason);
    ctx.slot = None;
    if let Some(m) = &live.handles.route(Some(id)).resilience {
        m.fallback(reason);
    }
    true
}

/// Feed the outcome of a try of the service to its circuit breaker.
fn feed_breaker(live: &Live, ctx: &Ctx, ok: bool) {
    if let (Some(cfg), Some(t)) = (&live.rules.upstreams[ctx.target].breaker, &ctx.tried) {
        t.breaker.record(cfg, ok, Instant::now());
    }
}

/// A try of the service failed: retry it, fall back, or give up, and mark `e` to match.
fn on_failure(session: &Session, ctx: &mut Ctx, reason: Reason, mut e: Box<Error>, count: bool) -> Box<Error> {
    let live = ctx.live.clone().expect("request_filter sets live");
    if count {
        feed_breaker(&live, ctx, false);
    }
    let Some(id) = ctx.route else {
        e.set_retry(false);
        return e;
    };
    let route = &live.rules.routes[id];
    let up = &live.rules.upstreams[ctx.target];
    let req = fallback::Request {
        replayable: ctx.replayable,
        body_truncated: session.as_ref().retry_buffer_truncated(),
        attempt: ctx.attempt,
    };
    // Another try needs at least a moment before the deadline.
    let time_left = ctx.deadline.saturating_duration_since(Instant::now()) > Duration::from_millis(1);
    let policy = fallback::Policy {
        attempts: up.retry.attempts,
        fallback: route.fallback,
        time_left,
    };
    let metrics = live.handles.route(Some(id)).resilience.as_ref();
    match fallback::decide(reason, req, policy) {
        Decision::Retry => {
            if let Some(m) = metrics {
                m.retries.inc();
            }
            e.set_retry(true);
        }
        Decision::Fallback(r) => {
            fall_back(&live, ctx, r);
            e.set_retry(true);
        }
        Decision::GiveUp(skip) => {
            if let (Some(skip), Some(m)) = (skip, metrics) {
                m.skipped(skip);
            }
            e.set_retry(false);
        }
    }
    e
}

/// A small JSON answer from the proxy itself.
impl Strangler {
    /// Answer a request the limits refuse, before any upstream sees it.
    async fn refuse(&self, session: &mut Session, no: crate::limits::Refusal) -> Result<bool> {
        self.metrics.rejected(no.reason);
        respond(session, no.status, no.body()).await?;
        Ok(true)
    }
}

async fn respond(session: &mut Session, status: u16, body: Bytes) -> Result<()> {
    respond_with(session, status, body, &[]).await
}

/// A composed answer (or its 404 or 502): JSON, the connection kept alive.
async fn respond_composed(
    session: &mut Session,
    status: u16,
    body: Bytes,
    live: &Live,
    route: &str,
    partial: &str,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(5))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    if !partial.is_empty() {
        resp.insert_header(X_STRANGLER_PARTIAL, partial)?;
    }
    if live.rules.response_headers {
        resp.insert_header(STRANGLER_ROUTE, route)?;
        resp.insert_header(STRANGLER_UPSTREAM, "compose")?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    let body = (session.req_header().method != Method::HEAD).then_some(body);
    session.write_response_body(body, true).await
}

async fn respond_with(session: &mut Session, status: u16, body: Bytes, extra: &[(HeaderName, &str)]) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(3 + extra.len()))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    for (name, value) in extra {
        resp.insert_header(name.clone(), *value)?;
    }
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    session.set_keepalive(None);
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// The client's address: the peer's, or, from a trusted proxy, the nearest address in
/// x-forwarded-for that isn't a trusted proxy's.
fn client_ip(session: &Session, rules: &RuleSet) -> Option<std::net::IpAddr> {
    let peer = session.client_addr()?.as_inet()?.ip();
    if !rules.trusted(peer) {
        return Some(peer);
    }
    let mut nearest = peer;
    for value in session.req_header().headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        for hop in value.to_str().ok()?.rsplit(',') {
            nearest = hop.trim().parse().ok()?;
            if !rules.trusted(nearest) {
                return Some(nearest);
            }
        }
    }
    Some(nearest)
}

/// A client address as a header value. IPv4 by hand: `Ipv4Addr`'s `Display` cost 2,600
/// instructions per request under callgrind, a fortieth of the whole request.
fn ip_header(ip: std::net::IpAddr) -> HeaderValue {
    let std::net::IpAddr::V4(v4) = ip else {
        return HeaderValue::try_from(ip.to_string()).expect("an address is a valid header value");
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        for (place, show) in [(100, octet >= 100), (10, octet >= 10), (1, true)] {
            if show {
                text[len] = b'0' + octet / place % 10;
                len += 1;
            }
        }
    }
    HeaderValue::from_bytes(&text[..len]).expect("digits and dots are a valid header value")
}

/// Pingora hands the filters heads that keep a second map, with the case of each header name,
/// and sizes both maps to exactly the headers read, so each header added grows both. This
/// rebuilds the head around the same headers without the case map and with room for `room`
/// more: names then go out in lowercase, as Envoy and HAProxy send them.
///
/// The `http` parts are all there is to carry over: the target is the URI in origin form
/// (`request_filter` rewrites any other form, and Pingora refuses one that is not UTF-8), and
/// upstreams speak HTTP/1.1.
fn lowercase_with_room(head: &mut RequestHeader, room: usize) {
    debug_assert_eq!(
        Some(head.raw_path()),
        head.uri.path_and_query().map(|p| p.as_str().as_bytes())
    );
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts = http::request::Parts::from(std::mem::replace(head, placeholder));
    parts.headers.reserve(room);
    *head = RequestHeader::from(parts);
}

/// [`lowercase_with_room`] for a response; a reason phrase of the upstream's own is kept.
fn lowercase_response_with_room(head: &mut ResponseHeader, room: usize) -> Result<()> {
    let reason = head
        .get_reason_phrase()
        .filter(|r| Some(*r) != head.status.canonical_reason())
        .map(str::to_owned);
    let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts = http::response::Parts::from(std::mem::replace(head, placeholder));
    parts.headers.reserve(room);
    *head = ResponseHeader::from(parts);
    if reason.is_some() {
        head.set_reason_phrase(reason.as_deref())?;
    }
    Ok(())
}

/// A fresh request id: 128 random bits as 32 hex digits.
fn new_request_id() -> HeaderValue {
    let mut id = [0u8; 32];
    hex(&rand::random::<u128>().to_be_bytes(), &mut id);
    HeaderValue::from_bytes(&id).expect("hex digits are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_header_reads_as_the_address() {
        for ip in [
            "0.0.0.0",
            "1.20.3.40",
            "10.0.0.1",
            "127.0.0.1",
            "192.168.100.9",
            "99.100.101.255",
            "255.255.255.255",
            "2001:db8::1",
            "::ffff:10.0.0.1",
        ] {
            let addr: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ip_header(addr).to_str().unwrap(), addr.to_string(), "{ip}");
        }
    }

    #[test]
    fn a_request_id_is_32_lowercase_hex_digits_and_new_each_time() {
        let (a, b) = (new_request_id(), new_request_id());
        for id in [&a, &b] {
            let text = id.to_str().unwrap();
            assert_eq!(text.len(), 32, "{text}");
            assert!(
                text.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
                "{text}"
            );
        }
        assert_ne!(a, b);
    }
}
