//! The admin listener: `/healthz`, `/readyz`, `/metrics` and the JSON API, served with axum.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use axum::extract::{Query, Request, State};
use axum::http::Method;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde_json::json;

use crate::config::Mode;
use crate::live::Live;
use crate::metrics::Metrics;
use crate::reload::{ErrorView, Outcome, Reloader, Trigger};
use crate::rules::NO_ROUTE;
use crate::rules::{Condition, Field, HostMatch, PathMatch};
use crate::shadow::Shadower;
use crate::stats::Stats;

#[derive(Clone)]
pub struct AdminState {
    pub live: Arc<ArcSwap<Live>>,
    pub metrics: Arc<Metrics>,
    pub reloader: Arc<Reloader>,
    pub shadower: Arc<Shadower>,
    pub stats: Arc<Stats>,
    pub map: Arc<crate::discovery::Map>,
    pub autopilot: Arc<crate::autopilot::Autopilot>,
    /// When set, every POST needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

/// POSTs change what the proxy does: with a token configured, they must carry it.
async fn require_token(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    if let (Some(token), &Method::POST) = (&s.token, req.method()) {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes()));
        if !ok {
            let body = json!({"error": "unauthorized", "detail": "send Authorization: Bearer <admin token>"});
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(body),
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// Compare without leaking, through timing, how much of the token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn dashboard() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("dashboard.html"),
    )
        .into_response()
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/routes", get(routes))
        .route("/api/config", get(config))
        .route("/api/mismatches", get(mismatches))
        .route("/api/endpoints", get(endpoints))
        .route("/api/autopilot", get(autopilot))
        .route("/api/autopilot/{route}/{action}", post(autopilot_act))
        .route("/api/reload", post(reload))
        .route("/", get(dashboard))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "not_found", "see": ["/healthz", "/readyz", "/metrics", "/api/routes", "/api/config", "/api/mismatches", "/api/endpoints", "/api/autopilot", "POST /api/reload", "POST /api/autopilot/ROUTE/{pause,resume,promote,rollback}"]})),
            )
        })
        .with_state(state)
}

async fn metrics(State(s): State<AdminState>) -> Response {
    let live = s.live.load();
    let body = s
        .metrics
        .render(&live.states, live.rules.legacy, s.shadower.in_flight());
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Ready when rules are loaded (they always are once serving) and the legacy upstream is healthy.
async fn readyz(State(s): State<AdminState>) -> Response {
    let live = s.live.load();
    let legacy = &live.rules.upstreams[live.rules.legacy].name;
    if live.states[live.rules.legacy].healthy() {
        Json(json!({"status": "ready", "generation": live.generation})).into_response()
    } else {
        let body =
            json!({"status": "not_ready", "reason": format!("legacy upstream \"{legacy}\" fails its health checks")});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// `POST /api/reload`: 200 with the new generation, or 422 with every error; nothing changes on 422.
async fn reload(State(s): State<AdminState>) -> Response {
    let reloader = s.reloader.clone();
    let outcome = match tokio::task::spawn_blocking(move || reloader.reload(Trigger::Api)).await {
        Ok(o) => o,
        Err(_) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": "reload task failed"})),
            )
                .into_response()
        }
    };
    match outcome {
        Outcome::Applied { generation, routes } => {
            Json(json!({"result": "applied", "generation": generation, "routes": routes})).into_response()
        }
        Outcome::Unchanged { generation } => {
            Json(json!({"result": "unchanged", "generation": generation})).into_response()
        }
        Outcome::Refused(errors) => {
            let errors: Vec<ErrorView> = errors.0.iter().map(ErrorView::from).collect();
            let body = json!({"result": "refused", "generation": s.live.load().generation, "errors": errors});
            (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
        }
    }
}

/// `GET /api/config`: the rules in force, their generation, and the last reload's result and errors.
async fn config(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let status = s.reloader.status();
    let live = s.live.load();
    Json(json!({
        "file": status.file,
        "generation": live.generation,
        "last_reload": {
            "result": status.last_result,
            "trigger": status.last_trigger,
            "at_unix": status.last_attempt_unix,
            "errors": status.errors,
        },
        "last_success_unix": status.last_success_unix,
        "rules": rules_json(&live),
    }))
}

/// `GET /api/autopilot`: each rollout's step, gates, next decision and last transition.
async fn autopilot(State(s): State<AdminState>) -> Json<serde_json::Value> {
    Json(s.autopilot.view())
}

/// `POST /api/autopilot/ROUTE/ACTION`: pause, resume, promote or rollback, by editing the file.
async fn autopilot_act(
    State(s): State<AdminState>,
    axum::extract::Path((route, action)): axum::extract::Path<(String, String)>,
) -> Response {
    use crate::autopilot::{ActError, Action};
    let Some(action) = Action::parse(&action) else {
        let body =
            json!({"error": "unknown_action", "action": action, "allowed": ["pause", "resume", "promote", "rollback"]});
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    };
    let autopilot = s.autopilot.clone();
    match tokio::task::spawn_blocking(move || autopilot.act(&route, action)).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => {
            let status = match e {
                ActError::NoRollout(_) => StatusCode::NOT_FOUND,
                ActError::FileAhead | ActError::Write(_) => StatusCode::CONFLICT,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            (status, Json(json!({"error": e.to_string()}))).into_response()
        }
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "autopilot task failed"})),
        )
            .into_response(),
    }
}

