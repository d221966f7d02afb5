//! The request path: `impl ProxyHttp`, readable top to bottom.
//!
//! request_filter: normalize the path, match a route, pick a side  (one rule-set snapshot)
//! upstream_peer:  the chosen upstream's prebuilt peer
//! upstream_request_filter: normalized path, forwarding headers, request id
//! response_filter: x-strangler-* headers
//! logging: count the request against handles resolved at load time

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::HOST;
use http::{HeaderName, HeaderValue};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{ProxyHttp, Session};

use crate::metrics::{Metrics, RouteHandles};
use crate::rules::{RouteId, RuleSet, Side, UpstreamId};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_STRANGLER_ROUTE: HeaderName = HeaderName::from_static("x-strangler-route");
pub const X_STRANGLER_UPSTREAM: HeaderName = HeaderName::from_static("x-strangler-upstream");

/// The rules in force and the metric handles compiled with them. Swapped whole on reload.
pub struct Live {
    /// 0 for the rules loaded at start, +1 per applied reload.
    pub generation: u64,
    pub rules: RuleSet,
    pub handles: RouteHandles,
    /// `x-strangler-route` values, indexed like `rules.routes`, plus `(none)` last.
    route_headers: Vec<HeaderValue>,
    /// `x-strangler-upstream` values, indexed like `rules.upstreams`.
    upstream_headers: Vec<HeaderValue>,
}

impl Live {
    pub fn new(rules: RuleSet, metrics: &Metrics, generation: u64) -> Live {
        let handles = metrics.handles(&rules);
        let header = |s: &str| HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        let mut route_headers: Vec<HeaderValue> = rules.routes.iter().map(|r| header(&r.name)).collect();
        route_headers.push(HeaderValue::from_static(crate::rules::NO_ROUTE));
        let upstream_headers = rules.upstreams.iter().map(|u| header(&u.name)).collect();
        Live {
            generation,
            rules,
            handles,
            route_headers,
            upstream_headers,
        }
    }
}

pub struct Strangler {
    pub live: Arc<ArcSwap<Live>>,
    pub metrics: Arc<Metrics>,
}

/// Per-request state. `live` pins one rule set for the whole request, even across a reload.
pub struct Ctx {
    live: Option<Arc<Live>>,
    route: Option<RouteId>,
    side: Side,
    target: UpstreamId,
    /// The normalized path and the original query, when they differ from what the client sent.
    rewritten: Option<http::Uri>,
    started: Instant,
}

#[async_trait]
impl ProxyHttp for Strangler {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            live: None,
            route: None,
            side: Side::Legacy,
            target: 0,
            rewritten: None,
            started: Instant::now(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let live = self.live.load_full();
        let req = session.req_header();
        let path = match crate::path::normalize(req.uri.path()) {
            Ok(p) => p,
            Err(e) => {
                self.metrics.rejected(e.code());
                let body = format!(
                    "{{\"error\":\"bad_path\",\"reason\":\"{}\",\"detail\":\"{e}\"}}\n",
                    e.code()
                );
                respond(session, 400, body.into()).await?;
                return Ok(true);
            }
        };
        let route = live.rules.lookup(&req.method, &path, &req.headers);
        let r = route.map(|id| &live.rules.routes[id]);
        ctx.side = r.map_or(Side::Legacy, |r| r.side(&req.headers));
        ctx.target = live.rules.target(r, ctx.side);
        ctx.route = route;
        if let std::borrow::Cow::Owned(p) = path {
            let pq = match req.uri.query() {
                Some(q) => format!("{p}?{q}"),
                None => p,
            };
            ctx.rewritten = pq.parse().ok();
        }
        ctx.live = Some(live);
        // Every request carries an id: the client's, or a new one. The upstream and the
        // client's response both see it.
        if !session.req_header().headers.contains_key(&X_REQUEST_ID) {
            session.req_header_mut().insert_header(X_REQUEST_ID, new_request_id())?;
        }
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let live = ctx.live.as_ref().expect("request_filter sets live");
        Ok(Box::new(live.rules.upstreams[ctx.target].peer.clone()))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let live = ctx.live.as_ref().expect("request_filter sets live");
        if let Some(uri) = ctx.rewritten.take() {
            up.set_uri(uri);
        }
        if let Some(ip) = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()) {
            let xff = match up.headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
                Some(prev) => format!("{prev}, {ip}"),
                None => ip.to_string(),
            };
            up.insert_header(X_FORWARDED_FOR, xff)?;
        }
        if !up.headers.contains_key(&X_FORWARDED_PROTO) {
            up.insert_header(X_FORWARDED_PROTO, "http")?;
        }
        if !up.headers.contains_key(&X_FORWARDED_HOST) {
            if let Some(host) = session.req_header().headers.get(HOST).cloned() {
                up.insert_header(X_FORWARDED_HOST, host)?;
            }
        }
        if let Some(host) = &live.rules.upstreams[ctx.target].host {
            up.insert_header(HOST, host.clone())?;
        }
        Ok(())
    }

    async fn response_filter(&self, session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        let live = ctx.live.as_ref().expect("request_filter sets live");
        if live.rules.response_headers {
            let route = ctx.route.unwrap_or(live.route_headers.len() - 1);
            resp.insert_header(X_STRANGLER_ROUTE, live.route_headers[route].clone())?;
            resp.insert_header(X_STRANGLER_UPSTREAM, live.upstream_headers[ctx.target].clone())?;
        }
        if let Some(id) = session.req_header().headers.get(&X_REQUEST_ID) {
            if !resp.headers.contains_key(&X_REQUEST_ID) {
                resp.insert_header(X_REQUEST_ID, id.clone())?;
            }
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, _e: Option<&pingora_error::Error>, ctx: &mut Ctx) {
        let Some(live) = ctx.live.as_ref() else { return };
        let status = session.response_written().map_or(502, |r| r.status.as_u16());
        let seconds = ctx.started.elapsed().as_secs_f64();
        live.handles.route(ctx.route).side(ctx.side).observe(status, seconds);
    }
}

/// A small JSON answer from the proxy itself.
async fn respond(session: &mut Session, status: u16, body: Bytes) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(3))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    session.set_keepalive(None);
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// A fresh request id: 128 random bits as 32 hex digits.
fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
