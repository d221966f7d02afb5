//! An OTLP receiver on loopback: it decodes what it is sent (`opentelemetry-proto`: protobuf or
//! JSON over HTTP, or gRPC) and keeps every span, so a test can read the traces the proxy and the
//! shop export.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message;

/// One received span, its ids in lowercase hex.
#[derive(Debug, Clone)]
pub struct Span {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent: String,
    /// 2 server, 3 client (the OTLP enum).
    pub kind: i32,
    pub attributes: HashMap<String, String>,
    /// 2 = error (the OTLP status code).
    pub status: i32,
}

impl Span {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

pub struct Receiver {
    pub addr: SocketAddr,
    received: Received,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

async fn take(State(r): State<Received>, headers: axum::http::HeaderMap, body: Bytes) -> StatusCode {
    let json = headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let req = if json {
        serde_json::from_slice::<ExportTraceServiceRequest>(&body).ok()
    } else {
        ExportTraceServiceRequest::decode(body).ok()
    };
    let Some(req) = req else {
        return StatusCode::BAD_REQUEST;
    };
    tokio::time::sleep(r.delay).await;
    r.keep(req, if json { "http/json" } else { "http/protobuf" });
    StatusCode::OK
}

/// What arrived: the spans, and by which protocol each request came.
#[derive(Clone, Default)]
struct Received {
    spans: Arc<Mutex<Vec<Span>>>,
    protocols: Arc<Mutex<Vec<&'static str>>>,
    /// How long each export request waits before it is answered: a slow collector.
    delay: Duration,
}

impl Received {
    fn keep(&self, req: ExportTraceServiceRequest, protocol: &'static str) {
        self.protocols.lock().unwrap().push(protocol);
        let mut got = self.spans.lock().unwrap();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(&kv.value))
                .unwrap_or_default();
            for s in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
                got.push(Span {
                    service: service.clone(),
                    name: s.name.clone(),
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent: hex(&s.parent_span_id),
                    kind: s.kind,
                    attributes: s
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(&kv.value)))
                        .collect(),
                    status: s.status.as_ref().map_or(0, |st| st.code),
                });
            }
        }
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.keep(request.into_inner(), "grpc");
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    /// OTLP over HTTP: `POST /v1/traces`, protobuf or JSON by its content type.
    pub async fn start() -> Receiver {
        Receiver::start_slow(Duration::ZERO).await
    }

    /// `start`, answering each export request only after `delay`.
    pub async fn start_slow(delay: Duration) -> Receiver {
        let received = Received {
            delay,
            ..Received::default()
        };
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(take))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, received }
    }

    /// OTLP over gRPC.
    pub async fn start_grpc() -> Receiver {
        let received = Received::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(received.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        Receiver { addr, received }
    }

    /// The protocol of every export request received so far.
    pub fn protocols(&self) -> Vec<&'static str> {
        self.received.protocols.lock().unwrap().clone()
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The spans of one trace once `ready` says they are all in (at most 15 s).
    pub async fn trace(&self, trace_id: &str, ready: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let spans: Vec<Span> = self
                .received
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.trace_id == trace_id)
                .cloned()
                .collect();
            if ready(&spans) || Instant::now() > deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every span received so far.
    pub fn all(&self) -> Vec<Span> {
        self.received.spans.lock().unwrap().clone()
    }
}

/// The proxy on the rules `text`, exporting to `endpoint` with a 50 ms batch delay and the access
/// log on (it names each request's trace), plus `env`.
pub async fn traced_proxy(endpoint: &str, text: &str, env: &[(&str, &str)]) -> super::proxy::Proxy {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, text).unwrap();
    let mut all = vec![
        ("RUST_LOG", "warn,access=info"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ];
    all.extend_from_slice(env);
    super::proxy::Proxy::start_with(dir, path, &[], &all).await
}