#[derive(serde::Deserialize)]
struct EndpointQuery {
    state: Option<String>,
    capability: Option<String>,
}

/// `GET /api/endpoints?state=S&capability=C`: the migration map, busiest first, and the progress.
async fn endpoints(State(s): State<AdminState>, Query(q): Query<EndpointQuery>) -> Response {
    use crate::discovery::ALL_STATES;
    if let Some(state) = q.state.as_deref().filter(|st| !ALL_STATES.contains(st)) {
        let body = json!({"error": "bad_state", "state": state, "allowed": ALL_STATES});
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    let live = s.live.load();
    Json(s.map.view(&live.rules, q.state.as_deref(), q.capability.as_deref())).into_response()
}

#[derive(serde::Deserialize)]
struct MismatchQuery {
    route: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/mismatches?route=NAME&limit=N`: the newest mismatches first (at most 100 kept per route).
async fn mismatches(State(s): State<AdminState>, Query(q): Query<MismatchQuery>) -> Response {
    let live = s.live.load();
    let limit = q.limit.unwrap_or(20).min(crate::shadow::MISMATCHES_KEPT);
    if let Some(name) = &q.route {
        if !live.rules.routes.iter().any(|r| &r.name == name) {
            let body = json!({"error": "unknown_route", "route": name});
            return (StatusCode::NOT_FOUND, Json(body)).into_response();
        }
    }
    let mut all: Vec<_> = live
        .shadow_states
        .iter()
        .flatten()
        .filter(|st| q.route.as_ref().is_none_or(|r| &st.route == r))
        .flat_map(|st| st.mismatches(limit))
        .collect();
    all.sort_by(|a, b| b.at_unix.total_cmp(&a.at_unix));
    all.truncate(limit);
    // `tracing.link` turns each trace id into a link to the team's tracing tool.
    let all: Vec<serde_json::Value> = all
        .into_iter()
        .map(|m| {
            let url = (!m.trace_id.is_empty())
                .then(|| live.rules.tracing.link_to(&m.trace_id))
                .flatten();
            let mut v = serde_json::to_value(m).unwrap_or_default();
            if let (Some(url), Some(obj)) = (url, v.as_object_mut()) {
                obj.insert("trace_url".into(), url.into());
            }
            v
        })
        .collect();
    Json(json!({"mismatches": all})).into_response()
}

/// `GET /api/routes`: each route's settings and live figures, and the totals over all routes.
async fn routes(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let live = s.live.load();
    let mut body = rules_json(&live);
    if let Some(routes) = body["routes"].as_array_mut() {
        for (i, r) in routes.iter_mut().enumerate() {
            r["live"] = s.stats.route(&live, Some(i), &live.rules.routes[i].name);
        }
    }
    body["unrouted"] = s.stats.route(&live, None, NO_ROUTE);
    let by_mode: serde_json::Map<String, serde_json::Value> = Mode::ALL
        .iter()
        .zip(live.rules.mode_counts())
        .map(|(m, n)| (m.as_str().to_string(), n.into()))
        .collect();
    body["totals"] = json!({"routes_by_mode": by_mode, "last_minute": s.stats.totals(&live)});
    body["generation"] = live.generation.into();
    Json(body)
}

fn rules_json(live: &Live) -> serde_json::Value {
    let rules = &live.rules;
    let routes: Vec<_> = rules
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (kind, pattern) = match &r.path {
                PathMatch::Literal(p) | PathMatch::Template(p) => ("path", p),
                PathMatch::Prefix(p) => ("prefix", p),
            };
            json!({
                "name": r.name,
                "match": { kind: pattern, "methods": r.method_names, "headers": r.conditions.iter().filter_map(|c| match &c.field { Field::Header(h) => Some(h.as_str()), _ => None }).collect::<Vec<_>>(), "host": r.host.as_ref().map(HostMatch::describe), "conditions": r.conditions.iter().map(Condition::describe).collect::<Vec<_>>() },
                "mode": r.mode.as_str(),
                "service": r.service.map(|s| rules.upstreams[s].name.as_str()),
                "compose": r.compose.as_ref().map(|c| c.parts.iter().map(|p| json!({
                    "part": p.name,
                    "service": rules.upstreams[p.upstream].name,
                    "path": p.path_text,
                    "required": p.required,
                    "for_each": p.for_each.as_ref().map(|f| f.text.as_str()),
                })).collect::<Vec<_>>()),
                "canary_percent": r.canary.as_ref().map(|c| c.percent),
                "shadow": r.shadow.as_ref().map(|sh| json!({
                    "sample": sh.sample,
                    "methods": sh.method_names,
                    "max_body": sh.max_body,
                    "ignore": sh.ignore_text,
                    "noise_sample": sh.noise_sample,
                    "forward_credentials": sh.forward_credentials,
                    "learned_noise": live.shadow_states[i].as_ref().map(|st| st.learned_noise()).unwrap_or_default(),
                })),
            })
        })
        .collect();
    let upstreams: serde_json::Map<String, serde_json::Value> = rules
        .upstreams
        .iter()
        .map(|u| (u.name.clone(), json!({"url": u.url})))
        .collect();
    json!({ "legacy": rules.upstreams[rules.legacy].name, "upstreams": upstreams, "routes": routes })
}

/// How the admin listener gets its socket.
pub enum AdminListener {
    /// Bound before start, so a bad address fails the start with a clear error.
    Bound(std::net::TcpListener),
    /// Bound once the server runs, retrying while another process still holds it: during a
    /// graceful upgrade the old process keeps the admin port until it starts shutting down.
    Later(String),
}

/// Runs the admin router inside the Pingora server.
pub struct AdminService {
    pub listener: std::sync::Mutex<Option<AdminListener>>,
    pub state: AdminState,
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(how) = self.listener.lock().ok().and_then(|mut l| l.take()) else {
            return;
        };
        let listener = match how {
            AdminListener::Bound(l) => l
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(l)),
            AdminListener::Later(addr) => bind_when_free(&addr, &mut shutdown).await,
        };
        let listener = match listener {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("admin listener failed: {e}");
                return;
            }
        };
        let app = router(self.state.clone());
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
            tracing::error!("admin server stopped: {e}");
        }
    }
}

/// Bind `addr`, retrying for up to 30 s while it is in use.
async fn bind_when_free(addr: &str, shutdown: &mut ShutdownWatch) -> std::io::Result<tokio::net::TcpListener> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tokio::time::Instant::now() < deadline => {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
                    _ = shutdown.changed() => return Err(e),
                }
            }
            other => return other,
        }
    }
}
