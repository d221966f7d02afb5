//! The HTTP shell every shop server shares: health, 404/405 JSON, body limit, volatile fields.

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;
use crate::faults::{Drift, Faults};

/// Largest accepted request body; larger bodies get 413 `body_too_large`.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Header carrying the request id; echoed back on every response.
pub const REQUEST_ID: &str = "x-request-id";

/// Largest response body the middleware will buffer to add the volatile fields.
const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// Wraps a finished application router with `/healthz`, optional `/_faults`, JSON 404/405,
/// the body limit, the middleware that adds volatile fields (and applies faults), and a span per
/// request when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
pub fn finish(app: Router, service: &'static str, faults: Option<Faults>) -> Router {
    let health = move || async move { axum::Json(serde_json::json!({ "status": "ok", "service": service })) };
    let mut app = app.route("/healthz", get(health));
    if let Some(faults) = &faults {
        app = app.merge(crate::faults::routes(faults.clone()));
    }
    app.fallback(|| async { ApiError::not_found("no such route; see docs/SHOP.md for the API") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this path does not take that method; see the Allow header",
            )
        })
        .layer(middleware::from_fn_with_state(faults, shape))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // Outermost: the request's span covers the faults and the shaping too.
        .layer(middleware::from_fn_with_state(
            crate::otel::from_env(service),
            crate::otel::trace,
        ))
}

/// Applies faults (services only), then gives every JSON object response its volatile fields
/// and turns any non-JSON error (e.g. axum's own 405/413) into the JSON error shape.
async fn shape(State(faults): State<Option<Faults>>, mut req: Request, next: Next) -> Response {
    let request_id = request_id(&req);
    // Handlers that call other services forward the id, including one generated here.
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        req.headers_mut().insert(REQUEST_ID, value);
    }
    let path = req.uri().path();
    let exempt = path == "/healthz" || path == "/_faults";
    let settings = faults.filter(|_| !exempt).map(|f| {
        f.count_request();
        f.get()
    });
    let mut drift = None;
    let response = match settings {
        Some(settings) => {
            if !settings.latency.is_zero() {
                tokio::time::sleep(settings.latency).await;
            }
            drift = settings.drift;
            if Faults::should_fail(settings.error_rate) {
                ApiError::unavailable("injected_fault", "injected fault; retry later").into_response()
            } else {
                next.run(req).await
            }
        }
        None => next.run(req).await,
    };
    finalize(response, &request_id, drift.as_ref()).await
}

fn request_id(req: &Request) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()))
}

async fn finalize(response: Response, request_id: &str, drift: Option<&Drift>) -> Response {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let mut response = if is_json || !(response.status().is_client_error() || response.status().is_server_error()) {
        response
    } else {
        json_error_for(response)
    };
    if is_json || response.status().is_client_error() || response.status().is_server_error() {
        response = add_volatile(response, request_id, drift).await;
    }
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// Replaces a plain-text or empty error with the JSON error shape, keeping its headers.
fn json_error_for(response: Response) -> Response {
    let status = response.status();
    let error = match status {
        StatusCode::NOT_FOUND => ApiError::not_found("no such route; see docs/SHOP.md for the API"),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::new(
            status,
            "method_not_allowed",
            "this path does not take that method; see the Allow header",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => crate::extract::body_too_large(),
        other => ApiError::new(other, "http_error", other.canonical_reason().unwrap_or("error")),
    };
    let (mut parts, _) = response.into_parts();
    let fresh = error.into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, fresh.into_body())
}

async fn add_volatile(response: Response, request_id: &str, drift: Option<&Drift>) -> Response {
    let (mut parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_RESPONSE).await {
        Ok(bytes) => bytes,
        Err(err) => return ApiError::internal(format_args!("buffering response: {err}")).into_response(),
    };
    let mut value: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(value) => value,
        Err(_) => return Response::from_parts(parts, Body::from(bytes)),
    };
    // These two names are on the wire: clients and the contract test know them by name.
    if let Some(map) = value.as_object_mut() {
        map.insert("served_at".into(), crate::time::now_rfc3339_micros().into());
        map.insert("request_id".into(), request_id.into());
    }
    if let Some(drift) = drift {
        drift.apply(&mut value);
    }
    let body = match serde_json::to_vec(&value) {
        Ok(body) => body,
        Err(err) => return ApiError::internal(err).into_response(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}
