//! OpenTelemetry traces: the spans of a request (server, each upstream attempt, the shadow copy),
//! the W3C trace context in and out, and their export by OTLP off the request path.
//!
//! Export runs on a thread of its own behind a bounded queue. A full queue or a failed export
//! drops spans and counts them (`strangler_trace_spans_dropped_total`); a request never waits.
//! The SDK's `BatchSpanProcessor` does the same but keeps its drop count private and does not
//! count spans lost to a failed export, so the queue here is our own (`Queue`, below).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider, SpanData, SpanExporter as _, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use prometheus::IntCounter;

use crate::headers::{hex, TRACEPARENT};
use crate::rules::{Protocol, Root, Sampler, Tracing};

/// Spans sent in one export at most (the SDK's default).
const BATCH: usize = 512;

/// The tracer, while tracing is on: the proxy holds it, and each request keeps its spans in a
/// `RequestTrace` in its CTX.
pub struct Telemetry {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
    pub settings: Tracing,
}

/// The counters the export keeps, from `metrics`.
#[derive(Clone)]
pub struct Counters {
    pub exported: IntCounter,
    pub dropped: IntCounter,
}

impl Telemetry {
    /// Start the tracer and its export thread, or `None` when no collector is configured.
    /// `settings` already has the environment laid over it.
    pub fn start(settings: Tracing, counters: Counters) -> Result<Option<Arc<Telemetry>>, String> {
        let Some(endpoint) = settings.endpoint.clone() else {
            return Ok(None);
        };
        let url = match (settings.protocol, settings.endpoint_is_full) {
            (Protocol::Grpc, _) | (_, true) => endpoint,
            _ => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
        };
        let resource = Resource::builder()
            .with_service_name(settings.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let delay = std::env::var("OTEL_BSP_SCHEDULE_DELAY")
            .ok()
            .and_then(|ms| ms.trim().parse::<u64>().ok())
            .map_or(Duration::from_secs(5), Duration::from_millis);
        let queue = Queue::start(&url, settings.protocol, settings.queue, delay, &resource, counters)?;
        let provider = SdkTracerProvider::builder()
            .with_span_processor(queue)
            .with_sampler(sampler(settings.sampler))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("strangler");
        tracing::info!(
            collector = %url,
            protocol = %settings.protocol,
            sampler = %settings.sampler,
            "tracing: spans go to the collector by OTLP"
        );
        Ok(Some(Arc::new(Telemetry {
            tracer,
            provider,
            settings,
        })))
    }

    /// Send what is queued; at shutdown, so the last requests' spans are not lost.
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!("tracing: spans not sent at shutdown: {e}");
        }
    }

    /// The server span of a request: it continues the caller's `traceparent` and `tracestate`,
    /// or starts a trace. An unsampled one keeps only its ids.
    pub fn request(&self, headers: &HeaderMap) -> RequestTrace {
        let caller = if headers.contains_key(&TRACEPARENT) {
            TraceContextPropagator::new().extract(&HeaderExtractor(headers))
        } else {
            Context::new()
        };
        let span = self
            .tracer
            .span_builder("HTTP")
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &caller);
        let under = if span.is_recording() {
            Under::Sampled(Context::new().with_span(span))
        } else {
            Under::Unsampled(span.span_context().clone())
        };
        RequestTrace {
            under,
            header: None,
            attempt: None,
        }
    }

    /// A span of its own for a shadow copy or a composite part, under `parent`.
    fn child(&self, parent: &Context, name: &'static str, upstream: &str) -> ChildSpan {
        let mut span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .start_with_context(&self.tracer, parent);
        let context = span.span_context().clone();
        if !span.is_recording() {
            return ChildSpan { span: None, context };
        }
        span.set_attribute(KeyValue::new("strangler.upstream", upstream.to_string()));
        ChildSpan {
            span: Some(span),
            context,
        }
    }
}

/// A parent span: sampled, in a `Context` the SDK starts children under; or not sampled, when its
/// children are not either (true of every sampler offered) and only need ids of their own for
/// the `traceparent` they send, which is cheaper made here than by the SDK.
#[derive(Clone)]
enum Under {
    Sampled(Context),
    Unsampled(SpanContext),
}

impl Under {
    fn child(&self, telemetry: &Telemetry, name: &'static str, upstream: &str) -> ChildSpan {
        match self {
            Under::Sampled(cx) => telemetry.child(cx, name, upstream),
            Under::Unsampled(sc) => ChildSpan {
                span: None,
                context: SpanContext::new(
                    sc.trace_id(),
                    RandomIdGenerator::default().new_span_id(),
                    sc.trace_flags(),
                    false,
                    sc.trace_state().clone(),
                ),
            },
        }
    }

