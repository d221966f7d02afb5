//! OpenTelemetry for the shop's servers: a span per request that continues the caller's W3C
//! trace context, and a client span (with its `traceparent`) for each call a handler makes.
//!
//! On when `OTEL_EXPORTER_OTLP_ENDPOINT` names a collector (OTLP over HTTP, protobuf); off
//! otherwise. Each server has a tracer of its own, with its own `service.name`: the demo and the
//! tests run the monolith and both services in one process, where one global tracer (as
//! `tracing-opentelemetry` installs) would name every span after one service.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

/// One server's tracer. Spans still queued are sent when the last clone is dropped.
pub struct Tracer {
    tracer: SdkTracer,
    _provider: SdkTracerProvider,
}

/// `service`'s tracer when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (and `OTEL_SDK_DISABLED` is
/// not `true`); a collector that can't be reached only loses spans.
pub fn from_env(service: &'static str) -> Option<Arc<Tracer>> {
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())?;
    if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    let url = format!("{}/v1/traces", endpoint.trim().trim_end_matches('/'));
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url.clone())
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(%url, "tracing off: {e}");
            return None;
        }
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    Some(Arc::new(Tracer {
        tracer: provider.tracer(service),
        _provider: provider,
    }))
}

/// The request's span, for the calls its handler makes (a request extension).
#[derive(Clone)]
pub struct Parent {
    cx: Context,
    tracer: SdkTracer,
}

/// Middleware: the request's server span, under the caller's `traceparent` if it sent one.
pub async fn trace(State(tracer): State<Option<Arc<Tracer>>>, mut req: Request, next: Next) -> Response {
    let Some(t) = tracer else { return next.run(req).await };
    let caller = TraceContextPropagator::new().extract(&HeaderExtractor(req.headers()));
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| req.uri().path().to_string(), |m| m.as_str().to_string());
    let method = req.method().to_string();
    let span = t
        .tracer
        .span_builder(format!("{method} {route}"))
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", method),
            KeyValue::new("url.path", req.uri().path().to_string()),
            KeyValue::new("http.route", route),
        ])
        .start_with_context(&t.tracer, &caller);
    let cx = caller.with_span(span);
    req.extensions_mut().insert(Parent {
        cx: cx.clone(),
        tracer: t.tracer.clone(),
    });
    let response = next.run(req).await;
    let span = cx.span();
    let status = response.status().as_u16();
    span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status)));
    if status >= 500 {
        span.set_status(Status::error(status.to_string()));
    }
    span.end();
    response
}

/// A call to another service: a client span under the request's, ended when dropped.
pub struct Call {
    span: opentelemetry_sdk::trace::Span,
}

impl Call {
    /// Start a call named `name` (e.g. `POST /api/inventory/{sku}/reservations`) under `parent`.
    pub fn start(parent: Option<&Parent>, name: &'static str) -> Option<Call> {
        let p = parent?;
        let span = p
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .start_with_context(&p.tracer, &p.cx);
        Some(Call { span })
    }

    /// The `traceparent` (and `tracestate`) to send: the callee's span hangs under this call.
    pub fn headers(&self) -> HeaderMap {
        let cx = Context::new().with_remote_span_context(self.span.span_context().clone());
        let mut out = HeaderMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut out));
        out
    }

    /// The callee's answer.
    pub fn status(&mut self, status: u16) {
        self.span
            .set_attribute(KeyValue::new("http.response.status_code", i64::from(status)));
        if status >= 500 {
            self.span.set_status(Status::error(status.to_string()));
        }
    }
}