    fn span_context(&self) -> SpanContext {
        match self {
            Under::Sampled(cx) => cx.span().span_context().clone(),
            Under::Unsampled(sc) => sc.clone(),
        }
    }
}

fn sampler(s: Sampler) -> opentelemetry_sdk::trace::Sampler {
    use opentelemetry_sdk::trace::Sampler as S;
    let root = |r: Root| match r {
        Root::On => S::AlwaysOn,
        Root::Off => S::AlwaysOff,
        Root::Ratio(r) => S::TraceIdRatioBased(r),
    };
    match s {
        Sampler::Always(r) => root(r),
        Sampler::ParentBased(r) => S::ParentBased(Box::new(root(r))),
    }
}

/// Where spans started off the request path (composite parts) hang: the tracer and a parent.
#[derive(Clone)]
pub struct Parent {
    telemetry: Arc<Telemetry>,
    under: Under,
}

impl Parent {
    /// Under a span of this process that is not in a `Context` (a shadow copy's).
    pub fn under(telemetry: &Arc<Telemetry>, span: &ChildSpan) -> Parent {
        let under = match span.span {
            Some(_) => Under::Sampled(Context::new().with_remote_span_context(span.context.clone())),
            None => Under::Unsampled(span.context.clone()),
        };
        Parent {
            telemetry: telemetry.clone(),
            under,
        }
    }

    pub fn child(&self, name: &'static str, upstream: &str) -> ChildSpan {
        self.under.child(&self.telemetry, name, upstream)
    }
}

/// A request's spans while it runs.
pub struct RequestTrace {
    /// The server span, as the parent of everything the request starts.
    under: Under,
    /// `traceparent` for the try in flight.
    header: Option<HeaderValue>,
    attempt: Option<ChildSpan>,
}

/// How an attempt of an upstream came about.
#[derive(Clone, Copy)]
pub enum Try {
    First,
    Retry,
    Fallback,
}

impl RequestTrace {
    /// A span of its own under the request's: a shadow copy.
    pub fn child(&self, telemetry: &Telemetry, name: &'static str, upstream: &str) -> ChildSpan {
        self.under.child(telemetry, name, upstream)
    }

    pub fn parent(&self, telemetry: &Arc<Telemetry>) -> Parent {
        Parent {
            telemetry: telemetry.clone(),
            under: self.under.clone(),
        }
    }

    /// The `traceparent` of the request's own span: its trace id for the access log.
    pub fn server_header(&self) -> HeaderValue {
        traceparent(&self.under.span_context())
    }

    /// The `traceparent` the upstream is sent: its parent is the try in flight.
    pub fn upstream_header(&self) -> HeaderValue {
        self.header.clone().unwrap_or_else(|| self.server_header())
    }

    pub fn recording(&self) -> bool {
        matches!(self.under, Under::Sampled(_))
    }

    /// Start the span of a try of an upstream; a try still open is ended first, as failed.
    pub fn attempt(&mut self, telemetry: &Telemetry, upstream: &str, address: SocketAddr, number: u32, kind: Try) {
        self.end_attempt(None, Some("superseded"));
        let name = match kind {
            Try::First => "attempt",
            Try::Retry => "retry",
            Try::Fallback => "fallback",
        };
        let mut span = self.under.child(telemetry, name, upstream);
        self.header = Some(span.traceparent());
        if span.recording() {
            span.set("server.address", address.ip().to_string());
            span.set("server.port", i64::from(address.port()));
            span.set("strangler.attempt", i64::from(number));
            span.set("strangler.try", name);
        }
        self.attempt = Some(span);
    }

    /// End the try in flight with the upstream's status, or an error.
    pub fn end_attempt(&mut self, status: Option<u16>, error: Option<&str>) {
        let Some(mut span) = self.attempt.take() else { return };
        if span.recording() {
            if let Some(s) = status {
                span.set("http.response.status_code", i64::from(s));
            }
            let failed = error.is_some() || status.is_some_and(|s| s >= 500);
            span.set("strangler.outcome", if failed { "failed" } else { "ok" });
            if let Some(e) = error {
                span.set("error.type", e.to_string());
                span.fail(e);
            } else if failed {
                span.set("error.type", status.unwrap_or(0).to_string());
                span.fail("5xx");
            }
        }
        span.end();
    }

    /// End the request's span. `route` is the route's name and `template` its path pattern.
    pub fn finish(mut self, end: Finish<'_>) {
        self.end_attempt(Some(end.status), None);
        let Under::Sampled(cx) = &self.under else { return };
        let span = cx.span();
        let name = match end.template {
            Some(t) => format!("{} {t}", end.method),
            None => end.method.to_string(),
        };
        span.update_name(name);
        let mut attrs = vec![
            KeyValue::new("http.request.method", end.method.to_string()),
            KeyValue::new("url.path", end.path.to_string()),
            KeyValue::new("http.response.status_code", i64::from(end.status)),
            KeyValue::new("strangler.route", end.route.to_string()),
            KeyValue::new("strangler.side", end.side),
        ];
        if let Some(t) = end.template {
            attrs.push(KeyValue::new("http.route", t.to_string()));
        }
        if let Some(m) = end.mode {
            attrs.push(KeyValue::new("strangler.mode", m));
        }
        if let Some(r) = end.fallback {
            attrs.push(KeyValue::new("strangler.fallback_reason", r));
        }
        if end.status >= 500 {
            attrs.push(KeyValue::new("error.type", end.status.to_string()));
            span.set_status(Status::error(""));
        }
        span.set_attributes(attrs);
        span.end();
    }
}

/// What the request's span says when it ends.
pub struct Finish<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub route: &'a str,
    pub template: Option<&'a str>,
    pub mode: Option<&'static str>,
    pub side: &'static str,
    pub fallback: Option<&'static str>,
}

/// A span under a request's: an attempt, a shadow copy, a composite part. Ended when dropped.
/// Unsampled, it is only its ids.
pub struct ChildSpan {
    span: Option<opentelemetry_sdk::trace::Span>,
    context: SpanContext,
}

impl ChildSpan {
    /// This span as the parent of the request it makes.
    pub fn traceparent(&self) -> HeaderValue {
        traceparent(&self.context)
    }

    pub fn recording(&self) -> bool {
        self.span.is_some()
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(span) = self.span.as_mut() {
            span.set_attribute(KeyValue::new(key, value));
        }
    }

    pub fn fail(&mut self, why: &str) {
        if let Some(span) = self.span.as_mut() {
            span.set_status(Status::error(why.to_string()));
        }
    }

    fn end(mut self) {
        if let Some(span) = self.span.as_mut() {
            span.end();
        }
    }
}

/// `00-TRACEID-SPANID-FLAGS` (W3C Trace Context), written with `headers::hex`: no `format!` per
/// request.
fn traceparent(sc: &SpanContext) -> HeaderValue {
    let mut out = [b'-'; 55];
    out[..2].copy_from_slice(b"00");
    hex(&sc.trace_id().to_bytes(), &mut out[3..35]);
    hex(&sc.span_id().to_bytes(), &mut out[36..52]);
    hex(&[sc.trace_flags().to_u8()], &mut out[53..55]);
    HeaderValue::from_bytes(&out).expect("hex digits and dashes are a valid header value")
}

/// The trace id in a `traceparent` (32 lowercase hex digits), or `None`.
pub fn trace_id(traceparent: &[u8]) -> Option<&str> {
    let id = traceparent
        .get(3..35)
        .filter(|id| traceparent.get(35) == Some(&b'-') && id.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))?;
    std::str::from_utf8(id).ok()
}

/// The bounded queue between the request path and the export thread.
///
/// The thread sleeps between batches instead of waiting on the channel, so a span queued costs
/// the request a `try_send` and an atomic add, not a wake-up of the thread (a futex call per
/// span, measured: the system time per request doubled with every request sampled). It is
/// woken when a batch's worth is queued, when asked to flush, or after `delay`.
#[derive(Debug)]
struct Queue {
    tx: SyncSender<Msg>,
    dropped: IntCounter,
    queued: Arc<AtomicUsize>,
    /// Spans queued that wake the thread: a batch, or half a smaller queue.
    wake_at: usize,
    thread: std::thread::Thread,
}

enum Msg {
    Span(Box<SpanData>),
    Flush(SyncSender<()>),
}

impl Queue {
    fn start(
        url: &str,
        protocol: Protocol,
        capacity: usize,
        delay: Duration,
        resource: &Resource,
        counters: Counters,
    ) -> Result<Queue, String> {
        let (tx, rx) = mpsc::sync_channel::<Msg>(capacity);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (url, resource, c) = (url.to_string(), resource.clone(), counters.clone());
        let queued = Arc::new(AtomicUsize::new(0));
        let count = queued.clone();
        let thread = std::thread::Builder::new()
            .name("strangler-otlp".into())
            .spawn(move || {
                let rt = match protocol {
                    Protocol::Grpc => match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(rt) => Runtime::Tokio(rt),
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("tracing: no runtime for the exporter: {e}")));
                            return;
                        }
                    },
                    _ => Runtime::None,
                };
                // The gRPC exporter's channel is made inside its runtime.
                let exporter = match &rt {
                    Runtime::Tokio(rt) => rt.block_on(async { exporter(&url, protocol) }),
                    Runtime::None => exporter(&url, protocol),
                };
                let mut exporter = match exporter {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                exporter.set_resource(&resource);
                let _ = ready_tx.send(Ok(()));
                export_loop(&rt, &exporter, &rx, &count, delay, &c);
            })
            .map_err(|e| format!("tracing: could not start the export thread: {e}"))?
            .thread()
            .clone();
        ready_rx
            .recv()
            .map_err(|_| "tracing: the export thread ended at start".to_string())??;
        Ok(Queue {
            tx,
            dropped: counters.dropped,
            queued,
            wake_at: BATCH.min(capacity / 2).max(1),
            thread,
        })
    }
}

/// What the export thread runs the exporter on.
enum Runtime {
    Tokio(tokio::runtime::Runtime),
    None,
}

fn exporter(url: &str, protocol: Protocol) -> Result<opentelemetry_otlp::SpanExporter, String> {
    use opentelemetry_otlp::WithExportConfig;
    let built = match protocol {
        Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(url)
            .build(),
        Protocol::HttpProtobuf | Protocol::HttpJson => {
            let p = if protocol == Protocol::HttpJson {
                opentelemetry_otlp::Protocol::HttpJson
            } else {
                opentelemetry_otlp::Protocol::HttpBinary
            };
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(p)
                .with_endpoint(url)
                .build()
        }
    };
    built.map_err(|e| format!("tracing: the OTLP exporter for {url}: {e}"))
}

/// Sleep until a batch's worth is queued, a flush is asked for, or `delay` has passed; then send
/// what is queued, in batches of at most `BATCH`.
fn export_loop(
    rt: &Runtime,
    exporter: &opentelemetry_otlp::SpanExporter,
    rx: &Receiver<Msg>,
    queued: &AtomicUsize,
    delay: Duration,
    c: &Counters,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(BATCH);
    loop {
        std::thread::park_timeout(delay);
        let mut flushed = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(Msg::Span(s)) => {
                    queued.fetch_sub(1, Ordering::Relaxed);
                    batch.push(*s);
                    if batch.len() == BATCH {
                        send(rt, exporter, &mut batch, c);
                    }
                }
                Ok(Msg::Flush(done)) => flushed.push(done),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    send(rt, exporter, &mut batch, c);
                    return;
                }
            }
        }
        send(rt, exporter, &mut batch, c);
        for done in flushed {
            let _ = done.send(());
        }
    }
}

fn send(rt: &Runtime, exporter: &opentelemetry_otlp::SpanExporter, batch: &mut Vec<SpanData>, c: &Counters) {
    if batch.is_empty() {
        return;
    }
    let n = batch.len() as u64;
    let spans = std::mem::replace(batch, Vec::with_capacity(BATCH));
    let sent = match rt {
        // gRPC (tonic) runs on a tokio runtime; the blocking HTTP client must not.
        Runtime::Tokio(rt) => rt.block_on(exporter.export(spans)),
        Runtime::None => futures_executor::block_on(exporter.export(spans)),
    };
    match sent {
        Ok(()) => c.exported.inc_by(n),
        Err(e) => {
            // Counted, and said once a minute at most: a collector that is down stays down a while.
            c.dropped.inc_by(n);
            warn_export_failed(&e);
        }
    }
}

fn warn_export_failed(e: &OTelSdkError) {
    use std::sync::Mutex;
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let Ok(mut last) = LAST.lock() else { return };
    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
        *last = Some(Instant::now());
        tracing::warn!("tracing: spans dropped, the collector did not take them: {e}");
    }
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        match self.tx.try_send(Msg::Span(Box::new(span))) {
            Ok(()) => {
                if self.queued.fetch_add(1, Ordering::Relaxed) + 1 == self.wake_at {
                    self.thread.unpark();
                }
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let (done, wait) = mpsc::sync_channel(1);
        // Woken first: a full queue is drained before the flush can be queued.
        self.thread.unpark();
        self.tx
            .send(Msg::Flush(done))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        self.thread.unpark();
        wait.recv_timeout(Duration::from_secs(5))
            .map_err(|_| OTelSdkError::Timeout(Duration::from_secs(5)))
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.force_flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

    #[test]
    fn a_traceparent_is_written_and_read_back() {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        );
        let h = traceparent(&sc);
        assert_eq!(h, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(trace_id(h.as_bytes()), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(trace_id(b"00-short"), None);
        assert_eq!(
            trace_id(b"00-javascript:alert(1)/*aaaaaaaaaaa-00f067aa0ba902b7-01"),
            None
        );
    }
}
